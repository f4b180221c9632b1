"""One attention function shared by every supported family.

Transformers routes each attention layer through a named function. layerscope
registers `layerscope_sdpa` and `layerscope_eager`, which call the model's own
implementation and then apply per-module edits: masking query heads (zeroed
output, or the uniform attention the retrieval-head authors used) and handing
attention rows to readers. One mechanism, no per-architecture head code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from layerscope.errors import LayerscopeError

EDITS_ATTRIBUTE = "layerscope_attention_edits"
AttentionReader = Callable[[torch.Tensor], None]
"""Receives attention probabilities of one layer, shape (batch, heads, queries, keys), float32: every query head,
or the heads it was registered for (`ReaderHeads`), in that order."""
ReaderHeads = tuple[int, ...] | None
"""The query heads a reader reads (None: all); only those heads' probabilities are computed for it."""


@dataclass
class AttentionEdits:
    zero_heads: set[int] = field(default_factory=set)
    uniform_heads: set[int] = field(default_factory=set)
    readers: list[tuple[AttentionReader, ReaderHeads]] = field(default_factory=list)
    applied: int = 0  # calls that went through layerscope's attention function: the proof edits took effect

    def is_empty(self) -> bool:
        return not (self.zero_heads or self.uniform_heads or self.readers)


def edits_of(attention_module: nn.Module) -> AttentionEdits:
    edits = getattr(attention_module, EDITS_ATTRIBUTE, None)
    if edits is None:
        edits = AttentionEdits()
        setattr(attention_module, EDITS_ATTRIBUTE, edits)
    return edits


def _repeat_kv(states: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, kv_heads, keys, dim) -> (batch, heads, keys, dim)."""
    return states.repeat_interleave(n_heads // states.shape[1], dim=1)


def allowed_keys(
    attention_mask: torch.Tensor | None, n_queries: int, n_keys: int, device: torch.device
) -> torch.Tensor:
    """Boolean (batch|1, 1, queries, keys): which keys each query may attend to."""
    if attention_mask is None:
        offset = n_keys - n_queries
        query_pos = torch.arange(n_queries, device=device)[:, None] + offset
        return (torch.arange(n_keys, device=device)[None, :] <= query_pos)[None, None]
    mask = attention_mask[..., :n_keys]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    softcap: float | None = None,
    heads: ReaderHeads = None,
) -> torch.Tensor:
    """softmax(q k^T) per query head, in float32, exactly as eager attention computes it; only for `heads` (in
    that order) where given, so reading one head costs one head's (queries, keys) scores, not every head's."""
    n_queries, head_dim = query.shape[2], query.shape[3]
    if heads is None:
        keys = _repeat_kv(key, query.shape[1])
    else:
        group = query.shape[1] // key.shape[1]  # query heads per key head, as _repeat_kv lays them out
        query, keys = query[:, list(heads)], key[:, [head // group for head in heads]]
    scores = torch.matmul(query.float(), keys.float().transpose(2, 3)) * (scaling or head_dim**-0.5)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = allowed_keys(attention_mask, n_queries, keys.shape[2], query.device)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # A padding query inside a sliding window may see no key at all: zeros there, not NaN.
    return torch.softmax(scores, dim=-1).masked_fill(~allowed.any(-1, keepdim=True), 0.0)


def _uniform_output(value: torch.Tensor, heads: list[int], allowed: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Each chosen head attends equally to every key it may see: (batch, queries, len(heads), dim)."""
    values = _repeat_kv(value, n_heads)[:, heads].float()
    weights = allowed.float()
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    out = torch.matmul(weights, values)
    return out.transpose(1, 2).to(value.dtype)


AttentionFunction = Callable[..., "tuple[torch.Tensor, torch.Tensor | None]"]
"""transformers' attention function: (module, query, key, value, attention_mask, ...) -> (output, weights or None)."""


def _edited_attention(base: AttentionFunction) -> AttentionFunction:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """query (batch, heads, queries, dim), key and value (batch, kv_heads, keys, dim); the output is
        (batch, queries, heads, dim)."""
        output, weights = base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        edits: AttentionEdits | None = getattr(module, EDITS_ATTRIBUTE, None)
        if edits is None or edits.is_empty():
            return output, weights
        edits.applied += 1
        for reader, read_heads in edits.readers:
            reader(attention_probabilities(query, key, attention_mask, scaling, kwargs.get("softcap"), read_heads))
        if edits.uniform_heads or edits.zero_heads:
            output = output.clone()
        if edits.uniform_heads:
            heads = sorted(edits.uniform_heads)
            allowed = allowed_keys(attention_mask, query.shape[2], key.shape[2], query.device)
            output[:, :, heads] = _uniform_output(value, heads, allowed, query.shape[1])
        if edits.zero_heads:
            output[:, :, sorted(edits.zero_heads)] = 0
        return output, weights

    return attention


def _eager_of(module: nn.Module, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model family's own eager attention (Gemma-2 adds soft-capping, for example)."""
    family_eager = sys.modules[type(module).__module__].eager_attention_forward
    return family_eager(module, *args, **kwargs)


AttentionInterface.register("layerscope_sdpa", _edited_attention(sdpa_attention_forward))
AttentionInterface.register("layerscope_eager", _edited_attention(_eager_of))
AttentionMaskInterface.register("layerscope_sdpa", sdpa_mask)
AttentionMaskInterface.register("layerscope_eager", eager_mask)


def routes_attention(model: nn.Module) -> bool:
    """Whether the model's attention layers call transformers' attention-function registry.

    Bloom and MPT compute attention themselves (ALiBi in their own kernels), so a registered function would
    never run and a head mask would silently do nothing (Falcon, GPT-J and CodeGen route through the registry
    in the transformers releases layerscope supports).
    """
    return hasattr(sys.modules[type(model).__module__], "ALL_ATTENTION_FUNCTIONS")


@contextmanager
def edited_attention(model: nn.Module) -> Iterator[None]:
    """Route the model's attention through layerscope's function for the duration of the block (numerics are
    unchanged), and give the model back its own implementation on exit, also after an exception. Inside a block
    that already routes it, nothing changes."""
    if not routes_attention(model):
        family = model.config.get_text_config().model_type
        raise LayerscopeError(
            f"Head masking and attention scores are not available for {family}: its attention does not go "
            "through transformers' attention functions."
        )
    current = model.config.get_text_config()._attn_implementation
    if current.startswith("layerscope_"):
        yield
        return
    if current not in ("sdpa", "eager"):
        raise LayerscopeError(
            f"Head masking and attention scores need 'sdpa' or 'eager' attention; this model uses '{current}'."
        )
    model.set_attn_implementation(f"layerscope_{current}")
    try:
        yield
    finally:
        model.set_attn_implementation(current)


@contextmanager
def read_attention(
    model: nn.Module,
    attention_modules: dict[int, nn.Module],
    reader: Callable[[int, torch.Tensor], None],
    heads: dict[int, tuple[int, ...]] | None = None,
) -> Iterator[None]:
    """Call reader(block, probabilities) each time one of the given attention modules of `model` runs (through
    layerscope's attention function for the duration of the block): every query head's probabilities, or where
    `heads` names a block's query heads, only theirs (in that order)."""
    if not attention_modules:
        yield
        return
    added = []
    for block, module in attention_modules.items():

        def per_block(probs: torch.Tensor, block: int = block) -> None:
            reader(block, probs)

        entry = (per_block, None if heads is None else heads[block])
        edits_of(module).readers.append(entry)
        added.append((module, entry))
    try:
        with edited_attention(model):
            yield
    finally:
        for module, entry in added:
            edits_of(module).readers.remove(entry)
