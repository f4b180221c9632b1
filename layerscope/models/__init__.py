"""Loading models and finding their parts."""

from layerscope.models.adapter import FAMILIES, SUPPORTED_MODEL_TYPES, ModelAdapter, family_support, is_supported
from layerscope.models.loading import LoadedModel, load_model

__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "LoadedModel",
    "ModelAdapter",
    "family_support",
    "is_supported",
    "load_model",
]
