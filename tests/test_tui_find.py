"""`/` finds a token in the grid ([ and ] go to the previous and next match), `:` goes to a position or row."""

from __future__ import annotations

import pytest

from layerscope.errors import LayerscopeError
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.grid_view import find_cell, parse_jump
from layerscope.tui.themes import SHIPPED_THEMES
from tests.tui_synthetic import FINAL, FIRST_FINAL, LAYERS, VOCAB, tiny_llama, write_session

TEXTS = [["a", "·Paris", "b"], ["·paris", "c", "d"]]  # [position][row]


def text_at(row: int, position: int) -> str:
    return TEXTS[position][row]


def test_find_goes_in_reading_order_and_around():
    assert find_cell(text_at, 3, 2, (0, 0), "paris") == (1, 0)
    assert find_cell(text_at, 3, 2, (1, 0), "paris") == (0, 1)  # the next position's first row
    assert find_cell(text_at, 3, 2, (0, 1), "paris") == (1, 0)  # around the end
    assert find_cell(text_at, 3, 2, (1, 0), " Paris", step=-1) == (0, 1)  # back, around the start
    assert find_cell(text_at, 3, 2, (0, 0), "rome") is None
    assert find_cell(text_at, 3, 2, (1, 0), "paris") != (1, 0)  # the start cell itself comes last


def test_parse_jump():
    rows = ["emb", "0", "1", "2"]
    assert parse_jump("3", rows) == (None, 3) and parse_jump("L1", rows) == (2, None)
    assert parse_jump("emb 4", rows) == (0, 4) and parse_jump("2 l0", rows) == (1, 2)
    with pytest.raises(LayerscopeError, match="'L9' is neither a position"):
        parse_jump("L9", rows)
    with pytest.raises(LayerscopeError, match="Type a position"):
        parse_jump("  ", rows)


async def test_find_and_jump_in_the_explorer(tmp_path):
    app = LayerscopeApp(lm=tiny_llama(), theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml")
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.pause(0.05)
        app.load_session(write_session(tmp_path / "session.json"))
        await pilot.press("escape", "1", "v")  # the baseline view: ' Paris' from row FIRST_FINAL[4] at position 4
        assert app.grid.view == "baseline"
        await pilot.press("ctrl+home", "home")
        await pilot.press("slash", *"paris", "enter")
        paris = VOCAB.index(" Paris")
        assert FINAL[4] == paris and (app.grid.cursor_layer, app.grid.cursor_position) == (FIRST_FINAL[4], 4)
        await pilot.press("right_square_bracket")
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (FIRST_FINAL[4] + 1, 4)
        await pilot.press("left_square_bracket", "left_square_bracket")  # back past the first: around the end
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (len(LAYERS) - 1, 4)
        await pilot.press("colon", *"2 L5", "enter")
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (LAYERS.index("5"), 2)
        await pilot.press("colon", *"L99", "enter")
        await pilot.pause(0.1)
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (LAYERS.index("5"), 2)
        assert any("'L99' is neither a position" in n.message for n in app._notifications)
