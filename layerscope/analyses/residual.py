"""Capture the residual stream at every grid row with plain hooks.

Row 0 is the input of block 0 (`emb`); row l+1 is the output of block l. All rows
are taken BEFORE the final norm, so every row, the last included, is decoded the
same way (final norm, then unembedding) and the norm is never applied twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from layerscope.models.adapter import ModelAdapter
from layerscope.models.hooks import hook_input, hook_output


@dataclass
class CapturedResiduals:
    states: torch.Tensor  # (rows = L + 1, batch, tokens, hidden), on the output device
    logits: torch.Tensor  # (batch, tokens, vocab): the model's own output


def layer_labels(n_blocks: int) -> list[str]:
    return ["emb", *(str(b) for b in range(n_blocks))]


@contextmanager
def residual_rows(adapter: ModelAdapter) -> Iterator[list[torch.Tensor | None]]:
    """While open, every forward pass through the model fills the list with the residual state at each row
    (batch, tokens, hidden), on the output device; the hooks come off when it closes."""
    rows: list[torch.Tensor | None] = [None] * (adapter.n_blocks + 1)
    target = adapter.output_device

    def keep(row: int) -> Callable[[torch.Tensor], None]:
        def store(hidden: torch.Tensor) -> None:
            rows[row] = hidden.detach().to(target)

        return store

    with ExitStack() as stack:
        blocks = adapter.blocks
        hook_input(stack, blocks[0], keep(0))
        for block in range(adapter.n_blocks):  # depth in the run order, after any swap
            hook_output(stack, blocks[block], keep(block + 1))
        yield rows


def capture_residuals(adapter: ModelAdapter, input_ids: torch.Tensor, **forward_options: Any) -> CapturedResiduals:
    """One forward pass of `input_ids` (batch, tokens); the residual state at each row, and the model's logits
    (`forward_options` go to the model, e.g. logits_to_keep=1 where only the last position's logits are wanted)."""
    with residual_rows(adapter) as rows, torch.inference_mode():
        logits = adapter.model(input_ids=input_ids, use_cache=False, **forward_options).logits
    return CapturedResiduals(states=torch.stack(rows), logits=logits.to(adapter.output_device))
