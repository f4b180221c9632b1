"""The shown grid as text for the clipboard and as a CSV file, and how big that text is. Plain Python.

A grid here is any method's grid (tui/methods.py): its method summarises its cells and gives its CSV rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.errors import LayerscopeError
from layerscope.tui.grid_view import token_label

if TYPE_CHECKING:
    from layerscope.tui.methods import Grid, GridMethod


def byte_size(text: str) -> str:
    """'161 B', '36 KB', '2.4 MB': the UTF-8 size of what was copied or written."""
    size = len(text.encode("utf-8"))
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.0f} KB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"


def grid_shape(grid: Grid) -> str:
    """'31x5': layers (the rows computed so far) by positions."""
    return f"{len(grid.cells)}x{len(grid.tokens)}"


def grid_text(method: GridMethod | None, grid: Grid | None) -> str:
    """The cells as the method summarises them (a lens's top-1 tokens, a causal trace's indirect effects) as
    tab-separated text: a line per prompt token, a column per layer, as the grid shows them; empty without a
    grid."""
    if method is None or grid is None:
        return ""
    lines = ["\t".join(["token", *grid.layers])]
    for position, token in enumerate(grid.tokens):
        lines.append("\t".join([token_label(token, 40), *(method.summary(row[position], 40).text for row in grid.cells)]))
    return "\n".join(lines)


def export_csv(method: GridMethod | None, grid: Grid | None, path: Path) -> str:
    """Write the grid's CSV (its method's rows: a lens's one line per cell and rank) atomically; the notice that
    says what was written."""
    from layerscope.outputs import to_csv, write_atomic

    if method is None or grid is None:
        raise LayerscopeError("Nothing to export yet: run a prompt first.")
    text = to_csv(method.csv_rows(grid))
    write_atomic(text, path)
    return f"exported grid · {grid_shape(grid)} · {byte_size(text)} CSV → {path}"
