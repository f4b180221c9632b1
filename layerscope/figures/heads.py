"""Attention heads: score heatmaps (layer x head), retrieval-head activity and ablation, attention patterns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from layerscope.errors import ArgumentValueError
from layerscope.figures.common import heatmap, labels, new_figure, prompt_caption, provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.head_ablation import AblationReport
    from layerscope.analyses.head_activity import HeadActivity
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.analyses.head_scores import HeadScores

THRESHOLD = 0.1
"""The share of heads above this is in each panel's title (the Retrieval Head paper finds 3-6% of heads above it)."""


def head_scores_figure(scores: Sequence[HeadScores], threshold: float = THRESHOLD) -> Figure:
    """One layer x head heatmap per kind of score, the share of heads above `threshold` in its title."""
    if not scores:
        raise ArgumentValueError("scores= is empty: give at least one HeadScores.")
    n_heads, n_blocks = scores[0].n_heads, scores[0].n_blocks
    figure = new_figure(2.5 + (1.5 + 0.35 * n_heads) * len(scores), 2 + 0.25 * n_blocks)
    for index, score in enumerate(scores):
        axes = figure.add_subplot(1, len(scores), index + 1)
        heatmap(
            axes,
            score.matrix().tolist(),
            x_labels=[str(h) for h in range(score.n_heads)],
            y_labels=[str(b) for b in range(score.n_blocks)],
            colour=f"{score.kind.replace('_', ' ')} score",
        )
        axes.set_xlabel("head")
        axes.set_ylabel("layer (block)")
        axes.set_title(
            f"{score.kind.replace('_', ' ')}: {score.share_above(threshold):.1%} of heads above {threshold:g}",
            fontsize="small",
        )
    settings = [
        ", ".join(f"{key} {value}" for key, value in s.meta.items() if isinstance(value, (int, float, str)))
        for s in scores
    ]
    provenance(
        figure, f"head scores · {scores[0].model}", *(f"{s.kind}: {text}" for s, text in zip(scores, settings) if text)
    )
    return figure


def activity_figure(trace: HeadActivity) -> Figure:
    """Per generated token, how many known retrieval heads copy-pasted it from the prompt."""
    figure = new_figure(2 + 0.3 * len(trace.steps), 4)
    axes = figure.add_subplot()
    axes.bar(range(len(trace.steps)), [step.active for step in trace.steps], color="tab:blue")
    axes.set_xticks(
        range(len(trace.steps)), labels([step.token for step in trace.steps]), rotation=90, fontsize="x-small"
    )
    axes.set_xlabel("generated token")
    axes.set_ylabel("retrieval heads active")
    provenance(
        figure,
        f"retrieval-head activity · {trace.model}",
        f"{len(trace.heads)} known retrieval heads (score > {THRESHOLD:g})",
    )
    return figure


def ablation_figure(report: AblationReport) -> Figure:
    """Needle-in-a-haystack accuracy with the top-K heads, then K random heads, masked in each mode."""
    figure = new_figure(7, 4)
    axes = figure.add_subplot()
    names = list(report.accuracy)
    axes.bar(range(len(names)), [report.accuracy[name] for name in names], color="tab:blue")
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize="small")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("NIAH accuracy")
    provenance(
        figure,
        f"retrieval-head ablation · {report.model}",
        f"{report.tests} tests · top-{report.k}: "
        f"{', '.join(f'{h.layer}.{h.head}' for h in report.heads)} · random seed {report.seed}",
    )
    return figure


def attention_pattern_figure(pattern: AttentionPattern, heads: Sequence[tuple[int, int]] | None = None) -> Figure:
    """One query x key heatmap per head (all the pattern's heads by default), the prompt's tokens on both axes."""
    chosen = list(pattern.weights) if heads is None else list(heads)
    missing = [head for head in chosen if head not in pattern.weights]
    if missing or not chosen:
        read = ", ".join(f"{block}.{head}" for block, head in pattern.weights)
        raise ArgumentValueError(
            f"heads= must name heads the pattern read ({read})"
            + (f", not {missing[0][0]}.{missing[0][1]}." if missing else ".")
        )
    side = 2 + 0.25 * len(pattern.tokens)
    figure = new_figure(side * len(chosen) + 1, side)
    names = labels(pattern.tokens)
    for index, head in enumerate(chosen):
        axes = figure.add_subplot(1, len(chosen), index + 1)
        heatmap(
            axes,
            pattern.weights[head],
            x_labels=names,
            y_labels=names,
            colour="attention",
            cmap="Blues",
            origin="upper",
        )
        axes.set_xlabel("key")
        axes.set_ylabel("query")
        axes.set_title(f"head {head[0]}.{head[1]}", fontsize="small")
    provenance(figure, f"attention pattern · {pattern.model}", prompt_caption(pattern.tokens))
    return figure
