"""The seed papers' figures on any model, one command each: `layerscope reproduce NAME`.

Each paper's module runs the engine's own analyses with the paper's settings (or a `quick` setting for the demo
model), and returns a `Reproduction`: the numbers behind the figures, a summary that sets this model's result
beside the paper's, and the paper's composite figures drawn from those numbers. This module only names the
papers: it imports no torch, so the CLI can list them without loading the engine.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

FIGURE_FORMATS = ("png", "svg", "pdf")


@dataclass(frozen=True)
class Paper:
    name: str
    title: str  # the paper and the figure reproduced
    what: str  # one line for the command's help
    figures: tuple[str, ...]  # each figure's file name part: `{name}-{figure}.{format}`
    data: tuple[str, ...]  # the data sets it reads, by their names in sample_prompts/

    def module(self) -> ModuleType:
        """The paper's module (`layerscope.reproduce.<name>`), with `run(lm, quick, seed, data, progress)` and
        `draw(result)`."""
        return importlib.import_module(f"layerscope.reproduce.{self.name}")

    def files(self, format: str) -> list[str]:
        """Every file a run writes in its figure folder."""
        return [
            *(f"{self.name}-{figure}.{format}" for figure in self.figures),
            f"{self.name}.json",
            f"{self.name}-summary.txt",
        ]


PAPERS = {
    paper.name: paper
    for paper in (
        Paper(
            "stages",
            "Stages of Inference (arXiv 2406.19384), Fig. 3",
            "drop and swap each block: KL, top-1 agreement and entropy change vs relative depth",
            ("fig3",),
            ("general.txt",),
        ),
        Paper(
            "afcl",
            "Attend First, Consolidate Later (arXiv 2409.03621), Fig. 2",
            "capitals accuracy vs layer under freeze, random, cross-prompt swap and skip attention",
            ("fig2",),
            ("capitals.jsonl",),
        ),
        Paper(
            "shortgpt",
            "ShortGPT (arXiv 2403.03853): Block Influence and pruning",
            "Block Influence per block; perplexity after removing the lowest-BI, random and last blocks",
            ("bi", "perplexity"),
            ("calibration.txt", "heldout.txt"),
        ),
        Paper(
            "retrieval",
            "Retrieval Head (arXiv 2404.15574): retrieval scores and masking",
            "retrieval-score heatmap, share of heads above 0.1, NIAH accuracy with top vs random heads masked",
            ("heads", "niah"),
            ("haystack.txt", "needles.jsonl"),
        ),
        Paper(
            "rome",
            "ROME (arXiv 2202.05262), Fig. 1: causal traces",
            "the three causal-trace heatmaps (resid, mlp, attn) averaged over the capitals set",
            ("traces",),
            ("capitals.jsonl",),
        ),
    )
}
