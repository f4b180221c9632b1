"""Retrieval-head activity: per generated token, which known retrieval heads copy-paste it from the prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from layerscope.analyses.decoding import answer_steps
from layerscope.analyses.head_scores import RETRIEVAL_THRESHOLD, HeadScore, HeadScores
from layerscope.analyses.retrieval import copy_paste
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


@dataclass
class ActivityStep:
    token: str
    id: int
    active: int  # retrieval heads that copy-pasted this token from the prompt
    heads: list[tuple[int, int]]


@dataclass
class HeadActivity:
    model: str
    heads: list[HeadScore]  # the known retrieval heads
    steps: list[ActivityStep]

    def plot(self) -> Figure:
        """Retrieval heads active per generated token: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import activity_figure

        return activity_figure(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def records(self) -> Records:
        return Records.of(
            ("step", "token", "id", "active"), ((i, s.token, s.id, s.active) for i, s in enumerate(self.steps))
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def head_activity(
    lm: LoadedModel,
    ids: torch.Tensor,
    scores: HeadScores,
    max_new_tokens: int = 30,
    threshold: float = RETRIEVAL_THRESHOLD,
) -> HeadActivity:
    """Per generated token, how many known retrieval heads copy-pasted it from the prompt."""
    scores.check_model(lm)
    known = scores.above(threshold)
    mask = torch.zeros(lm.n_blocks, lm.adapter.n_heads, dtype=torch.bool)
    for head in known:
        mask[head.layer, head.head] = True
    context = ids[0].cpu()
    steps = []
    for token, attention in answer_steps(lm, ids, max_new_tokens):
        copied = copy_paste(attention, token, context, range(len(context))) & mask
        heads = [(int(b), int(h)) for b, h in copied.nonzero().tolist()]
        steps.append(ActivityStep(lm.tokenizer.decode([token]), token, len(heads), heads))
    return HeadActivity(lm.name, known, steps)
