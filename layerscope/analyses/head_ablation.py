"""The masking experiment: needle-in-a-haystack accuracy with the top-K retrieval heads masked, against K random
heads (arXiv 2404.15574)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from layerscope.analyses.decoding import answer_steps
from layerscope.analyses.head_scores import HeadScore, HeadScores
from layerscope.analyses.needles import NeedleTest
from layerscope.analyses.retrieval import ANSWERED_RECALL, rouge1_recall
from layerscope.distributed import mapped
from layerscope.errors import LayerscopeError
from layerscope.interventions import MaskHeads, intervene
from layerscope.interventions.kinds import HEAD_MASK_MODES, HeadMaskMode
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


@dataclass
class AblationReport:
    model: str
    k: int
    seed: int
    heads: list[HeadScore]  # the top K
    random_heads: list[HeadScore]
    tests: int
    accuracy: dict[str, float]  # "baseline", "top-K zero", "top-K uniform", "random-K zero", "random-K uniform"

    def plot(self) -> Figure:
        """NIAH accuracy per masking: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import ablation_figure

        return ablation_figure(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def records(self) -> Records:
        return Records.of(("run", "accuracy"), self.accuracy.items())

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def ablation_heads(scores: HeadScores, k: int, seed: int) -> tuple[list[HeadScore], list[HeadScore]]:
    """The top-k heads, and k random heads (seeded) drawn from the rest."""
    total = len(scores.heads)
    if k < 1:
        raise LayerscopeError(f"k= must be at least 1 (one head or more to mask), not {k}.")
    if k > total // 2:
        raise LayerscopeError(
            f"k={k} is not possible: the model has {total} heads, and K random heads must be drawn "
            f"from the heads outside the top K (K at most {total // 2})."
        )
    top = scores.top(k)
    rest = [h for h in scores.heads if h not in top]
    chosen = random.Random(seed).sample(rest, k)
    return top, sorted(chosen, key=lambda h: (h.layer, h.head))


def niah_accuracy(
    lm: LoadedModel,
    tests: Sequence[NeedleTest],
    max_new_tokens: int,
    heads: Sequence[HeadScore] = (),
    mode: HeadMaskMode = "zero",
) -> float:
    """Share of tests answered (ROUGE-1 recall > 0.5) with the heads masked."""
    masks = [MaskHeads(tuple((h.layer, h.head) for h in heads), mode)] if heads else []

    def answered(test: NeedleTest) -> bool:
        tokens = [token for token, _ in answer_steps(lm, test.ids, max_new_tokens, with_attention=False)]
        answer = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        return rouge1_recall(test.needle.answer, answer) > ANSWERED_RECALL

    with intervene(lm, masks):
        return sum(mapped(tests, answered)) / len(tests)  # tests shared out over torchrun ranks


def ablation_experiment(
    lm: LoadedModel,
    scores: HeadScores,
    k: int,
    tests: Sequence[NeedleTest],
    seed: int = 0,
    max_new_tokens: int = 50,
    progress: ProgressFn = no_progress,
) -> AblationReport:
    """NIAH accuracy for the baseline, then top-K and random-K heads masked in both modes."""
    scores.check_model(lm)
    top, rand = ablation_heads(scores, k, seed)
    runs: dict[str, tuple[Sequence[HeadScore], HeadMaskMode]] = {"baseline": ((), "zero")}
    for name, chosen in (("top", top), ("random", rand)):
        for mode in HEAD_MASK_MODES:
            runs[f"{name}-{k} {mode}"] = (chosen, mode)
    accuracy = {}
    for index, (name, (heads, mode)) in enumerate(runs.items()):
        progress(index, len(runs), f"ablation: {name}")
        accuracy[name] = niah_accuracy(lm, tests, max_new_tokens, heads, mode)
    progress(len(runs), len(runs), "ablation")
    return AblationReport(lm.name, k, seed, top, rand, len(tests), accuracy)
