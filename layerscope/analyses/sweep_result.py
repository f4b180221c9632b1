"""A whole sweep as one result: its rows, and what they were computed from.

`sweep` and `token_swap_sweep` yield rows one at a time (a file continues row by row); `SweepResult.collect` keeps
them all, for `layerscope sweep --format json|csv|table` and for a notebook (`to_pandas`, the HTML table).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from layerscope.analyses.sweep import SweepRow
from layerscope.analyses.token_swap import TokenSwapRow
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

SWAP_TOKEN = "swap-token"


@dataclass
class SweepResult:
    """Each prompt's row per layer (grid row for swap-token), then the set average per layer (prompt_index None);
    `source`: the settings the rows were computed from (the CLI's, as in a JSONL file's first line)."""

    intervention: str
    rows: list[SweepRow | TokenSwapRow]
    source: dict = field(default_factory=dict)

    @classmethod
    def collect(cls, intervention: str, rows: Iterable[SweepRow | TokenSwapRow], source: dict | None = None
                ) -> SweepResult:
        """Every row of a running sweep: SweepResult.collect("drop", sweep(lm, prompts, "drop"))."""
        return cls(intervention, list(rows), source or {})

    def to_dict(self) -> dict:
        return {"intervention": self.intervention, "source": self.source, "rows": [r.to_dict() for r in self.rows]}

    def records(self) -> Records:
        """One line per row, every field of the row type (per prompt and the averages alike)."""
        names = [f.name for f in fields(TokenSwapRow if self.intervention == SWAP_TOKEN else SweepRow)]
        return Records.of(names, ([getattr(row, name) for name in names] for row in self.rows))

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        from layerscope.notebook import sweep_html

        return sweep_html(self)
