"""The decode grid: per residual row and prompt position, what the model would say.

One result type for the logit lens and Patchscopes, so views and scripts can
switch between them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

from layerscope.errors import ArgumentTypeError
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LN2 = math.log(2.0)


@dataclass
class TopToken:
    """One of a cell's top-k tokens and its probability."""

    token: str
    id: int
    prob: float


@dataclass
class GridCell:
    """What one row says at one position: its top-k, entropy (bits) and KL(final || row) (nats)."""

    top: list[TopToken]
    entropy_bits: float
    kl_to_final: float


@dataclass
class DecodeGrid:
    """A decode grid of one prompt: `cells[row][position]`, rows labelled by `layers` (`emb`, 0..L-1).

    A grid over a prompt and its greedy continuation (`lens_generate`) has `prompt_length`: the positions from
    it on are generated tokens; None for a grid over the prompt alone."""

    model: str
    method: str
    tokens: list[str]
    token_ids: list[int]
    layers: list[str]
    cells: list[list[GridCell]]  # [row][position]
    prompt_length: int | None = None

    def generated(self, position: int) -> bool:
        """Whether the token at `position` was generated (False everywhere in a grid over the prompt alone)."""
        return self.prompt_length is not None and position >= self.prompt_length

    def plot(self, metric: str = "prob") -> Figure:
        """The grid as a heatmap of `metric` ('prob': the top-1's probability, 'entropy_bits', 'kl_to_final') with the
        top-1 token in each cell: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.grid import decode_grid_figure

        return decode_grid_figure(self, metric)

    def to_dict(self) -> dict:
        """Every field; `prompt_length` only where the grid covers generated tokens."""
        data = asdict(self)
        if self.prompt_length is None:
            del data["prompt_length"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DecodeGrid:
        """The grid `to_dict` wrote (a saved session, `layerscope lens --format json`); other keys are ignored."""
        cells = [
            [
                GridCell(
                    top=[TopToken(**top) for top in cell["top"]],
                    entropy_bits=cell["entropy_bits"],
                    kl_to_final=cell["kl_to_final"],
                )
                for cell in row
            ]
            for row in data["cells"]
        ]
        return cls(
            data["model"],
            data["method"],
            data["tokens"],
            data["token_ids"],
            data["layers"],
            cells,
            data.get("prompt_length"),
        )

    def top1(self, row: int, position: int) -> TopToken:
        return self.cells[row][position].top[0]

    def column(self, position: int, field: str) -> list[float]:
        """One number per row at a position: 'entropy_bits' or 'kl_to_final'."""
        return [getattr(row[position], field) for row in self.cells]

    def records(self) -> Records:
        """Long format: one line per (row, position, rank); a grid with generated tokens ends each line with
        `generated` (whether the position's token was generated)."""
        marked = self.prompt_length is not None
        columns = ("method", "layer", "position", "prompt_token", "rank", "token", "id", "prob", "entropy_bits")
        return Records.of(
            (*columns, "kl_to_final", *(("generated",) if marked else ())),
            (
                (
                    self.method,
                    layer,
                    position,
                    self.tokens[position],
                    rank,
                    top.token,
                    top.id,
                    top.prob,
                    cell.entropy_bits,
                    cell.kl_to_final,
                    *((self.generated(position),) if marked else ()),
                )
                for layer, row in zip(self.layers, self.cells)
                for position, cell in enumerate(row)
                for rank, top in enumerate(cell.top)
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        from layerscope.notebook import grid_html

        return grid_html(self)


def divergence(baseline: DecodeGrid, intervened: DecodeGrid) -> int | None:
    """The first generated position whose token differs between two grids of one prompt (one continuation
    ending before the other counts as differing where it ended); None where the continuations agree."""
    for name, grid in (("baseline", baseline), ("intervened", intervened)):
        if not isinstance(grid, DecodeGrid):
            raise ArgumentTypeError(f"{name}= must be a DecodeGrid (lens_generate), not {type(grid).__name__}.")
    start = baseline.prompt_length if baseline.prompt_length is not None else len(baseline.token_ids)
    ours, theirs = baseline.token_ids, intervened.token_ids
    for position in range(start, max(len(ours), len(theirs))):
        if position >= len(ours) or position >= len(theirs) or ours[position] != theirs[position]:
            return position
    return None


def distribution_stats(
    log_probs: torch.Tensor, final_log_probs: torch.Tensor, final_probs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy in bits and KL(final || this) in nats, over the last dimension.

    Pass `final_probs` (= final_log_probs.exp()) when calling many times against the same final.
    """
    if final_probs is None:
        final_probs = final_log_probs.exp()
    entropy_bits = -torch.linalg.vecdot(log_probs.exp(), log_probs) / LN2
    kl = torch.linalg.vecdot(final_probs, final_log_probs - log_probs)
    return entropy_bits, kl


class GridRows:
    """Turns one row's log-probabilities into cells against a final distribution computed once."""

    def __init__(self, lm: LoadedModel, final_logits: torch.Tensor, top_k: int):
        self.lm = lm
        self.top_k = top_k
        self.final_log_probs = torch.log_softmax(final_logits.float(), dim=-1)
        self.final_probs = self.final_log_probs.exp()

    def cells(self, log_probs: torch.Tensor) -> list[GridCell]:
        """log_probs: (tokens, vocab) of one row."""
        entropy, kl = distribution_stats(log_probs, self.final_log_probs, self.final_probs)
        top_log_probs, top_ids = log_probs.topk(self.top_k, dim=-1)
        top_probs, top_ids_list = top_log_probs.exp().tolist(), top_ids.tolist()
        entropy_list, kl_list = entropy.tolist(), kl.clamp_min(0).tolist()
        return [
            GridCell(
                top=[
                    TopToken(text, token_id, prob)
                    for text, token_id, prob in zip(self.lm.token_texts(top_ids_list[t]), top_ids_list[t], top_probs[t])
                ],
                entropy_bits=entropy_list[t],
                kl_to_final=kl_list[t],
            )
            for t in range(len(top_ids_list))
        ]


def build_grid(
    lm: LoadedModel,
    method: str,
    input_ids: torch.Tensor,
    row_logits: Iterable[torch.Tensor],
    final_logits: torch.Tensor,
    layers: list[str],
    top_k: int,
) -> DecodeGrid:
    """Reduce each row's (tokens, vocab) logits to top-k, entropy and KL as soon as it arrives; `final_logits`
    (tokens, vocab) are the model's own, `input_ids` (1, tokens) the prompt."""
    rows = GridRows(lm, final_logits, top_k)
    cells = [rows.cells(torch.log_softmax(logits.float(), dim=-1)) for logits in row_logits]
    ids = input_ids[0].tolist()
    return DecodeGrid(lm.name, method, lm.token_texts(ids), ids, layers, cells)
