"""What can be done to a forward pass, applied with `intervene`. Each kind is one class; defining it
registers it in `REGISTRY` (see `core.Intervention` and the README's "Adding an intervention kind")."""

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
    intervene,
    intervention_class,
)
from layerscope.interventions.kinds import (
    DropBlocks,
    FreezeFrom,
    MaskHeads,
    PatchState,
    RandomizeAt,
    SkipAttention,
    SwapBlocks,
)

__all__ = [
    "REGISTRY",
    "BlockChoice",
    "Claim",
    "CliOption",
    "DropBlocks",
    "FreezeFrom",
    "Intervention",
    "MaskHeads",
    "ModelShape",
    "PatchState",
    "Positions",
    "RandomizeAt",
    "SkipAttention",
    "SwapBlocks",
    "check_interventions",
    "chosen_by_block",
    "intervene",
    "intervention_class",
]
