"""Text builders for the cell detail pane: lines laid out for the pane's width."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text

from layerscope.tui.grid_view import prob_glyph, token_label

if TYPE_CHECKING:
    from layerscope.analyses.grid import GridCell

DETAIL_WIDTH = 26
"""The side panel's narrowest text width (its min-width, less its border): detail lines are laid out for it."""


def flow(text: Text, pieces: list[tuple[str, str]], width: int) -> None:
    """Append (piece, style) pairs as one line, spaced, breaking only between pieces where the next would pass
    `width` (continuation lines indented by two): a label such as '(stays top-1 from 29)' is never cut in two."""
    used = 0
    for index, (piece, style) in enumerate(pieces):
        if index and used + 1 + cell_len(piece) > width:
            text.append("\n  ")
            used = 2
        elif index:
            text.append(" ")
            used += 1
        text.append(piece, style)
        used += cell_len(piece)
    text.append("\n")


def top_lines(name: str, cell: GridCell, baseline_top1: int, width: int, glyph: bool = True) -> list[str]:
    """A cell's top-k as lines of `width` under a title: probability, its glyph (unless two lists share the
    width), token; ' ≠' marks an intervened top-1 that differs from the baseline's."""
    lines = [f"{name} top-{len(cell.top)}".ljust(width)]
    for top in cell.top:
        changed = name == "int." and top is cell.top[0] and top.id != baseline_top1
        line = f" {top.prob:5.1%} {prob_glyph(top.prob) + ' ' if glyph else ''}"
        line += token_label(top.token, min(14, width - len(line) - 2))
        lines.append(f"{line}{' ≠' if changed else ''}".ljust(width))
    return lines
