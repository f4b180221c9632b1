"""Causal tracing: ROME's heatmaps, the prompt's tokens down (the subject's marked with *), the layers across."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from layerscope.errors import ArgumentValueError
from layerscope.figures.common import heatmap, labels, new_figure, prompt_caption, provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.causal_trace import CausalTrace

FIELDS = {"indirect_effect": "indirect effect (restored - corrupted)", "value": "the metric, restored"}
SITE_COLOURS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
"""ROME's colours: the residual states purple, the MLPs green, the attention red."""


def token_rows(trace: CausalTrace) -> list[str]:
    """The prompt's tokens as row labels, the subject's marked with a trailing '*' as in ROME."""
    start, end = trace.subject_positions
    return [label + ("*" if start <= position < end else "") for position, label in enumerate(labels(trace.tokens))]


def causal_trace_figure(traces: Sequence[CausalTrace], field: str = "indirect_effect") -> Figure:
    """One heatmap per trace (ROME's three: resid, mlp, attn, from three `causal_trace` runs of one prompt):
    values[position][row] of `field`."""
    if field not in FIELDS:
        raise ArgumentValueError(f"field={field!r} is not one of {', '.join(FIELDS)}.")
    if not traces:
        raise ArgumentValueError("traces= is empty: give at least one CausalTrace.")
    first = traces[0]
    figure = new_figure(2.5 + (2 + 0.22 * len(first.layers)) * len(traces), 2 + 0.3 * len(first.tokens))
    for index, trace in enumerate(traces):
        axes = figure.add_subplot(1, len(traces), index + 1)
        values = trace.values(field).T.tolist()  # (positions, rows)
        heatmap(
            axes,
            values,
            x_labels=trace.layers[: len(trace.cells)],
            y_labels=token_rows(trace),
            colour=FIELDS[field],
            cmap=SITE_COLOURS.get(trace.site, "viridis"),
            origin="upper",
        )
        site = trace.site if trace.site == "resid" else f"{trace.site}, window {trace.window}"
        axes.set_title(f"restoring {site}{' (approx.)' if trace.approx else ''}", fontsize="small")
        axes.set_xlabel("row (emb, blocks)")
    runs = [
        f"{first.metric} {name} {run['value']:.3f}"
        for name, run in (("clean", first.clean), ("corrupted", first.corrupted))
        if run
    ]
    provenance(
        figure,
        f"causal trace of {labels([first.answer])[0]} · {first.model}",
        prompt_caption(first.tokens),
        " · ".join([f"corruption: {first.corrupt} of {labels([first.subject or 'the subject'], 40)[0]}", *runs]),
    )
    return figure
