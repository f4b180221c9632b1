"""The explorer's head pattern view (Enter on a head): its grid, detail and chart are the engine's
attention_pattern, baseline and with the interventions; Space masks the head; other families get one notice."""

from __future__ import annotations

import pytest

from layerscope.analyses.heads import attention_pattern
from layerscope.interventions import DropBlocks, MaskHeads
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.methods import REGISTRY
from layerscope.tui.state import Toggles
from tests.tiny import tiny_model
from tests.tui_synthetic import TINY_PROMPT, notices, settle, tiny_app, tiny_llama

PROMPT = TINY_PROMPT


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path) -> LayerscopeApp:
    return tiny_app(lm, tmp_path, PROMPT)


async def open_pattern(app, pilot, head: tuple[int, int]) -> None:
    await pilot.press("3")
    table = app.head_pane.query_one("DataTable")
    table.move_cursor(row=table.get_row_index(f"{head[0]}.{head[1]}"))
    await pilot.press("enter")
    await settle(pilot)
    await pilot.pause(0.3)


async def test_enter_on_a_head_shows_its_pattern(lm, tmp_path):
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.toggles = Toggles(drop=frozenset({0}))
        await open_pattern(app, pilot, (2, 1))
        ids = lm.encode(PROMPT)
        base = attention_pattern(lm, ids, [(2, 1)]).weights[2, 1]
        dropped = attention_pattern(lm, ids, [(2, 1)], [DropBlocks((0,))]).weights[2, 1]
        assert app.tabs.active == "tab-lens" and app.grid.method is REGISTRY["head_pattern"]
        shown = app.grid.shown  # the intervened view first, as for the lens
        n = len(base)
        assert [[shown.cells[key][query].weight for key in range(n)] for query in range(n)] == dropped
        assert [[app.grid.baseline.cells[key][query].weight for key in range(n)] for query in range(n)] == base
        query, key = app.grid.cursor_position, app.grid.cursor_layer
        assert (query, key) == (n - 1, n - 1)
        chart = app.chart_data()[0]
        assert [s.values for s in chart.series] == [base[query], dropped[query]] and chart.cursor == key
        strongest = max(range(n), key=lambda k: (base[query][k], -k))
        detail = app.detail.plain
        assert detail.startswith("head 2.1 pattern") and f"{base[query][strongest]:5.1%}" in detail

        await pilot.press("space")  # mask it from here: the pattern comes again, now with the mask
        await settle(pilot)
        assert (2, 1) in app.toggles.masked_heads
        masked = attention_pattern(lm, ids, [(2, 1)], [DropBlocks((0,)), MaskHeads(((2, 1),), "zero")])
        assert [[app.grid.shown.cells[k][q].weight for k in range(n)] for q in range(n)] == masked.weights[2, 1]
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert app.grid.method is REGISTRY["logit_lens"]


async def test_a_family_without_the_attention_functions_says_so(tmp_path):
    app = make_app(tiny_model("bloom"), tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        await open_pattern(app, pilot, (0, 0))
        said = [n for n in notices(app) if "not available for bloom" in n]
        assert len(said) == 1 and app.grid.method is REGISTRY["logit_lens"] and not app.runs.running
