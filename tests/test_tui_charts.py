"""The explorer's charts as data: the plotted series are the results' own numbers, the x axis is the whole run's
rows labelled as the grid labels them, the cursor's row is marked; and every theme draws them (plotext)."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.theme import BUILTIN_THEMES

from layerscope.analyses.grid import DecodeGrid, GridCell, TopToken
from layerscope.tui.charts import LayerChart, PositionMarks, Series, plotext_colour, row_ticks, stack
from layerscope.tui.methods import REGISTRY, Cursor, stays_top1_from
from layerscope.tui.themes import SHIPPED_THEMES, load_themes
from tests.tui_synthetic import FIRST_FINAL, LAYERS, synthetic_results

ROWS = ["emb", *map(str, range(30))]


def every_theme():
    shipped, _ = load_themes([SHIPPED_THEMES])
    return {**BUILTIN_THEMES, **{theme.name: theme for theme in shipped}}


def test_lens_chart_data_is_the_results_numbers():
    results = synthetic_results()
    cursor = Cursor(row=6, position=3, rows=list(LAYERS))
    charts = REGISTRY["logit_lens"].charts(results, results.intervened, cursor, every_theme()["layerscope-dark"])
    kl, kl_between, bars, entropy = charts
    assert isinstance(kl, LayerChart) and kl.log and not entropy.log
    for chart, field in ((kl, "kl_to_final"), (entropy, "entropy_bits")):
        assert [s.name for s in chart.series] == ["base", "int."]
        assert chart.series[0].values == [row[3].__getattribute__(field) for row in results.baseline.cells]
        assert chart.series[1].values == [row[3].__getattribute__(field) for row in results.intervened.cells]
        assert chart.rows == LAYERS and chart.cursor == 6
    assert kl_between.series[0].values == [row[3] for row in results.kl_base_int] and kl_between.log
    assert isinstance(bars, PositionMarks) and bars.cursor == 3 and bars.rows == LAYERS
    # the synthetic intervened grid keeps each position's final token from FIRST_FINAL on, except position 4,
    # which ends on ' Lyon' from row 6
    assert bars.values == [*FIRST_FINAL[:4], 6]


def test_the_axis_is_the_whole_run_while_rows_arrive():
    """Three rows of a 31-row run: the axis still has 31 rows, the series have 3 values."""
    results = synthetic_results()
    for grid in (results.baseline, results.intervened):
        grid.cells, grid.layers = grid.cells[:3], grid.layers[:3]
    results.kl_base_int = results.kl_base_int[:3]
    charts = REGISTRY["logit_lens"].charts(results, results.baseline, Cursor(2, 0, ROWS), every_theme()["nord"])
    assert all(chart.rows == ROWS for chart in charts)
    assert [len(s.values) for s in charts[0].series] == [3, 3]


def test_stays_top1_from_ignores_a_row_that_loses_it_again():
    """Top-1 ids per row at one position: the answer (7) is top-1 at rows 0 and 2, lost at 1 and 3, kept from 4."""
    ids = [7, 1, 7, 2, 7, 7, 7]
    grid = DecodeGrid(
        "m", "logit_lens", ["a"], [0], ROWS[:7], [[GridCell([TopToken(str(i), i, 0.5)], 1.0, 0.0)] for i in ids]
    )
    independent = min(r for r in range(len(ids)) if all(i == ids[-1] for i in ids[r:]))
    assert stays_top1_from(grid) == [independent] == [4]


def test_the_marks_chart_reads_the_positions_around_the_cursor_of_a_long_prompt():
    """300 positions, cursor at 200: the chart holds the positions within MARKS_WINDOW of it, each with its own
    position number and the row it stays top-1 from, as computed over the whole grid."""
    from layerscope.tui.methods import MARKS_WINDOW

    n = 300
    ids = [[10 + (p + row) % 3 if row < p % 7 else 1 for p in range(n)] for row in range(7)]  # stays from p % 7
    rows = [[GridCell([TopToken(str(i), i, 0.5)], 1.0, 0.0) for i in row] for row in ids]
    grid = DecodeGrid("m", "logit_lens", [f"t{p}" for p in range(n)], list(range(n)), ROWS[:7], rows)
    results = synthetic_results()
    results.baseline, results.intervened, results.kl_base_int = grid, None, []
    marks = next(
        chart
        for chart in REGISTRY["logit_lens"].charts(results, grid, Cursor(3, 200, ROWS[:7]), every_theme()["nord"])
        if isinstance(chart, PositionMarks)
    )
    window = range(200 - MARKS_WINDOW, 200 + MARKS_WINDOW + 1)
    whole = stays_top1_from(grid)
    assert [label.split()[0] for label in marks.labels] == [str(p) for p in window]
    assert marks.values == [whole[p] for p in window] and marks.labels[marks.cursor].startswith("200 ")
    assert marks.values == [p % 7 for p in window]  # differs across positions: a shifted window would be caught


def test_the_answer_line_names_the_row_it_stays_from():
    results = synthetic_results()
    label = f"(stays top-1 from {LAYERS[FIRST_FINAL[4]]})"
    wide = REGISTRY["logit_lens"].detail(results, Cursor(0, 0, list(LAYERS)), 60).plain
    assert wide.startswith(f"answer ·Paris 88% {label}")
    narrow = REGISTRY["logit_lens"].detail(results, Cursor(0, 0, list(LAYERS)), 26).plain
    assert narrow.startswith(f"answer ·Paris 88%\n  {label}\n")  # never cut inside the label


def test_row_ticks_label_rows_as_the_grid_does():
    for cursor in (0, 1, 6, 17, 30):
        for width in (20, 40, 80):
            rows, labels = row_ticks(ROWS, cursor, width)
            assert labels == [ROWS[r] for r in rows] and cursor in rows  # 4: the widest label, emb, and a space
            assert all(abs(a - b) * (width - 1) / 30 >= 4 for a, b in zip(rows, rows[1:]))  # labels never touch
            assert all(abs(end - cursor) * (width - 1) / 30 < 4 for end in {0, 30} - set(rows))  # only the cursor
            # pushes emb or the last row out
    assert row_ticks(ROWS, 6, 40) == ([0, 6, 11, 16, 21, 26, 30], ["emb", "5", "10", "15", "20", "25", "29"])


def test_theme_colours_become_plotext_colours():
    assert plotext_colour("ansi_blue") == 4 and plotext_colour("ansi_bright_blue") == 12
    assert plotext_colour("ansi_default") == "default" and plotext_colour(None) == "default"
    assert plotext_colour("#0178d4") == (1, 120, 212)


@pytest.mark.parametrize("name", sorted(every_theme()))
def test_every_theme_draws_the_charts(name):
    """Every theme, the ANSI ones included, draws each chart within its size, its series in the theme's colours."""
    results = synthetic_results()
    theme = every_theme()[name]
    charts = REGISTRY["logit_lens"].charts(results, results.intervened, Cursor(6, 3, list(LAYERS)), theme)
    for width, height in ((30, 40), (60, 50)):
        lines = stack(charts, width, height).plain.splitlines()
        assert len(lines) <= height and all(len(line) <= width for line in lines)
    drawn = charts[0].render(40, 12)
    assert len(drawn.plain.splitlines()) == 12 and "●base" in drawn.plain and "○int." in drawn.plain
    assert any(span.style for span in drawn.spans) or plotext_colour(theme.primary) == "default"


def test_a_log_chart_labels_its_ticks_in_the_datas_units():
    chart = LayerChart("KL", [Series("base", [99.0, 9.0, 0.0], None, "●")], ROWS, 1, log=True)
    lines = chart.render(40, 10).plain.splitlines()
    assert lines[2].lstrip().startswith("99┤") and any(line.lstrip().startswith("0┤") for line in lines)
    assert any(line.lstrip().startswith("9┤") for line in lines)  # the middle: 10 ** (2 / 2) - 1


def test_position_marks_sit_on_their_labelled_lines():
    """Each position's mark is on the line that names it, further right for a later row (plotext's bars were
    not: two positions shared a line)."""
    for n, height in ((5, 10), (5, 14), (12, 12)):
        marks = PositionMarks(
            "stays", [f"{p} ·t" for p in range(n)], [(p * 7) % 31 for p in range(n)], ROWS, n // 2, None
        )
        lines = [line for line in marks.render(46, height).plain.splitlines() if "·t┤" in line]
        shown = marks.shown(max(1, height - 4))
        assert [line.split("┤")[0].strip(" ▶") for line in lines] == [f"{p} ·t" for p in shown]
        columns = [line.index("◆") for line in lines]
        assert all(line.count("◆") == 1 for line in lines)
        assert [c for _, c in sorted(zip([marks.values[p] for p in shown], columns))] == sorted(columns)


def test_the_charts_figure_draws_the_charts_own_numbers():
    """The exported charts (layerscope.figures.charts): each series' line is its values over the row indices, the
    rows labelled as the chart labels them, the cursor's row a vertical line; a log chart's axis is log10(1 + x)
    (9 nats sits at 1), its lines still the nats; a marks chart puts each position's row on its labelled line."""
    from layerscope.figures.charts import charts_figure
    from layerscope.figures.common import figure_bytes

    rows = ["emb", "0", "1", "2"]
    kl = LayerChart(
        "KL", [Series("base", [90.0, 9.0, 1.5, 0.0], None, "●"), Series("int.", [90.0, 12.0], None, "○")], rows, 2, True
    )
    entropy = LayerChart("entropy", [Series("base", [11.0, 4.0, 2.0, 0.5], None, "●")], rows, 2, False)
    marks = PositionMarks("stays", ["0 The", "1 ·cap", "2 ·is"], [3, 1, 2], rows, 1, None)
    figure = charts_figure([kl, marks, entropy], "title", ["caption"])
    kl_axes, marks_axes, entropy_axes = figure.axes
    for axes, chart in ((kl_axes, kl), (entropy_axes, entropy)):
        *lines, cursor = axes.get_lines()
        assert [(list(line.get_xdata()), list(line.get_ydata())) for line in lines] == [
            (list(range(len(one.values))), one.values) for one in chart.series
        ]
        assert [line.get_label() for line in lines] == [one.name for one in chart.series]
        assert list(cursor.get_xdata()) == [2, 2] and axes.get_title(loc="left") == chart.title
        assert [label.get_text() for label in axes.get_xticklabels()] == rows
    assert kl_axes.yaxis.get_transform().transform([9.0, 0.0]) == pytest.approx([1.0, 0.0])
    assert entropy_axes.get_yscale() == "linear"
    points, cursor = marks_axes.get_lines()
    assert list(points.get_xdata()) == marks.values and list(points.get_ydata()) == [0, 1, 2]
    assert [label.get_text() for label in marks_axes.get_yticklabels()] == ["0 The", "▶ 1 ·cap", "2 ·is"]
    assert list(cursor.get_ydata()) == [1, 1]
    for suffix, magic in (("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")):
        assert figure_bytes(figure, Path(f"charts.{suffix}")).startswith(magic)
