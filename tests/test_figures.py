"""Figures check their data, not their pixels: each plotted array is the result's numbers, the tick labels are the
prompt's tokens as the explorer shows them, the title and caption say what was computed, and every kind renders
headless (matplotlib's Agg canvas, no display) to png, svg and pdf. Results come from a tiny random llama."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from layerscope.analyses.attribution import logit_attribution
from layerscope.analyses.causal_trace import trace_prompt
from layerscope.analyses.compare import run_interventions
from layerscope.analyses.early_exit import early_exit
from layerscope.analyses.head_ablation import AblationReport
from layerscope.analyses.head_activity import ActivityStep, HeadActivity
from layerscope.analyses.head_pattern import attention_pattern
from layerscope.analyses.head_scores import HeadScore, HeadScores
from layerscope.analyses.induction import induction_scores
from layerscope.analyses.influence import influence
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.neurons import neuron_census
from layerscope.analyses.patchscope import parse_target, run_patchscope
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.stages import stage_map
from layerscope.analyses.sweep import sweep
from layerscope.analyses.tuned_lens import TunedLens, compare_lenses
from layerscope.display import token_label
from layerscope.errors import ArgumentValueError, LayerscopeError
from layerscope.figures.common import figure_format, save_figure
from layerscope.figures.interventions import sweep_figure
from layerscope.figures.trace import causal_trace_figure
from layerscope.interventions import DropBlocks
from tests.studies import TINY_TEXT
from tests.tiny import tiny_model

PROMPT = "the cat sat on the mat"
PROMPTS = [PromptItem("the cat sat on the"), PromptItem("one two three four")]


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def results(lm) -> dict[str, object]:
    """One result of every kind, small."""
    ids = lm.encode(PROMPT)
    grid = logit_lens(lm, ids, top_k=2)
    scores = induction_scores(lm, seq_len=4, repeats=2, samples=1)
    heads = scores.heads[:2]
    return {
        "grid": grid,
        "intervention": run_interventions(lm, ids, [DropBlocks((1,))], top_k=2),
        "patchscope": run_patchscope(lm, ids, parse_target(lm, "the cat sat on mat the dog"), top_k=2),
        "influence": influence(lm, TINY_TEXT, window=8, n_prune=1, eval_text=TINY_TEXT),
        "stages": stage_map(lm, PROMPTS),
        "early_exit": early_exit([grid, logit_lens(lm, lm.encode("one two three"), top_k=1)]),
        "heads": scores,
        "trace": trace_prompt(lm, PROMPT, subject="cat", answer="mat"),
        "lenses": compare_lenses(lm, TunedLens(lm.adapter.config.hidden_size, lm.n_blocks, lm.name), TINY_TEXT),
        "neurons": neuron_census(lm, min_kurtosis=3.0),
        "attribution": logit_attribution(lm, ids),
        "pattern": attention_pattern(lm, ids, [(0, 1), (2, 3)]),
        "activity": HeadActivity(lm.name, heads, [ActivityStep(" the", 2, 1, [(0, 0)]), ActivityStep("\n", 3, 0, [])]),
        "ablation": AblationReport(lm.name, 1, 0, heads[:1], heads[1:], 3, {"baseline": 1.0, "top-1 zero": 1 / 3}),
    }


def ticks(axes, which: str = "x") -> list[str]:
    return [tick.get_text() for tick in getattr(axes, f"get_{which}ticklabels")()]


def texts(figure: Figure) -> str:
    """The title and the caption."""
    return f"{figure.get_suptitle()} {figure.get_supxlabel()}"


def bar_heights(axes) -> list[float]:
    return [patch.get_height() for patch in axes.containers[0]]


def test_every_result_plots_and_renders_headless_to_png_svg_and_pdf(results, lm, tmp_path):
    """Every result's figure, and a sweep's: drawing needs no display, and no pyplot."""
    figures = {name: result.plot() for name, result in results.items()}
    figures["sweep"] = sweep_figure(sweep(lm, PROMPTS[:1], "drop"), lm.name, n_blocks=lm.n_blocks)
    for name, figure in figures.items():
        assert isinstance(figure, Figure) and figure.axes, name
        for kind in ("png", "svg", "pdf"):
            path = tmp_path / f"{name}.{kind}"
            assert save_figure(figure, path) == path.stat().st_size > 0
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (tmp_path / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert b"<svg" in (tmp_path / f"{name}.svg").read_bytes()[:2000]
    assert "matplotlib.pyplot" not in sys.modules


def test_the_lens_grid_plots_the_metric_with_the_top1_token_in_each_cell(results):
    grid = results["grid"]
    figure = grid.plot()
    axes = figure.axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), [[c.top[0].prob for c in row] for row in grid.cells])
    assert ticks(axes) == [token_label(t, 16) for t in grid.tokens] and ticks(axes, "y") == grid.layers
    written = [t.get_text() for t in axes.texts]
    assert written == [token_label(c.top[0].token, 8) for row in grid.cells for c in row]
    assert grid.model in texts(figure) and "logit lens" in texts(figure)
    assert "prompt: thecatsatonthemat" in texts(figure)  # the tiny tokenizer's tokens carry no spaces
    for metric in ("entropy_bits", "kl_to_final"):
        values = grid.plot(metric).axes[0].images[0].get_array()
        np.testing.assert_array_equal(values, [[getattr(c, metric) for c in row] for row in grid.cells])
    with pytest.raises(ArgumentValueError, match="metric='loss'"):
        grid.plot("loss")


def test_tokens_show_their_whitespace_as_the_explorer_grid_does(results):
    grid = dataclasses.replace(results["grid"], tokens=[" Paris", "\n", "\t", "a\x1bb", "x", "y"])
    assert ticks(grid.plot().axes[0]) == ["·Paris", "⏎", "⇥", "a␛b", "x", "y"]


def test_the_intervention_figure_shows_both_grids_the_kl_and_the_interventions(results, lm):
    report = results["intervention"]
    figure = report.plot()
    baseline, intervened, comparison = (
        next(a for a in figure.axes if a.get_title() == t or a.get_label() == t)
        for t in ("baseline", "intervened", "comparison")
    )
    for axes, grid in ((baseline, report.baseline), (intervened, report.intervened)):
        np.testing.assert_array_equal(axes.images[0].get_array(), [[c.top[0].prob for c in r] for r in grid.cells])
    assert bar_heights(comparison) == [p.kl for p in report.comparison.positions]
    assert "interventions: drop blocks=1 ·" in texts(figure) and "mean KL" in texts(figure)
    assert "continues" not in texts(figure)  # nothing was generated
    continued = run_interventions(lm, lm.encode(PROMPT), [DropBlocks((1,))], top_k=1, max_new_tokens=2)
    caption = texts(continued.plot())
    for name in ("baseline", "intervened"):
        assert f'{name} continues "{token_label(continued.continuation[name].text, 60)}"' in caption


def test_the_patchscope_figure_has_its_grid_and_precision_per_row(results):
    report = results["patchscope"]
    figure = report.plot()
    np.testing.assert_array_equal(
        figure.axes[0].images[0].get_array(), [[c.top[0].prob for c in row] for row in report.grid.cells]
    )
    precision = next(a for a in figure.axes if a.get_lines())
    patchscope, lens = precision.get_lines()
    assert list(patchscope.get_xdata()) == report.precision.patchscope
    assert list(lens.get_xdata()) == report.precision.logit_lens
    assert "Patchscopes" in texts(figure) and "target prompt: the·cat·sat·on·mat·the·dog" in texts(figure)


def test_sweeps_draw_a_line_per_kind_by_layer_or_relative_depth(lm):
    rows = [row for kind in ("drop", "freeze") for row in sweep(lm, PROMPTS, kind)]
    figure = sweep_figure(rows, lm.name, "two prompts")
    kl, agree, entropy = figure.axes
    for axes, metric in ((kl, "kl"), (agree, "top1_agree"), (entropy, "entropy_delta")):
        assert [line.get_label() for line in axes.get_lines()] == ["drop", "freeze"]
        for line in axes.get_lines():
            means = [r for r in rows if r.intervention == line.get_label() and r.prompt_index is None]
            assert list(line.get_xdata()) == [r.layer for r in means]
            assert list(line.get_ydata()) == [getattr(r, metric) for r in means]
    relative = sweep_figure([r.to_dict() for r in rows], lm.name, n_blocks=lm.n_blocks)
    assert list(relative.axes[0].get_lines()[0].get_xdata()) == [layer / 4 for layer in range(4)]
    assert "drop, freeze" in texts(figure) and "prompts: two prompts" in texts(figure)
    with pytest.raises(ArgumentValueError, match="set averages"):
        sweep_figure([r for r in rows if r.prompt_index is not None], lm.name)


def test_block_influence_bars_and_perplexity_against_the_baselines(results):
    report = results["influence"]
    figure = report.plot()
    bars, lines = figure.axes[:2]
    assert bar_heights(bars) == report.bi
    removed = len(report.prune.removed)
    for line, method in zip(lines.get_lines(), ("block_influence", "random", "last")):
        assert list(line.get_xdata()) == [0, removed]
        assert list(line.get_ydata()) == [report.prune.perplexity["baseline"], report.prune.perplexity[method]]


def test_the_stage_map_plots_each_signature_over_the_stage_bands(results):
    stage = results["stages"]
    figure = stage.plot()
    drop = figure.axes[0].get_lines()[0]
    assert list(drop.get_ydata()) == [b.drop_kl for b in stage.blocks]
    swap = figure.axes[1].get_lines()[0].get_ydata()
    np.testing.assert_array_equal(swap, [np.nan if b.swap_kl is None else b.swap_kl for b in stage.blocks])
    bands = [patch for patch in figure.axes[0].patches]
    assert len(bands) == sum(1 for b in stage.blocks if b.stage)
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == [
        "detokenisation",
        "feature engineering",
        "prediction ensembling",
        "residual sharpening",
    ]


def test_head_scores_heatmap_and_the_share_above_the_threshold_in_the_title(results):
    scores = results["heads"]
    axes = scores.plot().axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), scores.matrix().numpy())
    assert f"{scores.share_above(0.1):.1%} of heads above 0.1" in axes.get_title()
    handmade = HeadScores(
        "m",
        "retrieval",
        2,
        10,
        [HeadScore(b, h, 0, 0.5 if (b, h) == (1, 3) else 0.0) for b in range(2) for h in range(10)],
    )
    assert "5.0% of heads above 0.1" in handmade.plot().axes[0].get_title()


def test_the_causal_trace_has_tokens_down_with_the_subject_marked_and_rome_s_three_sites(results, lm):
    trace = results["trace"]
    axes = trace.plot().axes[0]
    np.testing.assert_array_equal(axes.images[0].get_array(), trace.values("indirect_effect").numpy().T)
    start, end = trace.subject_positions
    assert ticks(axes, "y") == [t + ("*" if start <= p < end else "") for p, t in enumerate(trace.tokens)]
    assert ticks(axes) == trace.layers
    sites = [trace, *(trace_prompt(lm, PROMPT, subject="cat", answer="mat", site=s, window=2) for s in ("mlp", "attn"))]
    figure = causal_trace_figure(sites, "value")
    for axes, one in zip(figure.axes[::2], sites):  # each heatmap is followed by its colour bar
        np.testing.assert_array_equal(axes.images[0].get_array(), one.values("value").numpy().T)
    assert [a.get_title() for a in figure.axes[::2]] == [
        "restoring resid",
        "restoring mlp, window 2",
        "restoring attn, window 2",
    ]


def test_lens_comparison_neurons_attribution_exit_and_patterns_plot_their_numbers(results):
    lenses = results["lenses"]
    logit, tuned = lenses.plot("tiny").axes[0].get_lines()
    assert list(logit.get_ydata()) == lenses.logit_lens_kl and list(tuned.get_ydata()) == lenses.lens_kl
    assert tuned.get_label() == "tuned lens"
    census = results["neurons"]
    axes = census.plot().axes[0]
    assert [p.get_height() for p in axes.containers[0]] == [b.prediction for b in census.blocks]
    assert [p.get_height() for p in axes.containers[1]] == [-b.suppression for b in census.blocks]
    attribution = results["attribution"]
    parts, heads = attribution.plot().axes[:2]
    assert [p.get_width() for p in parts.containers[0]] == attribution.attention
    assert [p.get_width() for p in parts.containers[1]] == attribution.mlp
    np.testing.assert_array_equal(heads.images[0].get_array(), attribution.heads)
    exit_ = results["early_exit"]
    settle = exit_.plot().axes[0]
    assert bar_heights(settle) == [sum(rows.count(r) for rows in exit_.stays_from) for r in range(exit_.n_blocks + 1)]
    pattern = results["pattern"]
    figure = pattern.plot()
    np.testing.assert_array_equal(figure.axes[0].images[0].get_array(), pattern.weights[(0, 1)])
    assert ticks(figure.axes[0], "y") == [token_label(t, 16) for t in pattern.tokens]
    assert len(pattern.plot([(2, 3)]).axes) == 2  # one heatmap and its colour bar
    with pytest.raises(ArgumentValueError, match="not 5.5"):
        pattern.plot([(5, 5)])
    activity = results["activity"]
    axes = activity.plot().axes[0]
    assert bar_heights(axes) == [1, 0] and ticks(axes) == ["·the", "⏎"]


def test_the_format_comes_from_the_suffix():
    assert [figure_format(Path(f"a.{s}")) for s in ("png", "SVG", "pdf")] == ["png", "svg", "pdf"]
    for bad in ("a.jpg", "a", "a.png.txt"):
        with pytest.raises(LayerscopeError, match="name a .png, .svg or .pdf file"):
            figure_format(Path(bad), "--figure")


def test_a_missing_matplotlib_is_one_error_saying_how_to_install_it(results, monkeypatch):
    """matplotlib blocked (a None in sys.modules makes its import fail), as if the extra were not installed."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LayerscopeError) as error:
        results["heads"].plot()
    assert str(error.value) == "Figures need matplotlib, which is not installed: pip install 'layerscope[plot]'"


def test_the_explorer_exports_each_kind_of_grid_it_shows(results, tmp_path):
    """A lens grid, a causal trace and one head's attention pattern: each its own figure, the view and the
    interventions in the caption."""
    from layerscope.tui.export import export_figure
    from layerscope.tui.methods import PatternGrid

    pattern = PatternGrid.of(results["pattern"], (2, 3))
    np.testing.assert_array_equal(pattern.plot().axes[0].images[0].get_array(), results["pattern"].weights[(2, 3)])
    for name, grid in (("grid.png", results["grid"]), ("trace.pdf", results["trace"]), ("pattern.svg", pattern)):
        notice = export_figure(grid, tmp_path / name, "baseline", "none")
        assert notice.startswith("exported figure · ") and notice.endswith(f"→ {tmp_path / name}")
        assert (tmp_path / name).stat().st_size > 0
    assert "view: baseline · interventions: none" in (tmp_path / "pattern.svg").read_text()
    with pytest.raises(LayerscopeError, match="Nothing to export yet"):
        export_figure(None, tmp_path / "none.png", "baseline", "none")
