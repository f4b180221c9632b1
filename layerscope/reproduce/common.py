"""What every reproduction shares: its result, relative depth, matplotlib on demand, the files it writes."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from layerscope.errors import LayerscopeError
from layerscope.outputs import to_json, write_atomic
from layerscope.records import Records
from layerscope.reproduce import PAPERS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL = "Figures need matplotlib, which is not installed: pip install 'layerscope[plot]'"


@dataclass
class Reproduction:
    """One paper's figures on one model: the numbers behind them (`data`), with the settings that made them, and
    the summary that puts this model's result beside the paper's."""

    paper: str  # a key of PAPERS
    model: str
    quick: bool
    settings: dict
    data: dict
    summary: str
    points: list[dict]  # every plotted point: the csv's lines

    def records(self) -> Records:
        """A line per plotted point; the columns are every key the points have, in first-seen order."""
        columns = list(dict.fromkeys(key for point in self.points for key in point))
        return Records.of(columns, ([point.get(column) for column in columns] for point in self.points))

    def to_dict(self) -> dict:
        return {
            "paper": self.paper,
            "title": PAPERS[self.paper].title,
            "model": self.model,
            "quick": self.quick,
            "settings": self.settings,
            "data": self.data,
            "summary": self.summary,
        }


def depth(block: int, n_blocks: int) -> float:
    """Relative depth of a block (or grid row): block / number of blocks, so block 15 of 30 is 0.5."""
    return block / n_blocks


def percent(value: float) -> str:
    return f"{value:.0%}"


def first_from(layers: Sequence[int], good: Sequence[bool]) -> int | None:
    """The first layer from which every later layer is good (None if the last is not)."""
    start = None
    for layer, ok in zip(layers, good):
        start = (layer if start is None else start) if ok else None
    return start


def check_plotting() -> None:
    """Before any work: the figures can be drawn."""
    if importlib.util.find_spec("matplotlib") is None:
        raise LayerscopeError(INSTALL)


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of width x height inches, laid out on drawing; no pyplot, so no global state or backend is
    touched (a notebook's stays as it was)."""
    check_plotting()
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def caption(figure: Figure, result: Reproduction, what: str) -> None:
    """Every figure's title says where it comes from: the paper, the model, the data and the setting."""
    setting = "--quick setting" if result.quick else "full setting"
    figure.suptitle(f"{PAPERS[result.paper].title}\n{result.model}: {what} ({setting})", fontsize=10)


def write_files(result: Reproduction, figures: dict[str, Figure], folder: Path, format: str) -> list[Path]:
    """Each figure as `{paper}-{name}.{format}`, the JSON and the summary, in `folder` (made if new); under torchrun
    only rank 0 writes."""
    from layerscope.distributed import is_writer

    if not is_writer():
        return []
    texts = {
        f"{result.paper}.json": to_json(result.to_dict()),  # refuses a result that is not finite, first
        f"{result.paper}-summary.txt": result.summary + "\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in figures.items():
        path = folder / f"{result.paper}-{name}.{format}"
        figure.savefig(path, format=format, dpi=150, bbox_inches="tight")
        written.append(path)
    for name, text in texts.items():
        write_atomic(text, folder / name)
        written.append(folder / name)
    return written
