"""ShortGPT (arXiv 2403.03853): Block Influence per block, and held-out perplexity after removing the N
lowest-BI blocks, next to N random blocks and the last N, for several N.

The numbers are the engine's `influence` (`layerscope influence --prune N`), one call per N."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.analyses.influence import influence
from layerscope.analyses.resumable import mean
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.reproduce.common import Reproduction, caption, depth, new_figure
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CALIBRATION, HELD_OUT = "calibration.txt", "heldout.txt"
CHOICES = ("block_influence", "random", "last")
QUICK = {"window": 128, "characters": 1500, "fractions": (0.1, 0.3)}
FULL = {"window": 256, "characters": None, "fractions": None}  # the whole texts; every N from 1 to 30% of the blocks
LARGEST = 0.3
"""The largest share of blocks removed (the paper removes 9 of 32 from Llama-2-7B, 28%)."""


def prune_counts(n_blocks: int, fractions: tuple[float, ...] | None) -> list[int]:
    """The N removed: 1 to 30% of the blocks, or those shares of them; always fewer than all blocks."""
    largest = max(1, round(LARGEST * n_blocks))
    counts = range(1, largest + 1) if fractions is None else (max(1, round(f * n_blocks)) for f in fractions)
    return sorted({n for n in counts if n < n_blocks})


def settings(quick: bool, seed: int = 0) -> dict:
    chosen = QUICK if quick else FULL
    return {"calibration": CALIBRATION, "held_out": HELD_OUT, **chosen, "seed": seed}


def run(
    lm: LoadedModel, quick: bool, seed: int = 0, folder: Path = SAMPLE_PROMPTS, progress: ProgressFn = no_progress
) -> Reproduction:
    chosen = settings(quick, seed)
    calibration, held_out = (
        read_text_file(folder / name, what)[: chosen["characters"]]
        for name, what in ((CALIBRATION, "calibration text"), (HELD_OUT, "held-out text"))
    )
    reports = [
        influence(lm, calibration, chosen["window"], n, held_out, chosen["seed"], progress)
        for n in prune_counts(lm.n_blocks, chosen["fractions"])
    ]
    first = reports[0]
    pruning: list[dict] = [
        {
            "removed_blocks": len(prune.removed),
            "block_influence_removed": prune.removed,
            "random_removed": prune.random_removed,
            "last_removed": prune.last_removed,
            "perplexity": prune.perplexity,
        }
        for prune in (report.prune for report in reports)
        if prune is not None
    ]
    data = {
        "n_blocks": lm.n_blocks,
        "calibration_tokens": first.calibration_tokens,
        "eval_tokens": first.prune.eval_tokens if first.prune else 0,
        "bi": first.bi,
        "ranking": first.ranking,
        "pruning": pruning,
    }
    bi_rows: list[dict] = [
        {"block": block, "bi": value, "removed_blocks": None, "choice": None, "perplexity": None}
        for block, value in enumerate(first.bi)
    ]
    prune_rows: list[dict] = [
        {
            "block": None,
            "bi": None,
            "removed_blocks": step["removed_blocks"],
            "choice": name,
            "perplexity": step["perplexity"][name],
        }
        for step in pruning
        for name in ("baseline", *CHOICES)
    ]
    rows = bi_rows + prune_rows
    return Reproduction("shortgpt", lm.name, quick, chosen, data, summary(lm.name, data), rows)


def summary(model: str, data: dict) -> str:
    n_blocks, pruning = data["n_blocks"], data["pruning"]
    largest = pruning[-1]
    lowest = largest["block_influence_removed"]
    scores = largest["perplexity"]
    beats = {
        other: sum(step["perplexity"]["block_influence"] < step["perplexity"][other] for step in pruning)
        for other in ("random", "last")
    }
    return "\n".join(
        [
            f"ShortGPT on {model} ({n_blocks} blocks; BI over {data['calibration_tokens']} calibration tokens, "
            f"perplexity over {data['eval_tokens']} held-out tokens).",
            "The paper: the lowest-BI blocks are deep but not the last (Llama-2-7B removes 27,26,25,28,24,29,23,21,22, "
            "9 of 32) and removing them keeps 86% of the average benchmark score, better than other layer choices.",
            f"This model: the {len(lowest)} lowest-BI blocks are {', '.join(map(str, lowest))} "
            f"(mean relative depth {mean([depth(b, n_blocks) for b in lowest]):.2f}); block 0 has BI "
            f"{data['bi'][0]:.3f}, the most influential is block {data['ranking'][-1]}.",
            f"Removing {largest['removed_blocks']} blocks: perplexity {scores['baseline']:.2f} unpruned, "
            f"{scores['block_influence']:.2f} lowest BI, {scores['random']:.2f} random, {scores['last']:.2f} last.",
            f"Lowest-BI removal beats random at {beats['random']} and the last blocks at {beats['last']} of "
            f"{len(pruning)} counts ({', '.join(str(step['removed_blocks']) for step in pruning)}).",
        ]
    )


def draw(result: Reproduction) -> dict[str, Figure]:
    data = result.data
    lowest = set(data["pruning"][-1]["block_influence_removed"])
    bi_figure = new_figure(8, 3.6)
    axis = bi_figure.subplots()
    colours = ["tab:red" if block in lowest else "tab:blue" for block in range(data["n_blocks"])]
    axis.bar(range(data["n_blocks"]), data["bi"], color=colours)
    axis.set_xlabel("block (red: the lowest-BI blocks, removed first)")
    axis.set_ylabel("Block Influence, 1 - mean cos(in, out)")
    axis.grid(alpha=0.3, axis="y")
    caption(bi_figure, result, f"BI over {data['calibration_tokens']} tokens of {CALIBRATION}")
    prune_figure = new_figure(6.5, 4)
    axis = prune_figure.subplots()
    counts = [step["removed_blocks"] for step in data["pruning"]]
    for name, style in zip(CHOICES, ("o-", "s--", "^:")):
        axis.plot(
            counts,
            [step["perplexity"][name] for step in data["pruning"]],
            style,
            label={"block_influence": "lowest BI", "random": "random", "last": "last blocks"}[name],
        )
    axis.axhline(
        data["pruning"][0]["perplexity"]["baseline"], color="black", linewidth=0.8, linestyle="--", label="unpruned"
    )
    axis.set_yscale("log")
    axis.set_xlabel("blocks removed")
    axis.set_ylabel(f"perplexity on {HELD_OUT} (log)")
    axis.grid(alpha=0.3)
    axis.legend()
    caption(prune_figure, result, f"{data['eval_tokens']} held-out tokens")
    return {"bi": bi_figure, "perplexity": prune_figure}
