"""Intervention sweeps: one intervention at every layer, over a prompt set.

Why it is fast: for drop, swap, freeze, random and skip-attn at block b, the
blocks before b compute exactly what the baseline computed. One baseline pass
per prompt records each block's input and the arguments it was called with;
each intervention then runs only blocks b..L-1 by hand, and the interventions
of a chunk of layers share one batched call of each block (each batch row
carries its own edit). Each row runs its intervention's own block order and
state edits (the methods `intervene`'s hooks call), and the tests check every
row against `intervene` plus a plain forward.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from layerscope.analyses.compare import compare_logits, greedy_continuation
from layerscope.analyses.prompt_sets import PromptItem, answer_matches, require_answers
from layerscope.distributed import from_writer, ordered_results
from layerscope.errors import LayerscopeError
from layerscope.errors import InterventionError
from layerscope.interventions import REGISTRY, Intervention, ModelShape, Positions, chosen_by_block, intervene
from layerscope.models.adapter import ModelAdapter
from layerscope.models.hooks import BlockCall, hook_output, record_calls
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


def make_intervention(kind: str, layer: int, n_blocks: int, seed: int = 0) -> Intervention:
    """The engine object that one sweep row stands for: the kind chosen at block `layer`."""
    check_kind(kind)
    [intervention] = REGISTRY[kind].for_blocks([layer], n_blocks, seed)
    return intervention


def sweep_layers(kind: str, n_blocks: int) -> list[int]:
    """Every block where the kind passes its range check (for swap, the lower block of every adjacent pair)."""
    def valid(block: int) -> bool:
        try:
            make_intervention(kind, block, n_blocks).check(ModelShape(n_blocks, 1))
        except InterventionError:
            return False
        return True

    return [block for block in range(n_blocks) if valid(block)]


def check_layers(kind: str, layers: Iterable[int], n_blocks: int) -> list[int]:
    valid = sweep_layers(kind, n_blocks)
    layers = sorted(set(layers))
    bad = [layer for layer in layers if layer not in valid]
    if bad:
        raise LayerscopeError(f"{kind}: layer {bad[0]} is out of range 0..{valid[-1]} for this model.")
    return layers


@dataclass
class BaselinePass:
    """One unmodified forward: the residual entering each block, each block's call, the logits."""

    inputs: list[torch.Tensor]  # per depth, (1, tokens, hidden)
    calls: list[BlockCall]  # per block: its mask type (sliding or full) and rotary table, which a swap keeps
    logits: torch.Tensor  # (tokens, vocab)


def capture_baseline(adapter: ModelAdapter, input_ids: torch.Tensor) -> BaselinePass:
    """Forward pre-hooks with kwargs see what the model hands each block (masks, rotary tables, ...)."""
    inputs: list[torch.Tensor | None] = [None] * len(adapter.blocks)
    calls: list[BlockCall | None] = [None] * len(adapter.blocks)
    with ExitStack() as stack, torch.inference_mode():
        record_calls(stack, adapter.blocks, calls, inputs)
        logits = adapter.model(input_ids=input_ids, use_cache=False).logits
    recorded = [call for call in calls if call is not None]
    if len(recorded) != len(calls):
        raise LayerscopeError(f"Block {calls.index(None)} did not run in the baseline forward pass.")
    return BaselinePass(inputs, recorded, logits[0])


def _run_block(block: nn.Module, attention: nn.Module, call: BlockCall, hidden: torch.Tensor, depth: int,
               rows: list[_Row], at: Positions) -> torch.Tensor:
    """One batched call of a block; each row's intervention edits its own row of the attention output."""
    editing = [index for index, row in enumerate(rows) if depth in row.touched_blocks]

    def edit_rows(attention_out: torch.Tensor) -> torch.Tensor:
        attention_out = attention_out.clone()
        for index in editing:
            edited = rows[index].intervention.edit_attention(depth, attention_out[index : index + 1], at)
            if edited is not None:
                attention_out[index] = edited[0]
        return attention_out

    with ExitStack() as stack:
        if any(row.edits_attention for row in (rows[index] for index in editing)):
            hook_output(stack, attention, edit_rows)
        return call(block, hidden)


def run_plans(adapter: ModelAdapter, base: BaselinePass, interventions: Sequence[Intervention]) -> torch.Tensor:
    """Final logits (rows, tokens, vocab), one row per intervention, running only the blocks from each
    row's first block on, with each intervention's own block order and state edits."""
    blocks = list(adapter.blocks)
    n_blocks = len(blocks)
    attentions = [block.get_submodule(adapter.paths.attention) for block in blocks]
    rows = [_Row(intervention, n_blocks) for intervention in interventions]
    first = min(row.start for row in rows)
    state = base.inputs[first].expand(len(rows), -1, -1).clone()
    at = Positions.of(None, 1, state.shape[1], state.device)
    with torch.inference_mode():
        for depth in range(first, n_blocks):
            groups: dict[int, list[int]] = {}
            for index, row in enumerate(rows):
                if depth < row.start:
                    continue
                if depth == row.start:
                    state[index] = base.inputs[depth][0]
                module: int | None = depth
                if depth in row.touched_blocks:
                    edited = row.intervention.edit_input(depth, state[index : index + 1], at, row.memo)
                    if edited is not None:
                        state[index] = edited[0]
                    module = row.intervention.module_at(depth)
                if module is not None:
                    groups.setdefault(module, []).append(index)
            new_state = state.clone()
            for module, members in groups.items():
                output = _run_block(blocks[module], attentions[module], base.calls[module], state[members], depth,
                                    [rows[i] for i in members], at)
                new_state[members] = output.to(state.device)  # with a device map, blocks compute on several devices
            for index, row in enumerate(rows):
                if depth >= row.start and depth in row.touched_blocks:
                    edited = row.intervention.edit_output(depth, state[index : index + 1],
                                                          new_state[index : index + 1], at, row.memo)
                    if edited is not None:
                        new_state[index] = edited[0]
            state = new_state
        return adapter.decode(state)


class _Row:
    """One batch row of `run_plans`: its intervention, the blocks it touches, its scratch for the pass."""

    def __init__(self, intervention: Intervention, n_blocks: int):
        self.intervention = intervention
        self.touched_blocks = frozenset(intervention.touched(n_blocks))
        self.start = intervention.first_block(n_blocks)
        self.edits_attention = intervention.makes("edit_attention")
        self.memo: dict = {}


@dataclass
class SweepRow:
    """One JSONL row: a prompt's metrics, or their mean over the set when prompt_index is None."""

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
    def from_dict(cls, data: dict) -> SweepRow:
        return cls(**data)


def _metrics(kind: str, layer: int, index: int, base: BaselinePass, logits: torch.Tensor,
             input_ids: torch.Tensor) -> SweepRow:
    tensors = compare_logits(base.logits, logits, input_ids[0])
    if REGISTRY[kind].measured_at_last_token:  # Attend-First edits change the previous tokens on purpose
        kl, agree, entropy, loss = tensors.kl[-1:], tensors.top1_agree[-1:], tensors.entropy_delta[-1:], None
    else:
        kl, agree, entropy = tensors.kl, tensors.top1_agree, tensors.entropy_delta
        loss = tensors.loss_delta.double().mean().item() if tensors.loss_delta.numel() else None
    return SweepRow(kind, layer, index, kl.double().mean().item(), agree.double().mean().item(),
                    entropy.double().mean().item(), loss)


def prompts_fingerprint(prompts: Sequence[PromptItem]) -> str:
    """sha256 of every prompt with its answer and subject: equal only for the same set in the same order."""
    data = json.dumps([asdict(item) for item in prompts], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def mean(values: Sequence[float]) -> float:
    """The mean of a metric every row has (the callers average at least one row)."""
    return sum(values) / len(values)


def mean_of(values: Sequence[float | None]) -> float | None:
    """The mean of the rows that have the metric; None when none has it."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def average_rows(kind: str, layer: int, rows: list[SweepRow]) -> SweepRow:
    """The set average: each prompt counts once, whatever its length."""
    return SweepRow(kind, layer, None, mean([r.kl for r in rows]), mean([r.top1_agree for r in rows]),
                    mean([r.entropy_delta for r in rows]), mean_of([r.loss_delta for r in rows]),
                    mean_of([r.accuracy for r in rows]))


def finished_rows(done: Iterable) -> dict[tuple[int, int], Any]:
    """Per-prompt rows of an interrupted run by `key` (prompt, layer or grid row); rank 0's under torchrun (only it
    has the file)."""
    return {r.key: r for r in from_writer(list(done)) if r.prompt_index is not None}


def missing_rows(indices: Iterable[int], steps: list[int], finished: dict, prompt_rows: Callable[[int], Iterable],
                 progress: ProgressFn, label: str) -> Iterator:
    """The rows of every prompt not all in `finished`, prompt by prompt, each also added to `finished`; `steps`
    are a sweep's layers (or token-swap's grid rows).

    Under torchrun the prompts are shared out over the ranks and every rank gets every row in this order.
    """
    indices = list(indices)
    total, count = len(indices) * len(steps), len([key for key in finished if key[1] in steps])
    progress(count, total, label)
    todo = [index for index in indices if not all((index, step) in finished for step in steps)]
    for row in ordered_results(todo, prompt_rows):
        finished[row.key] = row
        count += 1
        progress(count, total, label)
        yield row


def sweep(
    lm: LoadedModel,
    prompts: list[PromptItem],
    kind: str,
    layers: Iterable[int] | None = None,
    seed: int = 0,
    accuracy: bool = False,
    max_new_tokens: int = 6,
    batch_size: int = 8,
    done: Iterable[SweepRow] = (),
    progress: ProgressFn = no_progress,
) -> Iterator[SweepRow]:
    """Yield a row per (prompt, layer), prompt by prompt, then the set average per layer.

    Rows in `done` (from an interrupted run) are not recomputed or yielded again, but count in the
    averages. Chunks of layers depend only on `layers`, `batch_size` and the prompt, so a resumed run
    computes every row in the same batch as an uninterrupted one and gives the same numbers.
    Accuracy (prompts with answers) greedily decodes under the intervention through the engine.
    Under torchrun the prompts are shared out over the ranks (layerscope.distributed).
    """
    check_kind(kind)
    if not prompts:
        raise LayerscopeError("The list of prompts is empty.")
    layers = check_layers(kind, sweep_layers(kind, lm.n_blocks) if layers is None else layers, lm.n_blocks)
    if accuracy:
        require_answers(prompts, "the prompt set")
    finished = finished_rows(done)

    def prompt_rows(index: int) -> Iterator[SweepRow]:
        item = prompts[index]
        input_ids = lm.encode(item.text)
        base = capture_baseline(lm.adapter, input_ids)
        chunk_size = max(1, min(batch_size, LOGITS_PER_BATCH // base.logits.numel()))
        chunk_size = chunk_size if lm.adapter.block_calls_batch else 1
        for at in range(0, len(layers), chunk_size):
            chunk = layers[at : at + chunk_size]
            if all((index, layer) in finished for layer in chunk):
                continue
            logits = run_plans(lm.adapter, base, [make_intervention(kind, layer, lm.n_blocks, seed) for layer in chunk])
            for layer, row_logits in zip(chunk, logits):
                if (index, layer) in finished:
                    continue
                row = _metrics(kind, layer, index, base, row_logits, input_ids)
                if accuracy:
                    intervention = make_intervention(kind, layer, lm.n_blocks, seed)
                    text = greedy_continuation(lm, input_ids, max_new_tokens, [intervention]).text
                    row.accuracy = float(answer_matches(text, item.answer or ""))
                yield row

    yield from missing_rows(range(len(prompts)), layers, finished, prompt_rows, progress, f"sweep {kind}")
    for layer in layers:
        yield average_rows(kind, layer, [finished[(index, layer)] for index in range(len(prompts))])


def naive_logits(lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """The reference: one full hooked forward through the engine, (tokens, vocab)."""
    with intervene(lm, interventions, seq_len=input_ids.shape[1]), torch.inference_mode():
        return lm.model(input_ids=input_ids, use_cache=False).logits[0]


def naive_sweep(lm: LoadedModel, prompts: list[PromptItem], kind: str, layers: Iterable[int] | None = None,
                seed: int = 0) -> Iterator[SweepRow]:
    """The slow way, for benchmarks and tests: a full forward per intervention, no accuracy."""
    layers = check_layers(kind, sweep_layers(kind, lm.n_blocks) if layers is None else layers, lm.n_blocks)
    finished: dict[tuple[int, int], SweepRow] = {}
    for index, item in enumerate(prompts):
        input_ids = lm.encode(item.text)
        base = BaselinePass([], [], naive_logits(lm, input_ids))
        for layer in layers:
            logits = naive_logits(lm, input_ids, [make_intervention(kind, layer, lm.n_blocks, seed)])
            finished[(index, layer)] = row = _metrics(kind, layer, index, base, logits, input_ids)
            yield row
    for layer in layers:
        yield average_rows(kind, layer, [finished[(index, layer)] for index in range(len(prompts))])
