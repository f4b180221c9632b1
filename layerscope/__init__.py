"""layerscope: see what each layer of a language model is doing.

    import layerscope as ls
    lm = ls.load_model("demo")
    ids = lm.encode("The capital of France is")
    grid = ls.logit_lens(lm, ids)
    with ls.intervene(lm, [ls.DropBlocks((3,))]):
        out = lm.model.generate(ids, max_new_tokens=5)

Names are imported lazily so that `layerscope` (the TUI) paints before torch loads.
"""

from importlib import import_module

_EXPORTS = {
    "LayerscopeError": "layerscope.errors",
    "LoadedModel": "layerscope.models.loading",
    "load_model": "layerscope.models.loading",
    "DecodeGrid": "layerscope.analyses.grid",
    "logit_lens": "layerscope.analyses.lens",
    "compare_logits": "layerscope.analyses.compare",
    "greedy_continuation": "layerscope.analyses.compare",
    "run_interventions": "layerscope.analyses.compare",
    "causal_trace": "layerscope.analyses.causal_trace",
    "trace_prompt": "layerscope.analyses.causal_trace",
    "CausalTrace": "layerscope.analyses.causal_trace",
    "TunedLens": "layerscope.analyses.tuned_lens",
    "tuned_lens": "layerscope.analyses.tuned_lens",
    "train_tuned_lens": "layerscope.analyses.tuned_lens",
    "load_tuned_lens": "layerscope.analyses.tuned_lens",
    "compare_lenses": "layerscope.analyses.tuned_lens",
    "intervene": "layerscope.interventions",
    "DropBlocks": "layerscope.interventions",
    "SwapBlocks": "layerscope.interventions",
    "FreezeFrom": "layerscope.interventions",
    "RandomizeAt": "layerscope.interventions",
    "SkipAttention": "layerscope.interventions",
    "PatchState": "layerscope.interventions",
    "MaskHeads": "layerscope.interventions",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'layerscope' has no attribute '{name}'")
