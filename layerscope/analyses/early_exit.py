"""Early-exit estimate from logit-lens grids (the AdaInfer question in Stages of Inference's related work).

Per prompt and position, the first grid row from which the top-1 token stays the final row's top-1 to the end
(`stays_top1_from`): an oracle that exits there gives the model's own next token and skips the blocks after
that row (row r is the input of block r, so L - r of L blocks). A confidence rule exits at the first row whose
top-1 probability reaches a threshold (the last row if none does); per threshold, the summary gives the blocks
it skips on average and how often its token is the model's own.

No torch at import: the explorer's grid methods use `stays_top1_from`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from layerscope.errors import ArgumentTypeError, ArgumentValueError
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from layerscope.analyses.grid import DecodeGrid

THRESHOLDS = (0.5, 0.7, 0.9, 0.95)


def stays_top1_from(grid: DecodeGrid, positions: Iterable[int] | None = None) -> list[int]:
    """Per position (every one, or those of `positions`), the first row from which the top-1 stays the final
    row's top-1 to the end (the last row itself at worst): a row that has it and loses it again does not count."""
    if not grid.cells:
        return []
    final = len(grid.cells) - 1
    rows = []
    for position in range(len(grid.tokens)) if positions is None else positions:
        answer = grid.top1(final, position).id
        row = final
        while row > 0 and grid.top1(row - 1, position).id == answer:
            row -= 1
        rows.append(row)
    return rows


def confident_from(grid: DecodeGrid, threshold: float) -> list[int]:
    """Per position, the first row whose top-1 probability is at least `threshold` (the last row if none is)."""
    final = len(grid.cells) - 1
    return [
        next((row for row in range(final + 1) if grid.top1(row, position).prob >= threshold), final)
        for position in range(len(grid.tokens))
    ]


@dataclass
class ThresholdExit:
    threshold: float
    mean_blocks_skipped: float
    agreement: float  # share of positions whose exit token is the final top-1


@dataclass
class EarlyExit:
    """`stays_from[prompt][position]`: grid rows; `n_blocks`: L; the oracle's and each threshold's summary, over
    every position of every prompt."""

    model: str
    n_blocks: int
    tokens: list[list[str]]
    stays_from: list[list[int]]
    oracle_mean_blocks_skipped: float
    thresholds: list[ThresholdExit]

    def plot(self) -> Figure:
        """Where the top-1 settles, and what each threshold skips and keeps: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.studies import early_exit_figure

        return early_exit_figure(self)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "n_blocks": self.n_blocks,
            "positions": sum(map(len, self.stays_from)),
            "oracle_mean_blocks_skipped": self.oracle_mean_blocks_skipped,
            "thresholds": [vars(t) for t in self.thresholds],
            "prompts": [
                {"tokens": tokens, "stays_top1_from": rows} for tokens, rows in zip(self.tokens, self.stays_from)
            ],
        }

    def records(self) -> Records:
        return Records.of(
            ("prompt", "position", "token", "stays_top1_from", "blocks_skipped"),
            (
                (prompt, position, token, row, self.n_blocks - row)
                for prompt, (tokens, rows) in enumerate(zip(self.tokens, self.stays_from))
                for position, (token, row) in enumerate(zip(tokens, rows))
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def early_exit(grids: Sequence[DecodeGrid], thresholds: Sequence[float] = THRESHOLDS) -> EarlyExit:
    """The oracle and confidence-threshold exits over the logit-lens grids of a prompt set (`logit_lens`)."""
    from layerscope.analyses.grid import DecodeGrid

    if not isinstance(grids, (list, tuple)) or not grids or not all(isinstance(g, DecodeGrid) for g in grids):
        raise ArgumentTypeError("grids= must be a non-empty list of decode grids (logit_lens(lm, ...)).")
    for threshold in thresholds:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ArgumentValueError(f"thresholds= holds {threshold!r}: each must be a probability in (0, 1].")
    n_blocks = len(grids[0].cells) - 1
    stays = [stays_top1_from(grid) for grid in grids]
    positions = sum(map(len, stays))
    summaries = []
    for threshold in thresholds:
        skipped = agreeing = 0
        for grid in grids:
            for position, row in enumerate(confident_from(grid, threshold)):
                skipped += n_blocks - row
                agreeing += grid.top1(row, position).id == grid.top1(n_blocks, position).id
        summaries.append(ThresholdExit(float(threshold), skipped / positions, agreeing / positions))
    oracle = sum(n_blocks - row for rows in stays for row in rows) / positions
    return EarlyExit(grids[0].model, n_blocks, [grid.tokens for grid in grids], stays, oracle, summaries)
