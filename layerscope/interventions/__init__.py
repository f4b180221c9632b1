"""What can be done to a forward pass, applied with `intervene`."""

from layerscope.interventions.core import (
    DropBlocks,
    FreezeFrom,
    Intervention,
    MaskHeads,
    ModelShape,
    PatchState,
    RandomizeAt,
    SkipAttention,
    SwapBlocks,
    check_interventions,
    intervene,
)

__all__ = [
    "DropBlocks",
    "FreezeFrom",
    "Intervention",
    "MaskHeads",
    "ModelShape",
    "PatchState",
    "RandomizeAt",
    "SkipAttention",
    "SwapBlocks",
    "check_interventions",
    "intervene",
]
