"""Decode grids (logit lens, tuned lens, Patchscopes): rows x positions, coloured by a metric, the top-1 token
written in each cell, as in the published logit-lens figures."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerscope.errors import ArgumentValueError
from layerscope.figures.common import CELL_WIDTH, heatmap, labels, new_figure, prompt_caption, provenance

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.patchscope import PatchscopeReport

METRICS = {"prob": "top-1 probability", "entropy_bits": "entropy (bits)", "kl_to_final": "KL(final || row) (nats)"}
"""What a grid figure colours its cells by."""
MAX_WRITTEN_CELLS = 2500
"""Above this many cells the tokens are not written in them (they would not be readable); the colours stay."""


def metric_values(grid: DecodeGrid, metric: str) -> list[list[float]]:
    """values[row][position] of a metric: the top-1 probability, the entropy or the KL to the final row."""
    if metric not in METRICS:
        raise ArgumentValueError(f"metric={metric!r} is not one of {', '.join(METRICS)}.")
    if metric == "prob":
        return [[cell.top[0].prob for cell in row] for row in grid.cells]
    return [[getattr(cell, metric) for cell in row] for row in grid.cells]


def draw_grid(axes: Axes, grid: DecodeGrid, metric: str) -> None:
    """The grid on `axes`: the first row at the bottom, the prompt's tokens along the bottom."""
    values = metric_values(grid, metric)
    heatmap(
        axes,
        values,
        x_labels=labels(grid.tokens),
        y_labels=grid.layers[: len(values)],
        colour=METRICS[metric],
        cmap="viridis" if metric == "prob" else "viridis_r",
    )
    if len(values) * len(grid.tokens) <= MAX_WRITTEN_CELLS:
        low, high = axes.images[0].get_clim()
        for row, cells in enumerate(grid.cells):
            for position, cell in enumerate(cells):
                shade = (values[row][position] - low) / ((high - low) or 1)
                bright = shade > 0.5 if metric == "prob" else shade < 0.5
                axes.text(
                    position,
                    row,
                    labels([cell.top[0].token], CELL_WIDTH)[0],
                    ha="center",
                    va="center",
                    fontsize="xx-small",
                    color="black" if bright else "white",
                )
    if grid.prompt_length is None:
        axes.set_xlabel("prompt token")
    else:  # a line between the prompt and its greedy continuation (`lens --generate`)
        axes.axvline(grid.prompt_length - 0.5, color="red", linewidth=2)
        axes.set_xlabel("prompt token | generated token (after the red line)")
    axes.set_ylabel("row (emb = the embeddings, n = block n's output)")


def grid_size(grid: DecodeGrid) -> tuple[float, float]:
    """Inches that give each cell room for a short token."""
    return 2.5 + 0.65 * len(grid.tokens), 1.8 + 0.28 * len(grid.cells)


def decode_grid_figure(grid: DecodeGrid, metric: str = "prob") -> Figure:
    width, height = grid_size(grid)
    figure = new_figure(width, height)
    draw_grid(figure.add_subplot(), grid, metric)
    prompt = grid.tokens[: grid.prompt_length]  # the generated tokens are not the prompt
    provenance(figure, f"{grid.method.replace('_', ' ')} · {grid.model}", prompt_caption(prompt))
    return figure


def patchscope_figure(report: PatchscopeReport, metric: str = "prob") -> Figure:
    """The Patchscopes grid, and precision@1 per row next to the logit lens's."""
    grid, precision = report.grid, report.precision
    width, height = grid_size(grid)
    figure = new_figure(width + 4, height)
    grid_axes, precision_axes = figure.subplots(1, 2, width_ratios=[max(width - 2, 2), 4])
    draw_grid(grid_axes, grid, metric)
    rows = range(len(precision.layers))
    precision_axes.plot(precision.patchscope, rows, marker="o", label="Patchscopes")
    precision_axes.plot(precision.logit_lens, rows, marker="s", label="logit lens")
    precision_axes.set_yticks(rows, precision.layers, fontsize="x-small")
    precision_axes.set_xlim(-0.05, 1.05)
    precision_axes.set_xlabel("precision@1 (top-1 = the model's own)")
    precision_axes.legend(fontsize="small")
    target = "same row" if report.target_layer is None else f"row {report.target_layer}"
    provenance(
        figure,
        f"Patchscopes · {grid.model}",
        prompt_caption(grid.tokens),
        f"target prompt: {labels([report.target_prompt], 80)[0]} · placeholder at position "
        f"{report.placeholder_position} · patched into the {target}",
    )
    return figure
