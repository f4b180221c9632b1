"""Intervention sweeps: one intervention at every layer, over a prompt set.

A sweep point is one prompt's metrics with the intervention at one layer (a line of the JSONL output); the set
averages per layer follow. Why it is fast: one baseline pass per prompt, then the interventions of a chunk of
layers run together from it (`batched_blocks.run_plans`); the tests check every point against `intervene`
plus a plain forward (`sweep_reference`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from layerscope.analyses.batched_blocks import BaselinePass, capture_baseline, run_plans
from layerscope.analyses.compare import compare_logits, greedy_continuation
from layerscope.analyses.prompt_sets import PromptItem, answer_matches, require_answers
from layerscope.analyses.resumable import finished_points, mean, mean_of, missing_points
from layerscope.errors import InterventionError, LayerscopeError
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


def sweep_layers(kind: str, n_blocks: int, settings: Mapping[str, Any] | None = None) -> list[int]:
    """Every block where the kind passes its range check (for swap, the lower block of every adjacent pair)."""

    def valid(block: int) -> bool:
        intervention = make_intervention(kind, block, n_blocks, settings=settings)  # a missing setting is refused
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

    @property
    def key(self) -> tuple[int | None, int]:
        return self.prompt_index, self.layer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SweepPoint:
        return cls(**data)


def sweep_point(
    kind: str, layer: int, index: int, base: BaselinePass, logits: torch.Tensor, input_ids: torch.Tensor
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
    )


def average_points(kind: str, layer: int, points: list[SweepPoint]) -> SweepPoint:
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
    """Yield a point per (prompt, layer), prompt by prompt, then the set average per layer.

    Points in `done` (from an interrupted run) are not recomputed or yielded again, but count in the
    averages. Chunks of layers depend only on `layers`, `batch_size` and the prompt, so a resumed run
    computes every point in the same batch as an uninterrupted one and gives the same numbers. `settings` are the
    kind's settings by CLI option name (see `make_intervention`; steer needs its vector there).
    Accuracy (prompts with answers) greedily decodes under the intervention through the engine.
    Under torchrun the prompts are shared out over the ranks (layerscope.distributed).
    """
    check_kind(kind)
    if not prompts:
        raise LayerscopeError("The list of prompts is empty.")
    layers = check_layers(
        kind, sweep_layers(kind, lm.n_blocks, settings) if layers is None else layers, lm.n_blocks, settings
    )
    if accuracy:
        require_answers(prompts, "the prompt set")
    finished = finished_points(done)

    def prompt_points(index: int) -> Iterator[SweepPoint]:
        item = prompts[index]
        input_ids = lm.encode(item.text)
        base = capture_baseline(lm.adapter, input_ids)
        chunk_size = max(1, min(batch_size, LOGITS_PER_BATCH // base.logits.numel()))
        chunk_size = chunk_size if lm.adapter.block_calls_batch else 1
        for at in range(0, len(layers), chunk_size):
            chunk = layers[at : at + chunk_size]
            if all((index, layer) in finished for layer in chunk):
                continue
            logits = run_plans(
                lm.adapter, base, [make_intervention(kind, layer, lm.n_blocks, seed, settings) for layer in chunk]
            )
            for layer, plan_logits in zip(chunk, logits):
                if (index, layer) in finished:
                    continue
                point = sweep_point(kind, layer, index, base, plan_logits, input_ids)
                if accuracy:
                    intervention = make_intervention(kind, layer, lm.n_blocks, seed, settings)
                    text = greedy_continuation(lm, input_ids, max_new_tokens, [intervention]).text
                    point.accuracy = float(answer_matches(text, item.answer or ""))
                yield point

    yield from missing_points(range(len(prompts)), layers, finished, prompt_points, progress, f"sweep {kind}")
    for layer in layers:
        yield average_points(kind, layer, [finished[(index, layer)] for index in range(len(prompts))])
