"""Interventions: one run against the baseline (`InterventionReport`), and sweeps of one intervention at every
layer (KL, top-1 agreement and entropy change per layer, a line per intervention kind)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from layerscope.errors import ArgumentValueError
from layerscope.figures.common import labels, new_figure, prompt_caption, provenance, whole_blocks
from layerscope.figures.grid import draw_grid, grid_size

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.compare import InterventionReport
    from layerscope.analyses.sweep import SweepPoint
    from layerscope.analyses.token_swap import TokenSwapPoint

SWEEP_METRICS = {
    "kl": "KL(base || intervened) (nats)",
    "top1_agree": "top-1 agreement",
    "entropy_delta": "entropy change (bits)",
}


def describe_interventions(interventions: Iterable[Mapping[str, Any]]) -> str:
    """'drop blocks=3,5; freeze start=20' from the interventions' dicts (their `to_dict`, as the JSON has them)."""

    def value(v: object) -> str:
        return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)

    return (
        "; ".join(
            " ".join([str(i["kind"]), *(f"{k}={value(v)}" for k, v in i.items() if k != "kind")]) for i in interventions
        )
        or "none"
    )


def intervention_figure(report: InterventionReport, metric: str = "prob") -> Figure:
    """The baseline and the intervened logit lens side by side, and per position the KL of the final
    distributions, with the positions whose top-1 changed marked."""
    width, height = grid_size(report.baseline)
    figure = new_figure(2 * width, height + 2.5)
    axes = figure.subplot_mosaic(
        [["baseline", "intervened"], ["comparison", "comparison"]], height_ratios=[max(height - 1, 2), 2]
    )
    for name in ("baseline", "intervened"):
        draw_grid(axes[name], getattr(report, name), metric)
        axes[name].set_title(name)
    positions = report.comparison.positions
    kl = axes["comparison"]
    kl.bar(range(len(positions)), [p.kl for p in positions], color="tab:blue", label="KL(base || intervened)")
    changed = [p.position for p in positions if not p.top1_agree]
    kl.plot(changed, [positions[p].kl for p in changed], "rx", label="top-1 changed")
    kl.set_xticks(range(len(positions)), labels([p.token for p in positions]), rotation=90, fontsize="x-small")
    kl.set_ylabel("KL (nats)")
    kl.legend(fontsize="small")
    provenance(
        figure,
        f"interventions: {describe_interventions(report.interventions)} · {report.baseline.model}",
        prompt_caption(report.baseline.tokens),
        f"mean KL {report.comparison.mean_kl:.4f} nats · top-1 agreement {report.comparison.top1_agreement:.0%}",
        " · ".join(
            f'{name} continues "{labels([c.text], 60)[0]}"' for name, c in report.continuation.items() if c.token_ids
        ),
    )
    return figure


def sweep_figure(
    points: Iterable[SweepPoint | TokenSwapPoint | Mapping[str, Any]],
    model: str,
    prompts: str = "",
    n_blocks: int | None = None,
) -> Figure:
    """The set averages (points whose prompt_index is None) of sweeps, a line per intervention kind (per kind and
    factor for steer, labelled 'steer ×4'), against the
    layer, or with `n_blocks` against relative depth (layer / n_blocks), as in Stages of Inference's Fig. 3.
    `points`: SweepPoint or TokenSwapPoint objects, or their dicts (the JSON and JSONL lines); `prompts` names the
    prompt set in the caption."""
    averages: dict[str, dict[int, Mapping[str, Any]]] = {}
    for point in points:
        data = point if isinstance(point, Mapping) else point.to_dict()
        if data["prompt_index"] is None:
            factor = data.get("factor")
            label = data["intervention"] if factor is None else f"{data['intervention']} ×{factor:g}"
            averages.setdefault(label, {})[data["layer"] if "layer" in data else data["row"]] = data
    if not averages:
        raise ArgumentValueError("points= holds no set averages (points with prompt_index None) to plot.")
    if n_blocks is not None and n_blocks < 1:
        raise ArgumentValueError(f"n_blocks={n_blocks} must be at least 1.")
    figure = new_figure(12, 3.8)
    panels = figure.subplots(1, len(SWEEP_METRICS), sharex=True)
    for axes, (metric, name) in zip(panels, SWEEP_METRICS.items()):
        for kind, by_layer in averages.items():
            layers = sorted(by_layer)
            x = [layer / n_blocks for layer in layers] if n_blocks else layers
            axes.plot(x, [by_layer[layer][metric] for layer in layers], marker=".", label=kind)
        axes.set_ylabel(name)
        axes.set_xlabel("relative depth (layer / blocks)" if n_blocks else "layer (block)")
        if not n_blocks:
            whole_blocks(axes)
    panels[0].legend(fontsize="small")
    provenance(
        figure,
        f"sweep: {', '.join(averages)} · {model}",
        f"prompts: {prompts}" if prompts else "",
        "mean over the prompts; KL and entropy change of the final distribution",
    )
    return figure
