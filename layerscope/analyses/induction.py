"""Induction (prefix-matching) and previous-token heads, from attention weights.

Both scores are the mean attention along one diagonal offset of the attention
pattern: t -> t - n + 1 on repeated random tokens for prefix matching, t -> t - 1
on ordinary text for previous-token heads. Sequences are short, so full
attention rows are read through the engine's attention reader.

This is the induction-head paper's prefix-matching score, not TransformerLens's head detector, which
sums the attention on every earlier match and divides by all rows: at 2 repeats with BOS the detector
is this score times n / (2n + 1) (tested); at more repeats they diverge.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from layerscope.analyses.head_scores import HeadScores
from layerscope.distributed import mapped
from layerscope.errors import LayerscopeError
from layerscope.interventions.attention import read_attention
from layerscope.locations import sample_file
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress

GENERAL_PROMPTS = sample_file("general.txt")
FALLBACK_TEXTS = (
    "The old bridge over the river was built of stone by masons from the next valley.",
    "On Thursdays the market fills the square with stalls of bread, cheese and vegetables.",
    "She wrote a long letter to her brother and posted it on the way to the station.",
    "Clock makers lay out every part in order so that nothing is lost during a repair.",
)


def repeated_random_tokens(
    lm: LoadedModel, seq_len: int = 50, repeats: int = 2, samples: int = 10, seed: int = 0
) -> torch.Tensor:
    """(samples, [BOS] + seq_len * repeats): random ordinary tokens repeated; BOS only if the tokenizer has one."""
    if seq_len < 2 or repeats < 2 or samples < 1:
        raise LayerscopeError("Induction needs seq_len=2 or more, repeats=2 or more and samples=1 or more.")
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


def diagonal_attention(
    lm: LoadedModel, ids: torch.Tensor, counted: torch.Tensor, offset: int, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """(blocks, heads): attention from t to t - offset, summed over the batch and the query positions t
    where `counted` (batch, tokens) is true. Pad on the right only."""
    adapter = lm.adapter
    totals = torch.zeros(adapter.n_blocks, adapter.n_heads)
    weights = counted[:, offset:].float()

    def reader(block: int, probs: torch.Tensor) -> None:
        diagonal = probs.diagonal(offset=-offset, dim1=2, dim2=3).cpu()  # (batch, heads, tokens - offset)
        totals[block] += (diagonal * weights[:, None]).sum(dim=(0, 2))

    modules = {block: adapter.attention(block) for block in range(adapter.n_blocks)}
    device = adapter.input_device
    mask = None if attention_mask is None else attention_mask.to(device)
    with read_attention(lm.model, modules, reader), torch.inference_mode():
        lm.model(input_ids=ids.to(device), attention_mask=mask, use_cache=False, logits_to_keep=1)
    return totals


def summed_elements(n_elements: int, element_totals: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """The sum of each batch element's totals, one element per forward pass: the same passes in one process as
    shared out over torchrun ranks, so both give the same numbers."""
    return sum(mapped(range(n_elements), element_totals), torch.zeros(()))


def induction_scores(
    lm: LoadedModel,
    seq_len: int = 50,
    repeats: int = 2,
    samples: int = 10,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> HeadScores:
    """Prefix-matching score per head: mean attention from t to t - seq_len + 1, second and later repeats only."""
    ids = repeated_random_tokens(lm, seq_len, repeats, samples, seed)
    counted = torch.zeros(ids.shape, dtype=torch.bool)
    counted[:, ids.shape[1] - seq_len * (repeats - 1) :] = True
    progress(0, 1, "induction")
    totals = summed_elements(
        ids.shape[0], lambda i: diagonal_attention(lm, ids[i : i + 1], counted[i : i + 1], seq_len - 1)
    )
    progress(1, 1, "induction")
    meta = {
        "seq_len": seq_len,
        "repeats": repeats,
        "samples": samples,
        "seed": seed,
        "bos": lm.tokenizer.bos_token_id is not None,
    }
    return HeadScores.from_matrix(lm, "induction", totals / counted.sum(), meta)


def general_texts() -> list[str]:
    """The shipped general prompt set (one prompt a line, '#' comments), else a few built-in sentences."""
    if GENERAL_PROMPTS.is_file():
        lines = [line.strip() for line in GENERAL_PROMPTS.read_text(encoding="utf-8").splitlines()]
        texts = [line for line in lines if line and not line.startswith("#")]
        if texts:
            return texts
    return list(FALLBACK_TEXTS)


def previous_token_scores(
    lm: LoadedModel, texts: list[str] | None = None, progress: ProgressFn = no_progress
) -> HeadScores:
    """Previous-token score per head: mean attention from t to t - 1 over every position t >= 1 of ordinary text."""
    texts = general_texts() if texts is None else texts
    encoded = [lm.encode(text)[0].cpu() for text in texts]
    ids = torch.nn.utils.rnn.pad_sequence(encoded, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(e) for e in encoded], batch_first=True)
    counted = mask.bool()
    counted[:, 0] = False
    if not counted.any():
        raise LayerscopeError("The previous-token texts are all shorter than two tokens.")
    progress(0, 1, "previous-token")
    totals = summed_elements(
        ids.shape[0], lambda i: diagonal_attention(lm, ids[i : i + 1], counted[i : i + 1], 1, mask[i : i + 1])
    )
    progress(1, 1, "previous-token")
    positions = int(counted.sum())
    return HeadScores.from_matrix(
        lm, "previous_token", totals / positions, {"texts": len(texts), "positions": positions}
    )
