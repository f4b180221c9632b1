"""`capture`: the activations at chosen sites of one forward pass, for one prompt or a batch.

Sites are named after the grid. `resid.r` is the residual stream at grid row r: the input of block r, and
row L (the number of blocks) the last block's output, all before the final norm, exactly the states the
logit lens decodes. `attn.b` and `mlp.b` are what block b's attention and MLP return, the part each adds to
the residual stream (the modules `ModelAdapter.attention(b)` and `mlp(b)`; Bloom's are its output
projections). `resid`, `attn` and `mlp` alone mean every row or block. Only the requested sites are hooked
and kept (like TransformerLens' `run_with_cache(names_filter=...)`).

Every site is a copy shaped (B, T, hidden): Falcon adds the attention output into its MLP's output in place
after the MLP returns, and OPT runs its MLP on (B * T, hidden).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from safetensors.torch import save_file

from layerscope.arguments import check_ids, check_lm
from layerscope.errors import ArgumentTypeError, LayerscopeError
from layerscope.models.hooks import hook_input, hook_output
from layerscope.models.loading import LoadedModel, PromptBatch
from layerscope.specs import parse_number
from layerscope.tensorfiles import read_safetensors

SITE_KINDS = ("resid", "attn", "mlp")
_IDS, _MASK = "input_ids", "attention_mask"
_SITE_NAME = re.compile(f"({'|'.join(SITE_KINDS)})\\.[0-9]+", re.ASCII)
_FORMAT = "layerscope.activations"

Prompts: TypeAlias = str | Sequence[str] | torch.Tensor | PromptBatch
"""What `capture` reads: a text, a list of texts, ids (B, T) with no padding, or a `PromptBatch`."""


@dataclass
class Activations:
    """The kept sites of one forward pass. Every site is (B, T, hidden) on one device, in the model's dtype;
    positions where `attention_mask` is 0 are padding (the batch is right-padded)."""

    model: str
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T), 1 on real tokens
    sites: dict[str, torch.Tensor]  # site name -> (B, T, hidden)

    def __getitem__(self, site: str) -> torch.Tensor:
        if site not in self.sites:
            raise LayerscopeError(f"Site '{site}' was not captured; captured: {', '.join(self.sites) or 'none'}.")
        return self.sites[site]

    @property
    def lengths(self) -> list[int]:
        """The number of real tokens of each prompt."""
        return self.attention_mask.sum(dim=1).tolist()

    def prompt(self, index: int) -> dict[str, torch.Tensor]:
        """Prompt `index`'s sites without padding: site name -> (T_index, hidden)."""
        length = self.lengths[index]
        return {name: values[index, :length] for name, values in self.sites.items()}

    def stacked(self, kind: str = "resid") -> torch.Tensor:
        """The captured sites of one kind in index order, stacked: (sites, B, T, hidden)."""
        names = sorted((name for name in self.sites if name.split(".")[0] == kind), key=_site_index)
        if not names:
            raise LayerscopeError(f"No '{kind}' site was captured; captured: {', '.join(self.sites) or 'none'}.")
        return torch.stack([self.sites[name] for name in names])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Activations:
        """A copy on `device`, with the sites (not the ids) in `dtype`."""
        return Activations(
            self.model,
            self.input_ids.to(device),
            self.attention_mask.to(device),
            {name: values.to(device, dtype) for name, values in self.sites.items()},
        )

    def to_dict(self) -> dict[str, torch.Tensor]:
        """The ids, the mask and every site, by name: plain tensors to save however one likes."""
        return {_IDS: self.input_ids, _MASK: self.attention_mask, **self.sites}

    def save(self, path: str | Path) -> None:
        """Write a safetensors file (no pickle); `Activations.load` reads it back."""
        tensors = {name: values.detach().cpu().contiguous() for name, values in self.to_dict().items()}
        save_file(tensors, str(path), metadata={"format": _FORMAT, "model": self.model})

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        tensors, metadata = read_safetensors(Path(path), "The activations file")
        if (
            metadata.get("format") != _FORMAT
            or not {_IDS, _MASK} <= set(tensors)
            or not all(_SITE_NAME.fullmatch(name) for name in set(tensors) - {_IDS, _MASK})
        ):
            raise LayerscopeError(f"'{path}' is not an activations file written by layerscope.")
        ids, mask = tensors.pop(_IDS), tensors.pop(_MASK)
        return cls(metadata.get("model", ""), ids, mask, dict(sorted(tensors.items(), key=lambda i: _site_order(i[0]))))


def _site_index(name: str) -> int:
    return int(name.split(".")[1])


def _site_order(name: str) -> tuple[int, int]:
    kind, _, index = name.partition(".")
    return SITE_KINDS.index(kind), int(index)


def site_names(sites: str | Iterable[str], n_blocks: int) -> list[str]:
    """Expand and check site names: `resid` rows 0..n_blocks, `attn`/`mlp` blocks 0..n_blocks-1; a negative
    index counts from the end. Returns canonical names (`resid.3`) in kind, then index order."""
    names: set[str] = set()
    for site in [sites] if isinstance(sites, str) else sites:
        kind, dot, index_text = str(site).partition(".")
        if kind not in SITE_KINDS:
            raise LayerscopeError(
                f"Unknown site '{site}': use resid, attn or mlp, alone or with an index (resid.3, attn.0)."
            )
        count = n_blocks + 1 if kind == "resid" else n_blocks
        if not dot:
            names.update(f"{kind}.{index}" for index in range(count))
            continue
        try:
            index = int(parse_number(index_text, int))
        except ValueError:
            raise LayerscopeError(f"Site '{site}': '{index_text}' is not a whole number.") from None
        if not -count <= index < count:
            what = "grid rows" if kind == "resid" else "blocks"
            raise LayerscopeError(f"Site '{site}' is out of range: this model has {what} 0..{count - 1}.")
        names.add(f"{kind}.{index % count}")
    if not names:
        raise LayerscopeError("No sites given: name at least one (resid, attn, mlp, resid.3, ...).")
    return sorted(names, key=_site_order)


def as_batch(lm: LoadedModel, prompts: Prompts) -> PromptBatch:
    """A text or a list of texts is encoded; ids (B, T) are taken as unpadded prompts."""
    check_lm(lm)
    if isinstance(prompts, PromptBatch):
        check_ids(lm, prompts.ids, "prompts", one=False)
        return prompts
    if isinstance(prompts, torch.Tensor):
        return PromptBatch.from_ids(check_ids(lm, prompts, "prompts", one=False))
    if isinstance(prompts, str):
        return lm.encode([prompts])
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(text, str) for text in prompts):
        raise ArgumentTypeError(
            "prompts= must be a text, a list of texts, token ids (batch, tokens) or "
            f"lm.encode([...]), not {type(prompts).__name__}."
        )
    return lm.encode(prompts)


def capture(lm: LoadedModel, prompts: Prompts, sites: str | Iterable[str] = "resid") -> Activations:
    """One forward pass of `prompts` keeping the activations at `sites` (see the module docstring), each
    (B, T, hidden) on the model's output device. `capture(lm, "Paris is", ["resid.5", "mlp"])`."""
    batch = as_batch(lm, prompts)
    adapter = lm.adapter
    names = site_names(sites, adapter.n_blocks)
    kept: dict[str, torch.Tensor] = {}
    target = adapter.output_device

    def keep(name: str) -> Callable[[torch.Tensor], None]:
        def store(hidden: torch.Tensor) -> None:
            # a copy: Falcon adds the attention output into its MLP's output in place, after this hook
            kept[name] = hidden.detach().reshape(*batch.ids.shape, -1).to(target, copy=True)

        return store

    with ExitStack() as stack, torch.inference_mode():
        for name in names:
            kind, index = name.split(".")[0], _site_index(name)
            if kind == "resid" and index < adapter.n_blocks:
                hook_input(stack, adapter.blocks[index], keep(name))
            elif kind == "resid":
                hook_output(stack, adapter.blocks[index - 1], keep(name))
            else:
                hook_output(stack, adapter.attention(index) if kind == "attn" else adapter.mlp(index), keep(name))
        lm.model(input_ids=batch.ids, attention_mask=batch.attention_mask, use_cache=False, **last_logits_only(lm))
    missing = [name for name in names if name not in kept]
    if missing:  # a module that an intervention skipped, or one this family never calls
        raise LayerscopeError(f"Sites {', '.join(missing)} did not run in this forward pass.")
    return Activations(lm.name, batch.ids, batch.attention_mask, {name: kept[name] for name in names})


def last_logits_only(lm: LoadedModel) -> dict[str, int]:
    """The forward option that skips the vocab-wide logits of every position but the last, where the model
    has it: a pass run for its hidden states needs none of them."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.model.forward).parameters else {}
