"""Read and write a module's hidden state inside forward hooks: the one place that knows how blocks are called.

Blocks get the hidden state as their first positional argument or as `hidden_states=`, and return a
tensor or a tuple whose first item is the hidden state (attention modules return a tuple too). Every
analysis and intervention goes through these helpers, so a family that calls its blocks differently
is handled here once. Hooks are registered on an `ExitStack` so that leaving it removes them all,
also after an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

InputEdit = Callable[[torch.Tensor], "torch.Tensor | None"]
"""Gets the hidden state (batch, tokens, hidden) a module is called with; returns its replacement, or None."""
OutputEdit = Callable[[torch.Tensor], "torch.Tensor | None"]
"""Gets the hidden state (batch, tokens, hidden) a module returns; returns its replacement, or None to keep it."""
BlockOutputEdit = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | None"]
"""Gets a block's input and output hidden states; returns the output's replacement, or None to keep it."""


def input_hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden state (batch, tokens, hidden) a module is called with."""
    return args[0] if args else kwargs["hidden_states"]


def with_input_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """The call's arguments with `hidden` (batch, tokens, hidden) in place of its hidden state."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def output_hidden(output: Any) -> torch.Tensor:
    """The hidden state (batch, tokens, hidden) in a module's output."""
    return output[0] if isinstance(output, tuple) else output


def with_output_hidden(output: Any, hidden: torch.Tensor) -> Any:
    """The module's output with `hidden` (batch, tokens, hidden) in place of its hidden state."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def hook_input(stack: ExitStack, module: nn.Module, edit: InputEdit) -> None:
    """Run `edit` on the hidden state entering `module` in every forward inside `stack`."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        hidden = edit(input_hidden(args, kwargs))
        return None if hidden is None else with_input_hidden(args, kwargs, hidden)

    stack.callback(module.register_forward_pre_hook(hook, with_kwargs=True).remove)


def hook_output(stack: ExitStack, module: nn.Module, edit: OutputEdit) -> None:
    """Run `edit` on the hidden state `module` returns in every forward inside `stack`."""

    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        hidden = edit(output_hidden(output))
        return None if hidden is None else with_output_hidden(output, hidden)

    stack.callback(module.register_forward_hook(hook).remove)


def hook_block_output(stack: ExitStack, block: nn.Module, edit: BlockOutputEdit) -> None:
    """Like `hook_output`, for edits that also need the block's input (a dropped block returns its input)."""

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden = edit(input_hidden(args, kwargs), output_hidden(output))
        return None if hidden is None else with_output_hidden(output, hidden)

    stack.callback(block.register_forward_hook(hook, with_kwargs=True).remove)


def watch_calls(
    stack: ExitStack,
    module: nn.Module,
    before: Callable[[tuple, dict], None] | None = None,
    after: Callable[[tuple, dict, Any], None] | None = None,
) -> None:
    """Call `before(args, kwargs)` and `after(args, kwargs, output)` around every forward of `module` inside
    `stack`, changing nothing: for reading how a module is called (a mask, a cache) or checking it ran."""
    if before is not None:
        stack.callback(
            module.register_forward_pre_hook(lambda m, args, kwargs: before(args, kwargs), with_kwargs=True).remove
        )
    if after is not None:
        stack.callback(
            module.register_forward_hook(
                lambda m, args, kwargs, output: after(args, kwargs, output), with_kwargs=True
            ).remove
        )


@dataclass
class BlockCall:
    """How a block was called, less its hidden state (masks, rotary tables, cache positions, ...), so that
    it can be called again by hand on other hidden states, as the model would have called it."""

    args: tuple  # positional arguments after the hidden state
    kwargs: dict
    positional: bool  # the hidden state came as args[0], not as hidden_states=

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> BlockCall:
        rest = {key: value for key, value in kwargs.items() if key != "hidden_states"}
        return cls(tuple(args[1:]), rest, bool(args))

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run `block` on `hidden` (batch, tokens, hidden) as it was called; its output hidden state, same shape."""
        if self.positional:
            return output_hidden(block(hidden, *self.args, **self.kwargs))
        return output_hidden(block(*self.args, hidden_states=hidden, **self.kwargs))


def record_calls(
    stack: ExitStack, blocks: nn.ModuleList, calls: list[BlockCall | None], inputs: list[torch.Tensor | None]
) -> None:
    """Keep each block's call and input hidden state (batch, tokens, hidden), by depth, from the forwards inside
    `stack`."""
    for depth, block in enumerate(blocks):

        def keep(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], depth: int = depth) -> None:
            inputs[depth] = input_hidden(args, kwargs)
            calls[depth] = BlockCall.of(args, kwargs)

        stack.callback(block.register_forward_pre_hook(keep, with_kwargs=True).remove)
