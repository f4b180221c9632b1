"""Greedy decoding that reads each step's attention.

The prompt is prefilled on the model's normal attention path except its last token; from then on every forward
pass has one query, and the attention reader keeps that query's attention per head: memory grows linearly with
the context, never T x T.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import torch

from layerscope.interventions.attention import read_attention
from layerscope.models.cache import cached_forward
from layerscope.models.loading import LoadedModel

PREFILL_CHUNK = 256


def greedy_steps(
    lm: LoadedModel, ids: torch.Tensor, with_attention: bool = True
) -> Generator[tuple[int, torch.Tensor | None], None, None]:
    """Greedy decoding without end: yields (token id, the attention (blocks, heads, keys) of the query that
    produced it, or None without `with_attention`). The caller stops iterating."""
    model, adapter = lm.model, lm.adapter
    ids = ids.to(adapter.input_device)
    attention: list[torch.Tensor | None] = [None] * adapter.n_blocks

    def reader(block: int, probs: torch.Tensor) -> None:
        attention[block] = probs[0, :, -1].cpu()

    cache = None
    if with_attention:
        # The fast path for everything but the last token, no attention read, in chunks so that no
        # pass holds more than PREFILL_CHUNK x T of anything.
        for start in range(0, ids.shape[1] - 1, PREFILL_CHUNK):
            chunk = ids[:, start : min(start + PREFILL_CHUNK, ids.shape[1] - 1)]
            with torch.inference_mode():
                cache = cached_forward(model, cache, input_ids=chunk, logits_to_keep=1)[1]
        ids = ids[:, -1:]
        modules = {block: adapter.attention(block) for block in range(adapter.n_blocks)}
    else:
        modules = {}
    with read_attention(model, modules, reader):  # readers stay attached until the caller stops iterating
        while True:
            with torch.inference_mode():
                output, cache = cached_forward(model, cache, input_ids=ids, logits_to_keep=1)
            token = int(output.logits[0, -1].argmax())
            yield token, torch.stack(attention) if with_attention else None
            ids = torch.tensor([[token]], device=adapter.input_device)


def stop_ids(lm: LoadedModel) -> set[int]:
    configured = lm.model.generation_config.eos_token_id
    ids = {lm.tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    return ids - {None}


def answer_steps(
    lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int, with_attention: bool = True
) -> Iterator[tuple[int, torch.Tensor | None]]:
    """Greedy steps until max_new_tokens, the end-of-sequence token, or a newline after the answer began."""
    lm.check_generation(ids.shape[1], max_new_tokens)
    text = ""
    stops = stop_ids(lm)
    steps = greedy_steps(lm, ids, with_attention)
    for _ in range(max_new_tokens):
        token, attention = next(steps)
        if token in stops:
            break
        text += lm.tokenizer.decode([token])
        yield token, attention
        if "\n" in text.lstrip():
            break
    steps.close()
