"""The KV cache across the transformers releases layerscope supports.

transformers 5.x renamed the forward argument and the output field `past_key_values` to `cache` (the old
name warns until its removal in 5.40). Every forward that continues from a cache goes through `cached_forward`,
and every hook that asks whether a pass starts from an empty cache through `given_cache`, so one module knows
the name.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch import nn
    from transformers import Cache

_NAMES = ("cache", "past_key_values")  # the current name first


def cache_keyword(model: nn.Module) -> str:
    """The name under which this model's forward takes a KV cache."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in _NAMES if name in parameters), _NAMES[-1])


def given_cache(arguments: Mapping[str, Any]) -> Cache | None:
    """The cache a forward was called with, from its bound arguments (by either name, or by its type under a
    name a later release may choose), or None."""
    from transformers import Cache

    named = next((arguments[name] for name in _NAMES if arguments.get(name) is not None), None)
    if named is not None:
        return named
    extra = arguments.get("kwargs")
    values = [*arguments.values(), *(extra.values() if isinstance(extra, Mapping) else ())]
    return next((value for value in values if isinstance(value, Cache)), None)


def output_cache(output: Mapping[str, Any]) -> Cache:
    """The grown cache of a forward's output (a transformers ModelOutput, by either field name)."""
    return next(output[name] for name in _NAMES if output.get(name) is not None)


def cache_bytes(cache: Cache) -> int:
    """The bytes of a cache's keys and values, every layer."""
    tensors = [getattr(layer, name, None) for layer in cache.layers for name in ("keys", "values")]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None and hasattr(t, "numel"))


def cached_forward(model: nn.Module, cache: Cache | None, **inputs: Any) -> tuple[Any, Cache]:
    """model(**inputs) continuing from `cache` (None: from an empty one); the output and the grown cache."""
    output = model(**inputs, **{cache_keyword(model): cache}, use_cache=True)
    return output, output_cache(output)


def repeated_cache(prefix_cache: Cache, batch: int) -> Cache:
    """A copy of a prefix's KV cache for `batch` sequences: the prefix is computed once, not per cell. The copy
    shares the prefix's tensors until `batch_repeat_interleave` replaces them with the repeated ones (a cache
    grows by concatenation, never in place), so the prefix is not copied once more on the way."""
    tensors = [value for layer in prefix_cache.layers for value in vars(layer).values() if torch.is_tensor(value)]
    cache = copy.deepcopy(prefix_cache, memo={id(tensor): tensor for tensor in tensors})
    cache.batch_repeat_interleave(batch)
    return cache
