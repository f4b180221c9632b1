"""The explorer on a hand-written session and a tiny model: what the screen shows, without the demo model."""

from __future__ import annotations

import re

import pytest

from layerscope.tui.app import LayerscopeApp
from layerscope.tui.grid_view import token_label, visible
from layerscope.tui.themes import SHIPPED_THEMES
from tests.tui_synthetic import notices, screen_text, settle, tiny_llama, write_session


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path, **kwargs) -> LayerscopeApp:
    return LayerscopeApp(lm=lm, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml", **kwargs)


async def open_session(app, pilot, tmp_path) -> None:
    await pilot.pause(0.05)
    app.load_session(write_session(tmp_path / "session.json"))
    await pilot.press("escape", "1")
    await pilot.pause(0.3)


def test_visible_escapes_control_characters():
    assert visible("a\x1b[31mb\x07c\x00d\x7fe\x9bf") == "a␛[31mb␇c␀d␡e\\x9bf"
    assert visible("two\nlines") == "two\nlines" and visible("[INST] plain") == "[INST] plain"
    assert token_label(" a\x1b\tb\n", 20) == "·a␛⇥b⏎"


async def test_control_characters_never_reach_the_terminal(lm, tmp_path):
    """ESC, BEL and NUL from a prompt or a model's tokens show as ␛ ␇ ␀ in the grid, the detail pane,
    the Output pane, the status line and notices; Rich markup in them ([INST]) shows as typed."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await open_session(app, pilot, tmp_path)
        app.runs.results.continuation["baseline"] = " bell\x07 nul\x00 esc\x1b[2J [INST]"
        app.update_output()
        app.grid.cursor_layer, app.grid.cursor_position = 3, 0  # top-1 there is '\x1b[31mred'
        app.set_status("prompt \x1b]52;c;bad\x07")
        app.notify("bad \x1b[2J [b]token[/b]")
        await pilot.pause(0.1)
        assert "␛[31mred" in screen_text(app) and "[INST]" in screen_text(app)
        assert "␛[31mred" in app.detail.plain
        assert "bell␇ nul␀ esc␛[2J [INST]" in str(app.output.render())
        assert "prompt ␛]52;c;bad␇" in str(app.status.render())
        assert app._notifications and list(app._notifications)[-1].message == "bad ␛[2J [b]token[/b]"
        await pilot.press("4")
        await pilot.pause(0.1)
        for text in (screen_text(app), app.detail.plain, str(app.output.render()), str(app.status.render())):
            assert not any(c in text for c in "\x1b\x07\x00")


async def test_active_toggles_and_masks_show_by_name(lm, tmp_path):
    """Each active drop, swap, freeze, random, skip-attention and head mask shows as [x] in its table, and the
    status line and the Output pane name them exactly."""
    from layerscope.tui.state import Toggles

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        app.toggles = Toggles(
            drop=frozenset({2}),
            swap=frozenset({5}),
            freeze=8,
            random=4,
            skip_attn=10,
            masked_heads=frozenset({(0, 1), (11, 2)}),
            mask_mode="uniform",
        )
        app.refresh_panes()
        await pilot.press("2")
        await pilot.pause(0.1)
        rows = {
            line.split()[0]: line
            for line in screen_text(app).splitlines()
            if line.split() and line.split()[0].isdigit()
        }
        columns = ["drop", "swap", "freeze", "random", "skip_attn"]
        for kind, block in (("drop", 2), ("swap", 5), ("freeze", 8), ("random", 4), ("skip_attn", 10)):
            marks = re.findall(r"\[.\]", rows[str(block)])
            assert marks[columns.index(kind)] == "[x]", (kind, rows[str(block)])
        assert re.findall(r"\[.\]", rows["9"]) == ["[ ]", "[ ]", "[·]", "[ ]", "[ ]", "[ ]"]  # covered by freeze ≥8
        await pilot.press("3")
        await pilot.pause(0.1)
        assert "[x] uniform" in screen_text(app)
        names = "drop 2 · swap 5↔6 · freeze ≥8 · random 4 (seed 0) · skip-attn ≥10 · mask 0.1, 11.2 (uniform)"
        assert "drop 2 +5 more" in str(app.status.render())  # all six do not fit in 100 columns
        assert "masked: 0.1, 11.2" in screen_text(app)
        await pilot.press("4")
        assert f"now: {names}" in str(app.output.render())


async def test_stale_results_are_marked_until_rerun(lm, tmp_path):
    """Results computed for another prompt or toggle set are dimmed and the status says what changed and
    that Ctrl+R reruns; a rerun clears it; a picked sample prompt runs at once."""
    app = make_app(lm, tmp_path, continuation_tokens=2)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert not app.stale_changes() and not app.grid.has_class("-stale")
        await pilot.press("e", "space", "b", "i", "g")
        await pilot.pause(0.1)
        assert app.stale_changes() == ["prompt"] and app.grid.has_class("-stale")
        assert "STALE: prompt changed · Ctrl+R reruns" in str(app.status.render())
        assert "STALE: prompt changed" in str(app.output.render())
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert not app.stale_changes() and not app.grid.has_class("-stale") and "STALE" not in str(app.status.render())
        assert app.runs.origin.prompt == "The capital of France is big"
        await pilot.press("3", "space")  # a head mask waits for Ctrl+R: the shown results are stale till then
        await pilot.pause(0.1)
        assert app.stale_changes() == ["interventions"]
        assert "STALE: interventions changed" in str(app.status.render())
        await pilot.press("p")
        await pilot.pause(0.1)
        await pilot.press("down", "enter")
        await settle(pilot)
        assert app.runs.origin.prompt == app.prompt.text == "The capital of Italy is" and not app.stale_changes()


async def test_run_reports_each_phase_with_counts_and_time(lm, tmp_path):
    """The status names the running phase with its count and elapsed time: lens rows, then the continuation
    token by token (both runs' tokens together while the grid grows over them; with `g`, the prompt-only grid,
    each run's continuation in turn); the final count of one phase never stays up while the next works."""
    from layerscope.tui.state import Toggles

    app = make_app(lm, tmp_path, prompt="the cat sat", continuation_tokens=3)
    seen: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        original = app.set_status
        app.set_status = lambda text: (seen.append(text), original(text))
        app.toggles = Toggles(drop=frozenset({1}))
        await pilot.press("ctrl+r")
        await settle(pilot)
        grown = list(seen)
        seen.clear()
        await pilot.press("g", "ctrl+r")
        await settle(pilot)
    for statuses, order in (
        (grown, ["generating 1/3", "generating 3/3"]),
        (seen, ["generating baseline 1/3", "generating baseline 3/3", "generating intervened 1/3"]),
    ):
        running = [text.split(" · ") for text in statuses if text.endswith("Esc cancels")]
        phases = [phase for phase, *_rest in running]
        assert phases[0] == "starting" and "lens rows 0/13" in phases and "lens rows 13/13" in phases
        indices = [phases.index(phase) for phase in ["lens rows 13/13", *order]]
        assert indices == sorted(indices), phases
        for _phase, elapsed, *estimate, _esc in running:  # once a step of the phase is done, the time it still needs
            assert re.fullmatch(r"\d+\.\d s", elapsed) and all(re.fullmatch(r"~\d+ s left", e) for e in estimate)
        last = order[-1].replace("1/3", "3/3")
        assert any(" · ".join(parts).startswith(last) and len(parts) == 4 for parts in running)
        assert statuses[-1].startswith("done in ")
    assert str(app.status.render()).startswith("done in ")  # what happened leads the line


async def test_head_scores_name_their_source_and_sorting_goes_to_the_top(lm, tmp_path):
    from textual.widgets import DataTable

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "3", "i")
        await settle(pilot)
        assert "induction scores: tiny-llama-12, random tokens repeated twice" in screen_text(app)
        table = app.query_one("#head-table", DataTable)
        await pilot.press("down", "down", "down", "down", "down")
        assert table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value == "1.1"
        await pilot.press("o")  # sort by induction score, the only kind computed
        assert app.head_pane.sort == "induction" and table.cursor_coordinate.row == 0
        scores = app.head_pane.scores["induction"]
        top = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        assert scores[tuple(map(int, top.split(".")))] == max(scores.values())


LONG_PROMPT = " ".join(["the cat sat on the mat and a dog ran to the park"] * 6)  # 78 tokens


def cursor_row_on_screen(app) -> bool:
    """The cursor's row label is drawn (not hidden under a scrollbar or scrolled away); a generated position's
    number is followed by its `+` mark."""
    labels = (f"{app.grid.cursor_position:>4} ", f"{app.grid.cursor_position:>4}+")
    return any(line.startswith(labels) for line in screen_text(app).splitlines()[:-3])


def header_line(app) -> str:
    return next(line for line in screen_text(app).splitlines() if line.startswith("pos token")).split("▏")[0]


async def test_first_view_is_the_answer_cell(lm, tmp_path):
    """Without any key, the cursor sits on the last row at the last position, scrolled into view, and the detail
    pane pins the model's answer and the row from which it stays top-1."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (12, 4)
        assert header_line(app).split()[-1] == "11"  # the last layer's column is on screen
        assert app.detail.plain.startswith(
            "answer ·Paris 88%\n  (stays top-1 from 6)\nint.   ·Lyon 50%\n  (stays top-1 from 5)\n"
        )  # the label never cut in two


async def test_cursor_stays_where_the_user_put_it(lm, tmp_path):
    """Reruns, method and view switches keep (position, layer); PageDown never hides the cursor under the
    scrollbar; a resize scrolls the cursor's column back into view; Home/End and Ctrl+Home/End jump."""
    app = make_app(lm, tmp_path, prompt=LONG_PROMPT, continuation_tokens=1)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        grid = app.grid
        assert (grid.cursor_layer, grid.cursor_position) == (12, 77)
        await pilot.press("ctrl+home", "home", "right", "right", "down")
        assert (grid.cursor_layer, grid.cursor_position) == (2, 1)
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert (grid.cursor_layer, grid.cursor_position) == (2, 1)
        await pilot.press("m")
        await settle(pilot)
        assert app.runs.results.baseline.method == "patchscope" and (grid.cursor_layer, grid.cursor_position) == (2, 1)
        await pilot.press("m")
        await settle(pilot)
        await pilot.press("v", "v")
        assert (grid.cursor_layer, grid.cursor_position) == (2, 1)
        for _ in range(8):
            await pilot.press("pagedown")
            await pilot.pause(0.05)
            assert cursor_row_on_screen(app), grid.cursor_position
        await pilot.press("ctrl+end", "end")  # the last position: the continuation's token, after the prompt's 78
        assert (grid.cursor_layer, grid.cursor_position) == (12, 78)
        await pilot.pause(0.05)
        assert cursor_row_on_screen(app) and header_line(app).split()[-1] == "11"
        await pilot.press("home", "ctrl+home")
        assert (grid.cursor_layer, grid.cursor_position) == (0, 0)
        await pilot.press("end")
        await pilot.resize_terminal(160, 50)
        await pilot.pause(0.1)
        await pilot.resize_terminal(80, 24)
        await pilot.pause(0.2)
        assert header_line(app).split()[-1] == "11" and cursor_row_on_screen(app)


async def test_focus_returns_to_the_pane_after_a_dialog(lm, tmp_path):
    from textual.widgets import Input

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        for keys in (("question_mark", "escape"), ("p", "escape"), ("ctrl+s", "escape")):
            await pilot.press("1", *keys)
            await pilot.pause(0.1)
            assert app.focused is app.grid, keys
        await pilot.press("2", "x")
        app.screen.query_one(Input).value = str(tmp_path / "grid.csv")
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.focused is app.query_one("#layer-table") and (tmp_path / "grid.csv").is_file()


async def test_help_toasts_side_panel_and_continuation(lm, tmp_path):
    """Help shows keys as written; copy and export toasts say what and how much; z hides the side panel and
    gives the grid the room; n sets the continuation length; diverging continuations are highlighted."""
    from textual.widgets import DataTable, Input

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        table = app.screen.query_one(DataTable)
        keys = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert {"?", "Ctrl+R", "Ctrl+End", "Space", "z"} <= set(keys) and "question_mark" not in keys
        await pilot.press("escape", "y")
        size = len(app.clipboard.encode())
        assert notices(app)[-1] == f"copied cell 11@4 · {size} B (OSC 52)"
        await pilot.press("Y")
        assert notices(app)[-1] == f"copied grid · 13x5 · {len(app.clipboard.encode())} B TSV (OSC 52)"
        await pilot.press("x")
        app.screen.query_one(Input).value = str(tmp_path / "grid.csv")
        await pilot.press("enter")
        await pilot.pause(0.1)
        written = (tmp_path / "grid.csv").stat().st_size
        assert notices(app)[-1] == f"exported grid · 13x5 · {written / 1000:.0f} KB CSV → {tmp_path / 'grid.csv'}"

        width = app.grid.size.width
        await pilot.press("z")
        await pilot.pause(0.1)
        assert not app.side.display and app.grid.size.width > width + 25
        await pilot.press("z")
        await pilot.pause(0.1)
        assert app.side.display and app.grid.size.width == width

        await pilot.press("n")
        app.screen.query_one(Input).value = "3"
        await pilot.press("enter")
        assert app.continuation_tokens == 3
        for bad in ("lots", "²", "513"):  # '²'.isdigit() holds, and int('²') raises
            await pilot.press("n")
            app.screen.query_one(Input).value = bad
            await pilot.press("enter")
            assert app.continuation_tokens == 3 and f"not '{bad}'" in notices(app)[-1]

        output = app.output_text
        diverged = [span for span in output.spans if span.style == "bold reverse"]
        assert [output.plain[span.start : span.end] for span in diverged] == [
            "Paris. It is the capital",
            "Lyon. It is a city",
        ]


async def test_x_exports_the_shown_grid_as_a_figure_and_asks_before_replacing_a_file(lm, tmp_path):
    """Shift+X: the grid shown (here the intervened logit lens of a saved session, with block 2 dropped) as an SVG
    or PNG by the name, its view and interventions in the caption; an existing file is replaced only once the user
    says so."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert [row for row in app.binding_rows() if "X" in row[0].split(",")] == [
            ("X", "Export figure", "export_figure"),
            ("X", "Export charts", "side.export_charts"),
        ]  # the app's, and the side panel's while it has focus

        async def export(name: str) -> None:
            await export_as(app, pilot, tmp_path / name)

        await export("grid.svg")
        assert app.focused is app.grid
        svg = (tmp_path / "grid.svg").read_text()
        assert svg.startswith("<?xml")
        assert "view: intervened · interventions: drop 2 · from the layerscope explorer" in svg
        assert notices(app)[-1].startswith("exported figure · 13x5 · ") and notices(app)[-1].endswith(
            f"SVG → {tmp_path / 'grid.svg'}"
        )
        await export("grid.png")
        assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
        await export("grid.svg")  # exists: asked first, and "n" keeps it
        await pilot.press("n")
        await pilot.pause(0.1)
        assert (tmp_path / "grid.svg").read_text() == svg and "is unchanged" in notices(app)[-1]
        await export("grid.jpg")
        assert "name a .png, .svg or .pdf file" in notices(app)[-1] and not (tmp_path / "grid.jpg").exists()
        assert app.is_running


async def export_as(app, pilot, path) -> None:
    """Shift+X, then the path typed in the dialog."""
    from textual.widgets import Input

    await pilot.press("X")
    app.screen.query_one(Input).value = str(path)
    await pilot.press("enter")
    await pilot.pause(0.2)


async def test_x_in_the_side_panel_exports_its_charts_as_a_figure(lm, tmp_path):
    """Tab focuses the side panel, where Shift+X exports its charts (not the grid) as an SVG or PNG by the name:
    the model, prompt, method, position and interventions in the caption, the plotted lines the charts' numbers
    (those of the session's grids at the cursor's position), over the rows labelled as the grid labels them, the
    cursor's row marked, KL on a log10(1 + x) axis. An existing file is replaced only once the user says so. The
    palette and help list the action."""
    from textual.widgets import DataTable

    from layerscope.figures.charts import charts_figure

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert "Export charts (X)" in [command.title for command in app.get_system_commands(app.screen)]
        await pilot.press("tab")
        assert app.focused is app.side
        await export_as(app, pilot, tmp_path / "charts.svg")
        svg = (tmp_path / "charts.svg").read_text()
        for text in ("logit lens at position 4 (·is)", "model: tiny-llama-12", "prompt: The·capital·of·France·is"):
            assert text in svg
        assert "interventions: drop 2" in svg and "KL→final @4 (log)" in svg and "entropy @4 (bits)" in svg
        assert notices(app)[-1].startswith("exported charts · 4 plots · ") and notices(app)[-1].endswith(
            f"SVG → {tmp_path / 'charts.svg'}"
        )
        await export_as(app, pilot, tmp_path / "charts.png")
        assert (tmp_path / "charts.png").read_bytes().startswith(b"\x89PNG")
        await export_as(app, pilot, tmp_path / "charts.svg")  # exists: asked first, and "n" keeps it
        await pilot.press("n")
        await pilot.pause(0.1)
        assert (tmp_path / "charts.svg").read_text() == svg and "is unchanged" in notices(app)[-1]

        results, row = app.runs.results, app.grid.cursor_layer
        kl, between, marks, entropy = charts_figure(app.chart_data(), "").axes
        grids = (results.baseline, results.intervened)
        for axes, field in ((kl, "kl_to_final"), (entropy, "entropy_bits")):
            *lines, cursor = axes.get_lines()
            assert [list(line.get_ydata()) for line in lines] == [
                [getattr(cells[4], field) for cells in grid.cells] for grid in grids
            ]
            assert [label.get_text() for label in axes.get_xticklabels()] == ["emb", *map(str, range(12))]
            assert list(cursor.get_xdata()) == [row, row]
        assert list(between.get_lines()[0].get_ydata()) == [values[4] for values in results.kl_base_int]
        assert kl.get_yscale() == between.get_yscale() == "function" and entropy.get_yscale() == "linear"
        assert [label.get_text() for label in marks.get_yticklabels()][-1] == "▶ 4 ·is"

        await pilot.press("question_mark")  # help lists the key under the side panel
        await pilot.pause(0.1)
        table = app.screen.query_one(DataTable)
        rows = [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]
        side = [row[0] for row in rows].index("Side")
        assert rows[side + 1] == ["X", "Export charts", "side.export_charts"]


async def test_side_panel_is_narrower_at_80_columns(lm, tmp_path):
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert app.side.outer_size.width <= 27 and app.grid.size.width >= 52


async def test_sample_picker_filters_as_you_type(lm, tmp_path):
    app = make_app(lm, tmp_path, continuation_tokens=1)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.1)
        await pilot.press("escape", "p")
        await pilot.pause(0.1)
        await pilot.press(*"italy")
        await pilot.pause(0.1)
        assert [app.screen.choices[i] for i in app.screen.shown] == ["capitals.jsonl: The capital of Italy is"]
        await pilot.press("enter")
        await settle(pilot)
        assert app.prompt.text == "The capital of Italy is" and app.runs.origin.prompt == "The capital of Italy is"


async def test_ramp_never_reads_as_an_error_in_16_colours(lm, tmp_path):
    """The probability ramp's backgrounds, downgraded to the 16 standard colours (TERM=xterm), are never red or
    bright red in any shipped theme, and the top bin stands out from the bottom one."""
    from rich.color import ColorSystem

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        for theme in ("layerscope-dark", "layerscope-light", "layerscope-high-contrast"):
            app.theme = theme
            await pilot.pause(0.05)
            app.grid._styles.clear()
            ramp = [app.grid._style(f"p{i}").bgcolor for i in range(4)]
            standard = [colour.downgrade(ColorSystem.STANDARD).number for colour in ramp]
            assert not {1, 9} & set(standard), (theme, standard)
            assert standard[3] != standard[0], theme


async def test_charts_fit_and_redraw_on_resize(lm, tmp_path):
    """At 120x36 with interventions the KL(base‖int) chart fits beside KL to final; after any resize the charts
    are redrawn to the new size at once, never wrapped."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        await open_session(app, pilot, tmp_path)
        chart = str(app.chart.render())
        assert "KL→final @4 (log) ●base ○int." in chart and "KL(base‖int) @4 (log)" in chart
        for size in ((160, 50), (80, 24), (100, 30)):
            await pilot.resize_terminal(*size)
            await pilot.pause(0.5)
            lines = str(app.chart.render()).splitlines()
            assert lines and all(len(line) <= app.chart.size.width for line in lines), size
            axis = next(i for i, line in enumerate(lines) if "└" in line)
            # the x axis is labelled as the grid's header: the last row is block 11's output, the cursor is on it
            assert lines[0].startswith("KL→final @4 (log)") and lines[axis + 1].split()[-1] == "11"
            assert len(lines) >= 8  # a plot keeps its minimum height; the detail pane gives way


async def test_overview_follows_and_moves_the_grid_cursor(lm, tmp_path):
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.press("5")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "overview · KL to final (nats)" in text and "◆" in text
        await pilot.press("left", "left", "up")
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (10, 3)
        await pilot.press("v")
        await pilot.pause(0.1)
        assert "overview · entropy (bits)" in screen_text(app)
        await pilot.press("v")
        await pilot.pause(0.1)
        assert "overview · KL(base‖int) (nats)" in screen_text(app)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert app.tabs.active == "tab-lens" and app.focused is app.grid
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (10, 3)


async def test_load_model_dialog_keeps_the_old_model(lm, tmp_path):
    """L prefills what loaded the model (here the folder it came from), Esc closes the dialog, a failed load keeps
    the loaded model and says so, and Esc during a load drops its result."""
    from textual.widgets import Input

    folder = tmp_path / "tiny"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    app = make_app(lm, tmp_path, model=str(folder))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.press("L")
        await pilot.pause(0.1)
        assert app.screen.query_one(Input).value == str(folder)
        await pilot.press("escape")
        assert app.screen is app.screen_stack[0] and app.focused is app.grid
        await pilot.press("L")
        app.screen.query_one(Input).value = str(tmp_path / "no-such-model")
        await pilot.press("enter")
        await settle(pilot)
        await pilot.pause(0.3)
        assert app.lm is lm and f"could not load {tmp_path / 'no-such-model'}; tiny-llama-12 stays loaded" in str(
            app.status.render()
        )
        assert any("no-such-model" in n for n in notices(app))
        app.clear_notifications()
        app.start_load(str(tmp_path / "other-missing"))
        app.action_cancel()  # before the worker's answer is handled: it is dropped
        await pilot.pause(0.5)
        assert app.lm is lm and "cancelled; tiny-llama-12 stays loaded" in str(app.status.render())
        assert not any("other-missing" in n for n in notices(app))
        await pilot.press("L")
        await pilot.pause(0.1)
        assert app.screen.query_one(Input).value == str(folder)


async def test_no_model_and_no_results_draws_without_error(tmp_path):
    """Before any model loads (here: none can), the charts, detail and overview draw their empty states."""
    app = LayerscopeApp(
        model=str(tmp_path / "missing"), theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml"
    )
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app._charts_dirty = True
        await pilot.pause(0.5)
        await pilot.press("escape", "5")
        await pilot.pause(0.3)
        assert app.is_running and app.lm is None and "No results yet" in screen_text(app)


def test_a_cancelled_worker_stops_at_the_next_block(lm):
    """The hook a run installs raises before the next block once cancelled, and is gone afterwards."""
    import torch

    from layerscope.tui.runs import Cancelled, stop_between_blocks

    ids = torch.tensor([[2, 3, 4, 5]])
    seen = []
    with stop_between_blocks(lm, lambda: len(seen) > 0), pytest.raises(Cancelled):
        lm.adapter.blocks[0].register_forward_hook(lambda *_: seen.append(1))
        lm.model(ids)
    assert seen == [1]  # block 0 ran, block 1 did not
    lm.adapter.blocks[0]._forward_hooks.clear()
    assert not any(block._forward_pre_hooks for block in lm.adapter.blocks)
    lm.model(ids)  # runs through once the hooks are removed


async def test_quit_mid_run_cancels_the_worker(lm, tmp_path):
    """The worker is held inside a forward pass (the first block waits) until `q` is pressed, so the run is
    still going however fast the machine is."""
    import threading

    quit_pressed = threading.Event()
    hold = lm.adapter.blocks[0].register_forward_hook(lambda *_: quit_pressed.wait(30))
    try:
        app = make_app(lm, tmp_path, prompt=LONG_PROMPT, continuation_tokens=200)
        async with app.run_test(size=(100, 30)) as pilot:
            while not any(w.group == "run" for w in app.workers):
                await pilot.pause(0.01)
            worker = next(w for w in app.workers if w.group == "run")
            await pilot.press("q")
            quit_pressed.set()
        assert worker.is_cancelled
    finally:
        quit_pressed.set()
        hold.remove()


async def test_a_scores_file_of_another_model_or_broken_is_one_notice(lm, tmp_path):
    """l loads a scores file: one of another model (same shape, other name), one without its kind or not JSON
    at all is one error notice naming what is wrong; the app stays up and shows no scores; a good one loads."""
    import json

    import torch
    from textual.widgets import Input

    from layerscope.analyses.head_scores import HeadScores

    good = HeadScores.from_matrix(lm, "retrieval", torch.rand(lm.n_blocks, lm.adapter.n_heads)).to_dict()
    cases = [
        (json.dumps({**good, "model": "SmolLM2-135M"}), f"for SmolLM2-135M, not {lm.name}"),
        (json.dumps({k: v for k, v in good.items() if k != "kind"}), "does not say which kind"),
        (json.dumps({**good, "n_heads": "4"}), '"n_heads" is "4", not a whole number'),
        ("{", "not valid JSON"),
    ]
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        await pilot.press("escape", "3")
        path = tmp_path / "scores.json"
        for content, message in [*cases, (json.dumps(good), "retrieval scores loaded")]:
            path.write_text(content)
            await pilot.press("l")
            app.screen.query_one(Input).value = str(path)
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert message in notices(app)[-1] and app.is_running
            loaded = app.query_one("HeadPane").scores["retrieval"]
            assert loaded == (
                {}
                if message != "retrieval scores loaded"
                else {(h["layer"], h["head"]): h["score"] for h in good["heads"]}
            )
