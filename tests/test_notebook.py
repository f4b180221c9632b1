"""Results in a notebook: `to_pandas()` holds the CSV's columns and values for every result, the HTML tables are
escaped, shaded by their numbers and cut to a readable width on long prompts, and docs/notebook.ipynb runs."""

from __future__ import annotations

import csv
import dataclasses
import html
import importlib
import io
import json
import pkgutil
import re
import sys
from pathlib import Path

import pandas
import pytest
import torch

import layerscope.analyses
from layerscope.analyses.grid import DecodeGrid
from layerscope.errors import LayerscopeError
from layerscope.notebook import MAX_POSITIONS, grid_html, head_scores_html, trace_html
from layerscope.outputs import to_csv
from tests.tiny import tiny_model

ROOT = Path(__file__).parent.parent
NOT_TABLES = {
    "Activations": "tensors by site (to_dict gives tensors, not lines)",
    "Comparison": "a part of InterventionReport, whose records() are its lines",
    "SweepPoint": "one line of a SweepResult",
    "TokenSwapPoint": "one line of a SweepResult",
    "NoiseLevel": "a part of CausalTrace (its noise), in its to_dict",
}


@pytest.fixture(scope="module")
def results() -> dict[str, object]:
    """One result of each kind, computed by the engine on a tiny random model."""
    from layerscope.analyses.attribution import logit_attribution
    from layerscope.analyses.causal_trace import trace_prompt
    from layerscope.analyses.compare import run_interventions
    from layerscope.analyses.early_exit import early_exit
    from layerscope.analyses.head_ablation import ablation_experiment
    from layerscope.analyses.head_activity import head_activity
    from layerscope.analyses.head_pattern import attention_pattern
    from layerscope.analyses.head_scores import HeadScores
    from layerscope.analyses.influence import influence
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.needles import build_tests, load_haystack, load_needles
    from layerscope.analyses.neurons import neuron_census
    from layerscope.analyses.patchscope import parse_target, run_patchscope
    from layerscope.analyses.probes import probe_rows
    from layerscope.analyses.prompt_sets import PromptItem
    from layerscope.analyses.stages import stage_map
    from layerscope.analyses.sweep import sweep
    from layerscope.analyses.sweep_result import SweepResult
    from layerscope.analyses.token_swap import Donor, token_swap_sweep
    from layerscope.analyses.tuned_lens import TunedLens, compare_lenses
    from layerscope.interventions import DropBlocks

    lm = tiny_model("llama")
    ids = lm.encode("the capital of france is paris")
    prompts = [
        PromptItem("the capital of france is", "paris", "france"),
        PromptItem("the city of italy is", "rome", "italy"),
    ]
    scores = HeadScores.from_matrix(lm, "retrieval", torch.rand(4, 4, generator=torch.Generator().manual_seed(0)))
    text = " ".join(["the cat sat on the mat and a dog ran to the park"] * 4)
    grid = logit_lens(lm, ids, top_k=2)
    return {
        "DecodeGrid": grid,
        "InterventionReport": run_interventions(lm, ids, [DropBlocks((1,))], top_k=2),
        "CausalTrace": trace_prompt(lm, "the capital of france is", subject="france"),
        "NeuronCensus": neuron_census(lm, min_kurtosis=1.0),
        "LogitAttribution": logit_attribution(lm, ids),
        "EarlyExit": early_exit([grid]),
        "ProbeReport": probe_rows(
            lm, [f"the cat sat {w}" for w in "one two three four".split()] * 2, ["a", "b"] * 4, folds=2
        ),
        "AttentionPattern": attention_pattern(lm, ids, [(0, 1), (2, 3)]),
        "InfluenceReport": influence(lm, text, window=16, n_prune=1, eval_text=text),
        "PruneReport": influence(lm, text, window=16, n_prune=2, eval_text=text).prune,
        "StageMap": stage_map(lm, prompts),
        "PatchscopeReport": run_patchscope(lm, ids, parse_target(lm), top_k=2),
        "HeadScores": scores,
        "LensComparison": compare_lenses(lm, TunedLens(64, 4, lm.name), text),
        "HeadActivity": head_activity(lm, ids, scores, max_new_tokens=3),
        "AblationReport": ablation_experiment(
            lm, scores, 2, build_tests(lm, load_haystack(), load_needles()[:1], [64], [50]), max_new_tokens=3
        ),
        "SweepResult": SweepResult.collect("drop", sweep(lm, prompts, "drop", accuracy=True, max_new_tokens=2)),
        "SweepResult swap-token": SweepResult.collect(
            "swap-token",
            token_swap_sweep(lm, prompts, Donor("the city rome", "rome", "rome"), rows=[0, 4], max_new_tokens=2),
        ),
    }


def result_classes() -> set[str]:
    """Every dataclass of the engine's analyses with a to_dict or records: a result."""
    found = set()
    for module in pkgutil.iter_modules(layerscope.analyses.__path__):
        for name, value in vars(importlib.import_module(f"layerscope.analyses.{module.name}")).items():
            if (
                dataclasses.is_dataclass(value)
                and (hasattr(value, "to_dict") or hasattr(value, "records"))
                and value.__module__.endswith(module.name)
            ):
                found.add(name)
    return found - set(NOT_TABLES)


def test_every_result_is_covered(results):
    assert {name.split()[0] for name in results} == result_classes()
    assert {type(result).__name__ for result in results.values()} == result_classes()


def cell_text(value: object) -> str:
    """A DataFrame value as the csv module writes it: nothing for a missing value, else its str."""
    return "" if value is None or value is pandas.NA else str(value)


@pytest.mark.parametrize(
    "name",
    [
        "DecodeGrid",
        "InterventionReport",
        "CausalTrace",
        "NeuronCensus",
        "LogitAttribution",
        "EarlyExit",
        "AttentionPattern",
        "InfluenceReport",
        "PruneReport",
        "StageMap",
        "PatchscopeReport",
        "HeadScores",
        "LensComparison",
        "HeadActivity",
        "AblationReport",
        "ProbeReport",
        "SweepResult",
        "SweepResult swap-token",
    ],
)
def test_to_pandas_has_the_csv_columns_and_values(results, name):
    result = results[name]
    lines = list(csv.reader(io.StringIO(to_csv(result.records()))))
    frame = result.to_pandas()
    assert list(frame.columns) == lines[0]
    assert len(frame) == len(lines) - 1 > 0
    assert [[cell_text(value) for value in row] for row in frame.itertuples(index=False)] == lines[1:]


def test_whole_numbers_stay_whole_beside_missing_ones(results):
    """A sweep's prompt_index is None on the averages: the column stays whole numbers (Int64), not floats."""
    frame = results["SweepResult"].to_pandas()
    assert str(frame["prompt_index"].dtype) == "Int64" and str(frame["layer"].dtype) == "Int64"
    assert frame["prompt_index"].isna().sum() == 4 and frame["prompt_index"].dropna().tolist() == [0] * 4 + [1] * 4


def test_missing_pandas_is_one_clear_error(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # what an environment without pandas gives: ImportError
    with pytest.raises(LayerscopeError, match=re.escape("pip install 'layerscope[notebook]'")):
        results["DecodeGrid"].to_pandas()


def cells_of(page: str) -> list[tuple[str, float | None]]:
    """Each <td>'s text and the opacity of its shade (None if unshaded), in order."""
    found = []
    for attributes, text in re.findall(r"<td([^>]*)>(.*?)</td>", page):
        alpha = re.search(r"rgba\(\d+,\d+,\d+,([0-9.]+)\)", attributes)
        found.append((html.unescape(text), float(alpha[1]) if alpha else None))
    return found


def test_grid_cells_show_the_top1_and_are_shaded_by_its_probability(results):
    grid = results["DecodeGrid"]
    cells = cells_of(grid._repr_html_())
    expected = [
        (grid.top1(r, p), round(grid.top1(r, p).prob, 3))
        for r in range(len(grid.layers))
        for p in range(len(grid.tokens))
    ]
    assert [alpha for _, alpha in cells] == [alpha for _, alpha in expected]
    assert [text.rsplit(" ", 1)[1] for text, _ in cells] == [f"{top.prob:.2f}" for top, _ in expected]


def test_trace_and_head_scores_are_shaded_by_their_share_of_the_largest(results):
    trace, scores = results["CausalTrace"], results["HeadScores"]
    effects = [cell.indirect_effect for row in trace.cells for cell in row]
    largest = max(map(abs, effects))
    page = trace._repr_html_()
    assert [alpha for _, alpha in cells_of(page)] == [round(abs(e) / largest, 3) for e in effects]
    colours = re.findall(r"<td[^>]*rgba\((\d+),", page)
    assert colours == ["214" if e >= 0 else "67" for e in effects]  # warm for a positive effect, cool for negative
    values = scores.matrix().flatten().tolist()
    shown = cells_of(head_scores_html(scores))
    assert [alpha for _, alpha in shown] == [round(v / max(values), 3) for v in values]
    assert [text for text, _ in shown] == [f"{v:.2f}" for v in values]


def test_sweep_table_shows_the_averages_shaded_per_column(results):
    result = results["SweepResult"]
    averages = [row for row in result.points if row.prompt_index is None]
    cells = cells_of(result._repr_html_())
    assert len(cells) == len(averages) * 5  # kl, top1_agree, entropy_delta, loss_delta, accuracy
    kl = [row.kl for row in averages]
    assert [cells[i * 5] for i in range(len(averages))] == [(f"{v:.4f}", round(v / max(kl), 3)) for v in kl]


def odd_grid(grid: DecodeGrid, rows: int, positions: int) -> DecodeGrid:
    """`grid`'s cells repeated to rows x positions, with tokens that are markup."""
    data = grid.to_dict()
    width = len(data["tokens"])
    data["tokens"] = [["<b>bold</b>", "a & b", '"quoted"', "\x1b[31m"][p % 4] for p in range(positions)]
    data["layers"] = [str(r) for r in range(rows)]
    data["cells"] = [
        [dict(data["cells"][r % len(grid.layers)][p % width]) for p in range(positions)] for r in range(rows)
    ]
    data["cells"][0][0]["top"] = [{"token": "<script>x</script>", "id": 5, "prob": 0.5}]
    return DecodeGrid.from_dict(data)


def test_markup_in_tokens_is_shown_as_text(results):
    page = grid_html(odd_grid(results["DecodeGrid"], 2, 4))
    assert "<b>" not in page and "<script>" not in page and "\x1b" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "a &amp; b" in page and "&lt;script&gt;" in page
    assert cells_of(page)[0] == ("<script>x</… 0.50", 0.5)


def test_a_long_prompt_shows_its_ends_and_says_how_to_see_the_rest(results):
    grid = odd_grid(results["DecodeGrid"], 30, 300)
    page = grid._repr_html_()
    hidden = 300 - MAX_POSITIONS
    assert f"{hidden} of 300 positions hidden" in page
    assert "layerscope.notebook.grid_html(result, max_positions=None)" in page and "to_pandas()" in page
    headers = re.findall(r"<th[^>]*>(\d+) ", page)
    assert headers == [str(p) for p in [*range(20), *range(280, 300)]]
    assert len(cells_of(page)) == 30 * (MAX_POSITIONS + 1)  # one gap cell per row
    everything = grid_html(grid, max_positions=None)
    assert len(cells_of(everything)) == 30 * 300 and "hidden" not in everything
    trace_page = trace_html(results["CausalTrace"], max_positions=2)
    assert (
        f"{len(results['CausalTrace'].tokens) - 2} of {len(results['CausalTrace'].tokens)} positions hidden"
        in trace_page
    )


def notebook_cells() -> list[dict]:
    return json.loads((ROOT / "docs" / "notebook.ipynb").read_text(encoding="utf-8"))["cells"]


def test_notebook_is_saved_without_outputs():
    import nbformat

    nbformat.validate(nbformat.read(ROOT / "docs" / "notebook.ipynb", as_version=4))
    code = [cell for cell in notebook_cells() if cell["cell_type"] == "code"]
    assert code and all(cell["outputs"] == [] and cell["execution_count"] is None for cell in code)


def test_notebook_code_runs_in_order(demo_lm, monkeypatch):
    """Every code cell, in order, in one namespace, as a kernel runs them; its load_model("demo") gets the
    session's demo model."""
    from layerscope.models import loading

    real = loading.load_model
    monkeypatch.setattr(
        loading, "load_model", lambda name, **options: demo_lm if name == "demo" else real(name, **options)
    )
    namespace: dict = {}
    for number, cell in enumerate(c for c in notebook_cells() if c["cell_type"] == "code"):
        exec(compile("".join(cell["source"]), f"notebook cell {number}", "exec"), namespace)
    grid, result = namespace["grid"], namespace["result"]
    assert isinstance(grid, DecodeGrid) and grid.tokens == demo_lm.token_texts(
        demo_lm.encode("The capital of France is")[0].tolist()
    )
    assert list(namespace["lens_frame"].columns) == list(grid.records().columns)
    assert len(namespace["sweep_frame"]) == len(result.points) == 3 * 10 + 10
    assert "<table" in result._repr_html_() and "<table" in namespace["report"].intervened._repr_html_()
    # the figure cells: the lens heatmap holds the grid's top-1 probabilities, the sweep one line per kind
    lens_axes = namespace["lens_figure"].axes[0]
    assert lens_axes.images[0].get_array().shape == (len(grid.cells), len(grid.tokens))
    assert [line.get_label() for line in namespace["sweep_figure"].axes[0].get_lines()] == ["drop"]
