"""The explorer driven by Textual's Pilot on the real demo model (one loaded model for all tests)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from textual.widgets import DataTable, Input

from layerscope.tui.app import LayerscopeApp
from layerscope.tui.grid_view import DecodeGridView
from layerscope.tui.panes import ChartPane
from layerscope.tui.themes import FALLBACK_THEME, SHIPPED_THEMES
from tests.tui_synthetic import notices, prompt_part, screen_text, settle

pytestmark = pytest.mark.demo


def make_app(lm, tmp_path, **kwargs) -> LayerscopeApp:
    """No user config: shipped themes only, a keymap path that does not exist unless a test writes it."""
    kwargs.setdefault("theme_folders", [SHIPPED_THEMES])
    return LayerscopeApp(lm=lm, keymap_path=tmp_path / "keymap.toml", continuation_tokens=2, **kwargs)


async def type_text(pilot, text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


async def test_main_flow(demo_lm, tmp_path):
    """Type, run, move the cursor, drop a block (grid and chart change), refuse a conflicting swap,
    mask a head, save the session and load it into a fresh app."""
    from layerscope.analyses.lens import logit_lens
    from layerscope.interventions import DropBlocks, MaskHeads

    app = make_app(demo_lm, tmp_path)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await type_text(pilot, "Paris is the capital of")
        await pilot.press("ctrl+r")
        await settle(pilot)
        ids = demo_lm.encode("Paris is the capital of")
        expected = logit_lens(demo_lm, ids, top_k=5)
        grid = app.query_one(DecodeGridView)
        baseline = app.runs.results.baseline  # grown over the 2-token continuation: the prompt's part is the lens
        assert baseline.prompt_length == len(ids[0]) and len(baseline.tokens) == len(ids[0]) + 2
        assert prompt_part(baseline).tokens == expected.tokens
        assert [[c.top[0].id for c in row] for row in prompt_part(baseline).cells] == [
            [c.top[0].id for c in row] for row in expected.cells
        ]
        assert app.runs.results.intervened is None and "baseline" in app.runs.results.continuation

        await pilot.press("1", "ctrl+home", "home", "down", "down", "right", "right", "right")
        assert (grid.cursor_layer, grid.cursor_position) == (3, 2)
        cell = expected.cells[3][2]
        assert f"\n2 @ 2 {expected.tokens[2].replace(' ', '·')}\n" in app.detail.plain
        assert f"{cell.top[0].prob:5.1%}" in app.detail.plain
        await pilot.pause(0.5)
        chart_before = str(app.query_one(ChartPane).render())
        assert "KL→final @2 (log)" in chart_before and "KL(base‖int)" not in chart_before

        await pilot.press("2", "down", "down", "down", "space")  # drop block 3 (the cursor starts on drop)
        await settle(pilot)
        assert app.toggles.drop == {3}
        dropped = logit_lens(demo_lm, ids, top_k=5, interventions=[DropBlocks((3,))])
        assert [[c.top[0].id for c in row] for row in prompt_part(app.runs.results.intervened).cells] == [
            [c.top[0].id for c in row] for row in dropped.cells
        ]
        changed = [
            (layer, t)
            for layer in range(len(dropped.cells))
            for t in range(len(ids[0]))
            if dropped.top1(layer, t).id != expected.top1(layer, t).id
        ]
        assert changed and all(grid.changed(layer, t) for layer, t in changed)
        await pilot.press("1")
        await pilot.pause(0.5)
        assert "≠" in screen_text(app)
        chart_after = str(app.query_one(ChartPane).render())
        assert "KL(base‖int) @2" in chart_after and chart_after != chart_before

        await pilot.press("2", "right", "space")  # swap 3<>4 conflicts with the drop: refused with a notice
        await pilot.pause(0.2)
        assert app.toggles.swap == frozenset()
        assert (
            notices(app)[-1] == "Refused: swap 3↔4 clashes with drop 3; clear the drop first. The interventions "
            "are unchanged."
        )

        await pilot.press("3", "space")  # mask head 0.0; applies to the next run
        assert app.toggles.masked_heads == {(0, 0)}
        assert app.query_one("#head-table", DataTable).get_cell("0.0", "mask").plain == "[x] zero"
        await pilot.press("ctrl+r")
        await settle(pilot)
        masked = logit_lens(demo_lm, ids, top_k=5, interventions=[DropBlocks((3,)), MaskHeads(((0, 0),), "zero")])
        assert [[c.top[0].id for c in row] for row in prompt_part(app.runs.results.intervened).cells] == [
            [c.top[0].id for c in row] for row in masked.cells
        ]

        path = tmp_path / "session.json"
        await pilot.press("ctrl+s")
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert path.is_file()
        saved = app.runs.results

        await pilot.press("1", "y")  # copy the cell (OSC 52), the grid, and export the grid as CSV
        top = app.runs.results.intervened.top1(app.grid.cursor_layer, app.grid.cursor_position)
        assert f"{top.prob:.4f}  {json.dumps(top.token, ensure_ascii=False)}" in app.clipboard
        assert "KL(base‖int)" in app.clipboard
        await pilot.press("Y")
        assert app.clipboard.splitlines()[0] == "\t".join(["token", *saved.intervened.layers])
        assert len(app.clipboard.splitlines()) == len(saved.intervened.tokens) + 1
        csv_path = tmp_path / "grid.csv"
        await pilot.press("x")
        app.screen.query_one(Input).value = str(csv_path)
        await pilot.press("enter")
        await pilot.pause(0.1)
        lines = list(csv.reader(io.StringIO(csv_path.read_bytes().decode("utf-8"))))
        lens = saved.intervened.records()
        assert lines[0] == ["method", "view", "interventions", *lens.columns]
        assert lines[1:] == [[row[0], "intervened", "drop 3 · mask 0.0 (zero)", *map(str, row)] for row in lens.lines]

    again = make_app(demo_lm, tmp_path)
    async with again.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("1", "ctrl+o")
        again.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert again.query_one("#prompt").text == "Paris is the capital of"
        assert again.toggles == app.toggles
        assert again.runs.results.baseline == saved.baseline and again.runs.results.intervened == saved.intervened
        assert again.runs.results.kl_base_int == saved.kl_base_int
        assert "≠" in screen_text(again)


async def test_empty_prompt_and_keymap(demo_lm, tmp_path):
    """The run key, remapped by id in the keymap file, refuses an empty prompt with a notice."""
    (tmp_path / "keymap.toml").write_text('run = "f6"', encoding="utf-8")
    app = make_app(demo_lm, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await pilot.pause(0.1)
        assert any("prompt is empty" in n for n in notices(app)) and app.runs.run_id == 0
        assert ("f6", "Run", "run") in app.binding_rows()
        await pilot.press("escape", "question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        app._charts_dirty = True
        await pilot.pause(0.3)  # the chart timer fires under the modal screen without harm
        await pilot.press("escape")
        assert app.is_running
        assert {"Run (F6, F5)", "Save (Ctrl+S)", "Export CSV (x)", "Theme"} <= {
            command.title for command in app.get_system_commands(app.screen)
        }  # the remapped key shows

        await pilot.press("p")  # the sample picker: Enter takes the highlighted (first) prompt
        await pilot.pause(0.1)
        await pilot.press("down", "enter")
        await pilot.pause(0.1)
        assert app.prompt.text == "The capital of Italy is"  # second line of sample_prompts/capitals.jsonl


async def test_bad_model_id_keeps_the_app_up(tmp_path):
    app = LayerscopeApp(
        model=str(tmp_path / "no-such-model"), theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml"
    )
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.lm is None and app.is_running
        assert any("No model directory" in n for n in notices(app))
        await type_text(pilot, "hi")
        await pilot.press("ctrl+r")
        assert any("No model is loaded (L loads one)." in n for n in notices(app))
        await pilot.press("escape", "L")  # another try, with a hub id that cannot be had (offline)
        app.screen.query_one(Input).value = "no-such-org/no-such-model"
        await pilot.press("enter")
        await settle(pilot)
        assert app.lm is None and any("no-such-org/no-such-model" in n for n in notices(app)[1:])


async def test_malformed_theme_falls_back(demo_lm, tmp_path):
    (tmp_path / "mine.toml").write_text("primary = [", encoding="utf-8")
    app = make_app(demo_lm, tmp_path, theme_folders=[tmp_path], theme="mine")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.1)
        assert app.theme == FALLBACK_THEME
        assert any("mine.toml" in n for n in notices(app)) and any("Unknown theme 'mine'" in n for n in notices(app))
        await pilot.press("escape", "t")  # leave the prompt, next theme
        assert app.theme != FALLBACK_THEME


async def test_head_scores_compute_sort_and_load(demo_lm, tmp_path):
    """Induction scores computed in the background fill the table and sort it; a scores JSON loads."""
    from layerscope.analyses.induction import induction_scores

    app = make_app(demo_lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("escape", "3", "i")
        await settle(pilot)
        table = app.query_one("#head-table", DataTable)
        want = {(h.layer, h.head): h.score for h in induction_scores(demo_lm).heads}
        assert app.query_one("HeadPane").scores["induction"] == pytest.approx(want)
        await pilot.press("o")  # layer -> induction (retrieval is skipped: not computed)
        best = max(want, key=want.get)
        assert table.get_row_at(0)[:2] == list(best)
        assert table.get_row_at(0)[4] == f"{want[best]:.3f}"

        heads = [
            {"layer": layer, "head": h, "kv_group": h // 3, "score": (layer * 9 + h) / 1000}
            for layer in range(demo_lm.n_blocks)
            for h in range(demo_lm.adapter.n_heads)
        ]
        path = tmp_path / "scores.json"
        path.write_text(
            json.dumps(
                {
                    "model": demo_lm.name,
                    "kind": "previous_token",
                    "n_blocks": demo_lm.n_blocks,
                    "n_heads": demo_lm.adapter.n_heads,
                    "heads": heads,
                }
            ),
            encoding="utf-8",
        )
        await pilot.press("l")
        app.screen.query_one(Input).value = str(path)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert table.get_cell("2.1", "previous_token") == f"{(2 * 9 + 1) / 1000:.3f}"


async def test_patchscope_switch_and_cancel(demo_lm, tmp_path):
    """m switches the grid to Patchscope decoding (the engine's grid, shown as is); Esc cancels a run,
    which ends with a notice, keeps the results shown and leaves the app usable."""
    from layerscope.analyses.patchscope import patchscope_grid

    app = make_app(demo_lm, tmp_path, prompt="Paris is")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        want = patchscope_grid(demo_lm, demo_lm.encode("Paris is"), top_k=5)
        assert app.method == "patchscope" and app.runs.results.baseline.method == "patchscope"
        assert [[c.top[0].id for c in row] for row in app.runs.results.baseline.cells] == [
            [c.top[0].id for c in row] for row in want.cells
        ]

        with app.model_lock:  # the workers wait for the model, so the cancels land before their first row
            await pilot.press("m")  # back to the lens: starts a run ...
            app.action_run()  # ... which this one replaces
            await pilot.press("escape")
        await settle(pilot)
        assert any("cancelled" in n for n in notices(app))
        assert app.runs.results.baseline.method == "patchscope" and len(app.runs.results.baseline.cells) == len(
            want.cells
        )
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert app.runs.results.baseline.method == "logit_lens"
        assert len(app.runs.results.baseline.cells) == demo_lm.n_blocks + 1


async def test_printed_numbers_match_the_engine(demo_lm, tmp_path):
    """The numbers the snapshots cannot guard (they show a hand-written session): the detail pane's entropy,
    KL to final, top-k probabilities and KL(base‖int), and the Output pane's summary, against the engine's
    grids and the KL formula, with a tolerance."""
    import re

    import torch

    from layerscope.analyses.lens import lens_logits, logit_lens
    from layerscope.interventions import DropBlocks

    prompt = "The capital of France is"
    app = make_app(demo_lm, tmp_path, prompt=prompt)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await pilot.press("2", "down", "down", "space")  # drop block 2 (the cursor starts on drop)
        await settle(pilot)
        assert app.toggles.drop == {2}
        ids = demo_lm.encode(prompt)
        drop = [DropBlocks((2,))]
        grids = {"base": logit_lens(demo_lm, ids, top_k=5), "int.": logit_lens(demo_lm, ids, 5, drop)}
        rows = {
            name: torch.stack(list(lens_logits(demo_lm, ids, i)[0])).float().log_softmax(-1)
            for name, i in (("baseline", ()), ("intervened", drop))
        }
        kl = (rows["baseline"].exp() * (rows["baseline"] - rows["intervened"])).sum(-1)  # [row, position]
        await pilot.press("1")
        for layer, position in ((0, 0), (10, 2), (demo_lm.n_blocks, len(ids[0]) - 1)):
            app.grid.cursor_layer, app.grid.cursor_position = layer, position
            await pilot.pause(0.05)
            detail = app.detail.plain
            for name, h, kl_final in re.findall(r"(base|int\.) H ([\d.]+) bits KL→final ([\d.]+)", detail):
                cell = grids[name].cells[layer][position]
                assert float(h) == pytest.approx(cell.entropy_bits, abs=0.006)
                assert float(kl_final) == pytest.approx(cell.kl_to_final, abs=0.0006)
            lines = [re.findall(r"([\d.]+)% ", line) for line in detail.splitlines() if re.match(r" +[\d.]+% ", line)]
            columns = [[float(line[i]) / 100 for line in lines if len(line) > i] for i in (0, 1)]  # side by side
            probs = columns[0] + columns[1]
            want = [t.prob for name in ("base", "int.") for t in grids[name].cells[layer][position].top]
            assert probs == pytest.approx(want, abs=0.0006)
            shown = float(re.search(r"KL\(base‖int\) ([\d.]+) nats", detail).group(1))
            assert shown == pytest.approx(kl[layer, position].item(), abs=1e-4 + 1e-3 * kl[layer, position].item())
        output = str(app.output.render())
        mean = float(re.search(r"mean KL\(base‖int\) ([\d.]+) nats", output).group(1))
        assert mean == pytest.approx(kl[-1].mean().item(), rel=1e-3, abs=1e-4)
        agree = sum(grids["base"].top1(-1, t).id == grids["int."].top1(-1, t).id for t in range(len(ids[0])))
        assert f"top-1 agreement {agree}/{len(ids[0])}" in output


async def test_first_view_answers_the_demo_prompt(demo_lm, tmp_path):
    """At 100x30, with no key pressed after the run: the detail pane pins ' Paris' and the first layer where it
    is top-1 (computed here from the engine's grid), and the grid shows the cursor on that last cell."""
    from layerscope.analyses.lens import logit_lens

    prompt = "The capital of France is"
    app = make_app(demo_lm, tmp_path, prompt=prompt)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        grid = logit_lens(demo_lm, demo_lm.encode(prompt), top_k=5)
        last = len(grid.tokens) - 1
        final = grid.top1(len(grid.cells) - 1, last)
        stays = min(
            row
            for row in range(len(grid.cells))
            if all(grid.top1(later, last).id == final.id for later in range(row, len(grid.cells)))
        )
        assert final.token == " Paris"
        assert " ".join(app.detail.plain.split()).startswith(  # as one line: the panel breaks it between pieces
            f"answer ·Paris {final.prob:.0%} (stays top-1 from {grid.layers[stays]})"
        )
        assert (app.grid.cursor_layer, app.grid.cursor_position) == (len(grid.cells) - 1, last)
        lines = screen_text(app).splitlines()
        assert any(line.startswith(f"{last:>4} ·is") and "·Paris" in line.split("▏")[0] for line in lines)
