"""Analyses: each takes a loaded model and plain inputs and returns a serialisable result."""

from layerscope.analyses.compare import (
    Comparison,
    Continuation,
    InterventionReport,
    compare_logits,
    greedy_continuation,
    run_interventions,
)
from layerscope.analyses.grid import DecodeGrid, GridCell, TopToken, build_grid
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.residual import ResidualTrace, layer_labels, trace_residuals

__all__ = [
    "Comparison",
    "Continuation",
    "DecodeGrid",
    "GridCell",
    "InterventionReport",
    "ResidualTrace",
    "TopToken",
    "build_grid",
    "compare_logits",
    "greedy_continuation",
    "layer_labels",
    "logit_lens",
    "run_interventions",
    "trace_residuals",
]
