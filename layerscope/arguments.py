"""Checks at the Python API's edge: an argument of the wrong type or out of its range is refused with the
parameter named (`top_k=0`), as a TypeError or ValueError that is also a LayerscopeError, before anything
reaches torch. The CLI checks its options itself; these guard the functions `layerscope` exports."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from layerscope.errors import ArgumentTypeError, ArgumentValueError
from layerscope.interventions.core import Intervention
from layerscope.models.loading import LoadedModel, PromptBatch


def check_lm(lm: object) -> LoadedModel:
    if not isinstance(lm, LoadedModel):
        raise ArgumentTypeError(f"lm= must be a loaded model (from load_model), not {type(lm).__name__}.")
    return lm


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (not a bool) in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}= must be an int, not {type(value).__name__}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"at least {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ArgumentValueError(f"{name}={value} is out of range: it must be {bounds}.")
    return value


def check_number(value: object, name: str, minimum: float = 0.0, above: bool = False) -> float:
    """A finite real number, at least `minimum` (above it, with `above`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name}= must be a number, not {type(value).__name__}.")
    number = float(value)
    if not math.isfinite(number) or number < minimum or (above and number == minimum):
        bound = f"{'above' if above else 'at least'} {minimum:g}"
        raise ArgumentValueError(f"{name}={value} is not allowed: it must be a finite number {bound}.")
    return number


def check_blocks(blocks: object, n_blocks: int, name: str = "blocks") -> list[int]:
    """A non-empty list or tuple of distinct block numbers of the model, in the order given."""
    if not isinstance(blocks, (list, tuple, range)):
        raise ArgumentTypeError(f"{name}= must be a list of block numbers, not {type(blocks).__name__}.")
    if not blocks or len(set(blocks)) != len(blocks):
        raise ArgumentValueError(f"{name}= must name at least one block, each once.")
    return [check_int(block, name, 0, n_blocks - 1) for block in blocks]


def check_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name}= must be a str, not {type(value).__name__}.")
    return value


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, a str."""
    check_text(value, name)
    if value not in choices:
        raise ArgumentValueError(f"{name}='{value}' is not one of {', '.join(choices)}.")
    return str(value)


def check_path(value: object, name: str) -> Path:
    """A str or os.PathLike, as a Path."""
    if not isinstance(value, (str, os.PathLike)):
        raise ArgumentTypeError(f"{name}= must be a str or os.PathLike path, not {type(value).__name__}.")
    return Path(os.fspath(value))


def check_intervention_list(interventions: object, name: str = "interventions") -> list[Intervention]:
    """A list or tuple of interventions (DropBlocks(...), ...), possibly empty."""
    if not isinstance(interventions, (list, tuple)):
        raise ArgumentTypeError(f"{name}= must be a list of interventions, not {type(interventions).__name__}.")
    for item in interventions:
        if not isinstance(item, Intervention):
            raise ArgumentTypeError(
                f"{name}= must hold interventions (DropBlocks(...), ...), not {type(item).__name__}."
            )
    return list(interventions)


def check_ids(lm: LoadedModel, ids: object, name: str = "input_ids", one: bool = True) -> torch.Tensor:
    """Token ids shaped (1, tokens), or (batch, tokens) unless `one`, each an id of the model's vocabulary."""
    shape = "(1, tokens)" if one else "(batch, tokens)"
    if isinstance(ids, str):
        raise ArgumentTypeError(f"{name}= must be token ids shaped {shape}, not text: use lm.encode(text).")
    if not isinstance(ids, torch.Tensor):
        raise ArgumentTypeError(
            f"{name}= must be a tensor of token ids shaped {shape} (lm.encode(text)), not {type(ids).__name__}."
        )
    if ids.dtype in (torch.bool, torch.uint8) or ids.is_floating_point() or ids.is_complex():
        raise ArgumentTypeError(f"{name}= must hold integer token ids, not {ids.dtype}.")
    if ids.dim() != 2 or (one and ids.shape[0] != 1) or ids.shape[1] == 0:
        several = " (encode several prompts with lm.encode([...]))" if one and ids.dim() == 2 else ""
        raise ArgumentValueError(
            f"{name}= must be shaped {shape} with at least one token, not {tuple(ids.shape)}{several}."
        )
    vocab = lm.adapter.embed.weight.shape[0]
    outside = ids[(ids < 0) | (ids >= vocab)]
    if len(outside):
        raise ArgumentValueError(
            f"{name}= holds token id {int(outside[0])}, outside this model's vocabulary 0..{vocab - 1}."
        )
    return ids


def prompt_batch(lm: object, input_ids: object, name: str = "input_ids") -> PromptBatch:
    """The prompts of an analysis that takes ids (1, T) of one prompt or a `PromptBatch` (`lm.encode([...])`)."""
    lm = check_lm(lm)
    if isinstance(input_ids, PromptBatch):
        check_ids(lm, input_ids.ids, name, one=False)
        return input_ids
    return PromptBatch.from_ids(check_ids(lm, input_ids, name))
