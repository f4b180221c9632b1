"""The lens over generated text: the decode grid of a prompt and its greedy continuation.

One pass over the prompt fills the prompt's positions and keeps the KV cache; each greedy token is then fed as
a one-token pass that continues from that cache, and its residual rows are that position's cells. Nothing is
run twice: a continuation of N tokens costs the prompt pass and N one-token passes, as generating does.

Interventions apply as when generating (`interventions/core.py`): drops, swaps and head masks on every pass,
position edits on the prompt pass only, the decoding continuing from the intervened cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from layerscope.analyses.activations import last_logits_only
from layerscope.analyses.decoding import stop_ids
from layerscope.analyses.grid import DecodeGrid, GridCell
from layerscope.analyses.jacobian_lens import FittedLens, JacobianLens
from layerscope.analyses.lens import lens_grid_rows
from layerscope.analyses.residual import layer_labels, residual_rows
from layerscope.analyses.tuned_lens import TunedLens, check_lens
from layerscope.arguments import check_ids, check_int, check_intervention_list, check_lm
from layerscope.interventions import Intervention, intervene
from layerscope.models.cache import cached_forward
from layerscope.models.loading import LoadedModel

if TYPE_CHECKING:
    from transformers import Cache

Translate = Callable[[torch.Tensor], torch.Tensor]
"""Maps states (rows, tokens, hidden) before decoding (the tuned lens's translators)."""


@dataclass
class ResidualStep:
    """What one forward pass adds: the positions `start`.. with their token ids, their residual rows `states`
    (rows = L + 1, tokens, hidden; translated where a `translate` was given), and `next_id`, the greedy token
    after them (the model's own top-1 at the last position)."""

    start: int
    token_ids: list[int]
    states: torch.Tensor
    next_id: int


def residual_steps(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    interventions: Sequence[Intervention] = (),
    translate: Translate | None = None,
) -> Iterator[ResidualStep]:
    """The prompt's step (every prompt position), then one step per greedy token of ids (1, T), until
    `max_new_tokens` tokens or an end-of-sequence token (which is kept, as `model.generate` keeps it).

    The interventions and the reading hooks are on the model during each pass only, never between steps, so
    the caller may step two of these in turn (a baseline and an intervened run) or stop at any step."""
    check_ids(check_lm(lm), input_ids)
    check_int(max_new_tokens, "max_new_tokens", 0)
    check_intervention_list(interventions)
    prompt_length = input_ids.shape[1]
    lm.check_generation(prompt_length, max_new_tokens)
    adapter, stops = lm.adapter, stop_ids(lm)
    ids, cache, start, generated = input_ids.to(adapter.input_device), None, 0, 0
    while True:
        with intervene(lm, interventions, seq_len=prompt_length):
            output, cache, states = _read_pass(lm, ids, cache)
        if translate is not None:
            with torch.inference_mode():
                states = translate(states)
        step = ResidualStep(start, ids[0].tolist(), states, int(output.logits[0, -1].argmax()))
        yield step
        if generated == max_new_tokens or (generated > 0 and step.token_ids[-1] in stops):
            return
        start, generated = start + ids.shape[1], generated + 1
        ids = torch.tensor([[step.next_id]], device=adapter.input_device)


def _read_pass(lm: LoadedModel, ids: torch.Tensor, cache: Cache | None) -> tuple[Any, Cache, torch.Tensor]:
    """One forward of `ids` continuing from `cache`: its output, the grown cache, and the residual rows
    (L + 1, tokens, hidden) read by hooks that come off with the pass."""
    with residual_rows(lm.adapter) as rows, torch.inference_mode():
        output, cache = cached_forward(lm.model, cache, input_ids=ids, **last_logits_only(lm))
    return output, cache, torch.stack(rows)[:, 0]


def lens_generate(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    top_k: int = 5,
    interventions: Sequence[Intervention] = (),
    lens: FittedLens | None = None,
) -> DecodeGrid:
    """The decode grid of ids (1, T) and their greedy continuation of up to `max_new_tokens` tokens (fewer where
    the model ends the text): the logit lens, or the tuned or Jacobian lens with `lens`, under the interventions (the
    continuation is the one the intervened model generates). `prompt_length` marks the generated positions."""
    check_lm(lm)
    if lens is not None:
        check_lens(lm, lens, JacobianLens if isinstance(lens, JacobianLens) else TunedLens)
    check_int(top_k, "top_k", 1)
    translate = lens.translate_rows if lens is not None else None
    ids: list[int] = []
    cells: list[list[GridCell]] = [[] for _ in range(lm.n_blocks + 1)]
    for step in residual_steps(lm, input_ids, max_new_tokens, interventions, translate):
        ids += step.token_ids
        for row, decoded in zip(cells, lens_grid_rows(lm, [step.states], top_k)):
            row += decoded.cells[0]
    method = "logit_lens" if lens is None else f"{lens.kind}_lens"
    return DecodeGrid(
        lm.name, method, lm.token_texts(ids), ids, layer_labels(lm.n_blocks), cells, prompt_length=input_ids.shape[1]
    )
