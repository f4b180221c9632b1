"""Independent reference implementations for tests: blocks run one by one by hand,
and models rebuilt by state-dict surgery. Nothing here uses layerscope's hooks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from layerscope.models.adapter import ModelAdapter

BlockEdit = Callable[[int, torch.Tensor], torch.Tensor]


def block_kwargs(adapter: ModelAdapter, input_ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """The embedding output and the exact (args, kwargs) each block received in a plain forward."""
    calls: list[tuple[tuple, dict]] = []
    handles = [
        b.register_forward_pre_hook(lambda m, a, k: calls.append((a, k)), with_kwargs=True) for b in adapter.blocks
    ]
    try:
        with torch.no_grad():
            adapter.model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    first_args, first_kwargs = calls[0]
    embedded = first_args[0] if first_args else first_kwargs["hidden_states"]
    return embedded, calls


def manual_logits(
    adapter: ModelAdapter,
    input_ids: torch.Tensor,
    before: BlockEdit = lambda b, h: h,
    after: BlockEdit = lambda b, h: h,
    run_block: Callable[[int, torch.Tensor, tuple, dict], torch.Tensor] | None = None,
    order: list[int] | None = None,
) -> torch.Tensor:
    """Run blocks by hand in `order`, with edits to each block's input and output; (tokens, vocab) logits."""
    hidden, calls = block_kwargs(adapter, input_ids)
    blocks = adapter.blocks
    with torch.no_grad():
        for depth, index in enumerate(order or range(len(blocks))):
            args, kwargs = calls[depth]
            hidden = before(depth, hidden)
            if run_block is not None:
                out = run_block(index, hidden, args, kwargs)
            else:
                out = blocks[index](hidden, *args[1:], **{k: v for k, v in kwargs.items() if k != "hidden_states"})
            out = out[0] if isinstance(out, tuple) else out
            hidden = after(depth, out)
        return adapter.decode(hidden)[0]


def rebuilt_without(model, dropped: set[int]):
    """A new model with fewer blocks, built from the config and a filtered state dict."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    adapter = ModelAdapter(model)
    kept = [b for b in range(adapter.n_blocks) if b not in dropped]
    prefix = adapter.paths.blocks + "."
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            if int(index) in dropped:
                continue
            name = f"{prefix}{kept.index(int(index))}.{rest}"
        state[name] = tensor
    _set_layer_count(config, len(kept))
    _reorder_per_layer_lists(config, kept)
    new = AutoModelForCausalLM.from_config(config).eval()
    new.load_state_dict(state)
    return new


def with_blocks_permuted(model, order: list[int]):
    """A new model whose block at depth d holds the weights, and the attention type, of block order[d]."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    _reorder_per_layer_lists(config, order)
    new = AutoModelForCausalLM.from_config(config).eval()
    prefix = ModelAdapter(model).paths.blocks + "."
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            name = f"{prefix}{order.index(int(index))}.{rest}"
        state[name] = tensor
    new.load_state_dict(state)
    return new


def _set_layer_count(config, count: int) -> None:
    for name in ("num_hidden_layers", "n_layer"):
        if hasattr(config, name):
            setattr(config, name, count)


def _reorder_per_layer_lists(config, order: list[int]) -> None:
    """Per-layer config lists (layer_types, SmolLM3's no_rope_layers) follow their blocks."""
    for name in ("layer_types", "no_rope_layers"):
        if getattr(config, name, None):
            setattr(config, name, [getattr(config, name)[b] for b in order])
