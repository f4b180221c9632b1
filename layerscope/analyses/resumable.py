"""Studies that run prompt by prompt and can resume: a point is one prompt's metrics at one layer (or grid row),
kept by its `key`; an interrupted run's points are not computed again, and the set averages count every prompt once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from layerscope.analyses.prompt_sets import PromptItem
from layerscope.distributed import from_writer, ordered_results
from layerscope.progress import ProgressFn


def prompts_fingerprint(prompts: Sequence[PromptItem]) -> str:
    """sha256 of every prompt with its answer and subject: equal only for the same set in the same order."""
    data = json.dumps([asdict(item) for item in prompts], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def mean(values: Sequence[float]) -> float:
    """The mean of a metric every point has (the callers average at least one point)."""
    return sum(values) / len(values)


def mean_of(values: Sequence[float | None]) -> float | None:
    """The mean of the points that have the metric; None when none has it."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def finished_points(done: Iterable) -> dict[tuple[int, Hashable], Any]:
    """Per-prompt points of an interrupted run by `key` (prompt, step: a layer, a grid row, or (layer, factor));
    rank 0's under torchrun (only it has the file)."""
    return {p.key: p for p in from_writer(list(done)) if p.prompt_index is not None}


def missing_points(
    indices: Iterable[int],
    steps: Sequence[Hashable],
    finished: dict,
    prompt_points: Callable[[int], Iterable],
    progress: ProgressFn,
    label: str,
) -> Iterator:
    """The points of every prompt not all in `finished`, prompt by prompt, each also added to `finished`; `steps`
    are a sweep's layers (steer's (layer, factor) pairs, token-swap's grid rows).

    Under torchrun the prompts are shared out over the ranks and every rank gets every point in this order.
    """
    indices = list(indices)
    total, count = len(indices) * len(steps), len([key for key in finished if key[1] in steps])
    progress(count, total, label)
    todo = [index for index in indices if not all((index, step) in finished for step in steps)]
    for point in ordered_results(todo, prompt_points):
        finished[point.key] = point
        count += 1
        progress(count, total, label)
        yield point
