"""Induction (prefix-matching) and previous-token heads, from attention weights.

Both scores are the mean attention along one diagonal offset of the attention
pattern: t -> t - n + 1 on repeated random tokens for prefix matching, t -> t - 1
on ordinary text for previous-token heads. Sequences are short, so full
attention rows are read through the engine's attention reader.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layerscope.analyses.head_scores import HeadScores
from layerscope.errors import LayerscopeError
from layerscope.interventions.attention import install_edited_attention, read_attention
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress

GENERAL_PROMPTS = Path(__file__).resolve().parents[2] / "sample_prompts" / "general.txt"
FALLBACK_TEXTS = (
    "The old bridge over the river was built of stone by masons from the next valley.",
    "On Thursdays the market fills the square with stalls of bread, cheese and vegetables.",
    "She wrote a long letter to her brother and posted it on the way to the station.",
    "Clock makers lay out every part in order so that nothing is lost during a repair.",
)


def repeated_random_tokens(lm: LoadedModel, seq_len: int = 50, repeats: int = 2, samples: int = 10,
                           seed: int = 0) -> torch.Tensor:
    """(samples, [BOS] + seq_len * repeats): random ordinary tokens repeated; BOS only if the tokenizer has one."""
    if seq_len < 2 or repeats < 2 or samples < 1:
        raise LayerscopeError("Induction needs --seq-len >= 2, --repeats >= 2 and --samples >= 1.")
    bos = lm.tokenizer.bos_token_id
    length = seq_len * repeats + (bos is not None)
    if lm.adapter.max_context is not None and length > lm.adapter.max_context:
        raise LayerscopeError(f"{length} tokens exceed this model's context of {lm.adapter.max_context}.")
    vocab = min(len(lm.tokenizer), lm.model.config.get_text_config().vocab_size)
    special = set(lm.tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(vocab) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    block = ordinary[torch.randint(len(ordinary), (samples, seq_len), generator=generator)]
    ids = block.repeat(1, repeats)
    if bos is not None:
        ids = torch.cat([torch.full((samples, 1), bos), ids], dim=1)
    return ids


def diagonal_attention(lm: LoadedModel, ids: torch.Tensor, queries: torch.Tensor, offset: int) -> torch.Tensor:
    """(blocks, heads): attention from each query position q to q - offset, summed over batch and queries."""
    install_edited_attention(lm.model)
    adapter = lm.adapter
    totals = torch.zeros(adapter.n_blocks, adapter.n_heads)

    def reader(block: int, probs: torch.Tensor) -> None:
        totals[block] += probs[:, :, queries, queries - offset].sum(dim=(0, 2)).cpu()

    modules = {block: adapter.attention(block) for block in range(adapter.n_blocks)}
    with read_attention(modules, reader), torch.inference_mode():
        lm.model(input_ids=ids.to(adapter.input_device), use_cache=False, logits_to_keep=1)
    return totals


def induction_scores(lm: LoadedModel, seq_len: int = 50, repeats: int = 2, samples: int = 10, seed: int = 0,
                     progress: ProgressFn = no_progress) -> HeadScores:
    """Prefix-matching score per head: mean attention from t to t - seq_len + 1, second and later repeats only."""
    ids = repeated_random_tokens(lm, seq_len, repeats, samples, seed)
    start = ids.shape[1] - seq_len * (repeats - 1)
    queries = torch.arange(start, ids.shape[1])
    progress(0, samples, "induction")
    totals = torch.zeros(lm.n_blocks, lm.adapter.n_heads)
    for sample in range(samples):
        totals += diagonal_attention(lm, ids[sample:sample + 1], queries, seq_len - 1)
        progress(sample + 1, samples, "induction")
    meta = {"seq_len": seq_len, "repeats": repeats, "samples": samples, "seed": seed,
            "bos": lm.tokenizer.bos_token_id is not None}
    return HeadScores.from_matrix(lm, "induction", totals / (samples * len(queries)), meta)


def general_texts() -> list[str]:
    """The shipped general prompt set (one prompt a line, '#' comments), else a few built-in sentences."""
    if GENERAL_PROMPTS.is_file():
        lines = [line.strip() for line in GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines()]
        texts = [line for line in lines if line and not line.startswith("#")]
        if texts:
            return texts
    return list(FALLBACK_TEXTS)


def previous_token_scores(lm: LoadedModel, texts: list[str] | None = None,
                          progress: ProgressFn = no_progress) -> HeadScores:
    """Previous-token score per head: mean attention from t to t - 1 over every position t >= 1 of ordinary text."""
    texts = general_texts() if texts is None else texts
    totals = torch.zeros(lm.n_blocks, lm.adapter.n_heads)
    count = 0
    progress(0, len(texts), "previous-token")
    for index, text in enumerate(texts):
        ids = lm.encode(text)
        if ids.shape[1] > 1:
            queries = torch.arange(1, ids.shape[1])
            totals += diagonal_attention(lm, ids, queries, 1)
            count += len(queries)
        progress(index + 1, len(texts), "previous-token")
    if count == 0:
        raise LayerscopeError("The previous-token texts are all shorter than two tokens.")
    return HeadScores.from_matrix(lm, "previous_token", totals / count, {"texts": len(texts), "positions": count})
