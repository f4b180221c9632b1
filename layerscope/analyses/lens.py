"""Logit lens: decode every residual row with the model's own final norm and unembedding."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from layerscope.analyses.grid import DecodeGrid, build_grid
from layerscope.analyses.residual import layer_labels, trace_residuals
from layerscope.interventions import Intervention, intervene
from layerscope.models.loading import LoadedModel


def lens_logits(lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = ()):
    """(row logits generator, final logits) for one prompt under the given interventions."""
    with intervene(lm.adapter, interventions, seq_len=input_ids.shape[1]):
        trace = trace_residuals(lm.adapter, input_ids)

    def rows():
        with torch.inference_mode():
            for state in trace.states:
                yield lm.adapter.decode(state[0])

    return rows(), trace.logits[0]


def logit_lens(
    lm: LoadedModel, input_ids: torch.Tensor, top_k: int = 5, interventions: Sequence[Intervention] = ()
) -> DecodeGrid:
    """The decode grid of the logit lens: L+1 rows by every prompt position."""
    rows, final = lens_logits(lm, input_ids, interventions)
    return build_grid(lm, "logit_lens", input_ids, rows, final, layer_labels(lm.n_blocks), top_k)
