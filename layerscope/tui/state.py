"""What the explorer's toggles mean, and sessions on disk. Plain Python: no textual, no torch at import.

The toggles are the user's view (a checkbox per block and head); `interventions()`
turns them into the engine's value objects, so there is one source of truth
for what a run does. Which toggles exist, their columns and how they reach
over blocks come from the intervention registry (`BlockChoice` of each kind;
declaring the kinds imports no torch).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from layerscope.errors import LayerscopeError
from layerscope.interventions import (
    REGISTRY,
    BlockChoice,
    Intervention,
    MaskHeads,
    ModelShape,
    check_interventions,
    chosen_by_block,
    intervention_class,
)
from layerscope.interventions.kinds import HEAD_MASK_MODES, HeadMaskMode, SteerPositions

SESSION_VERSION = 1
STEER_FACTORS = (1.0, 2.0, 4.0, 8.0, -1.0, -2.0, -4.0, -8.0, 0.5)
"""The steer column's factors, in the order `t` (the layer pane) steps through them."""


def block_kinds() -> dict[str, BlockChoice]:
    """The per-block toggles, in the column order of the layer pane: every kind chosen by block."""
    return {kind: cls.chosen_by for kind, cls in chosen_by_block().items() if cls.chosen_by is not None}


def _kind(name: str) -> str:
    """A kind's spelling from its own, an old one (`skip_attn`) or its Python name (`my_kind` for `my-kind`)."""
    python_name = name.replace("_", "-")
    return intervention_class(python_name if python_name in REGISTRY else name).kind


@dataclass(frozen=True, init=False)
class Toggles:
    """The blocks toggled per kind: a 'set' kind (drop, swap) any blocks; a 'from' (freeze, skip-attn) or 'at'
    kind (random) one block. `Toggles(drop={2}, freeze=8)` or the mapping; `toggles.drop`, `toggles.freeze`
    read them back (a set, or a block or None)."""

    blocks: tuple[tuple[str, frozenset[int]], ...] = ()  # (kind, blocks) in column order, none empty
    seed: int = 0
    masked_heads: frozenset[tuple[int, int]] = frozenset()
    mask_mode: HeadMaskMode = "zero"
    steer_vector: Any = None  # the steering vector (a SavedVector, loaded by `layerscope tui --steer FILE`), or None
    steer_factor: float = 1.0
    steer_positions: SteerPositions = "all"  # where the steer column adds: all, last, or prompt positions

    def __init__(
        self,
        blocks: Any = (),
        seed: int = 0,
        masked_heads: frozenset[tuple[int, int]] = frozenset(),
        mask_mode: HeadMaskMode = "zero",
        steer_vector: Any = None,
        steer_factor: float = 1.0,
        steer_positions: SteerPositions = "all",
        **by_kind: Any,
    ) -> None:
        chosen = {_kind(kind): _as_blocks(value) for kind, value in {**dict(blocks), **by_kind}.items()}
        object.__setattr__(self, "blocks", tuple((kind, chosen[kind]) for kind in block_kinds() if chosen.get(kind)))
        object.__setattr__(self, "seed", seed)
        object.__setattr__(self, "masked_heads", frozenset(masked_heads))
        object.__setattr__(self, "mask_mode", mask_mode)
        object.__setattr__(self, "steer_vector", steer_vector)
        object.__setattr__(self, "steer_factor", steer_factor)
        object.__setattr__(self, "steer_positions", steer_positions)

    def chosen(self, kind: str) -> frozenset[int]:
        return dict(self.blocks).get(_kind(kind), frozenset())

    def __getattr__(self, name: str) -> Any:
        """`toggles.drop` (a set) or `toggles.freeze` (a block or None): a kind's toggles by its Python name."""
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            kind = _kind(name)
        except LayerscopeError:
            raise AttributeError(name) from None
        chosen = self.chosen(kind)
        return chosen if block_kinds()[kind].reach == "set" else next(iter(chosen), None)

    def _with(self, kind: str, chosen: frozenset[int]) -> Toggles:
        return replace(self, blocks=tuple({**dict(self.blocks), kind: chosen}.items()))

    def toggle(self, kind: str, block: int) -> Toggles:
        """Flip one checkbox; a 'from' or 'at' toggle moves to this block, or clears when it is already here."""
        kind = _kind(kind)
        if kind not in block_kinds():
            raise ValueError(f"unknown toggle '{kind}'")
        chosen = self.chosen(kind)
        if block_kinds()[kind].reach == "set":
            return self._with(kind, chosen ^ {block})
        return self._with(kind, frozenset() if block in chosen else frozenset({block}))

    def toggle_head(self, block: int, head: int) -> Toggles:
        return replace(self, masked_heads=self.masked_heads ^ {(block, head)})

    def state_of(self, kind: str, block: int) -> str:
        """'on', 'covered' (a block after a 'from' toggle) or 'off'."""
        kind = _kind(kind)
        chosen = self.chosen(kind)
        if block in chosen:
            return "on"
        return "covered" if block_kinds()[kind].reach == "from" and chosen and block > min(chosen) else "off"

    def _uses_seed(self) -> bool:
        return any(REGISTRY[kind].uses_seed for kind, _ in self.blocks)

    def effective(self) -> Toggles:
        """The same toggles with the settings that change nothing reset: the seed without a seeded kind, the mask
        mode without masked heads."""
        steering = bool(self.chosen("steer"))
        return replace(
            self,
            seed=self.seed if self._uses_seed() else 0,
            mask_mode=self.mask_mode if self.masked_heads else "zero",
            steer_factor=self.steer_factor if steering else 1.0,
            steer_positions=self.steer_positions if steering else "all",
        )

    @property
    def is_empty(self) -> bool:
        return not (self.blocks or self.masked_heads)

    def settings(self) -> dict[str, Any]:
        """The kinds' settings by CLI option name (`Intervention.from_cli`): the seed, the steering vector."""
        return {
            "seed": self.seed,
            "steer": self.steer_vector,
            "steer_factor": self.steer_factor,
            "steer_positions": self.steer_positions,
        }

    def _of_kind(self, kind: str, blocks: frozenset[int], n_blocks: int) -> list[Intervention]:
        cls = REGISTRY[kind]
        assert cls.chosen_by is not None  # a block toggle's kind is chosen by block
        return cls.from_cli({**self.settings(), cls.chosen_by.option_name: tuple(sorted(blocks))}, n_blocks)

    def interventions(self, n_blocks: int) -> list[Intervention]:
        chosen: list[Intervention] = []
        for kind, blocks in self.blocks:
            chosen += self._of_kind(kind, blocks, n_blocks)
        chosen += [MaskHeads(tuple(sorted(self.masked_heads)), self.mask_mode)] if self.masked_heads else []
        return chosen

    def describe(self) -> str:
        """Every intervention by name and place: 'drop 2 · swap 5↔6 · freeze ≥20 · mask 17.3, 18.6 (uniform)'."""
        return " · ".join(self.parts()) or "no interventions"

    def parts(self) -> list[str]:
        """Each intervention by name and place: ['drop 2', 'swap 5↔6', 'freeze ≥20', 'mask 17.3 (zero)']."""
        parts = []
        for kind, blocks in self.blocks:
            if block_kinds()[kind].reach == "from":
                parts.append(f"{kind} ≥{min(blocks)}")
            else:
                parts += [i.describe() for i in self._of_kind(kind, blocks, max(blocks) + 2)]
        if self.masked_heads:
            parts.append(MaskHeads(tuple(sorted(self.masked_heads)), self.mask_mode).describe())
        return parts

    def to_dict(self) -> dict:
        data: dict[str, Any] = {
            kind: sorted(self.chosen(kind)) if choice.reach == "set" else next(iter(self.chosen(kind)), None)
            for kind, choice in block_kinds().items()
        }
        return {
            **data,
            "seed": self.seed,
            "masked_heads": [list(h) for h in sorted(self.masked_heads)],
            "mask_mode": self.mask_mode,
            "steer_factor": self.steer_factor,
            "steer_positions": (
                list(self.steer_positions) if isinstance(self.steer_positions, tuple) else self.steer_positions
            ),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Toggles:
        """Reads sessions of any version: a kind under its spelling or an old one (`skip_attn`)."""
        try:
            blocks = {}
            for key, value in data.items():
                if key in ("seed", "masked_heads", "mask_mode", "steer_factor", "steer_positions") or value is None:
                    continue
                kind = intervention_class(key).kind
                blocks[kind] = frozenset(map(int, value)) if block_kinds()[kind].reach == "set" else {int(value)}
            return cls(
                blocks,
                seed=int(data.get("seed", 0)),
                masked_heads=frozenset((int(b), int(h)) for b, h in data.get("masked_heads", [])),
                mask_mode=_mask_mode(data.get("mask_mode", "zero")),
                steer_factor=_steer_factor(data.get("steer_factor", 1.0)),
                steer_positions=_steer_positions(data.get("steer_positions", "all")),
            )
        except (TypeError, ValueError, AttributeError, KeyError) as error:
            raise LayerscopeError(f"Bad interventions in the session: {error}") from error


def refusal(old: Toggles, new: Toggles, shape: ModelShape, error: LayerscopeError) -> str:
    """Why the engine refuses `new` (in `error`), in words that cannot read as applied: the intervention the
    change adds, the one it clashes with and what to clear ('Refused: drop 10 clashes with swap 10↔11; clear
    the swap first.'); the engine's own reason where no single one clashes (a block out of range)."""
    kept = old.interventions(shape.n_blocks)
    for added in (i for i in new.interventions(shape.n_blocks) if i not in kept):
        for other in kept:
            try:
                check_interventions([other, added], shape)
            except LayerscopeError:
                return (
                    f"Refused: {added.describe()} clashes with {other.describe()}; clear the {other.kind} first. "
                    "The interventions are unchanged."
                )
    return f"Refused: {error} The interventions are unchanged."


def _steer_factor(value: object) -> float:
    """A session's steer factor: a finite number, checked when the session is read."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"steer factor {value!r} is not a finite number")
    return float(value)


def steer_where(positions: SteerPositions) -> str:
    """Steer positions as `--steer-positions` takes them: all, last, or 0,4,5."""
    return ",".join(map(str, positions)) if isinstance(positions, tuple) else positions


def _steer_positions(value: object) -> SteerPositions:
    """A session's steer positions: 'all', 'last' or a list of prompt positions (whole numbers, 0 or more)."""
    if value in ("all", "last"):
        return "all" if value == "all" else "last"
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in value)
    ):
        return tuple(value)
    raise ValueError(f"steer positions {value!r:.60} are neither 'all', 'last' nor a list of prompt positions")


def _mask_mode(value: object) -> HeadMaskMode:
    """A session's mask mode, checked when the session is read (not first when a run installs the mask)."""
    for mode in HEAD_MASK_MODES:
        if value == mode:
            return mode
    raise ValueError(f"mask mode {value!r} is neither 'zero' nor 'uniform'")


def _as_blocks(value: Any) -> frozenset[int]:
    """A toggle's blocks from a set of blocks, one block, or None."""
    if value is None:
        return frozenset()
    return frozenset({value}) if isinstance(value, int) else frozenset(value)


@dataclass(frozen=True)
class RunOrigin:
    """What a set of results was computed from: when any part differs from the app's, they are stale."""

    model: str
    prompt: str
    method: str
    toggles: Toggles

    def changes(self, now: RunOrigin) -> list[str]:
        """What differs from `now`, in words ('prompt', 'model', 'method', 'interventions')."""
        from layerscope.tui.methods import REGISTRY

        changed = [name for name in ("prompt", "model", "method") if getattr(self, name) != getattr(now, name)]
        method = REGISTRY.get(self.method)
        if (
            self.method == now.method
            and method is not None
            and method.intervenable
            and self.toggles.effective() != now.toggles.effective()
        ):
            changed.append("interventions")
        return changed


@dataclass
class Results:
    """What a run produced; any part may be missing (cancelled, or not asked for)."""

    baseline: Any = None  # a DecodeGrid (the lenses), a CausalTrace or a head pattern: the method's grid
    intervened: Any = None  # the same with the interventions, where they apply
    kl_base_int: list[list[float]] | None = None  # [row][position], KL(baseline || intervened), nats
    continuation: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "intervened": self.intervened.to_dict() if self.intervened else None,
            "kl_base_int": self.kl_base_int,
            "continuation": self.continuation,
        }


@dataclass
class Session:
    model: str
    prompt: str
    method: str
    toggles: Toggles
    results: Results

    def to_dict(self) -> dict:
        return {
            "layerscope_session": SESSION_VERSION,
            "model": self.model,
            "prompt": self.prompt,
            "method": self.method,
            "interventions": self.toggles.to_dict(),
            "results": self.results.to_dict(),
        }

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
            return cls(
                str(data["model"]),
                str(data["prompt"]),
                str(data.get("method", "logit_lens")),
                Toggles.from_dict(data.get("interventions") or {}),
                results,
            )
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
