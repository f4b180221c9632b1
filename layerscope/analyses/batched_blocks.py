"""Run many interventions in one batched pass from a recorded baseline.

For drop, swap, freeze, random and skip-attn at block b, the blocks before b compute exactly what the baseline
computed. One baseline pass records each block's input and the arguments it was called with; each intervention
then runs only blocks b..L-1 by hand, and the interventions share one batched call of each block (each batch
element, a plan, carries its own edit). Each plan runs its intervention's own block order and state edits (the
methods `intervene`'s hooks call); the tests check every plan against `intervene` plus a plain forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import nn

from layerscope.errors import LayerscopeError
from layerscope.interventions import Intervention, Positions
from layerscope.models.adapter import ModelAdapter
from layerscope.models.hooks import BlockCall, hook_output, record_calls


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


def _run_block(
    block: nn.Module,
    attention: nn.Module,
    call: BlockCall,
    hidden: torch.Tensor,
    depth: int,
    plans: list[_Plan],
    at: Positions,
) -> torch.Tensor:
    """One batched call of a block; each plan's intervention edits its own batch element of the attention output."""
    editing = [index for index, plan in enumerate(plans) if depth in plan.touched_blocks]

    def edit_plans(attention_out: torch.Tensor) -> torch.Tensor:
        attention_out = attention_out.clone()
        for index in editing:
            edited = plans[index].intervention.edit_attention(depth, attention_out[index : index + 1], at)
            if edited is not None:
                attention_out[index] = edited[0]
        return attention_out

    with ExitStack() as stack:
        if any(plans[index].edits_attention for index in editing):
            hook_output(stack, attention, edit_plans)
        return call(block, hidden)


def run_plans(adapter: ModelAdapter, base: BaselinePass, interventions: Sequence[Intervention]) -> torch.Tensor:
    """Final logits (interventions, tokens, vocab), one batch element (a plan) per intervention, running only
    the blocks from each plan's first block on, with each intervention's own block order and state edits."""
    blocks = list(adapter.blocks)
    n_blocks = len(blocks)
    attentions = [block.get_submodule(adapter.paths.attention) for block in blocks]
    plans = [_Plan(intervention, n_blocks) for intervention in interventions]
    first = min(plan.start for plan in plans)
    state = base.inputs[first].expand(len(plans), -1, -1).clone()
    at = Positions.of(None, 1, state.shape[1], state.device)
    with torch.inference_mode():
        for depth in range(first, n_blocks):
            groups: dict[int, list[int]] = {}
            for index, plan in enumerate(plans):
                if depth < plan.start:
                    continue
                if depth == plan.start:
                    state[index] = base.inputs[depth][0]
                module: int | None = depth
                if depth in plan.touched_blocks:
                    edited = plan.intervention.edit_input(depth, state[index : index + 1], at, plan.memo)
                    if edited is not None:
                        state[index] = edited[0]
                    module = plan.intervention.module_at(depth)
                if module is not None:
                    groups.setdefault(module, []).append(index)
            new_state = state.clone()
            for module, members in groups.items():
                output = _run_block(
                    blocks[module],
                    attentions[module],
                    base.calls[module],
                    state[members],
                    depth,
                    [plans[i] for i in members],
                    at,
                )
                new_state[members] = output.to(state.device)  # with a device map, blocks compute on several devices
            for index, plan in enumerate(plans):
                if depth >= plan.start and depth in plan.touched_blocks:
                    edited = plan.intervention.edit_output(
                        depth, state[index : index + 1], new_state[index : index + 1], at, plan.memo
                    )
                    if edited is not None:
                        new_state[index] = edited[0]
            state = new_state
        return adapter.decode(state)


class _Plan:
    """One batch element of `run_plans`: its intervention, the blocks it touches, its scratch for the pass."""

    def __init__(self, intervention: Intervention, n_blocks: int):
        self.intervention = intervention
        self.touched_blocks = frozenset(intervention.touched(n_blocks))
        self.start = intervention.first_block(n_blocks)
        self.edits_attention = intervention.makes("edit_attention")
        self.memo: dict = {}
