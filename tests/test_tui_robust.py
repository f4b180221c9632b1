"""The explorer never loses the user's work: every theme draws every pane and dialog, a drawing bug is one notice
(the results stay), files are replaced only when the user says so; and keys go where the user thinks they go."""

from __future__ import annotations

import pytest
from textual import events
from textual.widgets import Input

from layerscope.tui.app import LayerscopeApp
from layerscope.tui.screens import ConfirmScreen
from layerscope.tui.themes import SHIPPED_THEMES, theme_names
from tests.tui_synthetic import notices, screen_text, settle, tiny_llama, write_session

TRACE_PROMPT = "the capital of france is paris"


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path, **kwargs) -> LayerscopeApp:
    return LayerscopeApp(
        lm=lm, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml", continuation_tokens=1, **kwargs
    )


async def open_session(app, pilot, tmp_path) -> None:
    await pilot.pause(0.05)
    app.load_session(write_session(tmp_path / "session.json"))
    await pilot.press("escape", "1")
    await pilot.pause(0.3)


def draw_failures(app) -> list[str]:
    return [n for n in notices(app) if "Could not draw" in n]


async def draw_everything(app, pilot, theme: str) -> None:
    """Every pane (with its chart, overview or table) and every kind of dialog, drawn in `theme`."""
    for key in "12345":
        await pilot.press(key)
        app._charts_dirty = True
        app.flush_charts()
        await pilot.pause(0.02)
        assert screen_text(app), (theme, key)
    await pilot.press("1")
    for keys in (("question_mark",), ("ctrl+p",), ("p",), ("n",)):
        await pilot.press(*keys)
        await pilot.pause(0.02)
        assert app.screen is not app.screen_stack[0] and screen_text(app), (theme, keys)
        await pilot.press("escape")
    app.push_screen(ConfirmScreen("Replace it?"))
    await pilot.pause(0.02)
    assert "Replace it?" in screen_text(app), theme
    await pilot.press("n")


THEMES, THEME_PROBLEMS = theme_names([SHIPPED_THEMES])


def test_the_theme_list_is_what_list_themes_prints():
    from typer.testing import CliRunner

    from layerscope.cli.app import app as cli

    assert not THEME_PROBLEMS and {"ansi-dark", "ansi-light", "layerscope-dark", "textual-light"} <= set(THEMES)
    printed = CliRunner().invoke(cli, ["tui", "--list-themes"]).output.split()
    assert set(THEMES) <= set(printed)  # the user's theme folder may add more
    at_the_top = CliRunner().invoke(cli, ["--list-themes"])  # `layerscope --list-themes`, as the explorer's own
    assert at_the_top.exit_code == 0 and at_the_top.output.split() == printed


@pytest.mark.parametrize("theme", THEMES)
async def test_every_listed_theme_draws_every_pane_chart_and_dialog(lm, tmp_path, theme):
    """Each name --list-themes prints (the ANSI themes among them: their 'ansi_blue' is no Rich colour) draws the
    lens grid with its detail and charts, the Layers, Heads, Output and Overview panes, help, the palette, the
    sample picker, a question and a confirmation: the app stays up and no drawing fails."""
    app = make_app(lm, tmp_path, theme=theme)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert app.theme == theme
        await draw_everything(app, pilot, theme)
        assert app.is_running and not draw_failures(app), draw_failures(app)


async def test_every_listed_theme_draws_the_causal_trace_chart(lm, tmp_path):
    """The causal trace's chart in every theme's colours."""
    app = make_app(lm, tmp_path, prompt=TRACE_PROMPT)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.start_trace(TRACE_PROMPT, "france", None)
        await settle(pilot)
        assert app.grid.method.name == "causal_trace"
        for name in THEMES:
            app.theme = name
            app._charts_dirty = True
            app.flush_charts()
            assert "indirect effect" in str(app.chart.render()), name
        assert app.is_running and not draw_failures(app), draw_failures(app)


async def test_ansi_theme_from_the_start_draws_the_charts(lm, tmp_path):
    """`--theme ansi-light` with results on screen: the chart (which failed at its first draw) is drawn."""
    app = make_app(lm, tmp_path, theme="ansi-light")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.pause(0.3)
        assert "KL→final" in str(app.chart.render()) and not draw_failures(app)


@pytest.mark.parametrize("target", ["charts", "detail", "output_text", "overview", "summary"])
async def test_a_drawing_failure_is_one_notice_and_the_results_stay(lm, tmp_path, monkeypatch, target):
    """A bug in any drawing function (here injected into the shown method's charts, detail text or cell summary
    (tui/methods.py), the Output pane, the overview) becomes one error notice, however often the pane redraws;
    the app stays up, keeps its results and still answers keys."""
    from dataclasses import replace

    import layerscope.tui.app as app_module

    def broken(*_args, **_kwargs):
        raise RuntimeError("injected drawing bug")

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        results = app.runs.results
        if target in ("charts", "detail", "summary"):
            monkeypatch.setattr(app.grid, "method", replace(app.grid.method, **{target: broken}))
        else:
            monkeypatch.setattr(app_module, target, broken)
        app.grid.invalidate()
        app.refresh_stale()  # redraws the Output pane
        await pilot.press("left", "up", "4", "5", "1", "up")
        await pilot.pause(0.5)
        screen_text(app)
        failures = draw_failures(app)
        assert len(failures) == 1 and "injected drawing bug" in failures[0] and "results are kept" in failures[0]
        assert app.is_running and app.runs.results is results and results.baseline.cells
        await pilot.press("2")
        assert app.tabs.active == "tab-layers"


async def test_export_and_save_ask_before_replacing_a_file(lm, tmp_path):
    """x and Ctrl+S write a new file at once; an existing one is replaced only after y (n or Esc keep it, and
    say so); Ctrl+O then offers the session last saved."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        for key, path in (("x", tmp_path / "grid.csv"), ("ctrl+s", tmp_path / "saved.json")):
            path.write_text("the user's own file")
            for answer in ("n", "escape"):
                await pilot.press(key)
                app.screen.query_one(Input).value = str(path)
                await pilot.press("enter")
                await pilot.pause(0.05)
                assert isinstance(app.screen, ConfirmScreen) and str(path) in screen_text(app)
                await pilot.press(answer)
                await pilot.pause(0.05)
                assert path.read_text() == "the user's own file" and "unchanged" in notices(app)[-1]
                assert app.focused is app.grid
            await pilot.press(key)
            app.screen.query_one(Input).value = str(path)
            await pilot.press("enter", "y")
            await pilot.pause(0.1)
            assert path.read_text() != "the user's own file" and app.focused is app.grid
        await pilot.press("ctrl+o")
        await pilot.pause(0.05)
        assert app.screen.query_one(Input).value == str(tmp_path / "saved.json")


DIALOGS = (("question_mark",), ("ctrl+p",), ("p",), ("n",), ("ctrl+s",), ("ctrl+o",), ("x",), ("L",), ("T",), ("C",))


async def test_focus_returns_to_its_widget_after_every_dialog_from_every_pane(lm, tmp_path):
    """From each pane, each dialog closed with Esc gives focus back to the widget that had it: never to the
    prompt (the Output tab once lost focus, and the next key was typed into the prompt at position 0)."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        text = app.prompt.text
        for pane in "12345":
            await pilot.press(pane)
            focused = app.focused
            assert focused is not None and focused is not app.prompt, pane
            for keys in DIALOGS:
                await pilot.press(*keys)
                await pilot.pause(0.02)
                assert app.screen is not app.screen_stack[0], (pane, keys)
                await pilot.press("escape")
                await pilot.pause(0.02)
                assert app.focused is focused, (pane, keys, app.focused)
        assert app.prompt.text == text


async def test_keys_typed_right_after_e_are_text(lm, tmp_path):
    """e, x, y, z arriving in one burst (as a terminal delivers them): the three letters go into the prompt at its
    end, and x opens no CSV export. The prompt's title says it is being edited until Esc leaves it."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert "e edits" in app.prompt.border_title
        for key in "exyz":
            app.post_message(events.Key(key, key))
        await pilot.pause(0.2)
        assert app.screen is app.screen_stack[0] and app.prompt.text == "The capital of France isxyz"
        assert app.focused is app.prompt and "editing, Esc leaves" in app.prompt.border_title
        await pilot.press("escape")
        assert app.focused is app.grid and "e edits" in app.prompt.border_title


async def test_focus_is_visible_and_the_side_panel_scrolls(lm, tmp_path):
    """The grid's cursor dims when the grid loses focus; Tab moves focus to the side panel, whose border is then
    marked, and which scrolls with the keys."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        focused_cursor, corner = app.grid._style("cursor"), app.grid._style("corner")
        border = app.side.styles.border_left
        await pilot.press("tab")
        await pilot.pause(0.05)
        assert app.focused is app.side and app.side.styles.border_left != border
        assert app.grid._style("cursor") != focused_cursor and app.grid._style("corner") != corner
        await pilot.press("end")
        await pilot.pause(0.05)
        assert app.side.scroll_y > 0
        await pilot.press("shift+tab")
        await pilot.pause(0.05)
        assert app.focused is app.grid and app.grid._style("cursor") == focused_cursor
        await pilot.press("tab", "z")  # hiding the focused side panel hands focus to the grid, not the prompt
        await pilot.pause(0.05)
        assert app.focused is app.grid


async def test_a_refused_toggle_says_so_and_what_to_clear(lm, tmp_path):
    """A toggle the engine refuses reads as refused, names the clash and what to clear, and changes nothing."""
    from layerscope.tui.state import Toggles

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        app.toggles = Toggles(swap=frozenset({10}))
        app.refresh_panes()
        await pilot.press("2", *["down"] * 10, "space")  # drop 10, where 10 is swapped with 11
        await pilot.pause(0.1)
        assert app.toggles == Toggles(swap=frozenset({10}))
        assert notices(app)[-1] == (
            "Refused: drop 10 clashes with swap 10↔11; clear the swap first. The interventions are unchanged."
        )


async def test_layers_cursor_starts_on_a_toggle_and_space_on_block_drops(lm, tmp_path):
    """The Layers cursor starts on the first toggle column (drop): down, Space drops block 1; on the block column,
    Space drops too."""
    from textual.widgets import DataTable

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        app.toggles = type(app.toggles)()
        app.refresh_panes()
        await pilot.press("2")
        table = app.query_one("#layer-table", DataTable)
        assert table.cursor_coordinate == (0, 1) and table.ordered_columns[1].key.value == "drop"
        await pilot.press("down", "space")
        await pilot.pause(0.1)
        assert app.toggles.drop == {1}
        await pilot.press("left", "down", "space")
        await pilot.pause(0.1)
        assert app.toggles.drop == {1, 2}


async def test_heads_sort_goes_to_the_top_names_its_column_and_skips_missing_scores(lm, tmp_path):
    """o cycles only through the score kinds computed so far (none: it says so), the sorted column's header has
    its arrow, and the view and cursor go to the top-ranked head."""
    from textual.widgets import DataTable

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.press("3")
        table = app.query_one("#head-table", DataTable)
        assert table.ordered_columns[0].label.plain == "layer ▲"
        await pilot.press("o")
        assert app.head_pane.sort == "layer" and "No scores to sort by yet" in notices(app)[-1]
        scores = {(layer, head): (layer * 7 + head * 3) % 11 / 10 for layer in range(12) for head in range(4)}
        app.head_pane.set_scores("induction", scores, "test")
        await pilot.press("pagedown", "pagedown", "pagedown")
        await pilot.pause(0.05)
        assert table.scroll_y > 0
        await pilot.press("o")
        await pilot.pause(0.05)
        assert app.head_pane.sort == "induction" and table.scroll_y == 0 and table.cursor_coordinate.row == 0
        assert [c.label.plain for c in table.ordered_columns][3:6] == ["retrieval  ", "induction ▼", "prev-token  "]
        best = max(scores.values())
        layer, head = map(int, table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value.split("."))
        assert scores[(layer, head)] == best
        await pilot.press("o")
        assert app.head_pane.sort == "layer"  # retrieval and previous-token are skipped: not computed


async def test_csv_export_names_method_view_and_interventions(lm, tmp_path):
    """Every CSV line says the method, the view it shows and the interventions its numbers were computed with
    (the baseline's: none), and its tokens are the engine's."""
    import csv

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        for view, path in (("intervened", tmp_path / "int.csv"), ("baseline", tmp_path / "base.csv")):
            await pilot.press("x")
            app.screen.query_one(Input).value = str(path)
            await pilot.press("enter")
            await pilot.pause(0.1)
            rows = list(csv.DictReader(path.open(encoding="utf-8")))
            grid = getattr(app.runs.results, view)
            assert list(rows[0])[:4] == ["method", "view", "interventions", "layer"]
            assert {(r["method"], r["view"], r["interventions"]) for r in rows} == {
                ("logit_lens", view, "drop 2" if view == "intervened" else "none")
            }
            assert [r["token"] for r in rows] == [t.token for row in grid.cells for cell in row for t in cell.top]
            await pilot.press("v")  # intervened -> baseline


async def test_copy_cell_gives_raw_tokens(lm, tmp_path):
    """y copies the cell with the tokens as the model wrote them (quoted: ' Paris' with its space, never the grid's
    '·Paris') and no probability glyphs; with both grids and their KL."""
    from tests.tui_synthetic import synthetic_results

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        await pilot.press("y")
        copied = app.clipboard
        want = synthetic_results()
        base, intervened = want.baseline.cells[12][4], want.intervened.cells[12][4]
        assert copied.splitlines()[0] == 'row 11 · position 4 · prompt token " is"'
        assert f'  {base.top[0].prob:.4f}  " Paris"' in copied and f'  {intervened.top[0].prob:.4f}  " Lyon"' in copied
        assert f"KL(base‖int) {want.kl_base_int[12][4]:.4f} nats" in copied
        assert '"·' not in copied and not any(glyph in copied for glyph in "▁▂▃▄▅▆▇█")
        assert notices(app)[-1] == f"copied cell 11@4 · {len(copied.encode())} B (OSC 52)"


async def test_palette_lists_every_action_with_its_key_and_help_is_grouped_by_pane(lm, tmp_path):
    """The palette finds 'side', 'length' and 'continuation', titles carry their keys and fit at 80 columns; a
    pane's command runs on its pane (here the Heads mask mode); help lists the keys under each pane's name."""
    from textual.widgets import DataTable

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        titles = [command.title for command in app.get_system_commands(app.screen)]
        for word, title in (
            ("side", "Side panel (z)"),
            ("length", "Continuation length (n)"),
            ("continuation", "Continuation length (n)"),
            ("mask mode", "Mask mode (u)"),
            ("run", "Run (Ctrl+R, F5)"),
            ("sort", "Sort (o)"),
        ):
            assert title in [t for t in titles if word in t.lower()], word
        assert all(len(title) <= 40 for title in titles)
        await pilot.press("ctrl+p", *"mask mode")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.toggles.mask_mode == "uniform" and app.tabs.active == "tab-heads"
        await pilot.press("question_mark")
        await pilot.pause(0.1)
        assert "Keys by pane · remap by id in keymap.toml · Esc closes" in screen_text(app)
        table = app.screen.query_one(DataTable)
        first = [str(table.get_row_at(i)[0]) for i in range(table.row_count)]
        assert [row for row in first if row in ("Everywhere", "Lens grid", "Layers", "Heads", "Overview")] == [
            "Everywhere",
            "Lens grid",
            "Layers",
            "Heads",
            "Overview",
        ]
        assert "Space" in first[first.index("Layers") : first.index("Heads")] and "o" in first[first.index("Heads") :]


@pytest.mark.parametrize("size", [(80, 24), (100, 30)])
async def test_side_panel_shows_the_intervened_cell_without_wrapping_a_label(lm, tmp_path, size):
    """At 80 and 100 columns, with interventions on, the side panel shows (without scrolling) the intervened
    entropy and KL(base‖int) under the baseline's; the answer lines break between labels, never inside one."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=size) as pilot:
        await open_session(app, pilot, tmp_path)
        region = app.side.region
        shown = [line[region.x : region.right] for line in screen_text(app).splitlines()[region.y : region.bottom]]
        side = "\n".join(shown)
        assert "int. H 1.25 bits" in side and "KL(base‖int) 3.5000 nats" in side, side
        assert "(stays top-1 from 6)" in side and "(stays top-1 from 5)" in side, side


async def test_status_line_at_80_columns_leads_with_the_running_phase(lm, tmp_path):
    """A long head-score run at 80 columns: the phase with its count, the time and Esc are on screen in full;
    the interventions follow, shortened."""
    from layerscope.tui.state import Toggles

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await open_session(app, pilot, tmp_path)
        app.toggles = Toggles(drop=frozenset({2}), swap=frozenset({5}), freeze=8)
        app.runs.begin()
        app.runs.set_progress(app.runs.run_id, "retrieval scores", 10, 75)
        app.show_progress()
        await pilot.pause(0.05)
        line = screen_text(app).splitlines()[-2]
        assert line.lstrip().startswith("retrieval scores 10/75 · ") and " s · Esc cancels · drop 2 +2 more" in line
        from textual.widgets._toast import Toast, ToastRack

        if not app.screen.query(ToastRack):  # the headless driver mounts none; a terminal does
            await app.screen.mount(ToastRack(id="textual-toastrack"))
        app.notify("a long notice " * 12, severity="error")  # notices stay above the status line and footer
        await pilot.pause(0.3)
        toasts = list(app.screen.query(Toast))
        assert toasts and all(toast.region.bottom <= app.status.region.y for toast in toasts)
        assert screen_text(app).splitlines()[-2].lstrip().startswith("retrieval scores 10/75 · ")
        app.runs.end(app.runs.run_id)
