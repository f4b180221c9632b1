"""`intervene`: apply interventions to a forward pass through hooks, and undo them all on exit."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch

from layerscope.arguments import check_int, check_intervention_list, check_lm
from layerscope.interventions.core import Intervention, ModelShape, Positions, check_interventions
from layerscope.models.adapter import ModelAdapter
from layerscope.models.cache import given_cache
from layerscope.models.hooks import hook_block_output, hook_input, hook_output, watch_calls
from layerscope.models.loading import LoadedModel


class InterventionRun:
    """The hooks of one `intervene` block; removes them all on exit."""

    def __init__(self, lm: LoadedModel, stack: ExitStack):
        self.lm = lm
        self.adapter: ModelAdapter = lm.adapter
        self.stack = stack
        self.cached = 0  # tokens in the cache before this pass (0: a fresh pass)
        self.attention_mask: torch.Tensor | None = None
        self._forward = inspect.signature(self.adapter.model.forward)
        watch_calls(stack, self.adapter.model, before=self._note_pass)

    def _note_pass(self, args: tuple, kwargs: dict) -> None:
        """Whether this forward starts from an empty cache, and its attention mask (by keyword or position)."""
        given = self._forward.bind_partial(*args, **kwargs).arguments
        cache = given_cache(given)
        self.cached = 0 if cache is None else int(cache.get_seq_length())
        self.attention_mask = given.get("attention_mask")

    def positions(self, hidden: torch.Tensor) -> Positions:
        """The real tokens of this pass's batch elements, from the attention mask the model was called with."""
        return Positions.of(self.attention_mask, hidden.shape[0], hidden.shape[1], hidden.device, self.cached)

    def apply(self, intervention: Intervention) -> None:
        """Hooks for what an intervention declares: its block order, then its edits (on fresh passes only, unless
        the kind says `every_pass`)."""
        touched = list(intervention.touched(self.adapter.n_blocks))
        order = {depth: intervention.module_at(depth) for depth in touched}
        moved = {depth: module for depth, module in order.items() if module is not None and module != depth}
        if moved:
            self.reorder(moved)
        blocks = self.adapter.blocks
        for depth in (depth for depth, module in order.items() if module is None):
            hook_block_output(self.stack, blocks[depth], lambda hidden_in, hidden_out: hidden_in)
        memo: dict = {}
        when = (lambda edit: edit) if intervention.every_pass else self._fresh_only
        for depth in touched:
            if intervention.makes("edit_input"):
                hook_input(
                    self.stack,
                    blocks[depth],
                    when(
                        lambda hidden, depth=depth: intervention.edit_input(depth, hidden, self.positions(hidden), memo)
                    ),
                )
            if intervention.makes("edit_output"):
                hook_block_output(
                    self.stack,
                    blocks[depth],
                    when(
                        lambda hidden_in, hidden_out, depth=depth: intervention.edit_output(
                            depth, hidden_in, hidden_out, self.positions(hidden_out), memo
                        )
                    ),
                )
            if intervention.makes("edit_attention"):
                hook_output(
                    self.stack,
                    self.adapter.attention(depth),
                    when(lambda out, depth=depth: intervention.edit_attention(depth, out, self.positions(out))),
                )

    def _fresh_only(self, edit: Callable[..., torch.Tensor | None]) -> Callable[..., torch.Tensor | None]:
        return lambda *hidden: edit(*hidden) if self.cached == 0 else None

    def reorder(self, moved: dict[int, int]) -> None:
        """Run module `moved[d]` at depth d until the `intervene` block ends (`ModelAdapter.arranged_blocks`: the
        moved blocks keep their attention types and take their new depths' cache indices)."""
        order = list(range(self.adapter.n_blocks))
        for depth, module in moved.items():
            order[depth] = module
        self.stack.enter_context(self.adapter.arranged_blocks(order))


def _moves_blocks(intervention: Intervention, n_blocks: int) -> bool:
    return any(intervention.module_at(depth) not in (None, depth) for depth in intervention.touched(n_blocks))


@contextmanager
def intervene(
    lm: LoadedModel, interventions: Sequence[Intervention], seq_len: int | None = None
) -> Iterator[InterventionRun]:
    """Apply interventions for the duration of the block; the model is restored exactly on exit,
    also after an exception. Reorderings (swaps) are applied first so that other block indices mean depth."""
    check_lm(lm)
    interventions = check_intervention_list(interventions)
    if seq_len is not None:
        check_int(seq_len, "seq_len", 1)
    n_blocks = lm.adapter.n_blocks
    check_interventions(interventions, ModelShape(n_blocks, lm.adapter.n_heads, seq_len))
    ordered = sorted(interventions, key=lambda i: not _moves_blocks(i, n_blocks))
    with ExitStack() as stack:
        run = InterventionRun(lm, stack)
        for intervention in ordered:
            intervention.attach(run)
        yield run
