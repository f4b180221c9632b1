"""A head's attention pattern over one prompt: which keys each query attends to, as the model computes it.

Read through layerscope's attention function (`read_attention`), so it works for every family whose attention
goes through transformers' attention functions, with or without interventions (a head mask acts on the head's
output, and a drop discards its block's output: the pattern is what the head computes either way).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from layerscope.analyses.activations import last_logits_only
from layerscope.arguments import check_ids, check_intervention_list, check_lm
from layerscope.errors import ArgumentTypeError, ArgumentValueError
from layerscope.interventions import Intervention, intervene
from layerscope.interventions.attention import read_attention
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class AttentionPattern:
    """Attention probabilities of chosen query heads over one prompt: `weights[(block, head)][query][key]`
    (a key after its query has 0)."""

    model: str
    tokens: list[str]
    token_ids: list[int]
    weights: dict[tuple[int, int], list[list[float]]]

    def strongest(self, head: tuple[int, int], query: int, k: int = 3) -> list[tuple[int, float]]:
        """The k keys the head attends to most from `query`, as (key position, weight), strongest first."""
        row = self.weights[head][query]
        return sorted(enumerate(row[: query + 1]), key=lambda item: (-item[1], item[0]))[:k]

    def plot(self, heads: Sequence[tuple[int, int]] | None = None) -> Figure:
        """A query x key heatmap per head (default: every head read): a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import attention_pattern_figure

        return attention_pattern_figure(self, heads)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "tokens": self.tokens,
            "token_ids": self.token_ids,
            "weights": {f"{block}.{head}": rows for (block, head), rows in self.weights.items()},
        }

    def records(self) -> Records:
        return Records.of(
            ("block", "head", "query", "query_token", "key", "key_token", "weight"),
            (
                (block, head, query, self.tokens[query], key, self.tokens[key], weight)
                for (block, head), rows in self.weights.items()
                for query, row in enumerate(rows)
                for key, weight in enumerate(row[: query + 1])
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def attention_pattern(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    interventions: Sequence[Intervention] = (),
) -> AttentionPattern:
    """The attention of each (block, head) in `heads` over the prompt `input_ids` (1, tokens), in one forward
    pass with the interventions applied; only the chosen heads' probabilities are computed (one (tokens, tokens)
    matrix per head read, never every head's at once). Raises LayerscopeError for a head outside the model (`heads`
    holds (block, head) pairs) or a family whose attention layers do not go through transformers' attention
    functions."""
    adapter = check_lm(lm).adapter
    input_ids = check_ids(lm, input_ids)
    interventions = check_intervention_list(interventions)
    if (
        not isinstance(heads, (list, tuple))
        or not heads
        or not all(isinstance(pair, tuple) and len(pair) == 2 and all(type(n) is int for n in pair) for pair in heads)
    ):
        raise ArgumentTypeError(f"heads= must be a non-empty list of (block, head) pairs of ints, not {heads!r:.60}.")
    for block, head in heads:
        if not (0 <= block < adapter.n_blocks and 0 <= head < adapter.n_heads):
            raise ArgumentValueError(
                f"heads= holds head {block}.{head}, outside the model's {adapter.n_blocks} "
                f"blocks x {adapter.n_heads} heads."
            )
    wanted: dict[int, tuple[int, ...]] = {}
    for block, head in dict.fromkeys(heads):
        wanted[block] = (*wanted.get(block, ()), head)
    weights: dict[tuple[int, int], list[list[float]]] = {}

    def reader(block: int, probs: torch.Tensor) -> None:
        """probs: (1, len(wanted[block]), queries, keys): only the chosen heads' probabilities are computed."""
        for index, head in enumerate(wanted[block]):
            weights[block, head] = probs[0, index].cpu().tolist()

    ids = input_ids.to(adapter.input_device)
    with (
        read_attention(lm.model, {block: adapter.attention(block) for block in wanted}, reader, wanted),
        intervene(lm, interventions, seq_len=ids.shape[1]),
        torch.inference_mode(),
    ):
        lm.model(input_ids=ids, use_cache=False, **last_logits_only(lm))
    ordered = {head: weights[head] for head in heads}
    token_ids = input_ids[0].tolist()
    return AttentionPattern(lm.name, lm.token_texts(token_ids), token_ids, ordered)
