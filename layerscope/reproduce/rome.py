"""ROME (arXiv 2202.05262), Fig. 1: causal traces averaged over the capitals set, for one residual state (resid),
an MLP window (mlp) and an attention window (attn) restored at a time.

Each prompt's trace is the engine's `trace_prompt` (`layerscope trace`: Gaussian noise on the subject, the
expected answer's first token). As in the paper, the positions are grouped before averaging over prompts: the
first, middle and last subject tokens, the first token after the subject, further tokens and the last token (a
one-token subject is both its first and its last token); a group a prompt lacks is averaged over the others."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.analyses.causal_trace import Site, trace_prompt
from layerscope.analyses.prompt_sets import load_prompt_set
from layerscope.analyses.resumable import mean
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.reproduce.common import Reproduction, caption, depth, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROMPTS = "capitals.jsonl"
GROUPS = (
    "first subject token",
    "middle subject tokens",
    "last subject token",
    "first subsequent token",
    "further tokens",
    "last token",
)
QUICK = {"n_prompts": 3}
FULL = {"n_prompts": None}
WINDOW = 10
"""Blocks restored together for mlp and attn (the paper's window)."""

ROME_SITES: tuple[Site, ...] = ("resid", "attn", "mlp")  # the paper's three heatmaps


def settings(quick: bool, seed: int = 0) -> dict:
    return {
        "prompts": PROMPTS,
        **(QUICK if quick else FULL),
        "window": WINDOW,
        "noise_scale": 3.0,
        "seed": seed,
        "answer": "the expected answer's first token, after a space",
    }


def position_groups(subject: tuple[int, int], n_positions: int) -> dict[str, list[int]]:
    """Each group's positions in one prompt (a group may be empty)."""
    start, stop = subject
    last = n_positions - 1
    return {
        "first subject token": [start],
        "middle subject tokens": list(range(start + 1, stop - 1)),
        "last subject token": [stop - 1],
        "first subsequent token": [stop] if stop < last else [],
        "further tokens": list(range(stop + 1, last)),
        "last token": [last],
    }


def average_traces(traces: list[dict], site: str) -> dict:
    """Per group, the mean over the prompts that have it of the mean effect over its positions, per row."""
    present: dict[str, list[list[float]]] = {}
    for trace in traces:
        effects = trace["effects"][site]  # rows x positions
        for group, positions in position_groups(tuple(trace["subject_positions"]), len(trace["tokens"])).items():
            if positions:
                present.setdefault(group, []).append([mean([row[p] for p in positions]) for row in effects])
    groups = [group for group in GROUPS if group in present]
    return {
        "groups": groups,
        "prompts": [len(present[g]) for g in groups],
        "average": [[mean(column) for column in zip(*present[g])] for g in groups],
    }


def run(
    lm: LoadedModel, quick: bool, seed: int = 0, folder: Path = SAMPLE_PROMPTS, progress: ProgressFn = no_progress
) -> Reproduction:
    chosen = settings(quick, seed)
    items = load_prompt_set(folder / PROMPTS)[: chosen["n_prompts"]]
    traces = []
    for item in items:
        runs = {
            site: trace_prompt(
                lm,
                item.text,
                item.subject,
                " " + (item.answer or "").strip(),
                site=site,
                window=chosen["window"],
                seed=chosen["seed"],
                noise_scale=chosen["noise_scale"],
                progress=progress,
            )
            for site in ROME_SITES
        }
        resid = runs["resid"]
        traces.append(
            {
                "prompt": item.text,
                "subject": item.subject,
                "answer": resid.answer,
                "tokens": resid.tokens,
                "subject_positions": resid.subject_positions,
                "p_clean": resid.clean["p_answer"],
                "p_corrupted": resid.corrupted["p_answer"],
                "layers": {site: trace.layers for site, trace in runs.items()},
                "effects": {site: trace.values().tolist() for site, trace in runs.items()},
            }
        )
    sites = {site: average_traces(traces, site) for site in ROME_SITES}
    data = {
        "n_blocks": lm.n_blocks,
        "n_prompts": len(items),
        "layers": traces[0]["layers"],
        "sites": sites,
        "traces": traces,
    }
    rows = [
        {"site": site, "group": group, "layer": layer, "indirect_effect": value}
        for site in ROME_SITES
        for group, averages in zip(sites[site]["groups"], sites[site]["average"])
        for layer, value in zip(data["layers"][site], averages)
    ]
    return Reproduction("rome", lm.name, quick, chosen, data, summary(lm.name, data), rows)


def peak(data: dict, site: str, group: str) -> str:
    """Where a group's average effect peaks: the row, its relative depth and the effect."""
    averages = data["sites"][site]
    values = averages["average"][averages["groups"].index(group)]
    best = max(range(len(values)), key=values.__getitem__)
    label = data["layers"][site][best]
    row = 0 if label == "emb" else int(label) + (1 if site == "resid" else 0)  # resid rows: emb, then block outputs
    return (
        f"{'row' if site == 'resid' else 'block'} {label} ({depth(row, data['n_blocks']):.0%} of depth), "
        f"AIE {values[best]:.3f}"
    )


def summary(model: str, data: dict) -> str:
    traces = data["traces"]
    return "\n".join(
        [
            f"ROME causal traces on {model} ({data['n_blocks']} blocks), averaged over {data['n_prompts']} capitals "
            f"prompts; clean p(answer) {mean([t['p_clean'] for t in traces]):.3f}, corrupted "
            f"{mean([t['p_corrupted'] for t in traces]):.3f} on average.",
            "The paper (GPT-2 XL): restoring MLP outputs at the last subject token matters most in the middle layers "
            "(the 'early site'); attention matters at the last token in late layers; a single residual state "
            "carries the answer at the last subject token early and at the last token late.",
            f"This model: mlp at the last subject token peaks at {peak(data, 'mlp', 'last subject token')}; "
            f"attn at the last token peaks at {peak(data, 'attn', 'last token')}.",
            f"resid peaks at {peak(data, 'resid', 'last subject token')} at the last subject token, and at "
            f"{peak(data, 'resid', 'last token')} at the last token.",
        ]
    )


def draw(result: Reproduction) -> dict[str, Figure]:
    data = result.data
    figure = new_figure(15, 3.6)
    axes = figure.subplots(1, len(ROME_SITES))
    titles = {"resid": "single restored state", "mlp": f"MLP, window {WINDOW}", "attn": f"attention, window {WINDOW}"}
    colours = {"resid": "Purples", "mlp": "Greens", "attn": "Reds"}
    for axis, site in zip(axes, ROME_SITES):
        averages = data["sites"][site]
        image = axis.imshow(averages["average"], aspect="auto", cmap=colours[site], interpolation="nearest")
        figure.colorbar(image, ax=axis, label="average indirect effect")
        axis.set_yticks(range(len(averages["groups"])), averages["groups"], fontsize=8)
        labels = data["layers"][site]
        ticks = list(range(0, len(labels), max(1, len(labels) // 10)))
        axis.set_xticks(ticks, [labels[t] for t in ticks])
        axis.set_xlabel("row (emb, then block outputs)" if site == "resid" else "centre block of the window")
        axis.set_title(titles[site], fontsize=9)
    caption(figure, result, f"{data['n_prompts']} prompts of {PROMPTS}, noise on the subject")
    return {"traces": figure}
