"""Loading models and finding their parts."""

from layerscope.models.adapter import FAMILIES, ModelAdapter
from layerscope.models.loading import LoadedModel, load_model

__all__ = ["FAMILIES", "LoadedModel", "ModelAdapter", "load_model"]
