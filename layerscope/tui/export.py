"""The shown grid as text for the clipboard, as a CSV file and as a figure, and how big that is. Plain Python.

A grid here is any method's grid (tui/methods.py): its method summarises its cells and gives its CSV rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.errors import LayerscopeError
from layerscope.tui.grid_view import token_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.tui.charts import Chart
    from layerscope.tui.methods import Grid, GridMethod


def byte_size(text: str | bytes) -> str:
    """'161 B', '36 KB', '2.4 MB': the size of what was copied or written (text in UTF-8)."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
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
        lines.append(
            "\t".join([token_label(token, 40), *(method.summary(row[position], 40).text for row in grid.cells)])
        )
    return "\n".join(lines)


def raw(token: str) -> str:
    """A token as the model wrote it, quoted so its spaces and newlines show: '" Paris"', '"\\n"'."""
    return json.dumps(token, ensure_ascii=False)


def cell_clipboard(
    grids: list[tuple[str, DecodeGrid]], kl_base_int: list[list[float]] | None, layer: int, position: int
) -> str:
    """The cell under the cursor as plain text for the clipboard: each grid's (name, grid) entropy, KL to final
    and top-k with the tokens' raw text (no '·' for a space, no probability glyphs), then KL(base‖int)."""
    first = grids[0][1]
    lines = [f"row {first.layers[layer]} · position {position} · prompt token {raw(first.tokens[position])}"]
    for name, grid in grids:
        cell = grid.cells[layer][position]
        lines.append(f"{name}: entropy {cell.entropy_bits:.4f} bits · KL to final {cell.kl_to_final:.4f} nats")
        lines += [f"  {top.prob:.4f}  {raw(top.token)}" for top in cell.top]
    if kl_base_int is not None and layer < len(kl_base_int):
        lines.append(f"KL(base‖int) {kl_base_int[layer][position]:.4f} nats")
    return "\n".join(lines)


def trace_clipboard(trace: CausalTrace, layer: int, position: int) -> str:
    """A causal trace cell as plain text: its answer (raw), the restored probability and the indirect effect."""
    cell = trace.cells[layer][position]
    return (
        f"causal trace · answer {raw(trace.answer)} · row {trace.layers[layer]} · position {position} · prompt "
        f"token {raw(trace.tokens[position])}\np_answer {cell.value:.6f}\nindirect effect "
        f"{cell.indirect_effect:+.6f}"
    )


def export_csv(method: GridMethod | None, grid: Grid | None, path: Path, view: str, interventions: str) -> str:
    """Write the grid's CSV (its method's rows: a lens's one line per cell and rank) atomically, each line with
    the method, the view shown (baseline or intervened) and the interventions its numbers were computed with;
    the notice that says what was written."""
    from layerscope.outputs import to_csv, write_atomic

    if method is None or grid is None:
        raise LayerscopeError("Nothing to export yet: run a prompt first.")
    text = to_csv(
        method.records(grid).with_columns({"method": method.name, "view": view, "interventions": interventions})
    )
    write_atomic(text, path)
    return f"exported grid · {grid_shape(grid)} · {byte_size(text)} CSV → {path}"


def export_figure(grid: Grid | None, path: Path, view: str, interventions: str) -> str:
    """Draw the grid (its result's `plot()`), the view and the interventions in its caption, and write it
    atomically in the format the path's suffix names; the notice that says what was written."""
    from layerscope.figures.common import add_caption

    if grid is None or not grid.cells:
        raise LayerscopeError("Nothing to export yet: run a prompt first.")
    figure = grid.plot()
    add_caption(figure, f"view: {view} · interventions: {interventions} · from the layerscope explorer")
    return f"exported figure · {grid_shape(grid)} · {write_figure(figure, path)}"


def export_charts(charts: list[Chart], path: Path, title: str, caption: list[str]) -> str:
    """Draw the side panel's charts from their own data (`layerscope.figures.charts`) with what they were
    computed from in the caption, and write them atomically in the format the path's suffix names; the notice."""
    from layerscope.figures.charts import charts_figure

    if not charts:
        raise LayerscopeError("No charts to export yet: run a prompt first.")
    figure = charts_figure(charts, title, [*caption, "from the layerscope explorer"])
    return f"exported charts · {len(charts)} plots · {write_figure(figure, path)}"


def write_figure(figure: Figure, path: Path) -> str:
    """Write the figure atomically in the format of the path's suffix; '36 KB SVG → PATH'."""
    from layerscope.figures.common import figure_bytes
    from layerscope.outputs import write_atomic

    data = figure_bytes(figure, path, "")
    write_atomic(data, path)
    return f"{byte_size(data)} {path.suffix.lstrip('.').upper()} → {path}"
