"""A whole sweep as one result: its points, and what they were computed from.

`sweep` and `token_swap_sweep` yield points one at a time (a file continues point by point); `SweepResult.collect`
keeps them all, for `layerscope sweep --format json|csv|table` and for a notebook (`to_pandas`, the HTML table).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from layerscope.analyses.sweep import SweepPoint
from layerscope.analyses.token_swap import TokenSwapPoint
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

SWAP_TOKEN = "swap-token"


@dataclass
class SweepResult:
    """Each prompt's point per layer (grid row for swap-token), then the set average per layer (prompt_index None);
    `source`: the settings the points were computed from (the CLI's, as in a JSONL file's first line)."""

    intervention: str
    points: list[SweepPoint | TokenSwapPoint]
    source: dict = field(default_factory=dict)

    @classmethod
    def collect(
        cls, intervention: str, points: Iterable[SweepPoint | TokenSwapPoint], source: dict | None = None
    ) -> SweepResult:
        """Every point of a running sweep: SweepResult.collect("drop", sweep(lm, prompts, "drop"))."""
        return cls(intervention, list(points), source or {})

    def to_dict(self) -> dict:
        # "rows": the key that JSON files written before the points were named have
        return {"intervention": self.intervention, "source": self.source, "rows": [p.to_dict() for p in self.points]}

    def records(self) -> Records:
        """One line per point, every field of the point type (per prompt and the averages alike); `factor` only for
        steer, the one kind with a factor."""
        names = [f.name for f in fields(TokenSwapPoint if self.intervention == SWAP_TOKEN else SweepPoint)]
        names = [name for name in names if name != "factor" or self.intervention == "steer"]
        return Records.of(names, ([getattr(row, name) for name in names] for row in self.points))

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def plot(self, n_blocks: int | None = None) -> Figure:
        """The set averages per layer, a line per kind (x: relative depth given `n_blocks`): a matplotlib Figure
        (layerscope[plot])."""
        from layerscope.figures.interventions import sweep_figure

        return sweep_figure(self.points, str(self.source.get("model", "")), n_blocks=n_blocks)

    def _repr_html_(self) -> str:
        from layerscope.notebook import sweep_html

        return sweep_html(self)
