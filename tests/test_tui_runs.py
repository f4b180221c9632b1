"""The run controller, the worker failure path and the grid export: plain rules first, then the real app (Pilot on
a tiny model) with an engine function made to fail with an exception that is not a LayerscopeError."""

from __future__ import annotations

import csv

import pytest

from layerscope.analyses.grid import DecodeGrid
from layerscope.errors import LayerscopeError
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.compute import LayerRow
from layerscope.tui.export import byte_size, export_csv, grid_shape, grid_text
from layerscope.tui.methods import REGISTRY
from layerscope.tui.runs import Cancelled, Job, RunController
from layerscope.tui.state import Results, RunOrigin, Toggles
from layerscope.tui.themes import SHIPPED_THEMES
from tests.tui_synthetic import LAYERS, TOKENS, notices, prompt_part, settle, synthetic_results, tiny_llama

PROMPT = "the cat sat on the mat"


# the controller --------------------------------------------------------------------------------------------------
def origin(prompt: str = PROMPT) -> RunOrigin:
    return RunOrigin("tiny", prompt, "logit_lens", Toggles())


def empty(grid: DecodeGrid) -> DecodeGrid:
    return DecodeGrid(grid.model, grid.method, grid.tokens, grid.token_ids, [], [])


def test_a_new_run_replaces_the_shown_results_at_its_first_row_and_older_runs_are_dropped():
    done = synthetic_results()
    runs = RunController()
    runs.adopt(done, origin("old prompt"))
    first = runs.begin()
    second = runs.begin()
    assert not runs.is_current(first) and runs.is_current(second) and runs.running
    runs.start_results(first, empty(done.baseline), None, origin("stale"))
    assert runs.pending is None  # a stale run's start is dropped
    runs.start_results(second, empty(done.baseline), empty(done.intervened), origin())
    assert runs.results is done  # the old results stay shown until the first row
    assert runs.take_pending() and not runs.take_pending()
    assert runs.origin == origin() and runs.results.baseline.cells == []
    for row, label in enumerate(LAYERS):
        runs.add_row(LayerRow(row, label, done.baseline.cells[row], done.intervened.cells[row], done.kl_base_int[row]))
    assert runs.results.baseline == done.baseline and runs.results.intervened == done.intervened
    assert runs.results.kl_base_int == done.kl_base_int
    assert not runs.set_progress(first, "lens rows", 1, 2) and runs.progress is None
    assert runs.set_progress(second, "lens rows", 1, 2) and runs.progress == ("lens rows", 1, 2)
    assert not runs.end(first) and runs.running
    assert runs.end(second) and not runs.running
    assert not runs.set_progress(second, "late", 2, 2) and runs.progress == ("lens rows", 1, 2)


def test_stale_changes_need_shown_results():
    runs = RunController()
    assert runs.changes(origin("other")) == []
    runs.adopt(synthetic_results(), origin())
    assert runs.changes(origin()) == [] and runs.changes(origin("other")) == ["prompt"]


def test_adopting_a_session_makes_a_running_run_stale():
    runs = RunController()
    running = runs.begin()
    runs.adopt(Results(), origin())
    assert not runs.running and not runs.is_current(running) and runs.pending is None


def test_a_cancelled_load_is_dropped_and_a_replaced_one_too():
    runs = RunController()
    assert runs.cancel_load() is None and runs.load_id == 0
    first = runs.begin_load("a")
    assert runs.cancel_load() == "a" and runs.loading is None and not runs.load_ended(first)
    second = runs.begin_load("b")
    third = runs.begin_load("c")
    assert not runs.load_ended(second) and runs.loading == "c"
    assert runs.load_ended(third) and runs.loading is None


def test_each_worker_end_is_told_in_words():
    run = Job("run", 3, "cancelled; rows kept")
    assert run.failure(None) == ("cancelled; rows kept", "warning")
    assert run.failure(Cancelled()) == ("cancelled; rows kept", "warning")
    assert run.failure(LayerscopeError("bad subject")) == ("bad subject", "error")
    assert run.failure(KeyError("model.norm")) == ("KeyError: 'model.norm'", "error")
    assert run.failure(RuntimeError("CUDA out of memory\nmore detail")) == ("RuntimeError: CUDA out of memory", "error")
    load = Job("load", 1, "loading x cancelled", "x")
    assert load.failure(ValueError("no config")) == ("Could not load 'x': ValueError: no config", "error")
    assert load.failure(LayerscopeError("not a model")) == ("not a model", "error")
    runs, worker = RunController(), object()
    runs.track(worker, run)
    assert runs.job_ended(worker) is run and runs.job_ended(worker) is None


# export ----------------------------------------------------------------------------------------------------------
LENS = REGISTRY["logit_lens"]


def test_grid_text_has_a_line_per_token_and_a_column_per_layer():
    grid = synthetic_results().baseline
    lines = [line.split("\t") for line in grid_text(LENS, grid).splitlines()]
    assert lines[0] == ["token", *LAYERS]
    assert [line[0] for line in lines[1:]] == [token.replace(" ", "·") for token in TOKENS]
    for position, line in enumerate(lines[1:]):
        assert line[1:] == [row[position].top[0].token.replace(" ", "·").replace("\x1b", "␛") for row in grid.cells]
    assert grid_text(LENS, None) == "" and grid_shape(grid) == f"{len(LAYERS)}x{len(TOKENS)}"


def test_export_csv_writes_every_cell_and_rank(tmp_path):
    grid = synthetic_results().intervened
    notice = export_csv(LENS, grid, tmp_path / "grid.csv", "intervened", "drop 2")
    rows = list(csv.DictReader((tmp_path / "grid.csv").open(encoding="utf-8")))
    assert len(rows) == len(LAYERS) * len(TOKENS) * 3  # three ranks per cell
    assert {(r["method"], r["view"], r["interventions"]) for r in rows} == {("logit_lens", "intervened", "drop 2")}
    last = grid.cells[-1][-1].top[0]
    final = [r for r in rows if r["layer"] == LAYERS[-1] and r["position"] == str(len(TOKENS) - 1) and r["rank"] == "0"]
    assert len(final) == 1 and int(final[0]["id"]) == last.id and float(final[0]["prob"]) == pytest.approx(last.prob)
    size = byte_size("x" * (tmp_path / "grid.csv").stat().st_size)
    assert notice == f"exported grid · {len(LAYERS)}x{len(TOKENS)} · {size} CSV → {tmp_path / 'grid.csv'}"
    with pytest.raises(LayerscopeError, match="Nothing to export"):
        export_csv(LENS, None, tmp_path / "none.csv", "baseline", "none")
    assert not (tmp_path / "none.csv").exists()


def test_byte_size_units():
    assert byte_size("é" * 10) == "20 B" and byte_size("x" * 999) == "999 B"
    assert byte_size("x" * 36_400) == "36 KB" and byte_size("x" * 2_400_000) == "2.4 MB"


# every worker failure, through the real app ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path) -> LayerscopeApp:
    return LayerscopeApp(
        lm=lm, theme_folders=[SHIPPED_THEMES], keymap_path=tmp_path / "keymap.toml", continuation_tokens=1
    )


async def start_run(pilot) -> None:
    pilot.app.prompt.text = PROMPT
    await pilot.press("ctrl+r")


async def start_scores(pilot) -> None:
    await pilot.press("escape", "3", "i")


async def start_trace(pilot) -> None:
    pilot.app.start_trace(PROMPT, "cat", None)


@pytest.mark.parametrize(
    ("module", "name", "error", "wanted", "start"),
    [
        ("layerscope.tui.compute", "lens_states", KeyError("model.layers"), "KeyError: 'model.layers'", start_run),
        ("layerscope.analyses.heads", "induction_scores", ValueError("scores"), "ValueError: scores", start_scores),
        ("layerscope.analyses.causal_trace", "trace_prompt", TypeError("trace"), "TypeError: trace", start_trace),
    ],
    ids=["run", "scores", "trace"],
)
async def test_a_worker_that_raises_any_exception_leaves_a_notice_and_a_usable_app(
    lm, tmp_path, monkeypatch, module, name, error, wanted, start
):
    """An engine function the worker calls raises (not a LayerscopeError): a notice, the status says it, nothing
    stays running and the model is free; once the fault is gone, Ctrl+R gives the engine's grid."""
    import importlib

    from layerscope.analyses.lens import logit_lens

    def broken(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(importlib.import_module(module), name, broken)
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await start(pilot)
        await settle(pilot)
        status = str(app.status.render())
        assert wanted in notices(app) and wanted in status, (notices(app), status)
        assert "Esc cancels" not in status and not app.runs.running and app.runs.other is None
        assert not app.model_lock.locked() and not any(w.is_running for w in app.workers)
        assert app.head_pane.scores["induction"] == {}
        monkeypatch.undo()
        await start_run(pilot)
        await settle(pilot)
        want = logit_lens(lm, lm.encode(PROMPT), top_k=5)
        got = prompt_part(app.runs.results.baseline)
        assert [[c.top[0].id for c in row] for row in got.cells] == [[c.top[0].id for c in row] for row in want.cells]
        assert "done in" in str(app.status.render())


async def test_a_load_that_raises_keeps_the_loaded_model(lm, tmp_path, monkeypatch):
    from layerscope.models import loading

    def broken(*_args, **_kwargs):
        raise KeyError("architectures")

    monkeypatch.setattr(loading, "load_model", broken)
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        app.start_load("elsewhere")
        await settle(pilot)
        assert any(n == "Could not load 'elsewhere': KeyError: 'architectures'" for n in notices(app))
        assert "could not load elsewhere; tiny-llama-12 stays loaded" in str(app.status.render())
        assert app.lm is lm and app.runs.loading is None
        app.prompt.text = PROMPT
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert len(app.runs.results.baseline.cells) == lm.n_blocks + 1


async def test_a_late_failure_of_a_finished_run_is_dropped(lm, tmp_path):
    """A cancel that lands just after the run finished (its worker's end comes last) says nothing: the run is done."""
    from layerscope.tui.messages import RunFailed

    app = make_app(lm, tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await start_run(pilot)
        await settle(pilot)
        app.post_message(RunFailed(app.runs.run_id, "late cancel", "warning"))
        await pilot.pause(0.2)
        assert "late cancel" not in notices(app) and "done in" in str(app.status.render())
        assert len(app.runs.results.baseline.cells) == lm.n_blocks + 1


@pytest.mark.parametrize("key", ["ctrl+s", "x"], ids=["save session", "export csv"])
async def test_a_file_error_in_a_dialog_is_a_notice(lm, tmp_path, key):
    """A folder given where a file goes (refused by the writer, as --out is): one notice, and the app stays up
    and usable."""
    from textual.widgets import Input

    target = tmp_path / "taken"
    target.mkdir()
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        await start_run(pilot)
        await settle(pilot)
        await pilot.press(key)
        await pilot.pause(0.1)
        app.screen.query_one(Input).value = str(target)
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert app.is_running and any(n.startswith(f"'{target}' is a folder") for n in notices(app)), notices(app)
        assert target.is_dir() and list(target.iterdir()) == [] and not list(tmp_path.glob(".taken.*"))
        await start_run(pilot)
        await settle(pilot)
        assert "done in" in str(app.status.render())


async def test_a_setting_that_no_intervention_uses_starts_no_run(lm, tmp_path):
    """`s` (the random seed) without a random toggle changes no intervention: nothing reruns. With block 1
    randomised, the same key changes the run, and it reruns."""
    app = make_app(lm, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await start_run(pilot)
        await settle(pilot)
        first = app.runs.results
        await pilot.press("2", "s")
        await settle(pilot)
        assert app.toggles.seed == 1 and app.runs.results is first
        app.apply_toggles(app.toggles.toggle("random", 1))
        await settle(pilot)
        seeded = app.runs.results
        assert seeded is not first and seeded.intervened is not None
        await pilot.press("s")
        await settle(pilot)
        assert app.toggles.seed == 2 and app.runs.results is not seeded
