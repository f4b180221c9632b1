"""The explorer's runs as plain data: which run is current, what it has produced, which worker does what.

The app asks the controller and renders; nothing here touches a widget or imports textual or torch, so the
rules (a stale message is dropped, a new run's results replace the shown ones at its first row, every worker's
end is told in words) are tested without a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from layerscope.errors import LayerscopeError
from layerscope.tui.state import Results, RunOrigin

if TYPE_CHECKING:
    import torch

    from layerscope.analyses.grid import DecodeGrid
    from layerscope.models.loading import LoadedModel
    from layerscope.tui.compute import GeneratedColumn, LayerRow


class Cancelled(Exception):
    """Raised inside a worker when the user cancelled a step that has no row boundary of its own."""


@contextmanager
def stop_between_blocks(lm: LoadedModel, cancelled: Callable[[], bool]) -> Iterator[None]:
    """While inside, every block checks `cancelled()` before it runs and raises Cancelled: a quit or Esc lands
    within one block's time even in the middle of a forward pass (the process cannot exit before the worker)."""
    from layerscope.models.hooks import hook_input  # torch: loaded with the model, not at start

    def check(_hidden: torch.Tensor) -> None:
        if cancelled():
            raise Cancelled

    with ExitStack() as stack:
        for block in lm.adapter.blocks:
            hook_input(stack, block, check)
        yield


@dataclass(frozen=True)
class Job:
    """What one worker does, so that its end, however it comes, is tied to its run (or load) and told in words."""

    kind: str  # 'run', 'scores', 'trace', 'pattern' or 'load'
    ident: int  # the run id; for 'load', the load id
    cancelled: str = ""  # the notice when the user stops it
    source: str = ""  # for 'load': what was loading

    def failure(self, error: BaseException | None) -> tuple[str, Literal["warning", "error"]]:
        """(notice, severity) for a worker that ended without its result: cancelled (error None or Cancelled), a
        user mistake (LayerscopeError, its own words) or anything else (a bug or a device error: its type and
        first line, so the user can report it)."""
        if error is None or isinstance(error, Cancelled):
            return self.cancelled, "warning"
        if isinstance(error, LayerscopeError):
            return str(error), "error"
        text = f"{type(error).__name__}: {error}".splitlines()[0]
        return (f"Could not load '{self.source}': {text}" if self.kind == "load" else text), "error"


class RunController:
    """Run ids, the run in progress (its clock, phase and pending results), the shown results with their origin,
    the last grid of a method Ctrl+R does not run, model loads, and the job of every live worker."""

    def __init__(self) -> None:
        self.run_id = 0
        self.running = False
        self.started = 0.0
        self.progress: tuple[str, int, int] | None = None  # the running phase: description, done, total
        self._phase_start: tuple[float, int] = (0.0, 0)  # when the running phase began, and its count then
        self.results = Results()
        self.origin: RunOrigin | None = None  # what `results` were computed from
        self.pending: tuple[Results, RunOrigin] | None = None  # a started run's results, shown from its first row
        self.other: tuple[str, Results] | None = None
        """The last grid of a method that Ctrl+R does not run (a causal trace, a head pattern): its method's name
        and results, shown until the next lens results."""
        self.load_id = 0  # a cancelled load's result is dropped by its id
        self.loading: str | None = None  # the source a load worker is loading, None when none is
        self.load_started = 0.0
        self._jobs: dict[object, Job] = {}

    # runs ---------------------------------------------------------------
    def begin(self) -> int:
        """A new run id: messages of older runs are dropped from now on."""
        self.run_id += 1
        self.running = True
        self.started, self.progress = time.monotonic(), None
        return self.run_id

    def is_current(self, run_id: int) -> bool:
        return run_id == self.run_id

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start_results(
        self, run_id: int, baseline: DecodeGrid, intervened: DecodeGrid | None, origin: RunOrigin
    ) -> None:
        """The new results wait for their first row: until then the last ones stay shown."""
        if self.is_current(run_id):
            self.pending = (Results(baseline, intervened, [] if intervened is not None else None), origin)

    def take_pending(self) -> bool:
        """At a run's first row its results replace the shown ones; True when that happened now."""
        if self.pending is None:
            return False
        (self.results, self.origin), self.pending = self.pending, None
        return True

    def add_row(self, row: LayerRow) -> None:
        """Append a row of the current run to the shown results. Its KL comes with its intervened row, as
        the results' KL rows came with their intervened grid (`start_results`)."""
        baseline, intervened, kl_rows = self.results.baseline, self.results.intervened, self.results.kl_base_int
        assert baseline is not None, "a run's rows arrive after take_pending showed its results, which have a baseline"
        baseline.layers.append(row.label)
        baseline.cells.append(row.baseline)
        if (
            intervened is not None
            and kl_rows is not None
            and row.intervened is not None
            and row.kl_base_int is not None
        ):
            intervened.layers.append(row.label)
            intervened.cells.append(row.intervened)
            kl_rows.append(row.kl_base_int)

    def add_column(self, column: GeneratedColumn) -> None:
        """Append a generated position of the current run to every row of the shown grids, and its KL to the
        KL rows."""
        grids = [grid for grid in (self.results.baseline, self.results.intervened) if grid is not None]
        for grid, token_id, token, cells in zip(grids, column.token_ids, column.tokens, column.cells):
            grid.token_ids.append(token_id)
            grid.tokens.append(token)
            for row, cell in zip(grid.cells, cells):
                row.append(cell)
        if self.results.kl_base_int is not None and column.kl_base_int is not None:
            for row, kl in zip(self.results.kl_base_int, column.kl_base_int):
                row.append(kl)

    def set_progress(self, run_id: int, description: str, done: int, total: int) -> bool:
        """Record the phase of the current, running run; False for any other."""
        if not (self.is_current(run_id) and self.running):
            return False
        if self.progress is None or self.progress[0] != description or done < self.progress[1]:
            self._phase_start = (time.monotonic(), done)
        self.progress = (description, done, total)
        return True

    def time_left(self) -> float | None:
        """Seconds the running phase still needs at its pace so far (steps done since it began); None before
        its first step is done."""
        if self.progress is None:
            return None
        _, done, total = self.progress
        started, done_then = self._phase_start
        if done <= done_then:
            return None
        return (time.monotonic() - started) / (done - done_then) * (total - done)

    def end(self, run_id: int) -> bool:
        """The run stopped (done, failed or cancelled); True when it is the current one."""
        if not self.is_current(run_id):
            return False
        self.running = False
        return True

    def adopt(self, results: Results, origin: RunOrigin) -> None:
        """Results from elsewhere (a session file) replace the shown ones; whatever still runs becomes stale."""
        self.run_id += 1
        self.running, self.pending = False, None
        self.results, self.origin = results, origin

    def changes(self, now: RunOrigin) -> list[str]:
        """What changed since the shown results were computed (prompt, model, method, interventions)."""
        if self.origin is None or self.results.baseline is None:
            return []
        return self.origin.changes(now)

    # model loads --------------------------------------------------------
    def begin_load(self, source: str) -> int:
        self.load_id += 1
        self.loading, self.load_started = source, time.monotonic()
        return self.load_id

    def load_elapsed(self) -> float:
        return time.monotonic() - self.load_started

    def load_ended(self, load_id: int) -> bool:
        """A load's worker ended; True when its result counts (it was neither cancelled nor replaced)."""
        if load_id != self.load_id:
            return False
        self.loading = None
        return True

    def cancel_load(self) -> str | None:
        """Drop the running load's result (the loader cannot be interrupted); the source it was loading, if any."""
        source, self.loading = self.loading, None
        if source is not None:
            self.load_id += 1
        return source

    # workers ------------------------------------------------------------
    def track(self, worker: object, job: Job) -> None:
        self._jobs[worker] = job

    def job_ended(self, worker: object) -> Job | None:
        """The job of a worker that just ended (and forget it); None for a worker not tracked here."""
        return self._jobs.pop(worker, None)
