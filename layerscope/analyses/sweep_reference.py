"""The slow reference for `sweep`: a full forward through `intervene` per intervention, for benchmarks and tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from layerscope.analyses.batched_blocks import BaselinePass
from layerscope.analyses.compare import intervened_logits
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.sweep import (
    SweepPoint,
    average_points,
    check_layers,
    make_intervention,
    sweep_layers,
    sweep_point,
)
from layerscope.models.loading import LoadedModel


def naive_sweep(
    lm: LoadedModel, prompts: list[PromptItem], kind: str, layers: Iterable[int] | None = None, seed: int = 0
) -> Iterator[SweepPoint]:
    """The slow way, for benchmarks and tests: a full forward per intervention, no accuracy."""
    layers = check_layers(kind, sweep_layers(kind, lm.n_blocks) if layers is None else layers, lm.n_blocks)
    finished: dict[tuple[int, int], SweepPoint] = {}
    for index, item in enumerate(prompts):
        input_ids = lm.encode(item.text)
        base = BaselinePass([], [], intervened_logits(lm, input_ids))
        for layer in layers:
            logits = intervened_logits(lm, input_ids, [make_intervention(kind, layer, lm.n_blocks, seed)])
            finished[(index, layer)] = point = sweep_point(kind, layer, index, base, logits, input_ids)
            yield point
    for layer in layers:
        yield average_points(kind, layer, [finished[(index, layer)] for index in range(len(prompts))])
