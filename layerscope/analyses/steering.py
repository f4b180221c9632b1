"""Steering vectors: the files that hold them, and the mean difference of activations that makes one.

A steering vector file is a safetensors file (no pickle) with one tensor, `vector` (hidden,), and its metadata:
the model it was computed on, the grid row and the hidden size. `SteerVector` (interventions/kinds.py) adds it,
scaled, to the residual stream; `layerscope steer vector` and `steering_vector` make one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from layerscope.analyses.activations import capture
from layerscope.arguments import check_int, check_lm
from layerscope.errors import ArgumentTypeError, LayerscopeError
from layerscope.models.loading import LoadedModel
from layerscope.outputs import write_atomic
from layerscope.tensorfiles import read_safetensors

_FORMAT = "layerscope.steering-vector"


@dataclass(frozen=True, eq=False)
class SavedVector:
    """A steering vector (hidden,) in float32, the model it was computed on and its grid row."""

    vector: torch.Tensor
    model: str
    row: int

    def save(self, path: str | Path) -> None:
        """Write it whole (a failure leaves an existing file as it was; a device or pipe is written through)."""
        metadata = {
            "format": _FORMAT,
            "model": self.model,
            "row": str(self.row),
            "hidden_size": str(self.vector.shape[-1]),
        }
        write_atomic(save({"vector": self.vector.detach().float().cpu().contiguous()}, metadata), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> SavedVector:
        """A file `save` wrote; anything else (another format, a vector of NaN, metadata that disagrees with the
        vector) is one LayerscopeError naming the file."""
        tensors, metadata = read_safetensors(Path(path), "The steering vector file")
        vector = tensors.get("vector")
        if metadata.get("format") != _FORMAT or set(tensors) != {"vector"} or vector is None or vector.dim() != 1:
            raise LayerscopeError(f"'{path}' is not a steering vector file written by layerscope.")
        if not metadata.get("row", "").isdigit() or metadata.get("hidden_size") != str(vector.shape[0]):
            raise LayerscopeError(f"'{path}': its metadata (row, hidden_size) does not match its vector.")
        if not bool(torch.isfinite(vector).all()):
            raise LayerscopeError(f"'{path}': the steering vector has NaN or infinite entries.")
        return cls(vector.float(), metadata.get("model", ""), int(metadata["row"]))

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse a vector made for another model: its name or its hidden size differ."""
        hidden = lm.model.get_input_embeddings().weight.shape[-1]
        if self.model != lm.name or self.vector.shape[0] != hidden:
            raise LayerscopeError(
                f"The steering vector was computed on '{self.model}' (hidden size {self.vector.shape[0]}); "
                f"this model is '{lm.name}' (hidden size {hidden})."
            )


def steering_vector(lm: LoadedModel, positive: Sequence[str], negative: Sequence[str], row: int) -> SavedVector:
    """The mean of the last-token residual states at grid row `row` over the `positive` prompts, minus their mean
    over the `negative` prompts (each prompt on its own last real token; float32)."""
    check_lm(lm)
    check_int(row, "row", 0, lm.n_blocks)
    for name, prompts in (("positive", positive), ("negative", negative)):
        if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
            raise ArgumentTypeError(f"{name}= must be a non-empty list of prompts.")

    def mean_last(prompts: Sequence[str]) -> torch.Tensor:
        states = capture(lm, list(prompts), f"resid.{row}")
        last = states.attention_mask.sum(dim=1) - 1
        site = states[f"resid.{row}"]
        return site[torch.arange(site.shape[0], device=site.device), last.to(site.device)].float().mean(dim=0)

    return SavedVector((mean_last(positive) - mean_last(negative)).cpu(), lm.name, row)
