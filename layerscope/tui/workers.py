"""What the explorer's thread workers do: each function runs in a worker's thread and tells the app by messages.

None of them catches anything: whatever a function raises (a cancel, a user mistake, a bug) ends its worker, and
the app's `on_worker_state_changed` tells it. Torch and the engine are imported inside, in the thread, so the
first frame never waits for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message
from textual.worker import Worker

from layerscope.errors import LayerscopeError
from layerscope.tui.messages import (
    ColumnComputed,
    PatternComputed,
    RowComputed,
    RunFinished,
    RunProgress,
    RunStarted,
    ScoresComputed,
    TraceComputed,
)
from layerscope.tui.methods import REGISTRY
from layerscope.tui.runs import Cancelled, stop_between_blocks
from layerscope.tui.state import RunOrigin, Toggles

if TYPE_CHECKING:
    from layerscope.analyses.jacobian_lens import FittedLens
    from layerscope.models.loading import LoadedModel
    from layerscope.progress import ProgressFn


@dataclass(frozen=True)
class RunContext:
    """What a run's work needs besides its inputs: where its messages go, its worker (cancelled yet?), its run id,
    and the model with the lock that lets one run use it at a time."""

    post: Callable[[Message], object]
    worker: Worker
    run_id: int
    lm: LoadedModel
    lock: threading.Lock

    def cancelled(self) -> bool:
        return self.worker.is_cancelled

    def progress(self, name: str) -> ProgressFn:
        """A progress callback that names its phase; raising Cancelled stops the step it is called from."""

        def progress(done: int, total: int, description: str) -> None:
            if self.cancelled():
                raise Cancelled
            self.post(RunProgress(self.run_id, name, done, total))

        return progress

    @contextmanager
    def using_model(self) -> Iterator[LoadedModel]:
        """The model, with its lock held and every block checking for a cancel before it runs."""
        with self.lock, stop_between_blocks(self.lm, self.cancelled):
            yield self.lm


def lens_run(
    run: RunContext,
    text: str,
    method: str,
    toggles: Toggles,
    top_k: int,
    lens: FittedLens | None,
    continuation_tokens: int,
    grow: bool = False,
) -> None:
    """The grid's rows as they are computed (baseline and, with interventions, intervened), then the greedy
    continuation of each: with `grow`, for a method that has columns, as generated positions appended to the
    grids one token at a time."""
    import torch

    from layerscope.analyses.compare import greedy_continuation
    from layerscope.tui.compute import empty_grid

    grid_method = REGISTRY[method]
    if grid_method.rows is None:
        raise ValueError(f"{method} has no rows to run")
    if grid_method.lens and (lens is None or lens.kind != grid_method.lens):
        raise LayerscopeError(f"No {grid_method.lens} lens is loaded: start with --lens DIR or press T to load one.")
    columns = grid_method.columns if grow else None
    with run.using_model() as lm, torch.inference_mode():
        ids = lm.encode(text)
        interventions = toggles.interventions(lm.n_blocks) if grid_method.intervenable else []
        baseline = empty_grid(lm, method, ids, columns is not None)
        intervened = empty_grid(lm, method, ids, columns is not None) if interventions else None
        run.post(RunStarted(run.run_id, baseline, intervened, RunOrigin(lm.name, text, method, toggles)))
        rows_phase, total = run.progress(grid_method.phase), lm.n_blocks + 1
        rows_phase(0, total, "")
        for row in grid_method.rows(lm, ids, interventions, top_k, run.cancelled, rows_phase, lens):
            run.post(RowComputed(run.run_id, row))
            rows_phase(row.row + 1, total, "")
        runs = {"baseline": [], "intervened": interventions} if interventions else {"baseline": []}
        if columns is None:
            continuation = {
                name: greedy_continuation(lm, ids, continuation_tokens, edits, run.progress(f"generating {name}")).text
                for name, edits in runs.items()
            }
        else:
            generated: list[list[int]] = [[] for _ in runs]
            columns_phase = run.progress("generating")
            columns_phase(0, continuation_tokens, "")
            for column in columns(lm, ids, interventions, continuation_tokens, top_k, run.cancelled, lens):
                run.post(ColumnComputed(run.run_id, column))
                for tokens, token in zip(generated, column.token_ids):
                    tokens.append(token)
                columns_phase(len(generated[0]), continuation_tokens, "")  # raises Cancelled after Esc
            if run.cancelled():  # the columns stopped early: what came stays in the grid
                raise Cancelled
            continuation = {
                name: lm.tokenizer.decode(tokens, skip_special_tokens=True) for name, tokens in zip(runs, generated)
            }
    run.post(RunFinished(run.run_id, continuation))


def head_scores(run: RunContext, kind: str, quick: bool) -> None:
    """Scores take a while (retrieval runs needle tests): progress shows, Esc stops between steps; `quick` uses
    the Heads pane's quick setting (panes.QUICK_SETTINGS). Any `{kind}_scores(lm, progress=...) -> HeadScores`
    in analyses.heads plugs in here."""
    import torch

    from layerscope.analyses import heads
    from layerscope.tui.panes import QUICK_SETTINGS

    options = QUICK_SETTINGS[kind] if quick else {}
    with run.using_model() as lm, torch.inference_mode():
        result = getattr(heads, f"{kind}_scores")(lm, progress=run.progress(f"{kind} scores"), **options)
    run.post(ScoresComputed(run.run_id, kind, {(h.layer, h.head): h.score for h in result.heads}, quick))


def causal_trace(run: RunContext, text: str, subject: str, answer: str | None) -> None:
    """Noise on the subject's embeddings, every (row, position) of the residual restored in turn."""
    from layerscope.analyses.causal_trace import trace_prompt

    with run.using_model() as lm:
        trace = trace_prompt(lm, text, subject, answer, progress=run.progress(REGISTRY["causal_trace"].phase))
    run.post(TraceComputed(run.run_id, trace))


def head_pattern(run: RunContext, text: str, head: tuple[int, int], toggles: Toggles) -> None:
    """One head's attention over the prompt: the baseline, and with the interventions when there are any."""
    from layerscope.analyses.heads import attention_pattern

    with run.using_model() as lm:
        ids = lm.encode(text)
        interventions = toggles.interventions(lm.n_blocks)
        baseline = attention_pattern(lm, ids, [head])
        intervened = attention_pattern(lm, ids, [head], interventions) if interventions else None
    run.post(PatternComputed(run.run_id, head, baseline, intervened))
