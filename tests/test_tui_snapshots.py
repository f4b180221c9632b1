"""Snapshots of the explorer: main screen at 80x24 and 160x50, and each shipped theme.

The results come from a session file computed once on the demo model, so every
snapshot shows the same real grid without re-running the model.
Update after a deliberate change: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from layerscope.tui.app import LayerscopeApp
from layerscope.tui.state import Results, Session, Toggles
from layerscope.tui.themes import SHIPPED_THEMES

pytestmark = pytest.mark.demo
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def session_file(demo_lm, tmp_path_factory):
    from layerscope.analyses.compare import greedy_continuation
    from layerscope.tui.compute import empty_grid, lens_rows

    ids = demo_lm.encode(PROMPT)
    toggles = Toggles(drop=frozenset({2}))
    baseline, intervened = empty_grid(demo_lm, "logit_lens", ids), empty_grid(demo_lm, "logit_lens", ids)
    kl = []
    for row in lens_rows(demo_lm, ids, toggles.interventions(demo_lm.n_blocks), 5, lambda: False):
        for grid, cells in ((baseline, row.baseline), (intervened, row.intervened)):
            grid.layers.append(row.label)
            grid.cells.append(cells)
        kl.append(row.kl_base_int)
    continuation = {"baseline": greedy_continuation(demo_lm, ids, 4).text}
    path = tmp_path_factory.mktemp("snap") / "session.json"
    Session(demo_lm.name, PROMPT, "logit_lens", toggles, Results(baseline, intervened, kl, continuation)).save(path)
    return path


def snapshot(snap_compare, demo_lm, tmp_path, session_file, size, theme=None, keys=()):
    app = LayerscopeApp(lm=demo_lm, theme=theme, theme_folders=[SHIPPED_THEMES],
                        keymap_path=tmp_path / "keymap.toml")

    async def run_before(pilot):
        await pilot.pause(0.1)
        app.load_session(session_file)
        await pilot.press("escape", "1", *keys)
        await pilot.pause(0.5)  # the chart timer ticks every 0.2 s
        app.clear_notifications()
        await pilot.pause(0.1)

    return snap_compare(app, terminal_size=size, run_before=run_before)


def test_main_screen_80x24(snap_compare, demo_lm, tmp_path, session_file):
    assert snapshot(snap_compare, demo_lm, tmp_path, session_file, (80, 24), keys=("down", "down", "right"))


def test_main_screen_160x50(snap_compare, demo_lm, tmp_path, session_file):
    assert snapshot(snap_compare, demo_lm, tmp_path, session_file, (160, 50), keys=("down", "right", "right", "v", "v"))


@pytest.mark.parametrize("theme", ["layerscope-dark", "layerscope-light", "layerscope-high-contrast"])
def test_theme(snap_compare, demo_lm, tmp_path, session_file, theme):
    assert snapshot(snap_compare, demo_lm, tmp_path, session_file, (100, 30), theme=theme, keys=("down",))


def test_no_color(snap_compare, demo_lm, tmp_path, session_file, monkeypatch):
    """NO_COLOR: Textual draws in monochrome; probability glyphs and the ≠ marks still carry the values."""
    monkeypatch.setenv("NO_COLOR", "1")
    assert snapshot(snap_compare, demo_lm, tmp_path, session_file, (80, 24), keys=("down",))
