"""The explorer's side charts as a figure: the same series over the same row axis, from the charts' own data.

The charts are the explorer's (`layerscope.tui.charts`: `LayerChart`, `PositionMarks`), read here through their
plain fields only, so this module imports neither textual nor rich. KL is drawn on a log10(1 + x) axis, as the
explorer draws it: the `emb` row's ~100 nats would flatten every other row, and the last row's 0 must show. The
lines hold the charts' numbers themselves (the axis, not the data, is scaled).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from layerscope.figures.common import new_figure, provenance

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_ROW_TICKS = 40
"""Row labels on an axis at most: a longer axis labels every 2nd, 5th.. row, and always the cursor's and the last."""


class SeriesData(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def values(self) -> Sequence[float]: ...


@runtime_checkable
class LayerChartData(Protocol):
    """Series over `rows` (the axis labels), `cursor` the index of the cursor's row; `log`: a log10(1 + x) axis."""

    @property
    def title(self) -> str: ...
    @property
    def series(self) -> Sequence[SeriesData]: ...
    @property
    def rows(self) -> Sequence[str]: ...
    @property
    def cursor(self) -> int: ...
    @property
    def log(self) -> bool: ...


class PositionMarksData(Protocol):
    """Per position (`labels`), a row of `rows` (`values`, indices) as a mark; `cursor` the cursor's position."""

    @property
    def title(self) -> str: ...
    @property
    def labels(self) -> Sequence[str]: ...
    @property
    def values(self) -> Sequence[int]: ...
    @property
    def rows(self) -> Sequence[str]: ...
    @property
    def cursor(self) -> int: ...


def charts_figure(
    charts: Sequence[LayerChartData | PositionMarksData], title: str, caption: Sequence[str] = ()
) -> Figure:
    """One plot per chart, stacked in the explorer's order: each over its own row axis (labelled as the grid
    labels its rows, the cursor's row a dotted line), with its title and a legend of its series."""
    figure = new_figure(8, 2.4 * len(charts) + 1.0)
    for axes, chart in zip(figure.subplots(len(charts), 1, squeeze=False)[:, 0], charts, strict=True):
        if isinstance(chart, LayerChartData):
            _layer_chart(axes, chart)
        else:
            _position_marks(axes, chart)
    provenance(figure, title, *caption)
    return figure


def _layer_chart(axes: Axes, chart: LayerChartData) -> None:
    for one in chart.series:
        axes.plot(range(len(one.values)), list(one.values), marker="o", markersize=3, label=one.name)
    axes.axvline(chart.cursor, color="grey", linestyle=":", linewidth=1)
    if chart.log:
        _log1p_axis(axes, max((v for one in chart.series for v in one.values), default=0.0))
    axes.set_title(chart.title, fontsize="small", loc="left")
    _row_axis(axes, chart.rows, chart.cursor)
    if chart.series:
        axes.legend(fontsize="x-small")


def _position_marks(axes: Axes, chart: PositionMarksData) -> None:
    positions = range(len(chart.labels))
    axes.plot(list(chart.values), positions, marker="D", linestyle="none", markersize=4)
    axes.axhline(chart.cursor, color="grey", linestyle=":", linewidth=1)
    marked = [("▶ " if p == chart.cursor else "") + label for p, label in enumerate(chart.labels)]
    axes.set_yticks(positions, marked, fontsize="x-small")
    axes.set_ylim(max(1, len(chart.labels)) - 0.5, -0.5)  # the first position on top
    axes.set_title(chart.title, fontsize="small", loc="left")
    _row_axis(axes, chart.rows, chart.values[chart.cursor] if chart.values else 0)


def _row_axis(axes: Axes, rows: Sequence[str], cursor: int) -> None:
    """The whole run's rows across (`emb`, 0..), every row labelled up to MAX_ROW_TICKS, else every k-th; the
    cursor's row and the last always."""
    step = max(1, math.ceil(len(rows) / MAX_ROW_TICKS))
    ticks = sorted({*range(0, len(rows), step), cursor, len(rows) - 1} & set(range(len(rows))))
    axes.set_xticks(ticks, [rows[t] for t in ticks], fontsize="x-small", rotation=90 if len(rows) > 20 else 0)
    axes.set_xlim(-0.5, max(1, len(rows) - 1) + 0.5)


def _log1p_axis(axes: Axes, top: float) -> None:
    """The y axis as log10(1 + y), ticked in the data's units at 0, 1, 2, 5, 10, 20..: negative values sit on 0."""
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator

    def forward(y: np.ndarray) -> np.ndarray:
        return np.log10(1.0 + np.maximum(y, 0.0))

    def inverse(y: np.ndarray) -> np.ndarray:
        return np.power(10.0, y) - 1.0

    axes.set_yscale("function", functions=(forward, inverse))
    decades = max(1, math.ceil(math.log10(1.0 + max(0.0, top))))
    axes.yaxis.set_major_locator(FixedLocator([0.0, *(m * 10.0**k for k in range(decades + 1) for m in (1, 2, 5))]))
    axes.yaxis.set_minor_locator(NullLocator())
    axes.set_ylabel("log10(1 + x) axis", fontsize="x-small")
