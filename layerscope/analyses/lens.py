"""Logit lens: decode every residual row with the model's own final norm and unembedding.

Memory grows with the prompt like the residual states, (L+1) x T x hidden: logits, which are vocab wide,
exist only for a tile of rows x positions at a time, and each cell keeps its top-k, entropy and KL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from layerscope.analyses.grid import DecodeGrid, GridCell, GridRows, distribution_stats
from layerscope.analyses.residual import layer_labels, trace_residuals
from layerscope.interventions import Intervention, intervene
from layerscope.models.loading import LoadedModel

DECODE_BUDGET = 32 * 2**20
"""Bytes of float32 logits decoded at once per run: several rows per matmul where they fit, a slice of the
positions where one row does not (a long prompt)."""
FINAL_ROW_BUDGET = 256 * 2**20
"""Bytes of the final row's log-probs kept for every position while the rows above stream out one by one;
a longer prompt is decoded in position tiles instead, and its rows come out together at the end."""


def lens_states(lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """(L + 1, tokens, hidden): the residual rows before the final norm. The last row decodes to the model's own
    logits, so the model is asked for the last position's logits only (where its forward allows it)."""
    model_forward = inspect.signature(lm.model.forward).parameters
    keep = {"logits_to_keep": 1} if "logits_to_keep" in model_forward else {}
    with intervene(lm, interventions, seq_len=input_ids.shape[1]):
        trace = trace_residuals(lm.adapter, input_ids, **keep)
    return trace.states[:, 0]


@dataclass
class LensRow:
    """One grid row: its cells for each run and, with two runs, KL(first || second) per position in nats."""

    cells: list[list[GridCell]]
    kl_between: list[float] | None


def lens_grid_rows(
    lm: LoadedModel, runs: Sequence[torch.Tensor], top_k: int, budget: int = DECODE_BUDGET,
    final_budget: int = FINAL_ROW_BUDGET,
) -> Iterator[LensRow]:
    """Grid rows, top to bottom, of one or two runs' `lens_states` (same prompt).

    Positions are the outer loop, so each tile of positions decodes its final row once and the rows above it
    against it. A row comes out when its last tile is done: row by row (so a viewer can show them and stop
    between them) while the final row of the whole prompt fits in `final_budget`, all together at the end
    of a longer prompt.
    """
    n_rows, n_tokens = runs[0].shape[:2]
    vocab = lm.model.config.get_text_config().vocab_size
    whole = n_tokens * vocab * 4 * len(runs) <= final_budget
    positions = n_tokens if whole else max(1, min(n_tokens, budget // (vocab * 4)))
    rows_per_tile = max(1, budget // (positions * vocab * 4))
    cells: list[list[list[GridCell]]] = [[[] for _ in runs] for _ in range(n_rows)]
    kl_between: list[list[float]] = [[] for _ in range(n_rows)]
    for start in range(0, n_tokens, positions):
        span = slice(start, start + positions)
        last_tile = start + positions >= n_tokens
        finals = [GridRows(lm, _decode(lm, states[-1, span]), top_k) for states in runs]
        for first in range(0, n_rows, rows_per_tile):
            rows = range(first, min(first + rows_per_tile, n_rows))
            log_probs = [torch.log_softmax(_decode(lm, states[rows.start : rows.stop, span]).float(), dim=-1)
                         for states in runs]
            for offset, row in enumerate(rows):
                for run, grid_rows in enumerate(finals):
                    cells[row][run] += grid_rows.cells(log_probs[run][offset])
                if len(runs) == 2:
                    kl = distribution_stats(log_probs[1][offset], log_probs[0][offset])[1]
                    kl_between[row] += kl.clamp_min(0).tolist()
                if last_tile:
                    yield LensRow(cells[row], kl_between[row] if len(runs) == 2 else None)
                    cells[row] = []  # handed over: the generator keeps nothing of finished rows


def _decode(lm: LoadedModel, states: torch.Tensor) -> torch.Tensor:
    """Inference mode only around the work, never across a yield (it is a thread-wide switch)."""
    with torch.inference_mode():
        return lm.adapter.decode(states)


def logit_lens(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    budget: int = DECODE_BUDGET,
) -> DecodeGrid:
    """The decode grid of the logit lens: L+1 rows by every prompt position."""
    states = lens_states(lm, input_ids, interventions)
    cells = [row.cells[0] for row in lens_grid_rows(lm, [states], top_k, budget, final_budget=0)]
    ids = input_ids[0].tolist()
    return DecodeGrid(lm.name, "logit_lens", lm.token_texts(ids), ids, layer_labels(lm.n_blocks), cells)


def lens_logits(lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = (),
                translate: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """(row logits generator, final logits) for one prompt under the given interventions.
    `translate` maps the states (rows, tokens, hidden) before decoding (the tuned lens)."""
    with intervene(lm, interventions, seq_len=input_ids.shape[1]):
        trace = trace_residuals(lm.adapter, input_ids)

    def rows():
        states = trace.states[:, 0]
        chunk = max(1, DECODE_BUDGET // (states.shape[1] * lm.model.config.get_text_config().vocab_size * 4))
        with torch.inference_mode():
            if translate is not None:
                states = translate(states)
            for start in range(0, len(states), chunk):
                yield from lm.adapter.decode(states[start : start + chunk])

    return rows(), trace.logits[0]
