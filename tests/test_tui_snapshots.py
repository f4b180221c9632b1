"""Snapshots of the explorer: main screen at 80x24 and 160x50, each shipped theme, and NO_COLOR.

They show the hand-written session of tests/tui_synthetic.py beside a tiny random model that never
runs, so no number computed on this machine is printed and the SVGs cannot drift between machines.
The real numbers are checked with a tolerance in test_tui_app.py.
Update after a deliberate change: pytest tests/test_tui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from layerscope.tui.app import LayerscopeApp
from layerscope.tui.themes import SHIPPED_THEMES
from tests.tui_synthetic import tiny_llama, write_session


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


@pytest.fixture(scope="module")
def session_file(tmp_path_factory):
    return write_session(tmp_path_factory.mktemp("snap") / "session.json")


def snapshot(snap_compare, lm, tmp_path, session_file, size, theme=None, keys=()):
    app = LayerscopeApp(lm=lm, theme=theme, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml")

    async def run_before(pilot):
        await pilot.pause(0.1)
        app.load_session(session_file)
        await pilot.press("escape", "1", *keys)
        await pilot.pause(0.5)  # the chart timer ticks every 0.2 s
        app.clear_notifications()
        await pilot.pause(0.1)

    return snap_compare(app, terminal_size=size, run_before=run_before)


def test_main_screen_80x24(snap_compare, lm, tmp_path, session_file):
    assert snapshot(snap_compare, lm, tmp_path, session_file, (80, 24), keys=("ctrl+home", "down", "left"))


def test_main_screen_160x50(snap_compare, lm, tmp_path, session_file):
    assert snapshot(snap_compare, lm, tmp_path, session_file, (160, 50), keys=())


@pytest.mark.parametrize("theme", ["layerscope-dark", "layerscope-light", "layerscope-high-contrast"])
def test_theme(snap_compare, lm, tmp_path, session_file, theme):
    assert snapshot(snap_compare, lm, tmp_path, session_file, (100, 30), theme=theme, keys=("up",))


def test_no_color(snap_compare, lm, tmp_path, session_file, monkeypatch):
    """NO_COLOR: Textual draws in monochrome; probability glyphs and the ≠ marks still carry the values."""
    monkeypatch.setenv("NO_COLOR", "1")
    assert snapshot(snap_compare, lm, tmp_path, session_file, (80, 24), keys=("up", "left"))


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
def test_overview(snap_compare, lm, tmp_path, session_file, size):
    assert snapshot(snap_compare, lm, tmp_path, session_file, size, keys=("5", "left", "up"))


@pytest.mark.parametrize("size", [(80, 24), (160, 50)])
def test_visible_toggles(snap_compare, lm, tmp_path, session_file, size):
    """The session's drop of block 2 and a masked head, as [x] marks in the Layers and Heads panes."""
    assert snapshot(
        snap_compare, lm, tmp_path, session_file, size, keys=("2",) if size == (80, 24) else ("3", "down", "space", "2")
    )
