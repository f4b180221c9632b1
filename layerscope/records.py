"""A result as one table: its column names and one tuple of values per line.

Every result's `records()` gives it, and the CSV file (`outputs.to_csv`), the pandas DataFrame (`to_pandas`) and
the explorer's export are all written from it, so their columns cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    import pandas

PANDAS_MISSING = "to_pandas() needs pandas: pip install 'layerscope[notebook]' (or pip install pandas)."


@dataclass(frozen=True)
class Records:
    """`columns`, and `lines` with one value per column each (None where a line has no such value)."""

    columns: tuple[str, ...]
    lines: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def of(cls, columns: Sequence[str], lines: Iterable[Sequence[Any]]) -> Records:
        return cls(tuple(columns), [tuple(line) for line in lines])

    def __add__(self, other: Records) -> Records:
        """The lines of both, one after the other (same columns)."""
        if other.columns != self.columns:
            raise ValueError(f"Records with columns {other.columns} cannot follow records with {self.columns}.")
        return Records(self.columns, self.lines + other.lines)

    def with_columns(self, values: dict[str, Any]) -> Records:
        """The same lines, each led by the same `values` (the explorer's method, view and interventions)."""
        lead = tuple(values.values())
        return Records((*values, *self.columns), [lead + line for line in self.lines])

    def where(self, **values: Any) -> Records:
        """Only the lines whose named columns hold these values."""
        at = {self.columns.index(name): value for name, value in values.items()}
        return Records(self.columns, [line for line in self.lines if all(line[i] == v for i, v in at.items())])

    def dicts(self) -> Iterator[dict[str, Any]]:
        """Each line as a dict from column to value."""
        return (dict(zip(self.columns, line)) for line in self.lines)

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame with the CSV's columns, in order, and its values: each column a pandas array of the values'
        own type (whole numbers stay whole beside None, which is missing: pd.NA)."""
        try:
            import pandas
        except ImportError:
            raise LayerscopeError(PANDAS_MISSING) from None
        columns = list(zip(*self.lines)) if self.lines else [() for _ in self.columns]
        return pandas.DataFrame(
            {name: _array(pandas, values) for name, values in zip(self.columns, columns)}, columns=list(self.columns)
        )


def _array(pandas: Any, values: Sequence[Any]) -> Any:
    """A column of one kind (numbers, text, booleans) as pandas's nullable array of it; mixed values as objects."""
    try:
        return pandas.array(list(values))
    except (TypeError, ValueError):
        return pandas.array(list(values), dtype=object)
