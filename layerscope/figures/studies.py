"""Layer studies: Block Influence and pruning, the stage map, early exit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerscope.figures.common import new_figure, provenance, whole_blocks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.early_exit import EarlyExit
    from layerscope.analyses.influence import InfluenceReport
    from layerscope.analyses.probes import ProbeReport
    from layerscope.analyses.stages import StageMap

PRUNE_METHODS = {"block_influence": "lowest Block Influence", "random": "random blocks", "last": "last blocks"}
STAGE_SIGNATURES = {
    "drop_kl": "drop KL (nats)",
    "swap_kl": "swap KL (nats)",
    "lens_kl": "lens KL to final (nats)",
    "lens_entropy": "lens entropy (bits)",
    "attn_mlp_ratio": "attention / MLP norm",
    "prev5_attention": "attention on the 5 previous tokens",
}
STAGE_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:red")


def influence_figure(report: InfluenceReport) -> Figure:
    """Block Influence per block (ShortGPT: 1 - cos(block input, block output)); with a pruning run, the held-out
    perplexity against the number of blocks removed, lowest-BI blocks against the random and last-N baselines."""
    figure = new_figure(11 if report.prune else 7, 4)
    panels = figure.subplots(1, 2 if report.prune else 1, squeeze=False)[0]
    bars = panels[0]
    bars.bar(range(len(report.bi)), report.bi, color="tab:blue")
    bars.set_xlabel("block")
    bars.set_ylabel("Block Influence")
    whole_blocks(bars)
    caption = [f"{report.calibration_tokens} calibration tokens", *report.warnings]
    if report.prune:
        prune = report.prune
        removed = len(prune.removed)
        bars.bar(prune.removed, [report.bi[b] for b in prune.removed], color="tab:red", label="removed")
        bars.legend(fontsize="small")
        lines = panels[1]
        for method, name in PRUNE_METHODS.items():
            lines.plot([0, removed], [prune.perplexity["baseline"], prune.perplexity[method]], marker="o", label=name)
        lines.set_xticks([0, removed])
        lines.set_xlabel("blocks removed")
        lines.set_ylabel("held-out perplexity")
        lines.legend(fontsize="small")
        caption.append(
            f"{prune.eval_tokens} held-out tokens · removed: BI {prune.removed}, random "
            f"{prune.random_removed}, last {prune.last_removed}"
        )
    provenance(figure, f"Block Influence · {report.model}", *caption)
    return figure


def stage_figure(stage_map: StageMap) -> Figure:
    """Each block's signatures, one panel each, over bands that show the stage the heuristic gave each block; with
    a probe, its accuracy too, the significant rises marked."""
    from layerscope.analyses.stages import STAGES

    blocks = [b.block for b in stage_map.blocks]
    signatures = {**STAGE_SIGNATURES, **({"probe_accuracy": "probe accuracy (held out)"} if stage_map.probe else {})}
    figure = new_figure(10, 1.6 * len(signatures) + 1)
    panels = figure.subplots(len(signatures), 1, sharex=True)
    for axes, (field, name) in zip(panels, signatures.items()):
        values = [getattr(b, field) for b in stage_map.blocks]
        axes.plot(blocks, [float("nan") if v is None else v for v in values], marker=".", color="black")
        if field == "probe_accuracy":
            rises = [b for b in stage_map.blocks if b.probe_rise]
            axes.plot([b.block for b in rises], [b.probe_accuracy for b in rises], "r^", label="significant rise")
            axes.legend(fontsize="x-small", loc="lower right")
        axes.set_ylabel(name, fontsize="x-small", rotation=0, ha="right")
        for signature in stage_map.blocks:
            if signature.stage in STAGES:
                axes.axvspan(
                    signature.block - 0.5,
                    signature.block + 0.5,
                    alpha=0.2,
                    linewidth=0,
                    color=STAGE_COLOURS[STAGES.index(signature.stage)],
                )
    panels[-1].set_xlabel("block")
    from matplotlib.patches import Patch

    panels[0].legend(
        [Patch(color=c, alpha=0.4) for c in STAGE_COLOURS],
        STAGES,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.02),
        ncols=len(STAGES),
        fontsize="small",
        frameon=False,
    )
    whole_blocks(panels[-1])
    provenance(
        figure, f"stages of inference (heuristic stage map) · {stage_map.model}", f"{stage_map.n_prompts} prompts"
    )
    return figure


def early_exit_figure(result: EarlyExit) -> Figure:
    """Where each position's top-1 settles (the oracle exit) and what each confidence threshold saves and costs."""
    figure = new_figure(12, 4)
    settle, skipped, agreement = figure.subplots(1, 3)
    counts = [0] * (result.n_blocks + 1)
    for rows in result.stays_from:
        for row in rows:
            counts[row] += 1
    settle.bar(range(result.n_blocks + 1), counts, color="tab:blue")
    settle.set_xlabel("row from which the top-1 stays the final one")
    whole_blocks(settle)
    settle.set_ylabel("positions")
    thresholds = [t.threshold for t in result.thresholds]
    skipped.plot(thresholds, [t.mean_blocks_skipped for t in result.thresholds], marker="o", label="threshold exit")
    skipped.axhline(result.oracle_mean_blocks_skipped, color="black", linestyle="--", label="oracle")
    skipped.set_xlabel("top-1 probability threshold")
    skipped.set_ylabel("mean blocks skipped")
    skipped.legend(fontsize="small")
    agreement.plot(thresholds, [t.agreement for t in result.thresholds], marker="o", color="tab:green")
    agreement.set_xlabel("top-1 probability threshold")
    agreement.set_ylabel("agreement with the final top-1")
    agreement.set_ylim(-0.05, 1.05)
    positions = sum(map(len, result.stays_from))
    provenance(
        figure,
        f"early exit · {result.model}",
        f"{len(result.stays_from)} prompts, {positions} positions, {result.n_blocks} blocks (logit lens)",
    )
    return figure


def probe_figure(report: ProbeReport) -> Figure:
    """Held-out probe accuracy per grid row with its standard error, beside the shuffled-label control and the
    majority class's share."""
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    x = range(len(report.rows))
    for values, errors, name, colour in (
        ([r.accuracy for r in report.rows], [r.accuracy_se for r in report.rows], "probe", "tab:blue"),
        ([r.control for r in report.rows], [r.control_se for r in report.rows], "shuffled labels", "tab:grey"),
    ):
        axes.errorbar(x, values, yerr=errors, marker=".", capsize=2, label=name, color=colour)
    axes.axhline(report.majority, color="black", linestyle="--", linewidth=0.8, label="majority class")
    axes.set_xticks(list(x), [r.row for r in report.rows], fontsize="x-small", rotation=90)
    axes.set_xlabel("grid row (emb, then block outputs)")
    axes.set_ylabel("held-out accuracy")
    axes.set_ylim(-0.05, 1.05)
    axes.legend(fontsize="small")
    provenance(
        figure,
        f"linear probe of {report.label!r} · {report.model}",
        f"{report.prompts} prompts, classes {', '.join(report.classes)} · last token · {report.folds}-fold "
        f"cross-validation, seed {report.seed}",
    )
    return figure
