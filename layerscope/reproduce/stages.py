"""Stages of Inference (arXiv 2406.19384), Fig. 3: each block dropped, and each adjacent pair swapped, over a
prompt set; KL to the unmodified model, top-1 agreement and entropy change against relative depth.

The numbers are the engine's `sweep` set averages (`layerscope sweep -i drop|swap`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.analyses.prompt_sets import load_prompt_set
from layerscope.analyses.resumable import mean
from layerscope.analyses.sweep import sweep
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.reproduce.common import Reproduction, caption, depth, new_figure, percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("drop", "swap")
PROMPTS = "general.txt"
QUICK_PROMPTS = 4
METRICS = (
    ("kl", "KL(base || intervened), nats"),
    ("top1_agree", "top-1 agreement"),
    ("entropy_delta", "entropy change, bits"),
)


def settings(quick: bool, seed: int = 0) -> dict:
    return {"prompts": PROMPTS, "n_prompts": QUICK_PROMPTS if quick else None, "kinds": list(KINDS)}


def run(
    lm: LoadedModel, quick: bool, seed: int = 0, folder: Path = SAMPLE_PROMPTS, progress: ProgressFn = no_progress
) -> Reproduction:
    chosen = settings(quick, seed)
    items = load_prompt_set(folder / PROMPTS)[: chosen["n_prompts"]]
    curves = {
        kind: [
            {**row.to_dict(), "depth": depth(row.layer, lm.n_blocks)}
            for row in sweep(lm, items, kind, progress=progress)
            if row.prompt_index is None
        ]
        for kind in KINDS
    }
    data = {"n_blocks": lm.n_blocks, "n_prompts": len(items), "curves": curves}
    rows = [row for kind in KINDS for row in curves[kind]]
    return Reproduction("stages", lm.name, quick, chosen, data, summary(lm.name, data), rows)


def summary(model: str, data: dict) -> str:
    n_blocks, curves = data["n_blocks"], data["curves"]
    first = {kind: curves[kind][0] for kind in KINDS}
    middle = {kind: [row for row in curves[kind] if 1 / 3 <= row["depth"] < 2 / 3] for kind in KINDS}
    kept = {kind: mean([row["top1_agree"] for row in middle[kind]]) for kind in KINDS}
    drop_kl = {row["layer"]: row["kl"] for row in curves["drop"]}
    gentler = sum(row["kl"] < drop_kl[row["layer"]] for row in curves["swap"])
    worst = {kind: min(curves[kind], key=lambda row: row["top1_agree"]) for kind in KINDS}
    return "\n".join(
        [
            f"Stages of Inference, Fig. 3 on {model} ({n_blocks} blocks, {data['n_prompts']} prompts).",
            "The paper: deleting or swapping a block keeps 72-95% of top-1 accuracy; the first block is "
            "catastrophic, middle blocks are robust, and swaps hurt less than drops.",
            f"This model: dropping block 0 keeps {percent(first['drop']['top1_agree'])} top-1 agreement "
            f"(KL {first['drop']['kl']:.3f} nats); swapping blocks 0 and 1 keeps "
            f"{percent(first['swap']['top1_agree'])}.",
            f"Middle third of depth: drop keeps {percent(kept['drop'])} and swap {percent(kept['swap'])} top-1 "
            "agreement on average.",
            f"The swap hurts less than the drop (lower KL) at {gentler} of {len(curves['swap'])} blocks.",
            f"Most harmful: drop of block {worst['drop']['layer']} ({percent(worst['drop']['top1_agree'])} agreement), "
            f"swap of blocks {worst['swap']['layer']} and {worst['swap']['layer'] + 1} "
            f"({percent(worst['swap']['top1_agree'])}).",
        ]
    )


def draw(result: Reproduction) -> dict[str, Figure]:
    figure = new_figure(13, 3.8)
    axes = figure.subplots(1, len(METRICS))
    for axis, (metric, label) in zip(axes, METRICS):
        for kind, style in zip(KINDS, ("o-", "s--")):
            rows = result.data["curves"][kind]
            axis.plot(
                [row["depth"] for row in rows],
                [row[metric] for row in rows],
                style,
                markersize=3,
                label=f"{kind} block" if kind == "drop" else "swap with next",
            )
        axis.set_xlabel("relative depth (block / blocks)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend()
    caption(figure, result, f"{result.data['n_prompts']} prompts of {PROMPTS}")
    return {"fig3": figure}
