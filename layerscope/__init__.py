"""layerscope: see what each layer of a language model is doing.

    import layerscope as ls
    lm = ls.load_model("demo")
    ids = lm.encode("The capital of France is")
    grid = ls.logit_lens(lm, ids)
    grids = ls.logit_lens(lm, lm.encode(["The capital of France is", "Rome is in"]))  # one grid per prompt
    acts = ls.capture(lm, "The capital of France is", ["resid.12", "mlp"])
    with ls.intervene(lm, [ls.DropBlocks((3,))]):
        out = lm.model.generate(ids, max_new_tokens=5)

Names are imported lazily so that `layerscope` (the TUI) paints before torch loads; the TYPE_CHECKING
imports below show them to editors and type checkers (a test keeps the two lists equal). Renamed names stay
importable for a while under their old names (`_DEPRECATED`), with a DeprecationWarning.
"""

import warnings
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from layerscope.analyses.activations import Activations, capture
    from layerscope.analyses.attribution import LogitAttribution, logit_attribution
    from layerscope.analyses.causal_trace import CausalTrace, causal_trace, trace_prompt
    from layerscope.analyses.compare import InterventionReport, compare_logits, greedy_continuation, run_interventions
    from layerscope.analyses.early_exit import EarlyExit, early_exit
    from layerscope.analyses.grid import DecodeGrid, divergence
    from layerscope.analyses.head_pattern import AttentionPattern, attention_pattern
    from layerscope.analyses.jacobian_lens import JacobianLens, fit_jacobian_lens, jacobian_lens, load_jacobian_lens
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.lens_generate import lens_generate
    from layerscope.analyses.neurons import NeuronCensus, neuron_census
    from layerscope.analyses.patchscope import parse_target, patchscope_grid, run_patchscope
    from layerscope.analyses.probes import ProbeReport, probe_rows
    from layerscope.analyses.steering import SavedVector, steering_vector
    from layerscope.analyses.tuned_lens import TunedLens, compare_lenses, load_tuned_lens, train_tuned_lens, tuned_lens
    from layerscope.errors import LayerscopeError
    from layerscope.interventions import (
        DropBlocks,
        FreezeFrom,
        Intervention,
        MaskHeads,
        PatchState,
        RandomizeAt,
        SkipAttention,
        SteerVector,
        SwapBlocks,
        intervene,
    )
    from layerscope.models.loading import LoadedModel, PromptBatch, load_model

_EXPORTS = {
    "Activations": "layerscope.analyses.activations",
    "capture": "layerscope.analyses.activations",
    "LogitAttribution": "layerscope.analyses.attribution",
    "logit_attribution": "layerscope.analyses.attribution",
    "CausalTrace": "layerscope.analyses.causal_trace",
    "causal_trace": "layerscope.analyses.causal_trace",
    "trace_prompt": "layerscope.analyses.causal_trace",
    "InterventionReport": "layerscope.analyses.compare",
    "compare_logits": "layerscope.analyses.compare",
    "greedy_continuation": "layerscope.analyses.compare",
    "run_interventions": "layerscope.analyses.compare",
    "EarlyExit": "layerscope.analyses.early_exit",
    "early_exit": "layerscope.analyses.early_exit",
    "DecodeGrid": "layerscope.analyses.grid",
    "divergence": "layerscope.analyses.grid",
    "AttentionPattern": "layerscope.analyses.head_pattern",
    "attention_pattern": "layerscope.analyses.head_pattern",
    "JacobianLens": "layerscope.analyses.jacobian_lens",
    "fit_jacobian_lens": "layerscope.analyses.jacobian_lens",
    "jacobian_lens": "layerscope.analyses.jacobian_lens",
    "load_jacobian_lens": "layerscope.analyses.jacobian_lens",
    "logit_lens": "layerscope.analyses.lens",
    "lens_generate": "layerscope.analyses.lens_generate",
    "NeuronCensus": "layerscope.analyses.neurons",
    "neuron_census": "layerscope.analyses.neurons",
    "ProbeReport": "layerscope.analyses.probes",
    "probe_rows": "layerscope.analyses.probes",
    "SavedVector": "layerscope.analyses.steering",
    "steering_vector": "layerscope.analyses.steering",
    "parse_target": "layerscope.analyses.patchscope",
    "patchscope_grid": "layerscope.analyses.patchscope",
    "run_patchscope": "layerscope.analyses.patchscope",
    "TunedLens": "layerscope.analyses.tuned_lens",
    "compare_lenses": "layerscope.analyses.tuned_lens",
    "load_tuned_lens": "layerscope.analyses.tuned_lens",
    "train_tuned_lens": "layerscope.analyses.tuned_lens",
    "tuned_lens": "layerscope.analyses.tuned_lens",
    "LayerscopeError": "layerscope.errors",
    "DropBlocks": "layerscope.interventions",
    "FreezeFrom": "layerscope.interventions",
    "Intervention": "layerscope.interventions",
    "MaskHeads": "layerscope.interventions",
    "PatchState": "layerscope.interventions",
    "RandomizeAt": "layerscope.interventions",
    "SkipAttention": "layerscope.interventions",
    "SteerVector": "layerscope.interventions",
    "SwapBlocks": "layerscope.interventions",
    "intervene": "layerscope.interventions",
    "LoadedModel": "layerscope.models.loading",
    "PromptBatch": "layerscope.models.loading",
    "load_model": "layerscope.models.loading",
}

__all__ = sorted(_EXPORTS)

_DEPRECATED = {"trace": "capture"}
"""Deprecated old name -> its export: still importable, with a DeprecationWarning; not in `__all__`."""


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    if name in _DEPRECATED:
        new = _DEPRECATED[name]
        warnings.warn(
            f"layerscope.{name} is deprecated: use layerscope.{new}, the same function under its new name.",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(import_module(_EXPORTS[new]), new)
    raise AttributeError(f"module 'layerscope' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
