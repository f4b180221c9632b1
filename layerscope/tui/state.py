"""What the explorer's toggles mean, and sessions on disk. Plain Python: no textual, no torch at import.

The toggles are the user's view (a checkbox per block and head); `interventions()`
turns them into the engine's value objects, so there is one source of truth
for what a run does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.interventions import Intervention

SESSION_VERSION = 1
BLOCK_KINDS = ("drop", "swap", "freeze", "random", "skip_attn")
"""The per-block toggles, in the column order of the layer pane."""
INTERVENABLE = ("logit_lens", "tuned_lens")
"""The grid methods that run with the interventions (Patchscope patches into its own target prompt)."""


@dataclass(frozen=True)
class Toggles:
    """Drops and swaps are sets of blocks; freeze, random and skip-attention act from one block on."""

    drop: frozenset[int] = frozenset()
    swap: frozenset[int] = frozenset()
    freeze: int | None = None
    random: int | None = None
    seed: int = 0
    skip_attn: int | None = None
    masked_heads: frozenset[tuple[int, int]] = frozenset()
    mask_mode: str = "zero"

    def toggle(self, kind: str, block: int) -> Toggles:
        """Flip one checkbox; a 'from' toggle moves to this block, or clears when it is already here."""
        if kind in ("drop", "swap"):
            return replace(self, **{kind: getattr(self, kind) ^ {block}})
        if kind in ("freeze", "random", "skip_attn"):
            return replace(self, **{kind: None if getattr(self, kind) == block else block})
        raise ValueError(f"unknown toggle '{kind}'")

    def toggle_head(self, block: int, head: int) -> Toggles:
        return replace(self, masked_heads=self.masked_heads ^ {(block, head)})

    def state_of(self, kind: str, block: int) -> str:
        """'on', 'covered' (a block after a 'from' toggle) or 'off'."""
        value = getattr(self, kind)
        if kind in ("drop", "swap"):
            return "on" if block in value else "off"
        if value is None:
            return "off"
        if block == value:
            return "on"
        return "covered" if kind in ("freeze", "skip_attn") and block > value else "off"

    def effective(self) -> Toggles:
        """The same toggles with the settings that change nothing reset: the seed without a random block, the mask
        mode without masked heads."""
        return replace(self, seed=self.seed if self.random is not None else 0,
                       mask_mode=self.mask_mode if self.masked_heads else "zero")

    @property
    def is_empty(self) -> bool:
        return not (self.drop or self.swap or self.masked_heads) and \
            self.freeze is None and self.random is None and self.skip_attn is None

    def interventions(self, n_blocks: int) -> list[Intervention]:
        from layerscope.interventions import (DropBlocks, FreezeFrom, MaskHeads, RandomizeAt, SkipAttention,
                                              SwapBlocks)

        chosen: list[Intervention] = [DropBlocks(tuple(sorted(self.drop)))] if self.drop else []
        chosen += [SwapBlocks(block) for block in sorted(self.swap)]
        chosen += [FreezeFrom(self.freeze)] if self.freeze is not None else []
        chosen += [RandomizeAt(self.random, self.seed)] if self.random is not None else []
        chosen += [SkipAttention.from_block(self.skip_attn, n_blocks)] if self.skip_attn is not None else []
        chosen += [MaskHeads(tuple(sorted(self.masked_heads)), self.mask_mode)] if self.masked_heads else []
        return chosen

    def describe(self) -> str:
        """Every intervention by name and place: 'drop 2 · swap 5↔6 · freeze ≥20 · mask 17.3, 18.6 (uniform)'."""
        heads = ", ".join(f"{block}.{head}" for block, head in sorted(self.masked_heads))
        parts = [f"drop {','.join(map(str, sorted(self.drop)))}" if self.drop else "",
                 *(f"swap {b}↔{b + 1}" for b in sorted(self.swap)),
                 f"freeze ≥{self.freeze}" if self.freeze is not None else "",
                 f"random {self.random} (seed {self.seed})" if self.random is not None else "",
                 f"skip-attn ≥{self.skip_attn}" if self.skip_attn is not None else "",
                 f"mask {heads} ({self.mask_mode})" if self.masked_heads else ""]
        return " · ".join(p for p in parts if p) or "no interventions"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["drop"], data["swap"] = sorted(self.drop), sorted(self.swap)
        data["masked_heads"] = [list(h) for h in sorted(self.masked_heads)]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Toggles:
        try:
            return cls(drop=frozenset(map(int, data.get("drop", []))), swap=frozenset(map(int, data.get("swap", []))),
                       freeze=_optional_int(data.get("freeze")), random=_optional_int(data.get("random")),
                       seed=int(data.get("seed", 0)), skip_attn=_optional_int(data.get("skip_attn")),
                       masked_heads=frozenset((int(b), int(h)) for b, h in data.get("masked_heads", [])),
                       mask_mode=str(data.get("mask_mode", "zero")))
        except (TypeError, ValueError, AttributeError) as error:
            raise LayerscopeError(f"Bad interventions in the session: {error}") from error


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class RunOrigin:
    """What a set of results was computed from: when any part differs from the app's, they are stale."""

    model: str
    prompt: str
    method: str
    toggles: Toggles

    def changes(self, now: RunOrigin) -> list[str]:
        """What differs from `now`, in words ('prompt', 'model', 'method', 'interventions')."""
        changed = [name for name in ("prompt", "model", "method") if getattr(self, name) != getattr(now, name)]
        if self.method == now.method in INTERVENABLE and self.toggles.effective() != now.toggles.effective():
            changed.append("interventions")
        return changed


@dataclass
class Results:
    """What a run produced; any part may be missing (cancelled, or not asked for)."""

    baseline: DecodeGrid | None = None
    intervened: DecodeGrid | None = None
    kl_base_int: list[list[float]] | None = None  # [row][position], KL(baseline || intervened), nats
    continuation: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"baseline": self.baseline.to_dict() if self.baseline else None,
                "intervened": self.intervened.to_dict() if self.intervened else None,
                "kl_base_int": self.kl_base_int, "continuation": self.continuation}


@dataclass
class Session:
    model: str
    prompt: str
    method: str
    toggles: Toggles
    results: Results

    def to_dict(self) -> dict:
        return {"layerscope_session": SESSION_VERSION, "model": self.model, "prompt": self.prompt,
                "method": self.method, "interventions": self.toggles.to_dict(), "results": self.results.to_dict()}

    def save(self, path: Path) -> None:
        from layerscope.outputs import to_json, write_atomic

        write_atomic(to_json(self.to_dict()), path)

    @classmethod
    def load(cls, path: Path) -> Session:
        from layerscope.analyses.grid import DecodeGrid

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise LayerscopeError(f"Cannot read session '{path}': {error}") from error
        if not isinstance(data, dict) or data.get("layerscope_session") != SESSION_VERSION:
            raise LayerscopeError(f"'{path}' is not a layerscope session file (version {SESSION_VERSION}).")
        try:
            saved = data.get("results") or {}
            results = Results(
                baseline=DecodeGrid.from_dict(saved["baseline"]) if saved.get("baseline") else None,
                intervened=DecodeGrid.from_dict(saved["intervened"]) if saved.get("intervened") else None,
                kl_base_int=saved.get("kl_base_int"),
                continuation=dict(saved.get("continuation") or {}),
            )
            return cls(str(data["model"]), str(data["prompt"]), str(data.get("method", "logit_lens")),
                       Toggles.from_dict(data.get("interventions") or {}), results)
        except (KeyError, TypeError, ValueError) as error:
            raise LayerscopeError(f"Session '{path}' is damaged: {error!r}") from error


def sample_prompts(folder: Path, longest: int = 300) -> list[tuple[str, str]]:
    """(label, prompt) for every prompt of every prompt-set file in the folder; other files are skipped."""
    from layerscope.analyses.prompt_sets import load_prompt_set

    if not folder.is_dir():
        return []

    choices = []
    for path in sorted(folder.iterdir()):
        try:
            items = load_prompt_set(path) if path.suffix in (".txt", ".jsonl") else []
        except LayerscopeError:
            continue
        if all(len(item.text) <= longest for item in items):
            choices += [(f"{path.name}: {item.text}", item.text) for item in items]
    return choices
