"""Long work in the explorer: an estimate of the time left, and the Heads pane's quick setting."""

from __future__ import annotations

import pytest

from layerscope.analyses.induction import induction_scores
from layerscope.tui import runs as runs_module
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.runs import RunController
from layerscope.tui.themes import SHIPPED_THEMES
from layerscope.tui.views import duration
from tests.tui_synthetic import settle, tiny_llama


def test_time_left_is_the_phase_pace_so_far(monkeypatch):
    """10 of 75 retrieval tests in 218 s: 65 to go at 21.8 s each. A new phase starts its own clock."""
    now = [100.0]
    monkeypatch.setattr(runs_module.time, "monotonic", lambda: now[0])
    runs = RunController()
    run = runs.begin()
    runs.set_progress(run, "retrieval scores", 0, 75)
    assert runs.time_left() is None  # no step done yet: no pace to go by
    now[0] += 218.0
    runs.set_progress(run, "retrieval scores", 10, 75)
    assert runs.time_left() == pytest.approx(218.0 / 10 * 65)
    assert duration(runs.time_left()) == "24 min"
    now[0] += 5.0
    runs.set_progress(run, "generating baseline", 1, 12)  # another phase: its first step is no pace yet
    assert runs.time_left() is None
    now[0] += 2.0
    runs.set_progress(run, "generating baseline", 3, 12)
    assert runs.time_left() == pytest.approx(2.0 / 2 * 9)


def test_duration_reads_as_people_say_it():
    assert [duration(s) for s in (4.4, 59.4, 61, 1417, 3600, 7500)] == [
        "4 s",
        "59 s",
        "1 min",
        "24 min",
        "1 h 0 min",
        "2 h 5 min",
    ]


async def test_quick_setting_scores_with_fewer_samples(tmp_path):
    lm = tiny_llama()
    app = LayerscopeApp(lm=lm, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml")
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "3", "f", "i")  # from the prompt (no prompt given) to the Heads pane
        await settle(pilot)
        want = {(h.layer, h.head): h.score for h in induction_scores(lm, samples=3).heads}
        assert app.head_pane.scores["induction"] == pytest.approx(want)
        assert app.head_pane.sources["induction"].endswith("3 samples, quick (not your prompt)")
        assert app.head_pane.scores["induction"] != pytest.approx(
            {(h.layer, h.head): h.score for h in induction_scores(lm).heads}
        )


async def test_while_the_model_loads_the_panes_say_so_and_ctrl_r_waits_for_it(tmp_path):
    """The first load fails (no such folder): the panes say no model is loaded. During the next load they say
    what is loading; Ctrl+R then is no refusal, and the prompt runs once the model is there."""
    from tests.saved import save_tiny_llama

    class Recording(LayerscopeApp):
        """Keeps every notice's text, however soon it times out."""

        said: list[str] = []

        def notify(self, message: str, **options) -> None:
            self.said.append(message)
            super().notify(message, **options)

    folder = save_tiny_llama(tmp_path / "tiny")
    app = Recording(
        model=str(tmp_path / "missing"),
        theme_folders=[SHIPPED_THEMES],
        keymap_path=tmp_path / "keymap.toml",
        continuation_tokens=1,
    )
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        assert app.lm is None and "No model is loaded: L loads one." in str(app.detail_view.render())
        app.prompt.text = "the capital of france is"
        app.start_load(str(folder))  # no await until the checks: the load's answer cannot be handled before them
        app.action_run()
        app.flush_charts()
        assert f"Loading {folder} … 0 s" in str(app.detail_view.render())
        assert f"Loading {folder}" in str(app.head_pane.query_one("#head-hint").render())
        assert app.said[-1] == f"Ctrl+R: the prompt runs as soon as {folder} is loaded."
        await settle(pilot)
        assert app.lm is not None and app.runs.results.baseline is not None
        assert len(app.runs.results.baseline.cells) == app.lm.n_blocks + 1
        assert str(app.detail_view.render()).startswith("answer ")


async def test_the_loading_notice_survives_panes_going_away(tmp_path):
    """The chart timer may tick while the app closes and its panes are removed: saying what loads must not raise
    (it did: the first frame benchmark's app died at exit)."""
    app = LayerscopeApp(
        model=str(tmp_path / "missing"), theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml"
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.runs.begin_load("slow-model")
        await app.layer_pane.remove()
        app.flush_charts()
        assert "Loading slow-model" in str(app.head_pane.query_one("#head-hint").render())
