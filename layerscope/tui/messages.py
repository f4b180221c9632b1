"""What the explorer's workers tell the app, as typed messages (Textual runs a dataclass Message's __post_init__).

Every message of a run carries its run id; the run controller says whether it is still the current run. A worker
that fails or is cancelled posts nothing itself: the app's Worker.StateChanged handler turns its end into a
RunFailed or LoadFailed, whatever the exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.models.loading import LoadedModel
    from layerscope.tui.compute import LayerRow
    from layerscope.tui.state import RunOrigin


@dataclass(eq=False)
class ModelLoaded(Message):
    lm: LoadedModel
    source: str
    load_id: int


@dataclass(eq=False)
class LoadFailed(Message):
    error: str
    source: str
    load_id: int


@dataclass(eq=False)
class RunMessage(Message):
    run_id: int


@dataclass(eq=False)
class RunStarted(RunMessage):
    """The prompt's tokens are known: the grids that the rows will fill."""

    baseline: DecodeGrid
    intervened: DecodeGrid | None
    origin: RunOrigin


@dataclass(eq=False)
class RowComputed(RunMessage):
    row: LayerRow


@dataclass(eq=False)
class RunProgress(RunMessage):
    description: str
    done: int
    total: int


@dataclass(eq=False)
class RunFinished(RunMessage):
    continuation: dict[str, str]


@dataclass(eq=False)
class RunFailed(RunMessage):
    error: str
    severity: str  # 'warning' for a cancel, 'error' otherwise


@dataclass(eq=False)
class ScoresComputed(RunMessage):
    kind: str
    scores: dict[tuple[int, int], float]


@dataclass(eq=False)
class TraceComputed(RunMessage):
    trace: CausalTrace
