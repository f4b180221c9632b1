"""Patchscopes (token identity): have the model say what a hidden state encodes.

The residual state at grid row l and source position t is written over the
placeholder of a target prompt at row l (or a fixed target row), and the model
decodes the next token at the end of the target prompt. The target prompt's
prefix before the placeholder is the same for every cell, so it is computed
once (KV cache) and every forward pass carries many cells, one per batch
element: whole grid rows at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, overload

import torch
from transformers import Cache

from layerscope.analyses.grid import DecodeGrid, GridCell, GridRows
from layerscope.analyses.lens import batch_residuals, logit_lens
from layerscope.analyses.residual import layer_labels
from layerscope.analyses.spans import token_span
from layerscope.arguments import check_int, check_lm, check_text, prompt_batch
from layerscope.errors import ArgumentTypeError, LayerscopeError
from layerscope.models.cache import cached_forward, repeated_cache
from layerscope.models.loading import LoadedModel, PromptBatch
from layerscope.models.state_writes import write_at_row
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_TARGET_PROMPT = "cat -> cat\n1135 -> 1135\nhello -> hello\n?"
"""The few-shot identity prompt of the Patchscopes authors; its last token is the placeholder."""

CELLS_PER_FORWARD = 256


@dataclass(frozen=True)
class TargetPrompt:
    """Token ids (1, S) of the target prompt and the position whose state is overwritten."""

    text: str
    ids: torch.Tensor
    placeholder: int


def parse_target(
    lm: LoadedModel, text: str | None = None, placeholder: str | None = None, occurrence: int | None = None
) -> TargetPrompt:
    """Tokenise a target prompt and find its placeholder token.

    Without `placeholder` the last token is the placeholder (the default prompt's `?`); with one, the single
    token that marker covers, found by `token_span`'s rule (`occurrence`, 1 = the first, chooses where it
    occurs more than once).
    """
    check_lm(lm)
    text = DEFAULT_TARGET_PROMPT if text is None else check_text(text, "text")
    if not text.strip():
        raise LayerscopeError("The target prompt is empty.")
    ids = lm.encode(text)
    if placeholder is None:
        position = ids.shape[1] - 1
    else:
        span = token_span(lm, text, placeholder, "placeholder", occurrence, where="the target prompt")
        if len(span) != 1:
            raise LayerscopeError(
                f"placeholder={placeholder!r} spans {len(span)} tokens of the target prompt; "
                "choose a marker that is a single token."
            )
        position = span[0]
    if position <= 0:
        raise LayerscopeError("The placeholder is the first token of the target prompt; put some text before it.")
    return TargetPrompt(text, ids, position)


def check_target_layer(lm: LoadedModel, target_layer: int | None) -> None:
    if target_layer is not None:
        check_int(target_layer, "target_layer")
    if target_layer is not None and not 0 <= target_layer <= lm.n_blocks:
        raise LayerscopeError(f"target_layer={target_layer} is out of range 0..{lm.n_blocks} (grid rows).")


@dataclass
class PatchedRow:
    """One source row: next-token logits (positions, vocab) at the end of the target prompt,
    and the greedy continuation ids (positions, max_new_tokens)."""

    row: int
    logits: torch.Tensor
    continuation: torch.Tensor


def patched_rows(
    lm: LoadedModel,
    source_states: torch.Tensor,
    target: TargetPrompt,
    target_layer: int | None = None,
    max_new_tokens: int = 0,
    cells_per_forward: int = CELLS_PER_FORWARD,
    only_rows: Sequence[int] | None = None,
) -> Iterator[PatchedRow]:
    """Patch every (row, position) of `source_states` (rows, positions, hidden), row by row
    (or the rows in `only_rows`). Stop iterating to cancel; the rows already yielded stay valid.
    """
    lm.check_generation(target.ids.shape[1], max_new_tokens)
    adapter, model = lm.adapter, lm.model
    n_positions = source_states.shape[1]
    wanted = list(range(source_states.shape[0]) if only_rows is None else only_rows)
    rows_per_forward = max(1, cells_per_forward // n_positions)
    prefix, fed = target.ids[:, : target.placeholder], target.ids[:, target.placeholder :]
    with torch.inference_mode():
        prefix_cache = cached_forward(model, None, input_ids=prefix)[1]
    for first in range(0, len(wanted), rows_per_forward):
        rows = wanted[first : first + rows_per_forward]
        batch = len(rows) * n_positions
        cache = repeated_cache(prefix_cache, batch)
        with ExitStack() as stack, torch.inference_mode():
            for index, row in enumerate(rows):
                elements = slice(index * n_positions, (index + 1) * n_positions)
                write_at_row(
                    adapter, stack, row if target_layer is None else target_layer, elements, source_states[row]
                )
            output, cache = cached_forward(model, cache, input_ids=fed.expand(batch, -1), logits_to_keep=1)
            stack.close()  # the patch is for the prefill pass only
            logits = output.logits[:, -1]
            continuation = _greedy(lm, logits, cache, max_new_tokens)
        for index, row in enumerate(rows):  # yielded outside inference mode and hooks
            cells = slice(index * n_positions, (index + 1) * n_positions)
            yield PatchedRow(row, logits[cells], continuation[cells])


def _greedy(lm: LoadedModel, logits: torch.Tensor, cache: Cache, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation of a batch after the patched prefill pass (no patch on later steps)."""
    tokens = []
    for step in range(max_new_tokens):
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        if step + 1 < max_new_tokens:
            output, cache = cached_forward(lm.model, cache, input_ids=token.to(lm.adapter.input_device))
            logits = output.logits[:, -1]
    if not tokens:
        return torch.empty(logits.shape[0], 0, dtype=torch.long)
    return torch.cat(tokens, dim=1).cpu()


@overload
def patchscope_grid(
    lm: LoadedModel,
    input_ids: PromptBatch,
    top_k: int = 5,
    target_prompt: str | None = None,
    target_layer: int | None = None,
    placeholder: str | None = None,
    progress: ProgressFn = no_progress,
) -> list[DecodeGrid]: ...


@overload
def patchscope_grid(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    top_k: int = 5,
    target_prompt: str | None = None,
    target_layer: int | None = None,
    placeholder: str | None = None,
    progress: ProgressFn = no_progress,
) -> DecodeGrid: ...


def patchscope_grid(
    lm: LoadedModel,
    input_ids: torch.Tensor | PromptBatch,
    top_k: int = 5,
    target_prompt: str | None = None,
    target_layer: int | None = None,
    placeholder: str | None = None,
    progress: ProgressFn = no_progress,
) -> DecodeGrid | list[DecodeGrid]:
    """The Patchscopes decode grid of ids (1, T): same rows (`emb`, 0..L-1) and positions as the logit lens grid.
    A `PromptBatch` gives one grid per prompt, over its own tokens.

    `target_layer` None writes each state at its own row; a number writes every state at that row.
    """
    batch = prompt_batch(lm, input_ids)
    check_int(top_k, "top_k", 1)
    target = parse_target(lm, target_prompt, placeholder)
    check_target_layer(lm, target_layer)
    grids = [grid for grid, _ in _grids(lm, batch, top_k, target, target_layer, 0, progress)]
    return grids if isinstance(input_ids, PromptBatch) else grids[0]


def _grids(
    lm: LoadedModel,
    batch: PromptBatch,
    top_k: int,
    target: TargetPrompt,
    target_layer: int | None,
    max_new_tokens: int,
    progress: ProgressFn,
) -> list[tuple[DecodeGrid, list[list[str]]]]:
    """Each prompt's grid and greedy descriptions [row][position]. The positions of all prompts are patched
    together, so a batch of short prompts fills the target's forward passes as one long prompt would."""
    source = batch_residuals(lm, batch)
    lengths = batch.lengths
    states = torch.cat([source.states[:, index, :length] for index, length in enumerate(lengths)], dim=1)
    finals = [GridRows(lm, source.logits[index, :length], top_k) for index, length in enumerate(lengths)]
    cells: list[list[list[GridCell]]] = [[] for _ in lengths]
    descriptions: list[list[list[str]]] = [[] for _ in lengths]
    n_rows = states.shape[0]
    progress(0, n_rows, "patchscope")
    for patched in patched_rows(lm, states, target, target_layer, max_new_tokens):
        for index, (logits, continuation) in enumerate(
            zip(patched.logits.split(lengths), patched.continuation.split(lengths))
        ):
            cells[index].append(finals[index].cells(torch.log_softmax(logits.float(), dim=-1)))
            descriptions[index].append([lm.tokenizer.decode(ids) for ids in continuation.tolist()])
        progress(patched.row + 1, n_rows, "patchscope")
    results = []
    for index, length in enumerate(lengths):
        ids = batch.ids[index, :length].tolist()
        grid = DecodeGrid(lm.name, "patchscope", lm.token_texts(ids), ids, layer_labels(lm.n_blocks), cells[index])
        results.append((grid, descriptions[index]))
    return results


@dataclass
class LayerPrecision:
    """precision@1 per grid row: how often the top-1 equals the model's own prediction at that position."""

    layers: list[str]
    patchscope: list[float]
    logit_lens: list[float]


def precision_at_1(grid: DecodeGrid, reference_ids: list[int]) -> list[float]:
    """Share of positions per row whose top-1 id equals `reference_ids[position]`."""
    return [
        sum(cell.top[0].id == ref for cell, ref in zip(row, reference_ids)) / len(reference_ids) for row in grid.cells
    ]


def compare_precision(patchscope: DecodeGrid, lens: DecodeGrid) -> LayerPrecision:
    """Both methods on the same cells; the reference is the lens's last row, the model's own prediction."""
    reference = [cell.top[0].id for cell in lens.cells[-1]]
    return LayerPrecision(lens.layers, precision_at_1(patchscope, reference), precision_at_1(lens, reference))


@dataclass
class PatchscopeReport:
    grid: DecodeGrid
    precision: LayerPrecision
    target_prompt: str
    placeholder_position: int
    target_layer: int | None  # None: same as the source row
    descriptions: list[list[str]] | None  # [row][position] greedy text, with max_new_tokens

    def plot(self, metric: str = "prob") -> Figure:
        """The grid and precision@1 per row next to the logit lens: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.grid import patchscope_figure

        return patchscope_figure(self, metric)

    def to_dict(self) -> dict:
        return {
            **self.grid.to_dict(),
            "precision_at_1": asdict(self.precision),
            "target_prompt": self.target_prompt,
            "placeholder_position": self.placeholder_position,
            "target_layer": "same" if self.target_layer is None else self.target_layer,
            "descriptions": self.descriptions,
        }

    def records(self) -> Records:
        """The grid's lines (precision@1 and the descriptions are in the JSON)."""
        return self.grid.records()

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        return self.grid._repr_html_()


@overload
def run_patchscope(
    lm: LoadedModel,
    input_ids: PromptBatch,
    target: TargetPrompt,
    target_layer: int | None = None,
    top_k: int = 5,
    max_new_tokens: int = 0,
    progress: ProgressFn = no_progress,
) -> list[PatchscopeReport]: ...


@overload
def run_patchscope(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    target: TargetPrompt,
    target_layer: int | None = None,
    top_k: int = 5,
    max_new_tokens: int = 0,
    progress: ProgressFn = no_progress,
) -> PatchscopeReport: ...


def run_patchscope(
    lm: LoadedModel,
    input_ids: torch.Tensor | PromptBatch,
    target: TargetPrompt,
    target_layer: int | None = None,
    top_k: int = 5,
    max_new_tokens: int = 0,
    progress: ProgressFn = no_progress,
) -> PatchscopeReport | list[PatchscopeReport]:
    """The grid of ids (1, T), precision@1 next to the logit lens, and with `max_new_tokens` the greedy
    descriptions. A `PromptBatch` gives one report per prompt."""
    batch = prompt_batch(lm, input_ids)
    if not isinstance(target, TargetPrompt):
        raise ArgumentTypeError(f"target= must be a TargetPrompt (from parse_target), not {type(target).__name__}.")
    check_int(top_k, "top_k", 1)
    check_int(max_new_tokens, "max_new_tokens", 0)
    check_target_layer(lm, target_layer)
    results = _grids(lm, batch, top_k, target, target_layer, max_new_tokens, progress)
    lenses = logit_lens(lm, batch, top_k)
    reports = [
        PatchscopeReport(
            grid,
            compare_precision(grid, lens),
            target.text,
            target.placeholder,
            target_layer,
            descriptions if max_new_tokens else None,
        )
        for (grid, descriptions), lens in zip(results, lenses)
    ]
    return reports if isinstance(input_ids, PromptBatch) else reports[0]
