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
    return LayerscopeApp(lm=lm, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml",
                         continuation_tokens=1, **kwargs)


async def open_session(app, pilot, tmp_path) -> None:
    await pilot.pause(0.05)
    app.load_session(write_session(tmp_path / "session.json"))
    await pilot.press("escape", "1")
    await pilot.pause(0.3)


def draw_failures(app) -> list[str]:
    return [n for n in notices(app) if "Could not draw" in n]


async def draw_everything(app, pilot, theme: str) -> None:
    """Every pane (with its chart, overview or table) and every kind of dialog, drawn in `theme`."""
    app.theme = theme
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


async def test_every_listed_theme_draws_every_pane_chart_and_dialog(lm, tmp_path):
    """Each name --list-themes prints (the ANSI themes among them: their 'ansi_blue' is no Rich colour) draws the
    lens grid with its detail and charts, the Layers, Heads, Output and Overview panes, help, the palette, the
    sample picker, a question and a confirmation, then the causal trace's grid and chart: the app stays up and
    no drawing fails."""
    names, problems = theme_names([SHIPPED_THEMES])
    assert not problems and {"ansi-dark", "ansi-light", "layerscope-dark"} <= set(names)
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_session(app, pilot, tmp_path)
        assert set(names) <= set(app.available_themes)
        for theme in names:
            await draw_everything(app, pilot, theme)
        app.prompt.text = TRACE_PROMPT
        app.start_trace(TRACE_PROMPT, "france", None)
        await settle(pilot)
        assert app.grid.method.name == "causal_trace"
        for theme in names:
            app.theme = theme
            app._charts_dirty = True
            app.flush_charts()
            await pilot.pause(0.02)
            assert "indirect effect" in str(app.chart.render()), theme
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


DIALOGS = (("question_mark",), ("ctrl+p",), ("p",), ("n",), ("ctrl+s",), ("ctrl+o",), ("x",), ("L",), ("T",),
           ("C",))


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
        focused_cursor, corner, border = app.grid._style("cursor"), app.grid._style("corner"), app.side.styles.border_left
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
