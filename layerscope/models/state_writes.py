"""Hook writers: overwrite hidden states in the forward passes inside an `ExitStack`, at a grid row or at a
module's output, one vector per batch element (Patchscopes and the causal trace write their states with them)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from typing import TypeAlias

import torch
from torch import nn

from layerscope.models.adapter import ModelAdapter
from layerscope.models.hooks import hook_input, hook_output

Index: TypeAlias = int | slice | torch.Tensor
"""A tensor subscript along one dimension: a position, a slice, or an index tensor."""


def _overwriter(batch: Index, positions: Index, vectors: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def write(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden[batch, positions] = vectors.to(hidden.device, hidden.dtype)
        return hidden

    return write


def write_at_output(
    module: nn.Module, stack: ExitStack, batch: Index, vectors: torch.Tensor, positions: Index = 0
) -> None:
    """Overwrite output[batch, positions] of `module` (the first element where it returns a tuple) in the
    forward passes inside `stack`. `batch` and `positions` index like a tensor subscript: a slice and a
    position, or two index tensors that pair each batch element with its own position."""
    hook_output(stack, module, _overwriter(batch, positions, vectors))


def write_at_row(
    adapter: ModelAdapter, stack: ExitStack, row: int, batch: Index, vectors: torch.Tensor, positions: Index = 0
) -> None:
    """Like `write_at_output`, at grid row `row`: the input of block `row`, or the last block's output."""
    if row == adapter.n_blocks:
        write_at_output(adapter.blocks[row - 1], stack, batch, vectors, positions)
    else:
        hook_input(stack, adapter.blocks[row], _overwriter(batch, positions, vectors))
