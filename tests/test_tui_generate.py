"""The explorer's grid grown over the continuation (the default; `g` keeps it to the prompt): its columns against
the engine's `lens_generate`, the divergence as a grid position (`d`), and Esc keeping the columns computed so
far."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from layerscope.analyses.lens_generate import lens_generate
from layerscope.interventions import DropBlocks
from layerscope.tui.grid_view import token_label
from layerscope.tui.messages import ColumnComputed, RowComputed, RunFinished, RunStarted
from layerscope.tui.methods import REGISTRY
from layerscope.tui.runs import Cancelled, RunController
from layerscope.tui.state import Toggles
from layerscope.tui.workers import RunContext, lens_run
from tests.test_lens_generate import random_lens
from tests.test_tui_app import make_app
from tests.tiny import random_ids, tiny_model
from tests.tui_synthetic import notices, screen_text, settle


def top1(grid) -> list[list[int]]:
    return [[cell.top[0].id for cell in row] for row in grid.cells]


@pytest.mark.demo
async def test_the_grid_grows_over_both_continuations_and_d_goes_to_their_divergence(demo_lm, tmp_path):
    prompt = "The capital of France is"
    ids = demo_lm.encode(prompt)
    app = make_app(demo_lm, tmp_path, prompt=prompt)
    app.continuation_tokens = 4
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        assert app.runs.results.baseline.prompt_length == 5  # the grid grows over the continuation by default
        await pilot.press("escape", "d")  # no intervention yet: d says how to get a divergence
        assert "No intervened run to compare" in notices(app)[-1]
        await pilot.press("2", *["down"] * 15, "space")  # drop block 15: it runs
        await settle(pilot)
        assert app.toggles.drop == {15}
        results = app.runs.results
        baseline = lens_generate(demo_lm, ids, 4)
        dropped = lens_generate(demo_lm, ids, 4, interventions=[DropBlocks((15,))])
        assert results.baseline.token_ids == baseline.token_ids and results.baseline.prompt_length == 5
        assert results.intervened.token_ids == dropped.token_ids != baseline.token_ids
        assert top1(results.baseline) == top1(baseline) and top1(results.intervened) == top1(dropped)
        assert [len(row) for row in results.kl_base_int] == [9] * (demo_lm.n_blocks + 1)
        assert results.continuation["intervened"] == demo_lm.tokenizer.decode(dropped.token_ids[5:])
        await pilot.press("4")
        assert "continuations diverge at grid position 6" in app.output_text.plain
        await pilot.press("d")
        assert app.tabs.active == "tab-lens" and app.grid.cursor_position == 6
        await pilot.pause(0.2)
        base_token, int_token = (token_label(grid.tokens[6], 12) for grid in (baseline, dropped))
        label = f"   6+{token_label(dropped.tokens[6], 9)}"  # the intervened view's token, marked generated
        assert any(line.startswith(label) for line in screen_text(app).splitlines())
        assert f"@ 6 {base_token} / int. {int_token} (generated)\n" in app.detail.plain
        await pilot.press("g", "ctrl+r")  # the grid over the prompt alone, from the next run
        await settle(pilot)
        assert app.runs.results.baseline.prompt_length is None and len(app.runs.results.baseline.tokens) == 5
        assert app.runs.results.continuation["intervened"] == demo_lm.tokenizer.decode(dropped.token_ids[5:])
        await pilot.press("d")
        assert "g grows it over the continuation again" in notices(app)[-1]


def test_esc_while_generating_keeps_the_columns_so_far():
    """The run is cancelled once its first generated column is posted: that column stays, no continuation."""
    lm = tiny_model("llama")
    posted: list[object] = []
    worker = SimpleNamespace(is_cancelled=False)

    def post(message: object) -> None:
        posted.append(message)
        worker.is_cancelled = isinstance(message, ColumnComputed)

    run = RunContext(post, worker, 1, lm, threading.Lock())  # type: ignore[arg-type]  # a worker's flag is all
    with pytest.raises(Cancelled):
        lens_run(run, "the cat sat on", "logit_lens", Toggles(drop={1}), 3, None, 5, grow=True)
    controller = RunController()
    controller.begin()
    for message in posted:
        if isinstance(message, RunStarted):
            controller.start_results(1, message.baseline, message.intervened, message.origin)
        elif isinstance(message, RowComputed):
            controller.take_pending()
            controller.add_row(message.row)
        elif isinstance(message, ColumnComputed):
            controller.add_column(message.column)
    assert not any(isinstance(message, RunFinished) for message in posted)
    ids = lm.encode("the cat sat on")
    results = controller.results
    for grid, edits in ((results.baseline, []), (results.intervened, [DropBlocks((1,))])):
        want = lens_generate(lm, ids, 1, interventions=edits)
        assert grid.token_ids == want.token_ids and top1(grid) == top1(want)
    assert all(len(row) == 5 for row in results.kl_base_int)


def test_each_lens_method_grows_its_own_grid():
    """The logit lens's columns ignore a loaded tuned lens; the tuned lens's translate; Patchscope has none."""
    lm, ids = tiny_model("llama"), random_ids(6, seed=7)
    lens = random_lens(lm, seed=1)
    for method, translated in (("logit_lens", None), ("tuned_lens", lens)):
        columns = REGISTRY[method].columns
        assert columns is not None
        got = list(columns(lm, ids, [], 3, 2, lambda: False, lens))
        want = lens_generate(lm, ids, 3, top_k=2, lens=translated)
        assert [column.token_ids[0] for column in got] == want.token_ids[6:]
        assert [[cell.top[0].id for cell in column.cells[0]] for column in got] == [
            [row[position].top[0].id for row in want.cells] for position in range(6, 9)
        ]
    assert REGISTRY["patchscope"].columns is None
