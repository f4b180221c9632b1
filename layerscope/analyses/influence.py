"""Block Influence and layer pruning (ShortGPT, arXiv 2403.03853).

BI_b = 1 - mean over tokens of cos(x_in_b, x_out_b). Every state is taken
before the final norm, the last block's output included (the official code
compares a pre-norm input with a post-norm output there). Pruning removes the
blocks for real: a shorter ModuleList, attention layer indices renumbered and
the config updated, so `generate` with a KV cache works on the pruned model.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from layerscope.analyses.residual import capture_residuals
from layerscope.distributed import mapped
from layerscope.errors import LayerscopeError
from layerscope.models.demo import follow_umask
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure


MIN_TOKENS = 256
"""Below this many tokens (one default window) Block Influence and perplexity are means over too few tokens
to trust: the report says so in `warnings` (a 3-token text still gives a ranking, but a noisy one)."""


def text_windows(lm: LoadedModel, text: str, window: int) -> list[torch.Tensor]:
    """The text's tokens cut into (1, window) pieces; a last piece shorter than 2 tokens is dropped."""
    if not text.strip():
        raise LayerscopeError("The text is empty.")
    window = min(window, lm.adapter.max_context or window)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids.to(lm.adapter.input_device)
    pieces = [ids[:, start : start + window] for start in range(0, ids.shape[1], window)]
    pieces = [piece for piece in pieces if piece.shape[1] >= 2]
    if not pieces:
        raise LayerscopeError("The text is too short: it needs at least 2 tokens.")
    return pieces


def block_influence(lm: LoadedModel, windows: list[torch.Tensor], progress: ProgressFn = no_progress) -> list[float]:
    """BI per block, each token of every window counting once; windows shared out over torchrun ranks."""

    def cosine_sums(ids: torch.Tensor) -> torch.Tensor:
        states = capture_residuals(lm.adapter, ids).states.float()  # (L + 1, 1, T, D)
        return F.cosine_similarity(states[:-1], states[1:], dim=-1).sum(dim=(1, 2)).double().cpu()

    progress(0, len(windows), "block influence")
    total = torch.zeros(lm.n_blocks, dtype=torch.float64)
    for done, sums in enumerate(mapped(windows, cosine_sums), start=1):
        total += sums
        progress(done, len(windows), "block influence")
    tokens = sum(ids.shape[1] for ids in windows)
    return (1 - total / tokens).tolist()


def perplexity(
    lm: LoadedModel, windows: list[torch.Tensor], progress: ProgressFn = no_progress, description: str = "perplexity"
) -> float:
    """exp of the mean next-token loss over every predicted token of every window."""

    def summed_loss(ids: torch.Tensor) -> float:
        with torch.inference_mode():
            logits = lm.model(input_ids=ids, use_cache=False).logits[0].float()
            return F.cross_entropy(logits[:-1], ids[0, 1:].to(logits.device), reduction="sum").item()

    progress(0, len(windows), description)
    nll = 0.0
    for done, loss in enumerate(mapped(windows, summed_loss), start=1):  # windows shared out over torchrun ranks
        nll += loss
        progress(done, len(windows), description)
    count = sum(ids.shape[1] - 1 for ids in windows)
    return float(torch.tensor(nll / count).exp())


def check_prune(n_prune: int, n_blocks: int) -> None:
    if not 0 < n_prune < n_blocks:
        raise LayerscopeError(f"n_prune= must be between 1 and {n_blocks - 1} for this {n_blocks}-block model.")


@contextmanager
def pruned(lm: LoadedModel, removed: Iterable[int]) -> Iterator[None]:
    """The model without the `removed` blocks for the duration of the block (`ModelAdapter.arranged_blocks`: layer
    indices renumbered, the config updated); restored exactly after."""
    removed = sorted(set(removed))
    n_blocks = lm.n_blocks
    if any(not 0 <= b < n_blocks for b in removed):
        raise LayerscopeError(f"Blocks to remove must be in 0..{n_blocks - 1}.")
    check_prune(len(removed), n_blocks)
    with lm.adapter.arranged_blocks([b for b in range(n_blocks) if b not in removed]):
        yield


def save_pruned(lm: LoadedModel, removed: Iterable[int], directory: Path) -> None:
    """safetensors weights, config and tokenizer that plain transformers loads."""
    with pruned(lm, removed):
        lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    follow_umask(directory)


@dataclass
class PruneReport:
    removed: list[int]  # the lowest-BI blocks
    random_removed: list[int]
    last_removed: list[int]
    perplexity: dict[str, float]  # baseline, block_influence, random, last
    eval_tokens: int

    def records(self) -> Records:
        """Per way of choosing the blocks (none: the baseline), the blocks removed and the held-out perplexity."""
        removed = {
            "baseline": [],
            "block_influence": self.removed,
            "random": self.random_removed,
            "last": self.last_removed,
        }
        return Records.of(
            ("removal", "blocks", "perplexity"),
            ((name, " ".join(map(str, removed[name])), value) for name, value in self.perplexity.items()),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


@dataclass
class InfluenceReport:
    model: str
    calibration_tokens: int
    bi: list[float]
    prune: PruneReport | None = field(default=None)

    @property
    def ranking(self) -> list[int]:
        """Blocks from the least to the most influential: the pruning order."""
        return sorted(range(len(self.bi)), key=lambda b: self.bi[b])

    @property
    def warnings(self) -> list[str]:
        counts = {"calibration": self.calibration_tokens, "held-out": self.prune.eval_tokens if self.prune else None}
        return [
            f"only {count} {name} tokens (fewer than {MIN_TOKENS}): the numbers rest on too few tokens to "
            f"trust; give a longer text"
            for name, count in counts.items()
            if count is not None and count < MIN_TOKENS
        ]

    def plot(self) -> Figure:
        """Block Influence bars and, after pruning, perplexity against the random and last-N baselines:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.studies import influence_figure

        return influence_figure(self)

    def to_dict(self) -> dict:
        data = {
            "model": self.model,
            "calibration_tokens": self.calibration_tokens,
            "blocks": [{"block": b, "bi": value} for b, value in enumerate(self.bi)],
            "ranking": self.ranking,
        }
        if self.prune is not None:
            data.update(vars(self.prune))
        data["warnings"] = self.warnings
        return data

    def records(self) -> Records:
        """Block Influence per block (the pruning's perplexities: `prune.records()`)."""
        return Records.of(("block", "bi"), enumerate(self.bi))

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def influence(
    lm: LoadedModel,
    calibration_text: str,
    window: int = 256,
    n_prune: int = 0,
    eval_text: str | None = None,
    seed: int = 0,
    progress: ProgressFn = no_progress,
) -> InfluenceReport:
    """BI per block; with n_prune, held-out perplexity after removing the lowest-BI, random and last blocks."""
    if n_prune:
        check_prune(n_prune, lm.n_blocks)
        if eval_text is None:
            raise LayerscopeError("n_prune= needs held-out text for the perplexity check (eval_text=).")
    windows = text_windows(lm, calibration_text, window)
    report = InfluenceReport(lm.name, sum(w.shape[1] for w in windows), block_influence(lm, windows, progress))
    if not n_prune:
        return report
    held_out = text_windows(lm, eval_text or "", window)
    choices = {
        "block_influence": sorted(report.ranking[:n_prune]),
        "random": sorted(random.Random(seed).sample(range(lm.n_blocks), n_prune)),
        "last": list(range(lm.n_blocks - n_prune, lm.n_blocks)),
    }
    scores = {"baseline": perplexity(lm, held_out, progress, "perplexity: baseline")}
    for name, removed in choices.items():
        with pruned(lm, removed):
            scores[name] = perplexity(lm, held_out, progress, f"perplexity: {name}")
    report.prune = PruneReport(
        choices["block_influence"], choices["random"], choices["last"], scores, sum(w.shape[1] for w in held_out)
    )
    return report
