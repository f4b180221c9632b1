"""Interventions on a forward pass: what every kind declares, and the registry of kinds (`run.py` applies them).

Each kind is one class (see `kinds.py`): it declares the blocks it touches, how each block's place in
the run order changes (drop, swap), the state edits it makes (`edit_input`, `edit_output`,
`edit_attention`) and the parts of the pass it claims (`claims`). From these, `intervene` (`run.py`)
attaches hooks through `models/hooks.py`, `check_interventions` refuses conflicting sets, the batched
sweep runs the same edits on hand-run blocks, and the CLI and the explorer offer the kind (`chosen_by`).

Block indices mean depth in the run order (after any swap). Edits that touch positions (freeze, random,
skip attention, patch) act on a fresh pass only, that is, a forward with no cached tokens: when
generating, the prompt pass is intervened on and decoding continues from the intervened cache. Drops,
swaps and head masks act on every pass. In a padded batch (an `attention_mask` given to the model) the
position edits act on each batch element's own last real token and its own previous tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from layerscope.errors import ArgumentTypeError, ArgumentValueError, InterventionError, LayerscopeError
from layerscope.specs import parse_blocks

if TYPE_CHECKING:  # the declarations import no torch, so the CLI and the explorer read the registry at once
    import torch

    from layerscope.interventions.run import InterventionRun


@dataclass(frozen=True)
class ModelShape:
    n_blocks: int
    n_heads: int
    seq_len: int | None = None


@dataclass(frozen=True)
class Positions:
    """Each batch element's real tokens: its last one, the ones before it (the "previous tokens"), and each
    token's place in its element's text."""

    last: torch.Tensor  # (batch,) position of each element's last real token
    previous: torch.Tensor  # (batch, tokens) bool: real tokens before each element's last
    place: torch.Tensor  # (batch, tokens) each token's index among its element's real tokens, cached ones counted
    # (0 is the prompt's first token, whatever the padding); -1 for a padding token

    @classmethod
    def of(
        cls, attention_mask: torch.Tensor | None, batch: int, tokens: int, device: torch.device, cached: int = 0
    ) -> Positions:
        """Real tokens are where the 2-D mask is set (right or left padding); without a mask, every token.
        `attention_mask` is (batch, cached + tokens), or anything not 2-D (read as no mask); `cached` is how many
        tokens the cache holds before this pass's (a mask shorter than `cached + tokens` leaves them all real)."""
        import torch

        index = torch.arange(tokens, device=device)
        if attention_mask is None or attention_mask.dim() != 2:
            real = torch.ones(batch, tokens, dtype=torch.bool, device=device)
            place = (cached + index).expand(batch, tokens)
        else:
            whole = attention_mask.to(device=device, dtype=torch.bool)
            real = whole[:, -tokens:]
            unmasked = max(cached + tokens - whole.shape[1], 0)  # cached tokens the mask does not cover
            place = torch.where(real, unmasked + whole.long().cumsum(dim=1)[:, -tokens:] - 1, -1)
        last = torch.where(real, index, -1).amax(dim=1).clamp(min=0)
        return cls(last, real & (index < last[:, None]), place)


@dataclass(frozen=True)
class Claim:
    """A part of the forward pass an intervention sets. Two interventions claiming one `site` conflict,
    unless both give the same `setting` (two drops of a block agree; a head masked twice in one mode).
    `refusal` is the error a later intervention gets when its claim meets this one."""

    site: Hashable
    refusal: str
    setting: Hashable = None


@dataclass(frozen=True)
class BlockChoice:
    """How the CLI and the explorer choose a kind by block: its flag, its help, its layer-pane column."""

    flag: str  # "--freeze-from"; the spec is parsed by `reach`
    help: str
    title: str  # the explorer's layer-pane column
    reach: Literal["set", "from", "at"]  # any blocks ("3,5-7"); one block and every block after it; one block

    @property
    def option_name(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


@dataclass(frozen=True)
class CliOption:
    """A CLI option of a kind beyond its block choice (`--seed`, `--mask-mode`): plain data, no typer."""

    name: str  # the parameter name; the flag is --name with dashes
    help: str
    type: type = str
    default: Any = None
    parse: Callable[[str], Any] | None = None  # text -> value, for specs such as '4.2,7.1'
    chooses: bool = False  # giving it asks for an intervention (`--mask-heads`), unlike a setting (`--seed`)
    reads: bool = False  # a file the command reads (`--steer`): no output may replace it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


REGISTRY: dict[str, type[Intervention]] = {}
"""Every intervention kind by its one spelling (`skip-attn`), in the order the kinds were defined."""
_ALIASES: dict[str, str] = {}


def intervention_class(kind: str) -> type[Intervention]:
    """The class of a kind, by its spelling or an old one (`skip_attn`, from files written before)."""
    name = _ALIASES.get(kind, kind)
    if name not in REGISTRY:
        raise InterventionError(f"Unknown intervention '{kind}': use one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def chosen_by_block() -> dict[str, type[Intervention]]:
    """The kinds the CLI and the explorer choose by block, and the sweep runs at every block."""
    return {kind: cls for kind, cls in REGISTRY.items() if cls.chosen_by is not None}


def cli_options() -> list[CliOption]:
    """Every registered kind's CLI options, its block choice first, each name once: what `run` offers."""
    options: dict[str, CliOption] = {}
    for cls in REGISTRY.values():
        choice = cls.chosen_by
        if choice is not None:
            spec = choice.reach == "set"
            options.setdefault(
                choice.option_name,
                CliOption(
                    choice.option_name,
                    choice.help,
                    str if spec else int,
                    parse=parse_blocks if spec else None,
                    chooses=True,
                ),
            )
        for option in cls.options:
            options.setdefault(option.name, option)
    return list(options.values())


def interventions_from_options(values: dict[str, Any], n_blocks: int) -> list[Intervention]:
    """What the CLI options ask for, in registry order; `values` by option name, as typed (specs are parsed
    here, so a bad one is refused by the same words everywhere)."""
    parsed = {option.name: _option_value(option, values) for option in cli_options()}
    return [intervention for cls in REGISTRY.values() for intervention in cls.from_cli(parsed, n_blocks)]


def parse_option(name: str, text: str) -> Any:
    """One kind option's value from its text, parsed as `run` parses it (a bad one's error names the flag)."""
    [option] = [option for option in cli_options() if option.name == name]
    return _option_value(option, {name: text})


def _option_value(option: CliOption, values: dict[str, Any]) -> Any:
    """An option's value as typed (its default if not given), a spec parsed; a bad spec's error names the flag."""
    value = values.get(option.name, option.default)
    if option.parse is None or value is None:
        return value
    try:
        return option.parse(value)
    except LayerscopeError as error:
        raise InterventionError(f"{option.flag}: {error}") from None


def options_given(values: dict[str, Any]) -> bool:
    """Whether any option that asks for an intervention was given."""
    return any(values.get(option.name) is not None for option in cli_options() if option.chooses)


class Intervention:
    """What can be done to a forward pass. A kind is a frozen dataclass subclass with a `kind`;
    defining it registers it. Everything below has a default, so a kind overrides only what it does."""

    kind: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()  # older spellings that files may still use
    chosen_by: ClassVar[BlockChoice | None] = None  # offered by block in the CLI, the explorer and the sweep
    options: ClassVar[tuple[CliOption, ...]] = ()  # its CLI options besides `chosen_by`
    every_pass: ClassVar[bool] = False  # edits act on cached decoding steps too, not only on a fresh pass
    uses_seed: ClassVar[bool] = False  # a run's seed changes what it does
    measured_at_last_token: ClassVar[bool] = False  # sweeps compare the last position only (it edits the others)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A class that declares its own `kind` is registered (a subclass of a kind is not, unless it names its
        own); a name two different classes declare is refused (defining the same class again replaces it)."""
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__:
            return
        other = REGISTRY.get(cls.kind) or REGISTRY.get(_ALIASES.get(cls.kind, ""))
        if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
            raise InterventionError(f"Intervention kind '{cls.kind}' is already {other.__qualname__}'s.")
        REGISTRY[cls.kind] = cls
        _ALIASES.update({alias: cls.kind for alias in cls.aliases})

    # --- what it touches -------------------------------------------------------------------------------
    def touched(self, n_blocks: int) -> Sequence[int]:
        """The depths whose run it changes; range-checked, and where its hooks go."""
        raise NotImplementedError(f"{type(self).__name__} must say which blocks it touches (`touched`).")

    def first_block(self, n_blocks: int) -> int:
        """Before this depth the run is the baseline's (the batched sweep starts here)."""
        return min(self.touched(n_blocks))

    def module_at(self, depth: int) -> int | None:
        """Which block module runs at this depth (of the order before it), or None to skip it (its output
        is its input). Only asked for touched depths."""
        return depth

    def claims(self, n_blocks: int) -> list[Claim]:
        """What it sets, for the conflict checks: each block it drops or moves, by default."""
        claims = []
        for depth in self.touched(n_blocks):
            module = self.module_at(depth)
            if module is None:
                claims.append(Claim(("order", depth), f"block {depth} is also dropped ({self.describe()}).", "dropped"))
            elif module != depth:
                claims.append(
                    Claim(
                        ("order", depth), f"block {depth} is already part of another swap or move ({self.describe()})."
                    )
                )
        return claims

    def check(self, shape: ModelShape) -> None:
        """Range checks, before any compute."""
        blocks = self.touched(shape.n_blocks)
        if not blocks:
            raise InterventionError(f"{self.kind}: no blocks given.")
        for block in blocks:
            check_block(self.kind, block, shape)

    # --- the state edits, shared by `intervene`'s hooks and the batched sweep ---------------------------
    # hidden states are (batch, tokens, hidden); `memo` is this intervention's scratch for one pass;
    # None means "leave it as it is".
    def edit_input(self, depth: int, hidden: torch.Tensor, at: Positions, memo: dict) -> torch.Tensor | None:
        """The state entering the block at `depth`, `hidden` (batch, tokens, hidden)."""
        return None

    def edit_output(
        self, depth: int, hidden_in: torch.Tensor, hidden_out: torch.Tensor, at: Positions, memo: dict
    ) -> torch.Tensor | None:
        """The state the block at `depth` returns, `hidden_out`, given its input `hidden_in`; both (batch, tokens,
        hidden)."""
        return None

    def edit_attention(self, depth: int, attention_out: torch.Tensor, at: Positions) -> torch.Tensor | None:
        """The attention output of the block at `depth` (before it joins the residual stream), (batch, tokens,
        hidden)."""
        return None

    @classmethod
    def makes(cls, edit: str) -> bool:
        """Whether this kind makes an edit ('edit_input', 'edit_output', 'edit_attention'): hooks go only there."""
        return getattr(cls, edit) is not getattr(Intervention, edit)

    def attach(self, run: InterventionRun) -> None:
        """Hooks for what it declares; a kind with edits of another sort (head masks) attaches its own."""
        run.apply(self)

    # --- how people choose it and read it ---------------------------------------------------------------
    @classmethod
    def for_blocks(cls, blocks: Sequence[int], n_blocks: int, seed: int = 0) -> list[Intervention]:
        """The interventions a choice of blocks stands for (a CLI spec, the explorer's toggles, a sweep point);
        for a 'from' or 'at' kind, `blocks` is one block."""
        raise NotImplementedError(f"{cls.kind} is not chosen by block")

    @classmethod
    def from_cli(cls, values: dict[str, Any], n_blocks: int) -> list[Intervention]:
        """The interventions the CLI options ask for (parsed values by option name; None: not given)."""
        if cls.chosen_by is None:
            return []
        value = values.get(cls.chosen_by.option_name)
        if value is None:
            return []
        blocks = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        return cls.for_blocks(blocks, n_blocks, values.get("seed", 0)) if blocks else []

    def describe(self) -> str:
        """Short and human: 'drop 3,5', 'swap 5↔6', 'random 4 (seed 0)'."""
        return f"{self.kind} {','.join(map(str, self.touched(0)))}"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **dict(vars(self).items())}


def check_block(name: str, block: int, shape: ModelShape, allow_output_row: bool = False) -> None:
    last = shape.n_blocks if allow_output_row else shape.n_blocks - 1
    if not 0 <= block <= last:
        raise InterventionError(f"{name}: block {block} is out of range 0..{last} for this model.")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_tensor(value: object) -> bool:
    import torch

    return isinstance(value, torch.Tensor) and bool(torch.isfinite(value).all())


_FIELD_TYPES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "int": ("an int", _is_int),
    "tuple[int, ...]": ("a tuple of ints, e.g. (3, 5)", lambda v: isinstance(v, tuple) and all(map(_is_int, v))),
    "tuple[tuple[int, int], ...]": (
        "a tuple of (block, head) pairs, e.g. ((4, 2),)",
        lambda v: (
            isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2 and all(map(_is_int, p)) for p in v)
        ),
    ),
    "torch.Tensor": ("a tensor of finite numbers", _is_finite_tensor),
}
"""A kind's field annotations (as written) and how a value of each is checked; other fields are checked by the
kind's own `check`."""


def check_fields(intervention: Intervention) -> None:
    """Each field of a kind holds what its annotation says, named as the parameter (`blocks=`) where it does not."""
    if not is_dataclass(intervention):
        return
    for field in fields(intervention):
        wanted = _FIELD_TYPES.get(str(field.type))
        value = getattr(intervention, field.name)
        if wanted is not None and not wanted[1](value):
            if hasattr(value, "shape"):  # a tensor with NaN or inf in it
                raise ArgumentValueError(
                    f"{type(intervention).__name__}: {field.name}= must be {wanted[0]}; this "
                    f"one {tuple(value.shape)} holds NaN or inf."
                )
            raise ArgumentTypeError(
                f"{type(intervention).__name__}: {field.name}= must be {wanted[0]}, not "
                f"{type(value).__name__} {value!r:.60}."
            )


def check_interventions(interventions: Sequence[Intervention], shape: ModelShape) -> None:
    """Field types, range checks, then conflicts between what the interventions claim, before anything touches the
    model."""
    for intervention in interventions:
        check_fields(intervention)
        intervention.check(shape)
    held: dict[Hashable, tuple[Claim, Intervention]] = {}
    for intervention in interventions:
        for claim in intervention.claims(shape.n_blocks):
            earlier = held.setdefault(claim.site, (claim, intervention))
            if earlier[1] is not intervention and (claim.setting is None or claim.setting != earlier[0].setting):
                raise InterventionError(earlier[0].refusal)
