"""Logit lens: decode every residual row with the model's own final norm and unembedding.

Memory grows with the prompt like the residual states, (L+1) x T x hidden: logits, which are vocab wide,
exist only for a tile of rows x positions at a time, and each cell keeps its top-k, entropy and KL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import torch

from layerscope.analyses.activations import last_logits_only
from layerscope.analyses.grid import DecodeGrid, GridCell, GridRows, build_grid, distribution_stats
from layerscope.analyses.residual import CapturedResiduals, capture_residuals, layer_labels
from layerscope.arguments import check_int, prompt_batch
from layerscope.errors import LayerscopeError
from layerscope.interventions import Intervention, intervene
from layerscope.models.loading import LoadedModel, PromptBatch

DECODE_BUDGET = 32 * 2**20
"""Bytes of float32 logits decoded at once per run: several rows per matmul where they fit, a slice of the
positions where one row does not (a long prompt)."""
FINAL_ROW_BUDGET = 256 * 2**20
"""Bytes of the final row's log-probs kept for every position while the rows above stream out one by one;
a longer prompt is decoded in position tiles instead, and its rows come out together at the end."""


def one_prompt(input_ids: torch.Tensor) -> PromptBatch:
    """Ids (1, T) of one prompt as a batch of one; a batch must come padded, with its mask, from `lm.encode`."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise LayerscopeError(
            f"Token ids of one prompt are shaped (1, tokens), not {tuple(input_ids.shape)}: "
            "encode several prompts with lm.encode([...])."
        )
    return PromptBatch.from_ids(input_ids)


def batch_residuals(
    lm: LoadedModel, batch: PromptBatch, interventions: Sequence[Intervention] = (), **forward_options: object
) -> CapturedResiduals:
    """The residual rows of a (right-padded) batch under the interventions: states (L + 1, B, T, hidden)."""
    with intervene(lm, interventions, seq_len=batch.ids.shape[1]):
        return capture_residuals(lm.adapter, batch.ids, attention_mask=batch.attention_mask, **forward_options)


def lens_states(lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """(L + 1, tokens, hidden) for ids (1, tokens): the residual rows before the final norm. The last row decodes
    to the model's own logits, so the model is asked for the last position's logits only (where it can be)."""
    return batch_residuals(lm, one_prompt(input_ids), interventions, **last_logits_only(lm)).states[:, 0]


@dataclass
class LensRow:
    """One grid row: its cells for each run and, with two runs, KL(first || second) per position in nats."""

    cells: list[list[GridCell]]
    kl_between: list[float] | None


def lens_grid_rows(
    lm: LoadedModel,
    runs: Sequence[torch.Tensor],
    top_k: int,
    budget: int = DECODE_BUDGET,
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
            log_probs = [
                torch.log_softmax(_decode(lm, states[rows.start : rows.stop, span]).float(), dim=-1) for states in runs
            ]
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


@overload
def logit_lens(
    lm: LoadedModel,
    input_ids: PromptBatch,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    budget: int = DECODE_BUDGET,
) -> list[DecodeGrid]: ...


@overload
def logit_lens(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    budget: int = DECODE_BUDGET,
) -> DecodeGrid: ...


def logit_lens(
    lm: LoadedModel,
    input_ids: torch.Tensor | PromptBatch,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    budget: int = DECODE_BUDGET,
) -> DecodeGrid | list[DecodeGrid]:
    """The decode grid of the logit lens: L+1 rows by every prompt position, for ids (1, T).

    A `PromptBatch` (`lm.encode([...])`) runs in one forward pass and gives one grid per prompt, each over
    that prompt's own tokens, as if it had run alone."""
    batch = prompt_batch(lm, input_ids)
    check_int(top_k, "top_k", 1)
    check_int(budget, "budget", 1)
    states = batch_residuals(lm, batch, interventions, **last_logits_only(lm)).states
    grids = []
    for index, length in enumerate(batch.lengths):
        rows = lens_grid_rows(lm, [states[:, index, :length]], top_k, budget, final_budget=0)
        ids = batch.ids[index, :length].tolist()
        grids.append(
            DecodeGrid(
                lm.name,
                "logit_lens",
                lm.token_texts(ids),
                ids,
                layer_labels(lm.n_blocks),
                [row.cells[0] for row in rows],
            )
        )
    return grids if isinstance(input_ids, PromptBatch) else grids[0]


RowLogits = tuple[Iterator[torch.Tensor], torch.Tensor]
"""A lens run of one prompt: its rows' logits (tokens, vocab) one by one, and the model's logits (tokens, vocab)."""


def lens_logits(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention] = (),
    translate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> RowLogits:
    """(row logits generator, final logits) for ids (1, T) under the given interventions.
    `translate` maps the states (rows, tokens, hidden) before decoding (the tuned lens)."""
    return batch_lens_logits(lm, one_prompt(input_ids), interventions, translate)[0]


def translated_grid(
    lm: LoadedModel, method: str, input_ids: torch.Tensor, translate: Callable[[torch.Tensor], torch.Tensor], top_k: int
) -> DecodeGrid:
    """The decode grid of a lens that maps each row's states (rows, tokens, hidden) before decoding them: the
    tuned lens, the Jacobian lens. Ids (1, T)."""
    rows, final = lens_logits(lm, input_ids, translate=translate)
    return build_grid(lm, method, input_ids, rows, final, layer_labels(lm.n_blocks), top_k)


def batch_lens_logits(
    lm: LoadedModel,
    batch: PromptBatch,
    interventions: Sequence[Intervention] = (),
    translate: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[RowLogits]:
    """`lens_logits` of each prompt of a batch, from one forward pass, each over its own tokens only."""
    captured = batch_residuals(lm, batch, interventions)

    def rows(states: torch.Tensor) -> Iterator[torch.Tensor]:
        chunk = max(1, DECODE_BUDGET // (states.shape[1] * lm.model.config.get_text_config().vocab_size * 4))
        with torch.inference_mode():
            if translate is not None:
                states = translate(states)
            for start in range(0, len(states), chunk):
                yield from lm.adapter.decode(states[start : start + chunk])

    return [
        (rows(captured.states[:, index, :length]), captured.logits[index, :length])
        for index, length in enumerate(batch.lengths)
    ]
