"""What the explorer's workers tell the app, as typed messages (Textual runs a dataclass Message's __post_init__).

Every message of a run carries its run id; the run controller says whether it is still the current run. A worker
that fails or is cancelled posts nothing itself: the app's Worker.StateChanged handler turns its end into a
RunFailed or LoadFailed, whatever the exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message
from textual.notifications import SeverityLevel

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.models.loading import LoadedModel
    from layerscope.tui.compute import GeneratedColumn, LayerRow
    from layerscope.tui.state import RunOrigin


@dataclass(eq=False)
class LoadMessage(Message):
    """A load worker's answer; the app drops it when its load id is no longer the latest (cancelled, replaced)."""

    source: str
    load_id: int


@dataclass(eq=False)
class ModelLoaded(LoadMessage):
    """The model is loaded and checked: it replaces the app's model."""

    lm: LoadedModel


@dataclass(eq=False)
class LoadFailed(LoadMessage):
    """The load worker ended without a model (any exception); the loaded model, if any, stays."""

    error: str


@dataclass(eq=False)
class RunMessage(Message):
    """A message of one run (lens rows, head scores or a causal trace), dropped once a newer run began."""

    run_id: int


@dataclass(eq=False)
class RunStarted(RunMessage):
    """The prompt's tokens are known: the grids that the rows will fill."""

    baseline: DecodeGrid
    intervened: DecodeGrid | None
    origin: RunOrigin


@dataclass(eq=False)
class RowComputed(RunMessage):
    """One residual row of the baseline (and the intervened run): appended to the shown results."""

    row: LayerRow


@dataclass(eq=False)
class ColumnComputed(RunMessage):
    """One generated position of the baseline (and the intervened run), after every row: appended to them."""

    column: GeneratedColumn


@dataclass(eq=False)
class RunProgress(RunMessage):
    """The running phase and its count, for the status line."""

    description: str
    done: int
    total: int


@dataclass(eq=False)
class RunFinished(RunMessage):
    """The last step of a lens run: the greedy continuation of each run (baseline, intervened)."""

    continuation: dict[str, str]


@dataclass(eq=False)
class RunFailed(RunMessage):
    """The run's worker ended without its result: cancelled, a user mistake, or any other exception."""

    error: str
    severity: SeverityLevel  # 'warning' for a cancel, 'error' otherwise


@dataclass(eq=False)
class ScoresComputed(RunMessage):
    """A head score per (block, head) of one kind (induction, retrieval, previous_token)."""

    kind: str
    scores: dict[tuple[int, int], float]
    quick: bool  # computed with the Heads pane's quick setting


@dataclass(eq=False)
class TraceComputed(RunMessage):
    """A causal trace of the prompt: shown in the grid until the next lens results."""

    trace: CausalTrace


@dataclass(eq=False)
class PatternComputed(RunMessage):
    """A head's attention pattern over the prompt, without and (if any apply) with the interventions."""

    head: tuple[int, int]
    baseline: AttentionPattern
    intervened: AttentionPattern | None
