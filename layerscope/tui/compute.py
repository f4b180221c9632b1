"""The explorer's model work, row by row, so the TUI can show rows as they arrive and stop between them.

Imported inside the worker thread only: it pulls in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from layerscope.analyses.grid import DecodeGrid, GridCell
from layerscope.analyses.lens import lens_grid_rows, lens_states
from layerscope.analyses.lens_generate import residual_steps
from layerscope.analyses.patchscope import patchscope_grid
from layerscope.analyses.residual import layer_labels
from layerscope.interventions import Intervention
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn

if TYPE_CHECKING:
    from layerscope.analyses.jacobian_lens import FittedLens


@dataclass
class LayerRow:
    """One residual row of the grid for the baseline and, with interventions, the intervened run."""

    row: int
    label: str
    baseline: list[GridCell]
    intervened: list[GridCell] | None = None
    kl_base_int: list[float] | None = None  # per position, KL(baseline || intervened) in nats


@dataclass
class GeneratedColumn:
    """One generated position, appended to every row: for each run (baseline, then intervened) its token and
    its cells down the rows, and with two runs their KL per row."""

    token_ids: list[int]  # per run
    tokens: list[str]  # per run, as the grid shows them
    cells: list[list[GridCell]]  # [run][row]
    kl_base_int: list[float] | None = None  # per row, KL(baseline || intervened) in nats


def empty_grid(lm: LoadedModel, method: str, input_ids: torch.Tensor, generating: bool = False) -> DecodeGrid:
    """A grid with the prompt's tokens and no rows yet: rows are appended as they arrive (and, `generating`,
    the generated positions after them)."""
    ids = input_ids[0].tolist()
    return DecodeGrid(lm.name, method, lm.token_texts(ids), ids, [], [], len(ids) if generating else None)


def lens_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    top_k: int,
    cancelled: Callable[[], bool],
    lens: FittedLens | None = None,
) -> Iterator[LayerRow]:
    """Logit-lens rows of the baseline and the intervened run together, with their per-layer KL; with a tuned or
    Jacobian lens, each run's states are moved by it first (that lens's grid)."""
    runs = [lens_states(lm, input_ids)] + ([lens_states(lm, input_ids, interventions)] if interventions else [])
    if lens is not None:
        runs = [lens.translate_rows(states) for states in runs]
    decoded = lens_grid_rows(lm, runs, top_k)
    for row, label in enumerate(layer_labels(lm.n_blocks)):
        if cancelled():
            return
        lens_row = next(decoded)
        result = LayerRow(row, label, lens_row.cells[0])
        if interventions:
            result.intervened, result.kl_base_int = lens_row.cells[1], lens_row.kl_between
        yield result


def lens_columns(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    max_new_tokens: int,
    top_k: int,
    cancelled: Callable[[], bool],
    lens: FittedLens | None = None,
) -> Iterator[GeneratedColumn]:
    """The generated positions after `lens_rows`'s prompt, one greedy token at a time from the KV cache: the
    baseline and, with interventions, the intervened run, each decoding its own continuation, stepped in turn.
    Both grids keep one length: the columns end where either run ends its text."""
    translate = lens.translate_rows if lens is not None else None
    runs = [residual_steps(lm, input_ids, max_new_tokens, [], translate)]
    if interventions:
        runs.append(residual_steps(lm, input_ids, max_new_tokens, interventions, translate))
    for steps in runs:
        next(steps)  # the prompt's pass: its rows came from lens_rows
    for stepped in zip(*runs):
        if cancelled():
            return
        decoded = list(lens_grid_rows(lm, [step.states for step in stepped], top_k))
        ids = [step.token_ids[0] for step in stepped]
        yield GeneratedColumn(
            ids,
            lm.token_texts(ids),
            [[row.cells[run][0] for row in decoded] for run in range(len(stepped))],
            [row.kl_between[0] for row in decoded if row.kl_between is not None] or None,
        )


def patchscope_rows(
    lm: LoadedModel, input_ids: torch.Tensor, top_k: int, cancelled: Callable[[], bool], progress: ProgressFn
) -> Iterator[LayerRow]:
    """Patchscope identity decoding (no interventions: it patches states into its own target prompt)."""
    grid = patchscope_grid(lm, input_ids, top_k=top_k, progress=progress)
    for row, (label, cells) in enumerate(zip(grid.layers, grid.cells)):
        if cancelled():
            return
        yield LayerRow(row, label, cells)
