"""Prediction and suppression neurons (Gurnee et al. 2024, "Universal Neurons in GPT2 Language Models").

For every MLP neuron n, its output weight w_n (what it writes to the residual stream per unit of activation) is
compared with every token's readout direction u_v (`readout.readout_matrix`: the unembedding with the final
norm's weight folded in, as the logit lens applies it, centred over the hidden dimension for a LayerNorm), the
directions centred over the vocabulary: s_v = cos(w_n, u_v - mean_v' u_v'). As in the authors' code
(`weights.py`, `utils.vector_moments`), the moments of s over the vocabulary are population moments and the
kurtosis is Pearson's (a normal distribution has 3). A neuron with kurtosis above `min_kurtosis` (the authors
split at 10) is a prediction neuron when its skew is above `min_skew`, a suppression neuron when it is below
-`min_skew`. Static weights only; each block is one matrix product, in tiles of neurons.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from accelerate.utils import align_module_device
from torch import nn
from transformers.pytorch_utils import Conv1D

from layerscope.analyses.readout import norm_form, readout_matrix
from layerscope.arguments import check_blocks, check_lm, check_number
from layerscope.errors import LayerscopeError
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MIN_KURTOSIS = 10.0
"""Gurnee et al.'s split between high- and low-kurtosis neurons (`vocab_kurt > 10` in their analysis code)."""
MIN_SKEW = 0.0
"""Prediction neurons skew positive, suppression neurons negative: the sign alone, as in the paper."""
TILE_BYTES = 64 * 2**20
"""Bytes of float32 cosines (neurons x vocabulary) computed at once."""


@dataclass
class BlockNeurons:
    """One block's MLP neurons: the moments of each neuron's cosines with the vocabulary, and for each neuron of
    high kurtosis the token its cosines single out (the largest for a positive skew, the smallest for a negative
    one)."""

    block: int
    mean: list[float]
    variance: list[float]
    skew: list[float]
    kurtosis: list[float]
    extreme_tokens: dict[int, int]
    prediction: int
    suppression: int


@dataclass
class NeuronCensus:
    model: str
    min_kurtosis: float
    min_skew: float
    blocks: list[BlockNeurons]
    token_texts: dict[int, str]

    def block(self, number: int) -> BlockNeurons:
        return next(b for b in self.blocks if b.block == number)

    def kind(self, block: BlockNeurons, neuron: int) -> str:
        """'prediction', 'suppression' or '' for one neuron, by the census's thresholds."""
        return neuron_kind(block.kurtosis[neuron], block.skew[neuron], self.min_kurtosis, self.min_skew)

    def top(self, kind: str, k: int) -> list[tuple[int, int]]:
        """The k neurons of this kind with the highest kurtosis, as (block, neuron)."""
        found = [
            (b.kurtosis[n], b.block, n) for b in self.blocks for n in range(len(b.kurtosis)) if self.kind(b, n) == kind
        ]
        return [(block, neuron) for _, block, neuron in sorted(found, reverse=True)[:k]]

    def plot(self) -> Figure:
        """Prediction and suppression neurons per block: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.parts import neuron_census_figure

        return neuron_census_figure(self)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "min_kurtosis": self.min_kurtosis,
            "min_skew": self.min_skew,
            "kurtosis": "pearson (normal = 3)",
            "blocks": [
                {
                    "block": b.block,
                    "n_neurons": len(b.kurtosis),
                    "prediction": b.prediction,
                    "suppression": b.suppression,
                    "mean": b.mean,
                    "variance": b.variance,
                    "skew": b.skew,
                    "kurtosis": b.kurtosis,
                    "extreme_tokens": {
                        str(n): {"id": t, "token": self.token_texts[t]} for n, t in b.extreme_tokens.items()
                    },
                }
                for b in self.blocks
            ],
        }

    def records(self) -> Records:
        return Records.of(
            ("block", "neuron", "mean", "variance", "skew", "kurtosis", "kind", "token_id", "token"),
            (
                (
                    b.block,
                    n,
                    b.mean[n],
                    b.variance[n],
                    b.skew[n],
                    b.kurtosis[n],
                    self.kind(b, n),
                    b.extreme_tokens.get(n),
                    self.token_texts.get(b.extreme_tokens.get(n, -1)),
                )
                for b in self.blocks
                for n in range(len(b.kurtosis))
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def neuron_kind(kurtosis: float, skew: float, min_kurtosis: float, min_skew: float) -> str:
    if kurtosis <= min_kurtosis:
        return ""
    return "prediction" if skew > min_skew else "suppression" if skew < -min_skew else ""


def output_weights(adapter: ModelAdapter, block: int) -> torch.Tensor:
    """(neurons, hidden): the MLP's output projection of `block`, one row per neuron, whatever its layout
    (Linear (hidden, neurons), GPT-2's Conv1D (neurons, hidden)). The projection is the MLP module itself
    (Bloom, OPT) or its one child Linear or Conv1D mapping a wider space to the hidden size; a mixture of
    experts has none and is refused."""
    mlp = adapter.mlp(block)
    hidden = int(adapter.config.hidden_size)
    candidates = [mlp] if _projects_to(mlp, hidden) else [m for m in mlp.children() if _projects_to(m, hidden)]
    if len(candidates) != 1:
        raise LayerscopeError(
            f"Block {block}'s MLP ({type(mlp).__name__}) has {len(candidates)} dense output projections, not one "
            "(a mixture of experts?): the neuron census covers dense MLPs only."
        )
    weight = candidates[0].weight
    return weight if isinstance(candidates[0], Conv1D) else weight.T


def _projects_to(module: nn.Module, hidden: int) -> bool:
    if isinstance(module, Conv1D):
        return module.nf == hidden and module.weight.shape[0] != hidden
    return isinstance(module, nn.Linear) and module.out_features == hidden and module.in_features != hidden


def vocab_moments(
    weights: torch.Tensor, directions: torch.Tensor, min_kurtosis: float, tile_bytes: int = TILE_BYTES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[int, int]]:
    """Mean, variance, skew, kurtosis (population moments, Pearson's kurtosis) over the vocabulary of the cosines
    between each row of `weights` (neurons, hidden) and each row of `directions` (vocab, hidden, unit rows):
    (neurons,) float32 tensors; and, for each neuron whose kurtosis is above `min_kurtosis`, its extreme token
    (the largest cosine for a positive skew, the smallest for a negative one). A neuron that writes nothing has
    variance 0, and skew and kurtosis 0."""
    rows = max(1, tile_bytes // (4 * directions.shape[0]))
    centre = directions.mean(dim=0)
    parts: list[list[torch.Tensor]] = [[] for _ in range(4)]
    extremes: dict[int, int] = {}
    for start in range(0, len(weights), rows):
        w = nn.functional.normalize(weights[start : start + rows].float(), dim=-1)
        cosines = w @ directions.T
        mean = w @ centre  # the mean over the vocabulary, without a pass over the cosines
        cosines -= mean[:, None]
        squares = cosines * cosines
        variance = squares.mean(dim=-1)
        spread = torch.where(variance > 0, variance, 1.0)  # a neuron that writes nothing: its sums are 0 too
        skew = torch.linalg.vecdot(squares, cosines) / cosines.shape[-1] / spread.pow(1.5)
        kurtosis = torch.linalg.vecdot(squares, squares) / cosines.shape[-1] / spread.pow(2)
        for part, value in zip(parts, (mean, variance, skew, kurtosis)):
            part.append(value)
        for row in (kurtosis > min_kurtosis).nonzero()[:, 0].tolist():
            signed = cosines[row] if skew[row] >= 0 else -cosines[row]
            extremes[start + row] = int(signed.argmax())
    mean, variance, skew, kurtosis = (torch.cat(part) for part in parts)
    return mean, variance, skew, kurtosis, extremes


def in_memory(stack: ExitStack, module: nn.Module) -> None:
    """Inside `stack`, the weights of `module` and its parts that a device map offloaded (accelerate keeps them on
    the meta device, and in memory only while their module runs) are in memory."""
    for part in module.modules():
        stack.enter_context(align_module_device(part))


def neuron_census(
    lm: LoadedModel,
    min_kurtosis: float = MIN_KURTOSIS,
    min_skew: float = MIN_SKEW,
    blocks: Sequence[int] | None = None,
    progress: ProgressFn = no_progress,
) -> NeuronCensus:
    """The moments of every MLP neuron's cosines with the vocabulary (see the module docstring) and, per block
    (every block, or those in `blocks`), the counts of prediction neurons (kurtosis > min_kurtosis,
    skew > min_skew) and suppression neurons (kurtosis > min_kurtosis, skew < -min_skew). Raises
    LayerscopeError for a mixture-of-experts MLP."""
    lm = check_lm(lm)
    min_kurtosis = check_number(min_kurtosis, "min_kurtosis")
    min_skew = check_number(min_skew, "min_skew")
    adapter = lm.adapter
    chosen = range(adapter.n_blocks) if blocks is None else check_blocks(blocks, adapter.n_blocks)
    for block in chosen:
        output_weights(adapter, block)  # refuses a mixture of experts before the work
    # weights offloaded by a device map (accelerate) are brought in module by module while they are read
    with torch.inference_mode(), ExitStack() as stack:
        for module in (adapter.final_norm, adapter.after_norm, adapter.unembed):
            in_memory(stack, module)
        directions = readout_matrix(adapter, norm_form(adapter))
        directions = nn.functional.normalize(directions - directions.mean(dim=0), dim=-1)
    census = []
    for done, block in enumerate(chosen):
        progress(done, len(chosen), "neuron census")
        with torch.inference_mode(), ExitStack() as stack:
            in_memory(stack, adapter.mlp(block))
            mean, variance, skew, kurtosis, extremes = vocab_moments(
                output_weights(adapter, block).to(directions.device), directions, min_kurtosis
            )
        high = kurtosis > min_kurtosis
        census.append(
            BlockNeurons(
                block,
                mean.tolist(),
                variance.tolist(),
                skew.tolist(),
                kurtosis.tolist(),
                extremes,
                int((high & (skew > min_skew)).sum()),
                int((high & (skew < -min_skew)).sum()),
            )
        )
    progress(len(chosen), len(chosen), "neuron census")
    ids = sorted({t for b in census for t in b.extreme_tokens.values()})
    return NeuronCensus(lm.name, min_kurtosis, min_skew, census, dict(zip(ids, lm.token_texts(ids))))
