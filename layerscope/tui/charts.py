"""Charts over the layer axis, drawn with plotext, and the overview heatmap.

A chart is first data (`LayerChart`, `PositionMarks`: the series with the result's own numbers, the whole run's
row axis, the cursor's row), then a drawing. The data is what the tests check; `render` draws it with plotext.

Why plotext 6 through its string output, not `textual-plotext`: textual-plotext 1.0 pins plotext below 6 and
is one widget per plot that redraws itself on every refresh. The side panel is one Static that the app redraws
at most five times a second, and on resize, however fast rows arrive (`LayerscopeApp.flush_charts`): plotext's
`figure.build().string()` gives the ANSI text of a plot, which `rich.text.Text.from_ansi` turns into the Rich
Text the Static shows. One dependency, no widget per chart, and the charts stack with their titles as text.

Every chart's x axis is the row axis of the whole run (`emb`, then the blocks 0..L-1, labelled as the grid's
header labels them), fixed while rows arrive, with a dotted line at the cursor's row (whose label is always one of
the ticks). KL is drawn on a log scale, log10(1 + nats): the embedding row's 60-100 nats would otherwise
flatten every other layer, and the last row's KL to final is 0, which a plain log axis cannot show. Colours
are the theme's, read with Textual's Color, so ANSI themes (`ansi_blue`) give ANSI colour codes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.text import Text
from textual.color import Color, ColorParseError

from layerscope.tui.grid_view import GENERATED_MARK, token_label

if TYPE_CHECKING:
    import plotext

MIN_PLOT_HEIGHT = 8  # title, frame, at least four plot lines, ticks
SHADES = " ░▒▓█"
PlotextColour = str | int | tuple[int, int, int]


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float]  # one per row so far: the result's own numbers
    colour: str | None  # a theme colour ('#0178d4', 'ansi_blue'); None: the terminal's default
    marker: str


@dataclass(frozen=True)
class LayerChart:
    """Series over the whole run's rows: `rows` are the axis labels (fixed while rows arrive), `cursor` the
    index of the cursor's row; `log`: y is log10(1 + value)."""

    title: str
    series: list[Series]
    rows: list[str]
    cursor: int
    log: bool

    def render(self, width: int, height: int) -> Text:

        figure = _figure(width, height - 1)
        scaled = [_scale(value, self.log) for one in self.series for value in one.values]
        low = min([0.0, *scaled])
        top = max(scaled, default=0.0)
        top = top if top > low else low + 1.0  # a flat zero series still gets an axis
        steps = max(1, height - 5)  # the cursor's row, first (points are drawn over it): a point per plot line,
        # since plotext's own lines paint a background of their own
        figure.draw(
            figure.signal(
                [self.cursor] * (steps + 1), [low + (top - low) * i / steps for i in range(steps + 1)], marker="┊"
            )
        )
        for one in self.series:
            if one.values:
                figure.draw(
                    figure.signal(
                        list(range(len(one.values))), [_scale(v, self.log) for v in one.values], marker=one.marker
                    )
                )
        ticks = _value_ticks(low, top, self.log)
        figure.ruler("y").lim(low, top)
        figure.ruler("y").ticks(*ticks)
        plot_width = width - 2 - max(map(len, ticks[1]))
        figure.ruler("x").lim(0, max(1, len(self.rows) - 1))
        figure.ruler("x").ticks(*row_ticks(self.rows, self.cursor, plot_width))
        styles = {"┊": "dim", **{one.marker: _rich_colour(one.colour) for one in reversed(self.series)}}
        return _titled(self.title, self.series, width, figure.build().string(), styles)


@dataclass(frozen=True)
class PositionMarks:
    """Per position (`labels`, down), a row of the run (`values`, indices into `rows`, across) as a mark; the
    positions around `cursor` that fit, a plot line each."""

    title: str
    labels: list[str]
    values: list[int]
    rows: list[str]
    cursor: int
    colour: str | None

    def shown(self, lines: int) -> range:
        """The positions drawn in `lines` plot lines: a window around the cursor."""
        start = max(0, min(self.cursor - lines // 2, len(self.values) - lines))
        return range(start, min(len(self.values), start + lines))

    def render(self, width: int, height: int) -> Text:

        shown = self.shown(max(1, height - 4))  # a plot line per position: fewer positions, a shorter plot
        figure = _figure(width, len(shown) + 3)
        labels = [("▶" if p == self.cursor else " ") + self.labels[p] for p in shown]
        lines = list(range(len(shown)))[::-1]  # the first position on top
        figure.draw(figure.signal([self.values[p] for p in shown], lines, marker="◆"))
        figure.ruler("y").lim(-0.5, len(shown) - 0.5)
        figure.ruler("y").ticks(lines, labels)
        plot_width = width - 2 - max(map(len, labels), default=1)
        figure.ruler("x").lim(0, max(1, len(self.rows) - 1))
        figure.ruler("x").ticks(*row_ticks(self.rows, self.values[self.cursor], plot_width))
        return _titled(self.title, [], width, figure.build().string(), {"◆": _rich_colour(self.colour)})


Chart = LayerChart | PositionMarks


def stack(charts: list[Chart], width: int, height: int) -> Text:
    """As many charts as fit at their minimum height, in order, sharing the height."""
    if width < 20 or not charts:
        return Text()
    fit = max(1, min(len(charts), height // MIN_PLOT_HEIGHT))
    return Text("\n", no_wrap=True).join(
        chart.render(width, max(MIN_PLOT_HEIGHT, height // fit) - 1) for chart in charts[:fit]
    )


def row_ticks(rows: list[str], cursor: int, plot_width: int) -> tuple[list[int], list[str]]:
    """Rows to label on an axis of `plot_width` columns: `emb`, every 1/2/5/10.. blocks, the last row and the
    cursor's row, each labelled as the grid labels it, spaced so no two labels touch."""
    last = max(1, len(rows) - 1)
    room = max(map(len, rows), default=1) + 1
    step = next((s for s in (1, 2, 5, 10, 20, 50, 100) if s * (plot_width - 1) / last >= room), 200)
    wanted = [cursor, last, 0] + [row for row in range(1, last) if rows[row].isdigit() and int(rows[row]) % step == 0]
    chosen: list[int] = []
    for row in wanted:
        if row < len(rows) and all(abs(row - other) * (plot_width - 1) / last >= room for other in chosen):
            chosen.append(row)
    chosen.sort()
    return chosen, [rows[row] for row in chosen]


def _value_ticks(low: float, top: float, log: bool) -> tuple[list[float], list[str]]:
    """Three y ticks (bottom, middle, top), labelled in the data's units (nats, not log10(1 + nats))."""
    positions = [low, (low + top) / 2, top]
    return positions, [f"{_unscale(p, log):.3g}" for p in positions]


def _scale(value: float, log: bool) -> float:
    return math.log10(1.0 + max(0.0, value)) if log else value


def _unscale(value: float, log: bool) -> float:
    return 10**value - 1.0 if log else value


def plotext_colour(colour: str | None) -> PlotextColour:
    """A theme colour as plotext takes it: an ANSI code for an ANSI colour ('ansi_blue' -> 4), else (r, g, b);
    'default' where the theme has none."""
    if not colour:
        return "default"
    try:
        parsed = Color.parse(colour)
    except ColorParseError:
        return "default"
    if parsed.ansi is not None:
        return "default" if parsed.ansi < 0 else parsed.ansi
    return parsed.rgb


def _figure(width: int, height: int) -> plotext.figure:
    """plotext's one figure, cleared, without colours of its own and sized: charts are drawn on the UI thread
    only, one at a time. plotext is imported here, not at start: its import takes a fifth of a second, which the
    first frame does not wait for."""
    import plotext

    figure = plotext.figure
    figure.clear()
    figure.theme("colorless")
    figure.plot_size(width, max(4, height))
    return figure


def _titled(title: str, series: list[Series], width: int, plot: str, styles: dict[str, str]) -> Text:
    """The title line with a legend in the series' colours, above the plot, whose marks get the styles of
    `styles` (glyph -> Rich style). plotext draws colourless: styling the marks here costs a tenth of parsing
    plotext's ANSI colours back with `Text.from_ansi`, and a chart is redrawn as every row arrives."""
    text = Text(no_wrap=True, overflow="crop")
    text.append(title, "bold")
    for one in series:
        text.append(f" {one.marker}{one.name}", _rich_colour(one.colour))
    text.truncate(width)
    text.append("\n")
    start = len(text.plain)
    text.append(_RESET.sub("", plot))
    for match in re.finditer("|".join(map(re.escape, styles)), text.plain[start:]) if styles else ():
        if styles[match[0]]:
            text.stylize(styles[match[0]], start + match.start(), start + match.end())
    return text


_RESET = re.compile("\x1b\\[[0-9;]*m")  # plotext's colourless output still resets the style on each line


def _rich_colour(colour: str | None) -> str:
    """A Rich style of a theme colour ('color(4)' for 'ansi_blue': Rich has no style named 'ansi_blue')."""
    code = plotext_colour(colour)
    if code == "default":
        return ""
    return f"color({code})" if isinstance(code, int) else "rgb({},{},{})".format(*code)


def overview_text(
    values: list[list[float]],
    tokens: list[str],
    layers: list[str],
    cursor: tuple[int, int],
    width: int,
    height: int,
    log: bool,
    style: str,
    prompt_length: int | None = None,
) -> Text:
    """A heatmap of rows (across) by positions (down), one character per cell, shaded ░▒▓█ in the theme's colour.
    Rows or positions that do not fit are binned (a cell shows its bin's mean); a line is labelled with its first
    position, or with the cursor's where the cursor is in it; the cursor's cell is reversed.
    Positions from `prompt_length` on are generated tokens, marked as in the grid."""
    label_width = 15
    n_rows, n_positions = len(values), len(values[0]) if values else 0
    text = Text(no_wrap=True, overflow="crop")
    if not n_rows or width <= label_width or height < 3:
        return text
    columns = min(n_rows, width - label_width)
    lines = min(n_positions, height - 2)
    row_bins = [
        range(c * n_rows // columns, max(c * n_rows // columns + 1, (c + 1) * n_rows // columns))
        for c in range(columns)
    ]
    position_bins = [
        range(p * n_positions // lines, max(p * n_positions // lines + 1, (p + 1) * n_positions // lines))
        for p in range(lines)
    ]
    top = max((_scale(v, log) for row in values for v in row), default=0.0) or 1.0
    header = "".join("┬" if any(layers[r].isdigit() and int(layers[r]) % 10 == 0 for r in b) else "─" for b in row_bins)
    text.append(f"{'pos token':<{label_width - 1}}│", "bold")
    text.append(f"{header}\n", "dim")
    layer, position = cursor
    for bin_positions in position_bins:
        named = position if position in bin_positions else bin_positions.start  # the cursor's line names it
        mark = GENERATED_MARK if prompt_length is not None and named >= prompt_length else " "
        label = f"{named:>4}{mark}{token_label(tokens[named], label_width - 6)}"
        text.append(f"{label:<{label_width - 1}}│", "bold reverse" if position in bin_positions else "")
        for bin_rows in row_bins:
            cell = [_scale(values[r][p], log) for r in bin_rows for p in bin_positions]
            shade = SHADES[min(len(SHADES) - 1, round(sum(cell) / len(cell) / top * (len(SHADES) - 1)))]
            on_cursor = layer in bin_rows and position in bin_positions
            text.append(shade if not on_cursor else "◆", "bold reverse" if on_cursor else style)
        text.append("\n")
    legend = (
        f"░▒▓█ {'log ' if log else ''}0-{_unscale(top, log):.3g} · "
        + (f"{n_positions} positions in {lines} lines · " if lines < n_positions else "")
        + f"rows {layers[0]}..{layers[-1]} in {columns} columns, ┬ blocks 0, 10.."
    )
    text.append(f"{'':<{label_width - 1}}│{legend[: width - label_width]}", "dim")
    return text
