"""Text charts over the layer axis, and the overview heatmap. Plain Rich Text: no plotting library.

Every chart's x axis is the row axis of the whole run (0 = emb .. L), fixed while rows arrive, with whole
numbers as ticks and a marker at the cursor's row. KL is drawn on a log scale (log10(1 + nats)): the
embedding row's 60-100 nats would otherwise flatten every other layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text

from layerscope.tui.grid_view import token_label

LABEL = 6  # y-axis label width, the axis line included
MIN_PLOT_HEIGHT = 8  # title, at least four plot lines, axis, ticks, a blank line
SHADES = " ░▒▓█"


@dataclass
class Series:
    name: str
    values: list[float]  # one per row so far
    style: str | None  # a Rich style: the theme's colour for this series (None where the theme has none)
    mark: str


def _scale(value: float, log: bool) -> float:
    return math.log10(1.0 + max(0.0, value)) if log else value


def _unscale(value: float, log: bool) -> float:
    return 10**value - 1.0 if log else value


def _ticks(n_rows: int, plot_width: int) -> list[int]:
    """Whole-number rows to label, spaced so their labels never touch."""
    last = max(1, n_rows - 1)
    room = len(str(last)) + 1
    step = next((s for s in (1, 2, 5, 10, 20, 50, 100) if s * (plot_width - 1) / last >= room), 100)
    return list(range(0, last + 1, step))


def layer_chart(title: str, series: list[Series], n_rows: int, cursor: int, width: int, height: int,
                log: bool) -> Text:
    """One plot of `height` lines: the title with a legend, the plot, the axis with ticks and the cursor (▲)."""
    plot_width, plot_height = width - LABEL, height - 3
    text = Text(title, "bold", no_wrap=True, overflow="crop")
    for one in series:
        text.append(f" {one.mark}{one.name}", one.style)
    text.truncate(width)
    text.append("\n")
    last = max(1, n_rows - 1)

    def column(row: int) -> int:
        return round(row * (plot_width - 1) / last)

    top = max((_scale(v, log) for one in series for v in one.values), default=0.0) or 1.0
    cells: list[list[tuple[str, str | None]]] = [[(" ", "")] * plot_width for _ in range(plot_height)]
    for line in range(plot_height):
        cells[line][column(cursor)] = ("│", "dim")
    for one in series:
        for row, value in enumerate(one.values):
            line = min(plot_height - 1, round((1 - _scale(value, log) / top) * (plot_height - 1)))  # < 0 at 0
            here = cells[line][column(row)][0]
            cells[line][column(row)] = ("◉" if here in "●○◆" and here != one.mark else one.mark, one.style)
    labels = {0: _unscale(top, log), plot_height // 2: _unscale(top / 2, log), plot_height - 1: 0.0}
    for line, row_cells in enumerate(cells):
        label = f"{labels[line]:.3g}" if line in labels else ""
        text.append(f"{label:>{LABEL - 1}}┤" if line in labels else " " * (LABEL - 1) + "│", "dim")
        for char, style in row_cells:
            text.append(char, style)
        text.append("\n")
    axis = ["─"] * plot_width
    numbers = [" "] * plot_width
    free_until = plot_width  # labels are placed from the right, so the last row's always shows
    for row in reversed(_ticks(n_rows, plot_width)):
        axis[column(row)] = "┬"
        label = str(row)
        start = min(column(row), plot_width - len(label))
        if start + len(label) < free_until or start + len(label) == plot_width:
            numbers[start:start + len(label)] = label
            free_until = start
    text.append(" " * (LABEL - 1) + "└" + "".join(axis[: column(cursor)]), "dim")
    text.append("▲", "bold")
    text.append("".join(axis[column(cursor) + 1:]) + "\n", "dim")
    text.append(" " * LABEL + "".join(numbers), "dim")
    return text


def first_final_bars(first_rows: list[int], tokens: list[str], n_rows: int, cursor_position: int, width: int,
                     height: int, style: str | None) -> Text:
    """Per position, the first row whose top-1 is the final one, as a bar: the positions around the cursor."""
    text = Text("top-1 = final from row (per position)"[:width] + "\n", "bold", no_wrap=True, overflow="crop")
    lines = height - 1
    start = max(0, min(cursor_position - lines // 2, len(first_rows) - lines))
    bar_width = max(1, width - 18)
    for position in range(start, min(len(first_rows), start + lines)):
        row = first_rows[position]
        marked = "bold reverse" if position == cursor_position else ""
        text.append(f"{position:>4} {token_label(tokens[position], 8):<8} ", marked)
        length = round(row / max(1, n_rows - 1) * bar_width)
        text.append("█" * length, style)
        text.append(f"{' ' * (bar_width - length)} {row:>3}\n", "dim")
    return text


def overview_text(values: list[list[float]], tokens: list[str], layers: list[str], cursor: tuple[int, int],
                  width: int, height: int, log: bool, style: str) -> Text:
    """A heatmap of rows (across) by positions (down), one character per cell, shaded ░▒▓█ in the theme's colour.
    Rows or positions that do not fit are binned (a cell shows its bin's mean); the cursor's cell is reversed."""
    label_width = 15
    n_rows, n_positions = len(values), len(values[0]) if values else 0
    text = Text(no_wrap=True, overflow="crop")
    if not n_rows or width <= label_width or height < 3:
        return text
    columns = min(n_rows, width - label_width)
    lines = min(n_positions, height - 2)
    row_bins = [range(c * n_rows // columns, max(c * n_rows // columns + 1, (c + 1) * n_rows // columns))
                for c in range(columns)]
    position_bins = [range(p * n_positions // lines, max(p * n_positions // lines + 1, (p + 1) * n_positions // lines))
                     for p in range(lines)]
    top = max((_scale(v, log) for row in values for v in row), default=0.0) or 1.0
    header = "".join("┬" if any(r % 10 == 0 for r in b) else "─" for b in row_bins)
    text.append(f"{'pos token':<{label_width - 1}}│", "bold")
    text.append(f"{header}\n", "dim")
    layer, position = cursor
    for bin_positions in position_bins:
        first = bin_positions.start
        label = f"{first:>4} {token_label(tokens[first], label_width - 6)}"
        text.append(f"{label:<{label_width - 1}}│", "bold reverse" if position in bin_positions else "")
        for bin_rows in row_bins:
            cell = [_scale(values[r][p], log) for r in bin_rows for p in bin_positions]
            shade = SHADES[min(len(SHADES) - 1, round(sum(cell) / len(cell) / top * (len(SHADES) - 1)))]
            on_cursor = layer in bin_rows and position in bin_positions
            text.append(shade if not on_cursor else "◆", "bold reverse" if on_cursor else style)
        text.append("\n")
    legend = (f"░▒▓█ {'log ' if log else ''}0-{_unscale(top, log):.3g} · "
              + (f"{n_positions} positions in {lines} lines · " if lines < n_positions else "")
              + f"rows {layers[0]}..{layers[-1]} in {columns} columns, ┬ every 10")
    text.append(f"{'':<{label_width - 1}}│{legend[: width - label_width]}", "dim")
    return text
