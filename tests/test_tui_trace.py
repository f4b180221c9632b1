"""The explorer's causal trace on a tiny model, against the engine's `trace_prompt`."""

from __future__ import annotations

import re

import pytest
import torch

from layerscope.analyses.causal_trace import trace_prompt
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.export import grid_text
from layerscope.tui.methods import REGISTRY
from tests.tui_synthetic import TINY_PROMPT, notices, settle, tiny_app, tiny_llama

PROMPT = TINY_PROMPT


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path) -> LayerscopeApp:
    return tiny_app(lm, tmp_path, PROMPT)


async def ask_trace(pilot, subject: str, answer: str) -> None:
    """C, then the subject and the answer dialogs (their inputs start with the last subject / empty)."""
    await pilot.press("C")
    await pilot.pause(0.1)
    app = pilot.app
    app.screen.query_one("#answer").value = subject
    await pilot.press("enter")
    await pilot.pause(0.1)
    app.screen.query_one("#answer").value = answer
    await pilot.press("enter")


async def test_trace_grid_detail_and_chart_match_the_engine(lm, tmp_path):
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await ask_trace(pilot, "france", "")
        await settle(pilot)
        want = trace_prompt(lm, PROMPT, "france")  # the answer: the model's own next token
        trace = app.runs.other[1].baseline
        assert app.grid.baseline is trace and trace.answer_id == want.answer_id and trace.layers == want.layers
        torch.testing.assert_close(trace.values("value"), want.values("value"), atol=1e-6, rtol=0)
        torch.testing.assert_close(trace.values(), want.values(), atol=1e-6, rtol=0)
        assert want.values().abs().max() > 1e-5  # restoring states changes the answer's probability
        assert trace.corrupted["p_answer"] == pytest.approx(want.corrupted["p_answer"], abs=1e-6)

        await pilot.press("home", "right", "right")
        await pilot.pause(0.3)
        layer, position = app.grid.cursor_layer, app.grid.cursor_position
        cell = want.cells[layer][position]
        detail = app.detail.plain
        clean, corrupted = map(float, re.search(r"clean p ([\d.]+) · corr. p ([\d.]+)", detail).groups())
        assert clean == pytest.approx(want.clean["p_answer"], abs=6e-5)
        assert corrupted == pytest.approx(want.corrupted["p_answer"], abs=6e-5)
        p_answer = float(re.search(r"p_answer ([\d.]+)", detail).group(1))
        effect = float(re.search(r"indirect effect ([+-][\d.]+)", detail).group(1))
        assert p_answer == pytest.approx(cell.value, abs=6e-5) and effect == pytest.approx(
            cell.indirect_effect, abs=6e-5
        )
        assert REGISTRY["causal_trace"].summary(trace.cells[layer][position], 8).text == f"{cell.indirect_effect:+.3f}"
        assert f"indirect effect @{position}" in app.charts(40, 30).plain
        assert (
            grid_text(app.grid.method, app.grid.shown).splitlines()[1].split("\t")[1]
            == f"{want.cells[0][0].indirect_effect:+.3f}"
        )
        app.export_csv(tmp_path / "trace.csv")
        lines = (tmp_path / "trace.csv").read_text().splitlines()
        assert "indirect_effect" in lines[0] and len(lines) == 1 + len(want.layers) * len(want.tokens)

        await ask_trace(pilot, "paris", "rome")  # a given answer goes after a space: ' rome'
        await settle(pilot)
        assert app.runs.other[1].baseline.answer_id == trace_prompt(lm, PROMPT, "paris", " rome").answer_id

        await pilot.press("ctrl+r")  # the lens grid comes back
        await settle(pilot)
        assert app.grid.baseline is app.runs.results.baseline and app.runs.results.baseline.method == "logit_lens"


async def test_trace_errors_and_cancel_keep_the_app_up(lm, tmp_path):
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await ask_trace(pilot, "rome", "")
        await settle(pilot)
        assert sum("does not occur in the prompt" in n for n in notices(app)) == 1 and app.runs.other is None
        with app.model_lock:  # the worker waits for the model, so Esc lands before its first cell
            await ask_trace(pilot, "france", "")
            await pilot.pause(0.1)
            await pilot.press("escape")
        await settle(pilot)
        assert any("causal trace cancelled" in n for n in notices(app)) and app.runs.other is None
        assert not app.runs.running and app.grid.baseline is app.runs.results.baseline
