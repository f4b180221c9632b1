"""Intervention sweeps: one intervention at every layer (and, for steer, at every factor), over a prompt set.

A sweep point is one prompt's metrics with the intervention at one layer (a line of the JSONL output); the set
averages per layer follow. Why it is fast: one baseline pass per prompt, then the interventions of a chunk of
layers run together from it (`batched_blocks.run_plans`); the tests check every point against `intervene`
plus a plain forward (`sweep_reference`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from layerscope.analyses.batched_blocks import BaselinePass, capture_baseline, run_plans
from layerscope.analyses.compare import compare_logits, greedy_continuation
from layerscope.analyses.prompt_sets import PromptItem, answer_matches, require_answers
from layerscope.analyses.resumable import finished_points, mean, mean_of, missing_points
from layerscope.errors import ArgumentValueError, InterventionError, LayerscopeError
from layerscope.interventions import REGISTRY, Intervention, ModelShape, chosen_by_block
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress

LOGITS_PER_BATCH = 2**27
"""A batch's final logits stay under this many numbers (512 MiB in fp32), whatever the vocabulary."""


def sweep_kinds() -> list[str]:
    """The kinds chosen by block (drop, swap, freeze, random, skip-attn, and any kind registered since)."""
    return list(chosen_by_block())


def check_kind(kind: str) -> None:
    if kind not in chosen_by_block():
        raise LayerscopeError(f"Unknown intervention '{kind}': use one of {', '.join(sweep_kinds())}, swap-token.")


def make_intervention(
    kind: str, layer: int, n_blocks: int, seed: int = 0, settings: Mapping[str, Any] | None = None
) -> Intervention:
    """The engine object that one sweep point stands for: the kind chosen at block `layer`, with the kind's
    settings by CLI option name (`{"steer": SavedVector.load(path), "steer_factor": 4.0}` for steer)."""
    check_kind(kind)
    cls = REGISTRY[kind]
    assert cls.chosen_by is not None  # check_kind: a kind chosen by block
    [intervention] = cls.from_cli({"seed": seed, **(settings or {}), cls.chosen_by.option_name: layer}, n_blocks)
    return intervention


def sweep_factors(kind: str, settings: Mapping[str, Any] | None = None) -> list[float | None]:
    """The factors a sweep covers at each layer: steer's `steer_factor` setting, a number or a list of numbers
    (default 1), each a point of its own; [None] for the kinds without a factor."""
    if kind != "steer":
        return [None]
    factor = (settings or {}).get("steer_factor", 1.0)
    factors = list(factor) if isinstance(factor, (list, tuple)) else [factor]
    bad = [f for f in factors if isinstance(f, bool) or not isinstance(f, (int, float)) or not math.isfinite(f)]
    if not factors or bad:
        raise ArgumentValueError(f"steer_factor= must be a finite number or a non-empty list of them, not {factor!r}.")
    return [float(f) for f in dict.fromkeys(factors)]


def with_factor(settings: Mapping[str, Any] | None, factor: float | None) -> Mapping[str, Any] | None:
    """A step's settings: the sweep's, with its one factor."""
    return settings if factor is None else {**(settings or {}), "steer_factor": factor}


def sweep_layers(kind: str, n_blocks: int, settings: Mapping[str, Any] | None = None) -> list[int]:
    """Every block where the kind passes its range check (for swap, the lower block of every adjacent pair)."""
    first = with_factor(settings, sweep_factors(kind, settings)[0])  # steer's factors: any one checks the block

    def valid(block: int) -> bool:
        intervention = make_intervention(kind, block, n_blocks, settings=first)  # a missing setting is refused
        try:
            intervention.check(ModelShape(n_blocks, 1))
        except InterventionError:
            return False
        return True

    return [block for block in range(n_blocks) if valid(block)]


def check_layers(
    kind: str, layers: Iterable[int], n_blocks: int, settings: Mapping[str, Any] | None = None
) -> list[int]:
    valid = sweep_layers(kind, n_blocks, settings)
    layers = sorted(set(layers))
    bad = [layer for layer in layers if layer not in valid]
    if bad:
        raise LayerscopeError(f"{kind}: layer {bad[0]} is out of range 0..{valid[-1]} for this model.")
    return layers


@dataclass
class SweepPoint:
    """One JSONL line: a prompt's metrics at one layer, or their mean over the set when prompt_index is None."""

    intervention: str
    layer: int
    prompt_index: int | None
    kl: float  # KL(base || intervened), nats, mean over measured positions
    top1_agree: float
    entropy_delta: float  # bits, intervened minus base
    loss_delta: float | None  # next-token loss change; None where no next token is known
    accuracy: float | None = None
    factor: float | None = None  # steer's factor; None for the kinds without one

    @property
    def key(self) -> tuple[int | None, int | tuple[int, float]]:
        """(prompt, step): the step is the layer, or (layer, factor) for steer."""
        return self.prompt_index, self.layer if self.factor is None else (self.layer, self.factor)

    def to_dict(self) -> dict:
        """Every field; `factor` only for steer (the other kinds' lines are as before it existed)."""
        data = asdict(self)
        return data if self.factor is not None else {k: v for k, v in data.items() if k != "factor"}

    @classmethod
    def from_dict(cls, data: dict) -> SweepPoint:
        return cls(**data)


def sweep_point(
    kind: str,
    layer: int,
    index: int,
    base: BaselinePass,
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    factor: float | None = None,
) -> SweepPoint:
    tensors = compare_logits(base.logits, logits, input_ids[0])
    if REGISTRY[kind].measured_at_last_token:  # Attend-First edits change the previous tokens on purpose
        kl, agree, entropy, loss = tensors.kl[-1:], tensors.top1_agree[-1:], tensors.entropy_delta[-1:], None
    else:
        kl, agree, entropy = tensors.kl, tensors.top1_agree, tensors.entropy_delta
        loss = tensors.loss_delta.double().mean().item() if tensors.loss_delta.numel() else None
    return SweepPoint(
        kind,
        layer,
        index,
        kl.double().mean().item(),
        agree.double().mean().item(),
        entropy.double().mean().item(),
        loss,
        factor=factor,
    )


def average_points(kind: str, layer: int, points: list[SweepPoint], factor: float | None = None) -> SweepPoint:
    """The set average: each prompt counts once, whatever its length."""
    return SweepPoint(
        kind,
        layer,
        None,
        mean([p.kl for p in points]),
        mean([p.top1_agree for p in points]),
        mean([p.entropy_delta for p in points]),
        mean_of([p.loss_delta for p in points]),
        mean_of([p.accuracy for p in points]),
        factor,
    )


def sweep(
    lm: LoadedModel,
    prompts: list[PromptItem],
    kind: str,
    layers: Iterable[int] | None = None,
    seed: int = 0,
    accuracy: bool = False,
    max_new_tokens: int = 6,
    batch_size: int = 8,
    done: Iterable[SweepPoint] = (),
    progress: ProgressFn = no_progress,
    settings: Mapping[str, Any] | None = None,
) -> Iterator[SweepPoint]:
    """Yield a point per (prompt, layer), prompt by prompt, then the set average per layer; for steer, a point per
    (prompt, layer, factor) and an average per (layer, factor), over the factors of `sweep_factors`.

    Points in `done` (from an interrupted run) are not recomputed or yielded again, but count in the
    averages. Chunks of steps depend only on `layers`, the factors, `batch_size` and the prompt, so a resumed run
    computes every point in the same batch as an uninterrupted one and gives the same numbers. `settings` are the
    kind's settings by CLI option name (see `make_intervention`; steer needs its vector there, and its
    `steer_factor` may be a list of factors to sweep).
    Accuracy (prompts with answers) greedily decodes under the intervention through the engine.
    Under torchrun the prompts are shared out over the ranks (layerscope.distributed).
    """
    check_kind(kind)
    if not prompts:
        raise LayerscopeError("The list of prompts is empty.")
    factors = sweep_factors(kind, settings)
    first = with_factor(settings, factors[0])
    layers = check_layers(
        kind, sweep_layers(kind, lm.n_blocks, first) if layers is None else layers, lm.n_blocks, first
    )
    steps = [(layer, factor) for layer in layers for factor in factors]
    keys = [layer if factor is None else (layer, factor) for layer, factor in steps]
    if accuracy:
        require_answers(prompts, "the prompt set")
    finished = finished_points(done)

    def intervention(layer: int, factor: float | None) -> Intervention:
        return make_intervention(kind, layer, lm.n_blocks, seed, with_factor(settings, factor))

    def prompt_points(index: int) -> Iterator[SweepPoint]:
        item = prompts[index]
        input_ids = lm.encode(item.text)
        base = capture_baseline(lm.adapter, input_ids)
        chunk_size = max(1, min(batch_size, LOGITS_PER_BATCH // base.logits.numel()))
        chunk_size = chunk_size if lm.adapter.block_calls_batch else 1
        for at in range(0, len(steps), chunk_size):
            chunk = list(zip(steps[at : at + chunk_size], keys[at : at + chunk_size]))
            if all((index, key) in finished for _, key in chunk):
                continue
            logits = run_plans(lm.adapter, base, [intervention(*step) for step, _ in chunk])
            for ((layer, factor), key), plan_logits in zip(chunk, logits):
                if (index, key) in finished:
                    continue
                point = sweep_point(kind, layer, index, base, plan_logits, input_ids, factor)
                if accuracy:
                    text = greedy_continuation(lm, input_ids, max_new_tokens, [intervention(layer, factor)]).text
                    point.accuracy = float(answer_matches(text, item.answer or ""))
                yield point

    yield from missing_points(range(len(prompts)), keys, finished, prompt_points, progress, f"sweep {kind}")
    for (layer, factor), key in zip(steps, keys):
        yield average_points(kind, layer, [finished[(index, key)] for index in range(len(prompts))], factor)
