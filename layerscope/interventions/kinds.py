"""The intervention kinds: each is one class, and defining it registers it (see `core.Intervention`).

torch is imported inside the edits, so that the CLI and the explorer can read the kinds' spellings at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from layerscope.errors import InterventionError
from layerscope.interventions.core import (
    BlockChoice,
    Claim,
    CliOption,
    Intervention,
    ModelShape,
    Positions,
    check_block,
)
from layerscope.specs import parse_blocks, parse_heads

if TYPE_CHECKING:  # torch is imported where an edit runs: declaring the kinds must not load it
    import torch
    from torch import nn

    from layerscope.interventions.attention import AttentionEdits
    from layerscope.interventions.run import InterventionRun


def _from_block(block: int, n_blocks: int) -> range | tuple[int]:
    """Block `block` and every block after it; an out-of-range block alone, for the range check to name."""
    return range(block, n_blocks) if 0 <= block < n_blocks else (block,)


@dataclass(frozen=True)
class DropBlocks(Intervention):
    """The residual stream skips these blocks: their attention and MLP outputs are zero."""

    blocks: tuple[int, ...]
    kind = "drop"
    chosen_by = BlockChoice("--drop", "Blocks to drop, e.g. 3,5 or 10-12.", "drop", "set")

    def touched(self, n_blocks: int) -> tuple[int, ...]:
        return self.blocks

    def module_at(self, depth: int) -> int | None:
        return None

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        return [cls(tuple(blocks))]

    def describe(self) -> str:
        return f"drop {','.join(map(str, self.blocks))}"


@dataclass(frozen=True)
class SwapBlocks(Intervention):
    """Run block b+1 before block b (whole blocks, norms included)."""

    block: int
    kind = "swap"
    chosen_by = BlockChoice("--swap", "Swap block b with b+1, e.g. 10 (or 4,10).", "swap↔next", "set")

    def touched(self, n_blocks: int) -> tuple[int, int]:
        return (self.block, self.block + 1)

    def module_at(self, depth: int) -> int | None:
        return self.block + 1 if depth == self.block else self.block

    def check(self, shape: ModelShape) -> None:
        if not 0 <= self.block < shape.n_blocks - 1:
            raise InterventionError(
                f"swap: block {self.block} has no next block to swap with (valid: 0..{shape.n_blocks - 2})."
            )

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        return [cls(block) for block in blocks]

    def describe(self) -> str:
        return f"swap {self.block}↔{self.block + 1}"


def _previous_claim(block: int, refusal: str) -> Claim:
    """The previous tokens' states at the input of a block: one edit there, or they overwrite each other."""
    return Claim(("previous tokens at", block), refusal)


@dataclass(frozen=True)
class FreezeFrom(Intervention):
    """From block k on, previous tokens keep the state they had at the input of block k."""

    block: int
    kind = "freeze"
    chosen_by = BlockChoice(
        "--freeze-from", "From block K on, previous tokens keep their state.", "freeze-from", "from"
    )
    measured_at_last_token = True

    def touched(self, n_blocks: int) -> range | tuple[int]:
        return _from_block(self.block, n_blocks)

    def claims(self, n_blocks: int) -> list[Claim]:
        return [
            Claim(("previous tokens restored",), "freeze: give one freeze block, not several."),
            _previous_claim(self.block, "freeze and random at the same block would overwrite each other."),
        ]

    def edit_input(self, depth: int, hidden: torch.Tensor, at: Positions, memo: dict) -> torch.Tensor | None:
        if depth == self.block:
            memo["previous"] = hidden[at.previous.to(hidden.device)]
        return None

    def edit_output(
        self, depth: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor, at: Positions, memo: dict
    ) -> torch.Tensor | None:
        hidden_out = hidden_out.clone()
        hidden_out[at.previous.to(hidden_out.device)] = memo["previous"].to(hidden_out.device)
        return hidden_out

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        return [cls(block) for block in blocks]

    def describe(self) -> str:
        return f"freeze ≥{self.block}"


@dataclass(frozen=True)
class RandomizeAt(Intervention):
    """At the input of block k, each previous token's state becomes a Gaussian vector of the same norm."""

    block: int
    seed: int = 0
    kind = "random"
    chosen_by = BlockChoice("--random-at", "At block K, previous tokens become norm-matched noise.", "random-at", "at")
    options = (CliOption("seed", "Seed for --random-at.", int, 0),)
    uses_seed = True
    measured_at_last_token = True

    def touched(self, n_blocks: int) -> tuple[int]:
        return (self.block,)

    def claims(self, n_blocks: int) -> list[Claim]:
        return [
            _previous_claim(
                self.block,
                "random: the same block is randomised twice (or also frozen): the edits would overwrite each other.",
            )
        ]

    def edit_input(self, depth: int, hidden: torch.Tensor, at: Positions, memo: dict) -> torch.Tensor | None:
        """Each batch element draws its noise alone, so a prompt gets the same noise in a batch as on its own."""
        import torch

        hidden = hidden.clone()
        previous = at.previous.to(hidden.device)
        for row in range(hidden.shape[0]):
            states = hidden[row, previous[row]][None]
            generator = torch.Generator().manual_seed(self.seed)
            noise = torch.randn(states.shape, generator=generator, dtype=torch.float32)
            noise = noise.to(states.device, states.dtype)
            hidden[row, previous[row]] = (noise / noise.norm(dim=-1, keepdim=True) * states.norm(dim=-1, keepdim=True))[
                0
            ]
        return hidden

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        return [cls(block, seed) for block in blocks]

    def describe(self) -> str:
        return f"random {self.block} (seed {self.seed})"


@dataclass(frozen=True)
class SkipAttention(Intervention):
    """In these blocks the last token skips attention: residual plus MLP only."""

    blocks: tuple[int, ...]
    kind = "skip-attn"
    aliases = ("skip_attn",)
    chosen_by = BlockChoice(
        "--skip-attn-from", "From block K on, the last token skips attention.", "skip-attn-from", "from"
    )
    measured_at_last_token = True

    @classmethod
    def from_block(cls, block: int, n_blocks: int) -> SkipAttention:
        return cls(tuple(_from_block(block, n_blocks)))

    def touched(self, n_blocks: int) -> tuple[int, ...]:
        return self.blocks

    def edit_attention(self, depth: int, attention_out: torch.Tensor, at: Positions) -> torch.Tensor | None:
        import torch

        attention_out = attention_out.clone()
        attention_out[torch.arange(attention_out.shape[0]), at.last.to(attention_out.device)] = 0
        return attention_out

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        return [cls.from_block(block, n_blocks) for block in blocks]

    def describe(self) -> str:
        return f"skip-attn {','.join(map(str, self.blocks))}"


@dataclass(frozen=True, eq=False)
class PatchState(Intervention):
    """Write a residual state at grid row `row` (the input of block `row`; row L is the last block's output).

    `vector` is (hidden,) or (batch, hidden); it can come from another prompt.
    """

    row: int
    position: int
    vector: torch.Tensor
    kind = "patch"

    def touched(self, n_blocks: int) -> tuple[int]:
        return (min(self.row, n_blocks - 1),) if n_blocks else (self.row,)

    def claims(self, n_blocks: int) -> list[Claim]:
        return [Claim(("state", self.row, self.position), "patch: the same row and position are patched twice.")]

    def check(self, shape: ModelShape) -> None:
        check_block("patch", self.row, shape, allow_output_row=True)
        if self.position < 0 or (shape.seq_len is not None and self.position >= shape.seq_len):
            raise InterventionError(
                f"patch: position {self.position} is outside the prompt (0..{(shape.seq_len or 1) - 1})."
            )

    def _write(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.position >= hidden.shape[1]:
            raise InterventionError(f"patch: position {self.position} is past the prompt ({hidden.shape[1]} tokens).")
        if self.vector.shape[-1] != hidden.shape[-1]:
            raise InterventionError(
                f"patch: vector= has {self.vector.shape[-1]} entries; this model's residual "
                f"states have {hidden.shape[-1]}."
            )
        hidden = hidden.clone()
        hidden[:, self.position] = self.vector.to(hidden.device, hidden.dtype)
        return hidden

    def edit_input(self, depth: int, hidden: torch.Tensor, at: Positions, memo: dict) -> torch.Tensor | None:
        return self._write(hidden) if depth == self.row else None

    def edit_output(
        self, depth: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor, at: Positions, memo: dict
    ) -> torch.Tensor | None:
        return self._write(hidden_out) if depth + 1 == self.row else None

    def describe(self) -> str:
        return f"patch row {self.row} position {self.position}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "row": self.row, "position": self.position}


SteerPositions = Literal["all", "last"] | tuple[int, ...]
"""Where a steer adds its vector: every token, each pass's last token, or these places in the text (0 is the
prompt's first token)."""


def _steer_file(path: str) -> Any:
    """`--steer FILE`: the vector file, read (and checked) before the model loads."""
    from layerscope.analyses.steering import SavedVector

    return SavedVector.load(path)


def _steer_positions(text: str) -> SteerPositions:
    """`--steer-positions`: all, last, or prompt positions such as 0,4-6."""
    if text.strip() in ("all", "last"):
        return "all" if text.strip() == "all" else "last"
    if not text.strip()[:1].isdigit():
        raise InterventionError(f"use all, last or prompt positions such as 0,4-6, not '{text}'.")
    return parse_blocks(text, "position")


@dataclass(frozen=True, eq=False)
class SteerVector(Intervention):
    """Add `factor` times `vector` (hidden,) to the residual state at grid row `row` (the input of block `row`;
    row L is the last block's output): at every position (`positions="all"`), at each pass's last real token
    (`"last"`), or at chosen places in the text (a tuple of prompt positions, 0 the first token). It acts on
    every pass: when generating, `"all"` and `"last"` steer each generated token too, and chosen positions stay
    the prompt's (the generated tokens read them from the cache). `model` is the model the vector was computed
    on ("" for any), checked when it is applied."""

    row: int
    vector: torch.Tensor
    factor: float = 1.0
    positions: SteerPositions = "all"
    model: str = ""
    kind = "steer"
    chosen_by = BlockChoice(
        "--steer-at",
        "Rows where the --steer vector is added, e.g. 6 or 4,6 (default: the row it was computed at).",
        "steer",
        "set",
    )
    options = (
        CliOption(
            "steer",
            "A steering vector file (.safetensors, from 'layerscope steer vector').",
            parse=_steer_file,
            chooses=True,
            reads=True,
        ),
        CliOption("steer_factor", "Scale of the --steer vector (0: no change; negative: away from it).", float, 1.0),
        CliOption(
            "steer_positions",
            "Where --steer adds: all (every token), last (the last token) or prompt positions, e.g. 3 or 0,4-6.",
            str,
            "all",
            parse=_steer_positions,
        ),
    )
    every_pass = True

    def touched(self, n_blocks: int) -> tuple[int]:
        return (min(self.row, n_blocks - 1),) if n_blocks else (self.row,)

    def claims(self, n_blocks: int) -> list[Claim]:
        return [Claim(("steer", self.row), "steer: the same row is steered twice.")]

    def check(self, shape: ModelShape) -> None:
        check_block("steer", self.row, shape, allow_output_row=True)
        if isinstance(self.positions, tuple):
            chosen = self.positions
            if not chosen or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in chosen):
                raise InterventionError(
                    f"steer: positions= must be 'all', 'last' or a non-empty tuple of prompt positions (0 or more), "
                    f"not {chosen!r:.60}."
                )
            if shape.seq_len is not None and max(chosen) >= shape.seq_len:
                raise InterventionError(
                    f"steer: position {max(chosen)} is outside the prompt (0..{shape.seq_len - 1})."
                )
        elif self.positions not in ("all", "last"):
            raise InterventionError(
                f"steer: positions= must be 'all', 'last' or a tuple of prompt positions, not {self.positions!r:.60}."
            )
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not math.isfinite(self.factor):
            raise InterventionError(f"steer: factor= must be a finite number, not {self.factor!r}.")
        if self.vector.dim() != 1:
            raise InterventionError(
                f"steer: vector= must be one vector (hidden,), not shaped {tuple(self.vector.shape)}."
            )

    def attach(self, run: InterventionRun) -> None:
        if self.model and self.model != run.lm.name:
            raise InterventionError(f"steer: the vector was computed on '{self.model}', not on '{run.lm.name}'.")
        run.apply(self)

    def _add(self, hidden: torch.Tensor, at: Positions) -> torch.Tensor:
        import torch

        if self.vector.shape[-1] != hidden.shape[-1]:
            raise InterventionError(
                f"steer: vector= has {self.vector.shape[-1]} entries; this model's residual states have "
                f"{hidden.shape[-1]}."
            )
        added = self.factor * self.vector.to(hidden.device, torch.float32)
        if self.positions == "all":
            return (hidden.float() + added).to(hidden.dtype)
        if self.positions == "last":
            chosen = torch.zeros(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
            chosen[torch.arange(hidden.shape[0], device=hidden.device), at.last.to(hidden.device)] = True
        else:
            place = at.place.to(hidden.device)
            fresh = (place == 0).any(dim=1)  # this pass starts the element's text (not a cached decoding step)
            length = place.amax(dim=1) + 1
            if bool((fresh & (length <= max(self.positions))).any()):
                raise InterventionError(
                    f"steer: position {max(self.positions)} is past the prompt ({int(length[fresh].min())} tokens)."
                )
            chosen = torch.isin(place, torch.tensor(self.positions, device=hidden.device))
        hidden = hidden.clone()
        hidden[chosen] = (hidden[chosen].float() + added).to(hidden.dtype)
        return hidden

    def edit_input(self, depth: int, hidden: torch.Tensor, at: Positions, memo: dict) -> torch.Tensor | None:
        return self._add(hidden, at) if depth == self.row else None

    def edit_output(
        self, depth: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor, at: Positions, memo: dict
    ) -> torch.Tensor | None:
        return self._add(hidden_out, at) if depth + 1 == self.row else None

    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        raise InterventionError("steer: give a steering vector (--steer FILE).")

    @classmethod
    def from_cli(cls, values: dict[str, Any], n_blocks: int) -> list[Intervention]:
        """`--steer FILE` at `--steer-at` (default: the file's row), scaled by `--steer-factor`."""
        saved, at = values.get("steer"), values.get("steer_at")
        if saved is None:
            if at is not None:
                raise InterventionError("--steer-at needs a steering vector: give --steer FILE.")
            return []
        rows = tuple(at) if isinstance(at, (tuple, list)) else (saved.row if at is None else at,)
        factor, positions = values.get("steer_factor", 1.0), values.get("steer_positions", "all")
        return [cls(row, saved.vector, factor, positions, saved.model) for row in rows]

    def describe(self) -> str:
        if isinstance(self.positions, tuple):
            where = f" (positions {','.join(map(str, self.positions))})"
        else:
            where = "" if self.positions == "all" else " (last token)"
        return f"steer row {self.row} ×{self.factor:g}{where}"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "row": self.row,
            "factor": self.factor,
            "positions": list(self.positions) if isinstance(self.positions, tuple) else self.positions,
            "model": self.model,
            "norm": float(self.vector.float().norm()),
        }


HeadMaskMode = Literal["zero", "uniform"]
HEAD_MASK_MODES: tuple[HeadMaskMode, ...] = ("zero", "uniform")


@dataclass(frozen=True)
class MaskHeads(Intervention):
    """Mask query heads: `zero` removes the head's output; `uniform` makes it attend equally to all
    visible keys (how the Retrieval Head authors ablate)."""

    heads: tuple[tuple[int, int], ...]
    mode: HeadMaskMode = "zero"
    kind = "mask-heads"
    aliases = ("mask_heads",)
    options = (
        CliOption("mask_heads", "Heads to mask as block.head, e.g. 4.2,7.1.", parse=parse_heads, chooses=True),
        CliOption("mask_mode", "zero (remove the head's output) or uniform (attend evenly).", str, "zero"),
    )

    def touched(self, n_blocks: int) -> tuple[int, ...]:
        return tuple(dict.fromkeys(block for block, _ in self.heads))

    def claims(self, n_blocks: int) -> list[Claim]:
        return [
            Claim(("head", block, head), f"mask-heads: head {block}.{head} is masked in two modes.", self.mode)
            for block, head in self.heads
        ]

    def check(self, shape: ModelShape) -> None:
        if self.mode not in HEAD_MASK_MODES:
            raise InterventionError(f"mask-heads: mode must be 'zero' or 'uniform', not '{self.mode}'.")
        for block, head in self.heads:
            check_block("mask-heads", block, shape)
            if not 0 <= head < shape.n_heads:
                raise InterventionError(f"mask-heads: head {head} is out of range 0..{shape.n_heads - 1}.")

    def attach(self, run: InterventionRun) -> None:
        for block, head in self.heads:
            _mask_head(run, block, head, self.mode)

    @classmethod
    def from_cli(cls, values: dict[str, Any], n_blocks: int) -> list[Intervention]:
        heads = values.get("mask_heads")
        return [cls(tuple(heads), values.get("mask_mode", "zero"))] if heads else []

    def describe(self) -> str:
        return f"mask {', '.join(f'{block}.{head}' for block, head in self.heads)} ({self.mode})"


def _mask_head(run: InterventionRun, block: int, head: int, mode: HeadMaskMode) -> None:
    from layerscope.interventions.attention import edited_attention, edits_of

    run.stack.enter_context(edited_attention(run.adapter.model))
    attention = run.adapter.attention(block)
    edits = edits_of(attention)
    heads = edits.zero_heads if mode == "zero" else edits.uniform_heads
    if head not in heads:
        heads.add(head)
        run.stack.callback(heads.discard, head)
    if not (edits.zero_heads | edits.uniform_heads) - {head}:  # one guard per attention module
        _require_edits_applied(run, block, attention, edits)


def _require_edits_applied(run: InterventionRun, block: int, attention: nn.Module, edits: AttentionEdits) -> None:
    """Never a silent no-op: fail if a masked layer ran without layerscope's attention function."""
    from layerscope.models.hooks import watch_calls

    calls_before: list[int] = []

    def after(args: tuple, kwargs: dict, output: Any) -> None:
        if edits.applied == calls_before.pop():
            raise InterventionError(
                f"mask-heads: the attention of block {block} did not run through layerscope's attention "
                "function, so the head mask could not be applied."
            )

    watch_calls(run.stack, attention, before=lambda args, kwargs: calls_before.append(edits.applied), after=after)
