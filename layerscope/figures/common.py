"""What every figure shares: a new figure, its title and caption, token labels, heatmaps, and writing it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from layerscope.display import token_label
from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FORMATS = ("png", "svg", "pdf")
"""The formats a figure is written in, named by the file's suffix."""
INSTALL = "pip install 'layerscope[plot]'"
LABEL_WIDTH = 16
"""Characters of a token in a tick label (the explorer's `token_label` cuts longer ones with '…')."""
CELL_WIDTH = 8
"""Characters of a token written inside a heatmap cell."""
MAX_INCHES = 60
"""The longest side of a figure: a 300-token prompt stays a file that viewers open."""


def figure_format(path: Path, flag: str = "path=") -> str:
    """'png', 'svg' or 'pdf' from the path's suffix; any other is one error naming `flag`."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise LayerscopeError(
            f"{flag} '{path}'".lstrip() + ": a figure's format comes from its suffix; name a "
            f"{', '.join('.' + f for f in FORMATS[:-1])} or .{FORMATS[-1]} file."
        )
    return suffix


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LayerscopeError(f"Figures need matplotlib, which is not installed: {INSTALL}") from None


def check_figure_path(flag: str, path: Path) -> None:
    """Before any work: the figure's format is known and matplotlib is there to draw it."""
    figure_format(path, flag)
    require_matplotlib()


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of about width x height inches (at most MAX_INCHES a side), laid out on drawing."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=(min(width, MAX_INCHES), min(height, MAX_INCHES)), layout="constrained")


def provenance(figure: Figure, title: str, *caption: str) -> None:
    """The title on top, and a caption line under it: what the numbers were computed from."""
    figure.suptitle(title, fontsize="medium")
    for line in caption:
        if line:
            add_caption(figure, line)


def add_caption(figure: Figure, line: str) -> Figure:
    """One more caption line under those the figure has (what it was computed from); the figure."""
    caption = figure.get_supxlabel()
    figure.supxlabel(f"{caption}\n{line}" if caption else line, fontsize="small", ha="left", x=0.01)
    return figure


def labels(tokens: Sequence[str], width: int = LABEL_WIDTH) -> list[str]:
    """Tokens as the explorer's grid shows them: ' Paris' -> '·Paris', a newline -> '⏎'."""
    return [token_label(token, width) for token in tokens]


def prompt_caption(tokens: Sequence[str], width: int = 140) -> str:
    """The prompt, its whitespace shown, cut to a line."""
    return "prompt: " + token_label("".join(tokens), width)


def whole_blocks(axes: Axes) -> None:
    """Ticks on whole numbers only: blocks, layers."""
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def heatmap(
    axes: Axes,
    values: Sequence[Sequence[float]],
    *,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    colour: str,
    cmap: str = "viridis",
    origin: Literal["upper", "lower"] = "lower",
    centre: bool = False,
) -> None:
    """values[y][x] as coloured cells with a colour bar named `colour`; `centre`: a diverging scale around 0."""
    import numpy as np

    array = np.asarray(values, dtype=float)
    limit = float(np.nanmax(np.abs(array))) if centre and array.size else None
    image = axes.imshow(
        array,
        aspect="auto",
        origin=origin,
        cmap=cmap,
        interpolation="nearest",
        vmin=-limit if limit else None,
        vmax=limit if limit else None,
    )
    axes.set_xticks(range(len(x_labels)), list(x_labels), rotation=90, fontsize="x-small")
    axes.set_yticks(range(len(y_labels)), list(y_labels), fontsize="x-small")
    axes.figure.colorbar(image, ax=axes, label=colour, shrink=0.8)


def figure_bytes(figure: Figure, path: Path, flag: str = "path=") -> bytes:
    """The figure in the format `path`'s suffix names, headless: matplotlib picks the canvas of the format (Agg
    for png), so no display is needed. Text stays text in an SVG and TrueType in a PDF, as journals ask, so the
    labels can be edited and searched."""
    from matplotlib import rc_context

    kind = figure_format(path, flag)
    buffer = io.BytesIO()
    with rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}), warnings.catch_warnings():
        # a character the font lacks (a control picture such as ␛) is drawn as a box: no warning on the terminal
        warnings.filterwarnings("ignore", "Glyph .* missing from", UserWarning)
        figure.savefig(buffer, format=kind, dpi=150)
    return buffer.getvalue()


def save_figure(figure: Figure, path: Path, flag: str = "path=") -> int:
    """Write the figure to `path` atomically (a failure leaves an existing file whole); its size in bytes. A path
    that names no format is one error naming `flag`."""
    from layerscope.outputs import write_atomic

    data = figure_bytes(figure, path, flag)
    write_atomic(data, path)
    return len(data)
