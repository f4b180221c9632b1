"""What can be done to a forward pass, applied with `intervene`. Each kind is one class; defining it
registers it in `REGISTRY` (see `core.Intervention` and docs/contributing.md, "Adding an intervention kind").

Importing this package loads no torch (the CLI and the explorer read the kinds' spellings at start);
`intervene` and `InterventionRun` load it when first used.
"""

from typing import TYPE_CHECKING

from layerscope.interventions.core import (
    REGISTRY,
    BlockChoice,
    Claim,
    CliOption,
    Intervention,
    ModelShape,
    Positions,
    check_interventions,
    chosen_by_block,
    intervention_class,
)
from layerscope.interventions.kinds import (
    DropBlocks,
    FreezeFrom,
    MaskHeads,
    PatchState,
    RandomizeAt,
    SkipAttention,
    SteerVector,
    SwapBlocks,
)

if TYPE_CHECKING:  # loaded on first use, by __getattr__
    from layerscope.interventions.run import InterventionRun, intervene

_RUN = ("intervene", "InterventionRun")


def __getattr__(name: str) -> object:
    if name in _RUN:
        from layerscope.interventions import run

        return getattr(run, name)
    raise AttributeError(f"module 'layerscope.interventions' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_RUN])


__all__ = [
    "REGISTRY",
    "BlockChoice",
    "Claim",
    "CliOption",
    "DropBlocks",
    "FreezeFrom",
    "Intervention",
    "InterventionRun",
    "MaskHeads",
    "ModelShape",
    "PatchState",
    "Positions",
    "RandomizeAt",
    "SkipAttention",
    "SteerVector",
    "SwapBlocks",
    "check_interventions",
    "chosen_by_block",
    "intervene",
    "intervention_class",
]
