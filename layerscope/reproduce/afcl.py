"""Attend First, Consolidate Later (arXiv 2409.03621), Fig. 2: answer accuracy on the capitals set when, from a
layer on, the previous tokens are frozen, replaced by noise, or the subject's state is swapped for another
prompt's, or the last token skips attention.

The numbers are the engine's sweeps with accuracy (`layerscope sweep -i freeze|random|skip-attn`) and its
cross-prompt token swap (`layerscope sweep -i swap-token`), whose grid row k is the input of block k."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.prompt_sets import answer_matches, load_prompt_set
from layerscope.analyses.resumable import mean
from layerscope.analyses.sweep import sweep
from layerscope.analyses.token_swap import Donor, TokenSwapPoint, token_swap_sweep
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.reproduce.common import (
    Reproduction,
    caption,
    depth,
    first_from,
    new_figure,
    percent,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("freeze", "random", "swap-token", "skip-attn")
PROMPTS = "capitals.jsonl"
HARMLESS = 0.9
"""A manipulation is harmless at a layer where it keeps this share of the unmodified model's accuracy."""
QUICK = {"n_prompts": 3, "layer_step": 6, "max_new_tokens": 2}
FULL = {"n_prompts": None, "layer_step": 1, "max_new_tokens": 6}


def settings(quick: bool, seed: int = 0) -> dict:
    donor = Donor()
    return {
        "prompts": PROMPTS,
        **(QUICK if quick else FULL),
        "seed": seed,
        "donor": {"prompt": donor.prompt, "word": donor.word, "answer": donor.answer},
    }


def run(
    lm: LoadedModel, quick: bool, seed: int = 0, folder: Path = SAMPLE_PROMPTS, progress: ProgressFn = no_progress
) -> Reproduction:
    chosen = settings(quick, seed)
    items = load_prompt_set(folder / PROMPTS)[: chosen["n_prompts"]]
    layers = sorted({*range(0, lm.n_blocks, chosen["layer_step"]), lm.n_blocks - 1})  # the last block too
    tokens = chosen["max_new_tokens"]
    baseline = mean(
        [
            float(answer_matches(greedy_continuation(lm, lm.encode(item.text), tokens).text, item.answer or ""))
            for item in items
        ]
    )
    curves: dict[str, list[dict]] = {}
    for kind in KINDS:
        computed = (
            token_swap_sweep(lm, items, Donor(**chosen["donor"]), layers, tokens, progress=progress)
            if kind == "swap-token"
            else sweep(lm, items, kind, layers, chosen["seed"], True, tokens, progress=progress)
        )
        curves[kind] = [
            {**row.to_dict(), "layer": place, "depth": depth(place, lm.n_blocks)}
            for row in computed
            for place in [row.row if isinstance(row, TokenSwapPoint) else row.layer]
            if row.prompt_index is None
        ]
    data = {
        "n_blocks": lm.n_blocks,
        "n_prompts": len(items),
        "layers": layers,
        "baseline_accuracy": baseline,
        "curves": curves,
    }
    rows = [
        {"intervention": kind, "layer": row["layer"], "depth": row["depth"], "accuracy": row["accuracy"]}
        for kind in KINDS
        for row in curves[kind]
    ]
    return Reproduction("afcl", lm.name, quick, chosen, data, summary(lm.name, data), rows)


def harmless_from(data: dict, kind: str) -> int | None:
    rows = data["curves"][kind]
    return first_from(
        [row["layer"] for row in rows], [row["accuracy"] >= HARMLESS * data["baseline_accuracy"] for row in rows]
    )


def summary(model: str, data: dict) -> str:
    n_blocks = data["n_blocks"]
    lines = [
        f"Attend First, Consolidate Later, Fig. 2 on {model} ({n_blocks} blocks, {data['n_prompts']} capitals "
        f"prompts, blocks {', '.join(map(str, data['layers']))}).",
        "The paper: in the final 30-50% of blocks these manipulations cost little or nothing; earlier they can "
        "drop accuracy to chance; a swapped subject is followed early and ignored in the top third.",
        f"This model answers {percent(data['baseline_accuracy'])} unmodified; harmless below means it keeps "
        f"{percent(HARMLESS)} of that at that block and every later one measured.",
    ]
    for kind in KINDS:
        start = harmless_from(data, kind)
        lowest = min(data["curves"][kind], key=lambda row: row["accuracy"])
        where = (
            "never harmless"
            if start is None
            else f"harmless from block {start} of {n_blocks} ({percent(depth(start, n_blocks))} of depth)"
        )
        lines.append(f"{kind}: {where}; lowest accuracy {percent(lowest['accuracy'])} at block {lowest['layer']}.")
    donor = max(data["curves"]["swap-token"], key=lambda row: row["follows_donor"])
    lines.append(
        f"swap-token follows the donor's answer most at block {donor['layer']} "
        f"({percent(donor['follows_donor'])} of prompts)."
    )
    return "\n".join(lines)


def draw(result: Reproduction) -> dict[str, Figure]:
    data = result.data
    figure = new_figure(7.5, 4.2)
    axis = figure.subplots()
    for kind, style in zip(KINDS, ("o-", "s-", "^-", "d-")):
        rows = data["curves"][kind]
        label = "cross-prompt swap (keeps own answer)" if kind == "swap-token" else kind
        axis.plot([row["layer"] for row in rows], [row["accuracy"] for row in rows], style, markersize=4, label=label)
    swap = data["curves"]["swap-token"]
    axis.plot(
        [row["layer"] for row in swap],
        [row["follows_donor"] for row in swap],
        ":",
        color="grey",
        label="cross-prompt swap (follows donor)",
    )
    axis.axhline(data["baseline_accuracy"], color="black", linewidth=0.8, linestyle="--", label="unmodified")
    axis.set_xlabel(f"layer where the manipulation starts (of {data['n_blocks']} blocks)")
    axis.set_ylabel("accuracy")
    axis.set_ylim(-0.05, 1.05)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    caption(figure, result, f"{data['n_prompts']} prompts of {PROMPTS}")
    return {"fig2": figure}
