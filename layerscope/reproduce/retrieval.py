"""Retrieval Head (arXiv 2404.15574): the retrieval score of every head from needle-in-a-haystack tests, the share
of heads above 0.1, and NIAH accuracy with the top-K heads masked against K random heads.

The numbers are the engine's `retrieval_scores` (`layerscope heads retrieval`) and `ablation_experiment`
(`layerscope heads ablate`), on the shipped haystack and needles (or a folder's)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.analyses.head_ablation import ablation_experiment
from layerscope.analyses.head_scores import RETRIEVAL_THRESHOLD
from layerscope.analyses.needles import Needle, build_tests, load_haystack, load_needles
from layerscope.analyses.retrieval import retrieval_scores
from layerscope.interventions.kinds import HEAD_MASK_MODES
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.reproduce.common import Reproduction, caption, new_figure, percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HAYSTACK, NEEDLES = "haystack.txt", "needles.jsonl"
QUICK = {"lengths": (192,), "depths": (50,), "max_new_tokens": 16, "needles": (2, 4), "fractions": (0.05,)}
"""Two of the five shipped needles (1 = the first line), the two the demo model answers in 16 tokens."""
FULL = {
    "lengths": (512, 1024, 2048),
    "depths": (0, 25, 50, 75, 100),
    "max_new_tokens": 50,
    "needles": None,
    "fractions": (0.02, 0.05, 0.1),
}


def settings(quick: bool, seed: int = 0) -> dict:
    return {**(QUICK if quick else FULL), "span": "needle", "seed": seed, "haystack": HAYSTACK, "needles_file": NEEDLES}


def chosen_needles(path: Path, lines: tuple[int, ...] | None) -> list[Needle]:
    """The needles of the file, or those of them (1 = the first)."""
    needles = load_needles(path)
    return needles if lines is None else [needles[line - 1] for line in lines]


def masked_counts(total: int, fractions: tuple[float, ...]) -> list[int]:
    """K for each share of the heads (at least 1, at most half: the random K come from outside the top K)."""
    return sorted({min(total // 2, max(1, round(f * total))) for f in fractions})


def run(
    lm: LoadedModel, quick: bool, seed: int = 0, folder: Path = SAMPLE_PROMPTS, progress: ProgressFn = no_progress
) -> Reproduction:
    chosen = settings(quick, seed)
    lengths, depths, tokens = chosen["lengths"], chosen["depths"], chosen["max_new_tokens"]
    haystack, needles = load_haystack(folder / HAYSTACK), chosen_needles(folder / NEEDLES, chosen["needles"])
    scores = retrieval_scores(lm, haystack, needles, lengths, depths, tokens, chosen["span"], progress)
    tests = build_tests(lm, haystack, needles, lengths, depths)
    ablations = [
        ablation_experiment(lm, scores, k, tests, chosen["seed"], tokens, progress).to_dict()
        for k in masked_counts(len(scores.heads), chosen["fractions"])
    ]
    data = {
        "n_blocks": scores.n_blocks,
        "n_heads": scores.n_heads,
        "threshold": RETRIEVAL_THRESHOLD,
        "share_above": scores.share_above(),
        "heads_above": len(scores.above()),
        "tests": scores.meta["tests"],
        "answered": scores.meta["answered"],
        "scores": scores.matrix().tolist(),
        "ablations": ablations,
    }
    rows = [
        {"k": ablation["k"], "run": run_name, "accuracy": accuracy}
        for ablation in ablations
        for run_name, accuracy in ablation["accuracy"].items()
    ]
    return Reproduction("retrieval", lm.name, quick, chosen, data, summary(lm.name, data), rows)


def summary(model: str, data: dict) -> str:
    total = data["n_blocks"] * data["n_heads"]
    lines = [
        f"Retrieval heads on {model} ({data['n_blocks']} blocks x {data['n_heads']} query heads; "
        f"{data['tests']} needle tests, {data['answered']} answered and scored).",
        "The paper: 3-6% of heads score above 0.1 (Llama-2-7B-80K 3.2%, Mistral-7B-v0.2 4.2%); masking the "
        "top 50 heads of a 7B model pushes NIAH below 50%, while 50 random heads barely matter.",
        f"This model: {percent(data['share_above'])} of heads above {data['threshold']} "
        f"({data['heads_above']} of {total}).",
    ]
    for ablation in data["ablations"]:
        accuracy, k = ablation["accuracy"], ablation["k"]
        lines.append(
            f"NIAH accuracy {percent(accuracy['baseline'])} unmasked; top {k} heads masked: "
            + ", ".join(f"{percent(accuracy[f'top-{k} {mode}'])} ({mode})" for mode in HEAD_MASK_MODES)
            + f"; {k} random heads: "
            + ", ".join(f"{percent(accuracy[f'random-{k} {mode}'])} ({mode})" for mode in HEAD_MASK_MODES)
            + "."
        )
    return "\n".join(lines)


def draw(result: Reproduction) -> dict[str, Figure]:
    data = result.data
    heat = new_figure(max(4.0, 0.35 * data["n_heads"] + 2), max(3.5, 0.22 * data["n_blocks"] + 1.5))
    axis = heat.subplots()
    image = axis.imshow(data["scores"], aspect="auto", cmap="viridis", vmin=0, origin="lower")
    heat.colorbar(image, ax=axis, label="retrieval score")
    axis.set_xlabel("query head")
    axis.set_ylabel("block")
    axis.set_title(
        f"{percent(data['share_above'])} of heads above {data['threshold']} "
        f"({data['heads_above']} of {data['n_blocks'] * data['n_heads']})",
        fontsize=9,
    )
    caption(heat, result, f"{data['answered']} of {data['tests']} needle tests answered")
    niah = new_figure(6.5, 4)
    axis = niah.subplots()
    ks = [ablation["k"] for ablation in data["ablations"]]
    for name, colour in (("top", "tab:red"), ("random", "tab:blue")):
        for mode, style in zip(HEAD_MASK_MODES, ("o-", "s--")):
            axis.plot(
                ks,
                [ablation["accuracy"][f"{name}-{ablation['k']} {mode}"] for ablation in data["ablations"]],
                style,
                color=colour,
                label=f"{name} heads masked ({mode})",
            )
    axis.axhline(
        data["ablations"][0]["accuracy"]["baseline"], color="black", linewidth=0.8, linestyle="--", label="unmasked"
    )
    axis.set_xlabel("heads masked (K)")
    axis.set_ylabel("needle-in-a-haystack accuracy")
    axis.set_ylim(-0.05, 1.05)
    axis.set_xticks(ks)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    caption(niah, result, f"{data['tests']} needle tests")
    return {"heads": heat, "niah": niah}
