"""Results as HTML tables in Jupyter (`_repr_html_`): one shaded table per result, every text escaped.

A cell's shade is its number: a decode grid's top-1 probability as the opacity of one colour (0 clear, 1 full), a
causal trace's, head scores' and a sweep's values as a fraction of the table's (or column's) largest magnitude,
warm for positive and cool for negative. A long prompt shows its first and last positions, with a note that
says how many are hidden and how to see them all (`max_positions=None`, or `.to_pandas()`).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.head_scores import HeadScores
    from layerscope.analyses.sweep_result import SweepResult

MAX_POSITIONS = 40
"""Prompt positions a table shows by default: the first and last halves of this many."""
WARM, COOL = (214, 96, 77), (67, 147, 195)
LABEL = 12  # characters of a token shown in a header or cell (the whole token is in its tooltip)

_SPACES = str.maketrans({" ": "·", "\n": "⏎", "\t": "⇥"})


@dataclass(frozen=True)
class Cell:
    """What one table cell shows, its shade in [-1, 1] (the sign picks the colour), and its tooltip."""

    text: str
    shade: float | None = None
    title: str = ""


def token_text(token: str, width: int = LABEL) -> str:
    """A token readable in a cell: spaces as '·', newlines and tabs as '⏎' and '⇥', other unprintable characters
    as escapes (\\x1b), cut to `width` with '…'."""
    text = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in token.translate(_SPACES)
    )
    return text if len(text) <= width else text[: width - 1] + "…"


def shown_positions(count: int, max_positions: int | None) -> list[int | None]:
    """The positions a table shows, None where the hidden ones would be: all of them up to `max_positions`,
    else its first and last halves."""
    if max_positions is None or count <= max_positions:
        return list(range(count))
    head = (max_positions + 1) // 2
    return [*range(head), None, *range(count - (max_positions - head), count)]


def background(shade: float | None) -> str:
    if shade is None:
        return ""
    red, green, blue = WARM if shade >= 0 else COOL
    return f"background:rgba({red},{green},{blue},{min(1.0, abs(shade)):.3f})"


def fraction_of_largest(values: Sequence[float | None]) -> list[float | None]:
    """Each value over the largest magnitude among them (0 where all are 0; None stays None)."""
    largest = max((abs(v) for v in values if v is not None), default=0.0)
    return [None if v is None else v / largest if largest else 0.0 for v in values]


def shaded_table(
    title: str, columns: Sequence[Cell], rows: Sequence[tuple[str, Sequence[Cell]]], notes: Sequence[str] = ()
) -> str:
    """A caption, a header row and labelled rows of shaded cells, then the notes; every text escaped."""

    def cell(tag: str, item: Cell) -> str:
        attributes = "".join(
            f' {name}="{html.escape(value)}"'
            for name, value in (("title", item.title), ("style", background(item.shade)))
            if value
        )
        return f"<{tag}{attributes}>{html.escape(item.text)}</{tag}>"

    head = "<tr><th></th>" + "".join(cell("th", column) for column in columns) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(cell("td", item) for item in items) + "</tr>"
        for label, items in rows
    )
    caption = f"<caption>{html.escape(title)}</caption>"
    lines = "".join(f"<p>{html.escape(note)}</p>" for note in notes)
    return (
        f'<div class="layerscope"><table style="font-family:monospace;font-size:11px;border-collapse:collapse">'
        f"{caption}{head}{body}</table>{lines}</div>"
    )


GAP = Cell("…", title="hidden positions")


def _position_columns(tokens: Sequence[str], shown: Sequence[int | None]) -> list[Cell]:
    return [GAP if p is None else Cell(f"{p} {token_text(tokens[p])}", title=repr(tokens[p])) for p in shown]


def _hidden_note(tokens: Sequence[str], shown: Sequence[int | None], call: str) -> list[str]:
    hidden = len(tokens) - sum(p is not None for p in shown)
    if not hidden:
        return []
    return [
        f"{hidden} of {len(tokens)} positions hidden (between the first and the last shown); to see them "
        f"all: IPython.display.HTML({call}(result, max_positions=None)), or result.to_pandas()."
    ]


def grid_html(grid: DecodeGrid, max_positions: int | None = MAX_POSITIONS) -> str:
    """A decode grid: rows by layer, columns by position; each cell the top-1 token and its probability, shaded
    by that probability."""
    shown = shown_positions(len(grid.tokens), max_positions)

    def cell(row: int, position: int | None) -> Cell:
        if position is None:
            return GAP
        top, stats = grid.top1(row, position), grid.cells[row][position]
        return Cell(
            f"{token_text(top.token)} {top.prob:.2f}",
            top.prob,
            f"{top.token!r} p={top.prob:.4f}, entropy {stats.entropy_bits:.3f} bits, "
            f"KL to final {stats.kl_to_final:.4f} nats",
        )

    rows = [(label, [cell(r, p) for p in shown]) for r, label in enumerate(grid.layers)]
    return shaded_table(
        f"{grid.method} · {grid.model} · top-1 token and probability",
        _position_columns(grid.tokens, shown),
        rows,
        _hidden_note(grid.tokens, shown, "layerscope.notebook.grid_html"),
    )


def trace_html(trace: CausalTrace, max_positions: int | None = MAX_POSITIONS) -> str:
    """A causal trace: rows by layer, columns by position (* marks the subject); each cell the indirect effect,
    shaded by its share of the largest magnitude."""
    shown = shown_positions(len(trace.tokens), max_positions)
    subject = range(*trace.subject_positions) if trace.subject_positions else range(0)
    shades = fraction_of_largest([c.indirect_effect for row in trace.cells for c in row])
    width = len(trace.tokens)

    def cell(row: int, position: int | None) -> Cell:
        if position is None:
            return GAP
        value = trace.cells[row][position]
        return Cell(
            f"{value.indirect_effect:.3f}", shades[row * width + position], f"{trace.metric} restored {value.value:.4f}"
        )

    columns = [
        GAP if p is None else Cell(("*" if p in subject else "") + column.text, title=column.title)
        for p, column in zip(shown, _position_columns(trace.tokens, shown))
    ]
    rows = [(label, [cell(r, p) for p in shown]) for r, label in enumerate(trace.layers)]
    title = (
        f"causal trace of {trace.answer!r} · {trace.site} · indirect effect ({trace.metric} clean "
        f"{trace.clean['value']:.4f}, corrupted {trace.corrupted['value']:.4f})"
    )
    return shaded_table(title, columns, rows, _hidden_note(trace.tokens, shown, "layerscope.notebook.trace_html"))


def head_scores_html(scores: HeadScores) -> str:
    """Head scores: rows by layer, columns by query head; each cell the score, shaded by its share of the
    largest."""
    matrix = scores.matrix().tolist()
    shades = fraction_of_largest([value for row in matrix for value in row])
    rows = [
        (
            str(layer),
            [
                Cell(f"{value:.2f}", shades[layer * scores.n_heads + head], f"head {layer}.{head}")
                for head, value in enumerate(row)
            ],
        )
        for layer, row in enumerate(matrix)
    ]
    title = f"{scores.kind} scores · {scores.model} · share above 0.1: {scores.share_above():.1%}"
    return shaded_table(title, [Cell(str(head)) for head in range(scores.n_heads)], rows)


def sweep_html(result: SweepResult) -> str:
    """A sweep's set averages: rows by layer (grid row for swap-token), one column per metric, each shaded by its
    share of the column's largest magnitude; the per-prompt points are in `to_pandas()`."""
    records = result.records()
    averages = [line for line in records.lines if line[records.columns.index("prompt_index")] is None]
    metrics = [
        name
        for name in records.columns
        if name not in ("intervention", "layer", "row", "factor", "prompt_index", "continuation", "word_tokens")
    ]
    where = records.columns.index("row" if "row" in records.columns else "layer")
    factor = records.columns.index("factor") if "factor" in records.columns else None  # steer's rows: layer ×factor
    columns = {name: [row[records.columns.index(name)] for row in averages] for name in metrics}
    shades = {name: fraction_of_largest(values) for name, values in columns.items()}
    rows = [
        (
            str(row[where]) if factor is None else f"{row[where]} ×{row[factor]:g}",
            [Cell("–" if columns[name][i] is None else f"{columns[name][i]:.4f}", shades[name][i]) for name in metrics],
        )
        for i, row in enumerate(averages)
    ]
    return shaded_table(
        f"{result.intervention} sweep · mean over prompts",
        [Cell(name) for name in metrics],
        rows,
        ["Per-prompt rows: result.to_pandas()."],
    )
