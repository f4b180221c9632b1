"""The explorer's grid methods, in one registry: each method is one declaration of everything the app asks of it.

A `GridMethod` says its name, whether the interventions apply, the phase its progress names, how a cell is
summarised in the grid (and compared for the `≠` mark), its detail text and charts at the cursor, what `y`
copies, and its CSV rows. A method that `m` cycles (and `Ctrl+R` runs) also gives its engine function, `rows`,
which yields the grid's rows one by one; the others are started by their own key (`C`: the causal trace; `Enter` on
a head: its attention pattern). Adding a method is one declaration, `register(...)`, plus its engine function: see
docs/contributing.md, "Adding a grid method to the explorer".
The head pattern is a grid too: rows are the prompt's positions as queries, columns the keys.

No torch at import: `rows` functions import the engine when they run, in the worker.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rich.text import Text

from layerscope.analyses.early_exit import stays_top1_from
from layerscope.tui.charts import Chart, LayerChart, PositionMarks, Series
from layerscope.tui.detail_text import flow, top_lines
from layerscope.tui.export import cell_clipboard, raw, trace_clipboard
from layerscope.tui.grid_view import prob_glyph, token_label

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from textual.theme import Theme

    from layerscope.analyses.causal_trace import CausalTrace, TraceCell
    from layerscope.analyses.grid import DecodeGrid, GridCell
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.analyses.jacobian_lens import FittedLens
    from layerscope.interventions import Intervention
    from layerscope.models.loading import LoadedModel
    from layerscope.progress import ProgressFn
    from layerscope.records import Records
    from layerscope.tui.compute import GeneratedColumn, LayerRow
    from layerscope.tui.state import Results

MARKS_WINDOW = 64  # positions each side of the cursor in the "stays top-1 from" chart: more than a screen's lines


@dataclass(frozen=True)
class CellSummary:
    """What a grid cell shows: a value in 0..1 for its glyph and shade, its text, and what the `≠` mark compares
    between the baseline and the intervened cell (None: never marked)."""

    shade: float
    text: str
    identity: object = None


class Grid(Protocol):
    """A method's result as the grid shows it: `cells[row][position]`, rows labelled by `layers`."""

    tokens: list[str]
    layers: list[str]

    @property
    def cells(self) -> Sequence[Sequence[Any]]: ...

    def records(self) -> Records: ...

    def plot(self) -> Figure: ...


RowsFunction = Callable[
    [
        "LoadedModel",
        "torch.Tensor",
        "Sequence[Intervention]",
        int,
        Callable[[], bool],
        "ProgressFn",
        "FittedLens | None",
    ],
    "Iterator[LayerRow]",
]
"""(lm, input_ids, interventions, top_k, cancelled, progress, the loaded lens) -> the grid's rows as computed."""

ColumnsFunction = Callable[
    [
        "LoadedModel",
        "torch.Tensor",
        "Sequence[Intervention]",
        int,
        int,
        Callable[[], bool],
        "FittedLens | None",
    ],
    "Iterator[GeneratedColumn]",
]
"""(lm, input_ids, interventions, max_new_tokens, top_k, cancelled, the loaded lens) -> the generated positions, one by
one, after the rows (`g`: the grid grows over the continuation)."""


@dataclass(frozen=True)
class Cursor:
    """Where the charts and the detail look: the cursor's row and position, and the whole run's row labels."""

    row: int
    position: int
    rows: list[str]


@dataclass(frozen=True)
class GridMethod:
    name: str  # as sessions and the status line spell it: 'logit_lens'
    intervenable: bool  # whether a run applies the interventions (else the intervened grid is never made)
    phase: str  # what the progress names while its rows come: 'lens rows'
    summary: Callable[[Any, int], CellSummary]  # (cell, width) -> what the grid shows
    detail: Callable[[Results, Cursor, int], Text]  # the side panel's text at the cursor, for a width
    charts: Callable[[Results, Grid, Cursor, Theme], list[Chart]]  # (results, the grid shown, cursor, theme)
    clipboard: Callable[[Results, Cursor], str]  # `y`: the cell under the cursor as plain text, tokens raw
    rows: RowsFunction | None = None  # the engine, for a method that `m` cycles and Ctrl+R runs
    lens: str = ""  # the `kind` of lens it reads ('tuned', 'jacobian'): runs only with one loaded; '': none
    columns: ColumnsFunction | None = None  # the engine of its generated positions, for a grid that grows (`g`)

    def records(self, grid: Grid) -> Records:
        """The export (`x`): the long format of the grid's own `records`."""
        return grid.records()


REGISTRY: dict[str, GridMethod] = {}


def register(method: GridMethod) -> GridMethod:
    REGISTRY[method.name] = method
    return method


def cycled() -> list[str]:
    """The methods `m` cycles through, in registration order."""
    return [name for name, method in REGISTRY.items() if method.rows is not None]


# the lenses and Patchscope: rows of top-k tokens ------------------------------------------------------------
def lens_summary(cell: GridCell, width: int) -> CellSummary:
    top = cell.top[0]
    return CellSummary(top.prob, token_label(top.token, width), top.id)


def answer_text(baseline: DecodeGrid, intervened: DecodeGrid | None, n_rows: int, width: int) -> Text:
    """The first question answered, pinned above the cell: what the model predicts after the prompt and the row
    from which the lens keeps it top-1. Shown once every row has arrived; laid out for `width` columns."""
    text = Text()
    for name, grid in (("answer", baseline), ("int.  ", intervened)):
        if grid is None or len(grid.cells) < n_rows or not grid.cells:
            continue
        last = (grid.prompt_length or len(grid.tokens)) - 1  # the prompt's last token, before any generated
        top = grid.top1(len(grid.cells) - 1, last)
        stays = grid.layers[stays_top1_from(grid, [last])[0]]
        flow(
            text,
            [
                (name, "bold"),
                (token_label(top.token, 14), "bold reverse"),
                (f"{top.prob:.0%}", ""),
                (f"(stays top-1 from {stays})", ""),
            ],
            width,
        )
    return text


def lens_detail(results: Results, cursor: Cursor, width: int) -> Text:
    """The answer (see `answer_text`), then the cell under the cursor: entropy and KL to final of baseline and
    intervened, their KL, then each one's top-k with probabilities. Laid out for `width` columns: the numbers
    come first, so a short panel shows them without scrolling."""
    baseline, intervened, kl_base_int = results.baseline, results.intervened, results.kl_base_int
    layer, position = cursor.row, cursor.position
    if baseline is None or layer >= len(baseline.cells) or position >= len(baseline.tokens):
        return Text("No results yet: type a prompt and press Ctrl+R.")
    text = answer_text(baseline, intervened, len(cursor.rows), width)
    token = token_label(baseline.tokens[position], 12)
    if intervened is not None and intervened.tokens[position] != baseline.tokens[position]:  # after a divergence
        token += f" / int. {token_label(intervened.tokens[position], 12)}"
    generated = " (generated)" if baseline.generated(position) else ""
    text.append(f"{baseline.layers[layer]} @ {position} {token}{generated}\n", "bold")
    grids = [("base", baseline)]
    if intervened is not None and layer < len(intervened.cells):
        grids.append(("int.", intervened))
    for name, grid in grids:
        cell = grid.cells[layer][position]
        flow(
            text,
            [(f"{name} H {cell.entropy_bits:.2f} bits", "bold"), (f"KL→final {cell.kl_to_final:.3f}", "bold")],
            width,
        )
    if kl_base_int is not None and layer < len(kl_base_int):
        text.append(f"KL(base‖int) {kl_base_int[layer][position]:.4f} nats\n", "bold")
    beside = len(grids) == 2 and width >= 32
    columns = [
        top_lines(
            name,
            grid.cells[layer][position],
            baseline.top1(layer, position).id,
            width // 2 if beside else width,
            glyph=not beside,
        )
        for name, grid in grids
    ]
    if not beside:  # one list under the other
        columns = [[line for column in columns for line in column]]
    for lines in zip(*columns):
        text.append("".join(lines).rstrip() + "\n")
    return text


def lens_charts(results: Results, shown: Grid, cursor: Cursor, theme: Theme) -> list[Chart]:
    """At the cursor's position: KL to final (log), KL(base‖int) with interventions, the row from which each
    position's final top-1 stays top-1, entropy (bits); baseline and intervened on one plot each."""
    base, intervened, position = results.baseline, results.intervened, cursor.position
    if base is None or not base.cells or position >= len(base.tokens):
        return []
    colours = {"base": theme.primary, "int.": theme.accent or theme.warning or theme.secondary}
    grids = [("base", base)] + ([("int.", intervened)] if intervened is not None and intervened.cells else [])
    marks = {"base": "●", "int.": "○"}

    def lines(field: str) -> list[Series]:
        return [Series(name, grid.column(position, field), colours[name], marks[name]) for name, grid in grids]

    shown_grid: DecodeGrid = shown  # type: ignore[assignment]  # a lens method's grid is a DecodeGrid
    # the positions the marks chart can show (a plot line each) around the cursor: the chart is redrawn as every
    # row arrives, and reading all of a long prompt's positions took a sixth of the redraw
    window = range(max(0, position - MARKS_WINDOW), min(len(shown_grid.tokens), position + MARKS_WINDOW + 1))
    charts: list[Chart] = [
        LayerChart(f"KL→final @{position} (log)", lines("kl_to_final"), cursor.rows, cursor.row, log=True),
        PositionMarks(
            "stays top-1 from (per position)",
            [f"{p} {token_label(shown_grid.tokens[p], 6)}" for p in window],
            stays_top1_from(shown_grid, window),
            cursor.rows,
            position - window.start,
            colours["int." if shown is intervened else "base"],
        ),
        LayerChart(f"entropy @{position} (bits)", lines("entropy_bits"), cursor.rows, cursor.row, log=False),
    ]
    if results.kl_base_int:
        kl = [row[position] for row in results.kl_base_int]
        charts.insert(
            1,
            LayerChart(
                f"KL(base‖int) @{position} (log)",
                [Series("KL", kl, theme.secondary or theme.primary, "◆")],
                cursor.rows,
                cursor.row,
                log=True,
            ),
        )
    return charts


def lens_clipboard(results: Results, cursor: Cursor) -> str:
    grids = [
        (name, grid)
        for name, grid in (("baseline", results.baseline), ("intervened", results.intervened))
        if grid is not None and cursor.row < len(grid.cells)
    ]
    return cell_clipboard(grids, results.kl_base_int, cursor.row, cursor.position)


def lens_method(
    name: str,
    phase: str,
    rows: RowsFunction,
    intervenable: bool = True,
    lens: str = "",
    columns: ColumnsFunction | None = None,
) -> GridMethod:
    """A method whose grid is a DecodeGrid of top-k tokens: it shows and exports like the logit lens."""
    return GridMethod(
        name, intervenable, phase, lens_summary, lens_detail, lens_charts, lens_clipboard, rows, lens, columns
    )


def _logit_lens_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    top_k: int,
    cancelled: Callable[[], bool],
    progress: ProgressFn,
    lens: FittedLens | None,
) -> Iterator[LayerRow]:
    from layerscope.tui.compute import lens_rows

    return lens_rows(lm, input_ids, interventions, top_k, cancelled)


def _fitted_lens_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    top_k: int,
    cancelled: Callable[[], bool],
    progress: ProgressFn,
    lens: FittedLens | None,
) -> Iterator[LayerRow]:
    """The tuned or the Jacobian lens, whichever is loaded (the app runs each only with its own kind loaded)."""
    from layerscope.tui.compute import lens_rows

    assert lens is not None, "the app runs a lens method only with its lens loaded (GridMethod.lens)"
    return lens_rows(lm, input_ids, interventions, top_k, cancelled, lens)


def _logit_lens_columns(*arguments: Any) -> Iterator[GeneratedColumn]:
    """The logit lens's generated positions, a lens loaded or not (the last argument): imported in the
    worker, as every engine function here (it pulls in torch)."""
    from layerscope.tui.compute import lens_columns

    *untranslated, _lens = arguments
    return lens_columns(*untranslated)


def _fitted_lens_columns(*arguments: Any) -> Iterator[GeneratedColumn]:
    """The tuned or the Jacobian lens's generated positions: each state through the loaded lens first."""
    from layerscope.tui.compute import lens_columns

    return lens_columns(*arguments)


def _patchscope_rows(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    top_k: int,
    cancelled: Callable[[], bool],
    progress: ProgressFn,
    lens: FittedLens | None,
) -> Iterator[LayerRow]:
    from layerscope.tui.compute import patchscope_rows

    return patchscope_rows(lm, input_ids, top_k, cancelled, progress)


register(lens_method("logit_lens", "lens rows", _logit_lens_rows, columns=_logit_lens_columns))
register(lens_method("tuned_lens", "tuned lens rows", _fitted_lens_rows, lens="tuned", columns=_fitted_lens_columns))
register(
    lens_method("jacobian_lens", "Jacobian lens rows", _fitted_lens_rows, lens="jacobian", columns=_fitted_lens_columns)
)
# Patchscope reads each state in a pass of its own target prompt, not from the generating pass: no columns
register(lens_method("patchscope", "patchscope rows", _patchscope_rows, intervenable=False))


# the causal trace: per state, the answer's probability restored ---------------------------------------------
def trace_summary(cell: TraceCell, width: int) -> CellSummary:
    return CellSummary(cell.value, f"{cell.indirect_effect:+.3f}"[:width])


def trace_detail(results: Results, cursor: Cursor, width: int) -> Text:
    """The trace's question and baselines, then the cell under the cursor: the answer's probability with that
    one state restored and its indirect effect (that minus the corrupted run's)."""
    trace: CausalTrace = results.baseline  # the trace's results hold the trace
    layer, position = cursor.row, cursor.position
    start, end = (trace.subject_positions + [0, 0])[:2]
    text = Text("causal trace · answer ", "bold")
    text.append(token_label(trace.answer, 14), "bold reverse")
    text.append("\n")
    flow(text, [(f"{trace.corrupt} on {trace.subject!r}", ""), (f"(pos {start}..{end - 1})", "")], width)
    clean, corrupted = trace.clean["p_answer"], trace.corrupted["p_answer"]
    flow(text, [(f"clean p {clean:.4f}", ""), (f"· corr. p {corrupted:.4f}", "")], width)
    if layer >= len(trace.cells) or position >= len(trace.tokens):
        return text
    cell = trace.cells[layer][position]
    text.append(f"{trace.layers[layer]} @ {position} {token_label(trace.tokens[position], 12)} restored\n", "bold")
    text.append(f" p_answer {cell.value:.4f} {prob_glyph(cell.value)}\n")
    text.append(f" indirect effect {cell.indirect_effect:+.4f}\n")
    if clean - corrupted > 1e-9:
        text.append(f"  = {cell.indirect_effect / (clean - corrupted):.0%} of clean − corr.\n")
    peak_row, peak = trace.peak(position)
    text.append(f" peak @{position}: row {peak_row} {peak:+.4f}\n")
    return text


def trace_charts(results: Results, shown: Grid, cursor: Cursor, theme: Theme) -> list[Chart]:
    """The causal trace at the cursor's position: per row, the indirect effect and the restored p_answer."""
    trace: CausalTrace = results.baseline
    series = [
        Series("IE", trace.column(cursor.position), theme.primary, "●"),
        Series("p", trace.column(cursor.position, "value"), theme.accent or theme.secondary, "○"),
    ]
    return [LayerChart(f"indirect effect @{cursor.position}", series, trace.layers, cursor.row, log=False)]


def trace_copy(results: Results, cursor: Cursor) -> str:
    return trace_clipboard(results.baseline, cursor.row, cursor.position)


register(GridMethod("causal_trace", False, "causal trace cells", trace_summary, trace_detail, trace_charts, trace_copy))


# a head's attention pattern: queries down (the prompt's positions), keys across ----------------------------------
@dataclass
class PatternCell:
    weight: float  # the attention of the row's query on the column's key (0 for a key after the query)


@dataclass
class PatternGrid:
    """One head's attention pattern as the grid shows it: rows are the queries (the prompt's positions), columns
    the keys (`layers` are their labels), `cells[key][query]`."""

    pattern: AttentionPattern
    head: tuple[int, int]
    tokens: list[str]
    layers: list[str]
    cells: list[list[PatternCell]]

    @classmethod
    def of(cls, pattern: AttentionPattern, head: tuple[int, int]) -> PatternGrid:
        rows = pattern.weights[head]
        labels = [
            f"{key} {token_label(token, CELL_LABEL - len(str(key)) - 1)}" for key, token in enumerate(pattern.tokens)
        ]
        cells = [[PatternCell(rows[query][key]) for query in range(len(rows))] for key in range(len(rows))]
        return cls(pattern, head, pattern.tokens, labels, cells)

    def records(self) -> Records:
        block, head = self.head
        return self.pattern.records().where(block=block, head=head)

    def plot(self) -> Figure:
        return self.pattern.plot([self.head])


CELL_LABEL = 8  # a column label's width in the grid's header (its cells are 10 wide)


def pattern_summary(cell: PatternCell, width: int) -> CellSummary:
    """The weight, to two decimals: the `≠` mark shows where the interventions change it by 0.01 or more."""
    text = f"{cell.weight:.2f}"[:width]
    return CellSummary(cell.weight, text, text)


def pattern_detail(results: Results, cursor: Cursor, width: int) -> Text:
    """The head and the query under the cursor, then the keys it attends to most: baseline and intervened."""
    baseline: PatternGrid = results.baseline
    block, head = baseline.head
    query, key = cursor.position, cursor.row
    text = Text(f"head {block}.{head} pattern\n", "bold")
    text.append("Space masks it · 3: Heads\n")
    if query >= len(baseline.tokens):
        return text
    text.append(f"query {query} {token_label(baseline.tokens[query], 12)}\n", "bold")
    grids = [("base", baseline)] + ([("int.", results.intervened)] if results.intervened is not None else [])
    for name, grid in grids:
        text.append(f"{name} key {key}: {grid.cells[key][query].weight:.3f} · top keys\n", "bold")
        for strongest, weight in grid.pattern.strongest(grid.head, query, 3):
            text.append(
                f" {weight:5.1%} {prob_glyph(weight)} {strongest:>3} {token_label(grid.tokens[strongest], 14)}\n"
            )
    return text


def pattern_charts(results: Results, shown: Grid, cursor: Cursor, theme: Theme) -> list[Chart]:
    """The query's attention over the keys, baseline and intervened on one plot."""
    query = cursor.position
    grids: list[tuple[str, PatternGrid, str | None, str]] = [("base", results.baseline, theme.primary, "●")]
    if results.intervened is not None:
        grids.append(("int.", results.intervened, theme.accent or theme.warning or theme.secondary, "○"))
    series = [
        Series(name, [row[query].weight for row in grid.cells], colour, mark) for name, grid, colour, mark in grids
    ]
    keys = [str(key) for key in range(len(results.baseline.tokens))]
    block, head = results.baseline.head
    return [LayerChart(f"head {block}.{head}: query {query} over keys", series, keys, cursor.row, log=False)]


def pattern_clipboard(results: Results, cursor: Cursor) -> str:
    """The weight of the query on the key under the cursor, baseline and intervened, the tokens raw."""
    baseline: PatternGrid = results.baseline
    (block, head), key, query = baseline.head, cursor.row, cursor.position
    lines = [
        f"head {block}.{head} · query {query} {raw(baseline.tokens[query])} · key {key} {raw(baseline.tokens[key])}"
    ]
    for name, grid in (("baseline", baseline), ("intervened", results.intervened)):
        if grid is not None:
            lines.append(f"{name}: weight {grid.cells[key][query].weight:.6f}")
    return "\n".join(lines)


register(
    GridMethod(
        "head_pattern", True, "attention pattern", pattern_summary, pattern_detail, pattern_charts, pattern_clipboard
    )
)
