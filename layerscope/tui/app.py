"""The layerscope explorer: prompt, decode grid, layer and head toggles, charts, continuation.

This module imports no torch, transformers or engine code at the top, so the
first frame paints at once; the model loads in a thread worker. All model
work runs in thread workers (tui/workers.py) under one lock. Workers post
typed messages (tui/messages.py) that carry their run id; the run controller
(tui/runs.py) says which are current and holds the results. However a worker
ends (an exception of any type, a cancel), `on_worker_state_changed` turns it
into a notice, a status line and a clean state.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.dom import DOMNode
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState, get_current_worker

from layerscope.errors import LayerscopeError
from layerscope.interventions.core import parse_option
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.specs import whole_number_in
from layerscope.tui import workers
from layerscope.tui.charts import Chart, stack
from layerscope.tui.detail_text import DETAIL_WIDTH
from layerscope.tui.export import byte_size, export_charts, export_csv, export_figure, grid_shape, grid_text
from layerscope.tui.grid_view import VIEWS, DecodeGridView, token_label, visible
from layerscope.tui.keymap import binding_rows, key_display, load_keymap, user_keymap_path
from layerscope.tui.messages import (
    ColumnComputed,
    LoadFailed,
    ModelLoaded,
    PatternComputed,
    RowComputed,
    RunFailed,
    RunFinished,
    RunProgress,
    RunStarted,
    ScoresComputed,
    TraceComputed,
)
from layerscope.tui.methods import REGISTRY, Cursor, GridMethod, PatternGrid, cycled
from layerscope.tui.panes import (
    QUICK_SOURCES,
    SCORE_SOURCES,
    ChartPane,
    DetailPane,
    HeadPane,
    LayerPane,
    OverviewPane,
    SidePane,
)
from layerscope.tui.runs import Job, RunController
from layerscope.tui.screens import PALETTE_HELP, ConfirmScreen, HelpScreen, InputScreen, PickScreen
from layerscope.tui.state import (
    STEER_FACTORS,
    Results,
    RunOrigin,
    Session,
    Toggles,
    refusal,
    sample_prompts,
    steer_where,
)
from layerscope.tui.themes import SHIPPED_THEMES, choose_theme, load_themes, rich_theme, user_theme_folder
from layerscope.tui.views import divergence_point, duration, output_text, overview, status_line
from layerscope.tui.workers import RunContext

if TYPE_CHECKING:
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.jacobian_lens import FittedLens
    from layerscope.models.loading import LoadedModel

TABS = ("tab-lens", "tab-layers", "tab-heads", "tab-output", "tab-overview")
RUN_CANCELLED = "cancelled; rows computed so far are kept"
ESC = "Esc cancels"


class MainScreen(Screen):
    """The explorer's screen. Focus is the app's to give (never the first focusable widget, the prompt): when a
    dialog closes, the widget that had focus has it again; when none has, the shown pane gets it."""

    AUTO_FOCUS = ""

    def on_screen_resume(self) -> None:
        if self.focused is None:
            cast("LayerscopeApp", self.app).focus_pane()


class LayerscopeApp(App):
    """Keyboard-first explorer over one loaded model."""

    TITLE = "layerscope"
    CSS = """
    #prompt { height: 4; border: round $primary 50%; }
    #prompt:focus { border: round $accent; border-title-style: bold; }
    #lens-body { height: 1fr; }
    #grid { width: 1fr; height: 1fr; }
    #grid.-stale { text-opacity: 55%; }
    #side { width: 34%; min-width: 27; max-width: 48; height: 1fr; border-left: vkey $panel;
            scrollbar-size-vertical: 1; }
    #side:focus-within, #output-scroll:focus, #overview:focus { border-left: vkey $accent; }
    #output-scroll, #overview { border-left: vkey $panel; }
    LayerPane:focus-within > Static, HeadPane:focus-within > Static { background: $accent 25%; }
    #side.-hidden { display: none; }
    #detail { height: auto; }
    #chart { height: 1fr; min-height: 9; text-wrap: nowrap; text-overflow: clip; }
    #overview { height: 1fr; text-wrap: nowrap; text-overflow: clip; }
    #status { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    #layer-hint, #head-hint { height: auto; color: $foreground 80%; }
    LayerPane DataTable, HeadPane DataTable { height: 1fr; }
    TabbedContent { height: 1fr; }
    ToastRack { margin-bottom: 2; }  /* notices stay above the status line and the footer */
    TabPane { padding: 0; }
    """
    BINDINGS = [
        Binding("ctrl+r", "run", "Run", id="run", priority=True),
        Binding("f5", "run", "Run", show=False, id="run_f5", priority=True),
        Binding("escape", "cancel", "Cancel", id="cancel"),
        Binding("q", "quit", "Quit", id="quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, id="quit_ctrl_c", priority=True),
        Binding("question_mark", "help", "Help", id="help"),
        Binding("f1", "help", "Help", show=False, id="help_f1", priority=True),
        Binding("e", "edit_prompt", "Prompt", id="edit_prompt", priority=True),  # see action_edit_prompt
        Binding("m", "switch_method", "Method", id="switch_method"),
        Binding("v", "cycle_view", "View", id="cycle_view"),
        Binding("c", "clear_interventions", "Clear", show=False, id="clear_interventions"),
        Binding("1", "tab(0)", "Lens", show=False, id="tab_lens"),
        Binding("2", "tab(1)", "Layers", show=False, id="tab_layers"),
        Binding("3", "tab(2)", "Heads", show=False, id="tab_heads"),
        Binding("4", "tab(3)", "Output", show=False, id="tab_output"),
        Binding("5", "tab(4)", "Overview", show=False, id="tab_overview"),
        Binding("p", "samples", "Samples", show=False, id="samples"),
        Binding("ctrl+s", "save_session", "Save", id="save_session", priority=True),
        Binding("ctrl+o", "load_session", "Open", show=False, id="load_session", priority=True),
        Binding("x", "export_csv", "Export CSV", show=False, id="export_csv"),
        Binding("X", "export_figure", "Export figure", show=False, id="export_figure"),
        Binding("y", "copy_cell", "Copy cell", show=False, id="copy_cell"),
        Binding("Y", "copy_grid", "Copy grid", show=False, id="copy_grid"),
        Binding("t", "next_theme", "Theme", show=False, id="next_theme"),
        Binding("z", "toggle_side", "Side panel", id="toggle_side"),
        Binding("n", "continuation_length", "Continuation length", show=False, id="continuation_length"),
        Binding("g", "grow_grid", "Grid over the continuation (on/off)", show=False, id="grow_grid"),
        Binding("d", "go_to_divergence", "Go to the divergence", show=False, id="go_to_divergence"),
        Binding("L", "open_model", "Load model", show=False, id="open_model"),
        Binding("T", "open_lens", "Load lens", show=False, id="open_lens"),
        Binding("C", "causal_trace", "Causal trace", show=False, id="causal_trace"),
    ]

    def __init__(
        self,
        model: str = "demo",
        prompt: str | None = None,
        theme: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        device_map: str | None = None,
        trust_remote_code: bool = False,
        lm: LoadedModel | None = None,
        theme_folders: list[Path] | None = None,
        keymap_path: Path | None = None,
        top_k: int = 5,
        continuation_tokens: int = 12,
        lens_dir: Path | None = None,
        steer_file: Path | None = None,
    ) -> None:
        super().__init__()
        self.device, self.dtype, self.top_k = device, dtype, top_k
        self.model_source = (getattr(lm.model, "name_or_path", "") or model) if lm is not None else model
        """What loaded (or is to load) the model, as the user can type it again: 'demo', a hub id or a path."""
        self.continuation_tokens = continuation_tokens
        self.grow_grid = True  # the lens grid grows over the continuation as it is generated (`g`: the prompt only)
        self.device_map, self.trust_remote_code = device_map, trust_remote_code
        self.lm: LoadedModel | None = lm
        self.initial_prompt = prompt
        self.toggles = Toggles()
        self.runs = RunController()
        self.hung_up = False
        self.method = "logit_lens"
        self.lens_dir = lens_dir  # the lens folder asked for; loaded (and checked) once the model is
        self.lens: FittedLens | None = None  # the tuned or the Jacobian lens, as its folder says
        self.steer_file = steer_file  # the steering vector file asked for; loaded (and checked) with the model
        self._said_no_lens = False
        self.trace_subject = ""
        self.model_lock = threading.Lock()
        self.status_text = ""
        self.run_label = ""  # the running run's name until its first phase reports
        self._draw_failures: set[str] = set()  # told once each (see `drawing`)
        self.last_session: Path | None = None  # the session file last saved or opened: Ctrl+O offers it
        self._charts_dirty = False
        self.detail = Text()
        self.output_text = Text()
        self._keymap_path = keymap_path if keymap_path is not None else user_keymap_path()
        self._startup_notices: list[tuple[str, SeverityLevel]] = []
        themes, problems = load_themes(
            theme_folders if theme_folders is not None else [SHIPPED_THEMES, user_theme_folder()]
        )
        for loaded in themes:
            self.register_theme(loaded)
        self.theme, unknown = choose_theme(theme, self.available_themes)
        self._startup_notices += [(problem, "warning") for problem in [*problems, *unknown]]

    # layout -------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Widgets are kept as attributes: handlers and timers reach them even while a modal screen is up."""
        self.prompt = TextArea(self.initial_prompt or "", id="prompt", soft_wrap=True, show_line_numbers=False)
        self.grid, self.detail_view = DecodeGridView(id="grid"), DetailPane(id="detail")
        self.chart = ChartPane(id="chart")
        self.side = SidePane(id="side")
        self.layer_pane, self.head_pane, self.output = LayerPane(id="layers"), HeadPane(id="heads"), Static(id="output")
        self.tabs, self.status = TabbedContent(id="tabs"), Static(id="status")
        self.overview = OverviewPane(id="overview")
        yield self.prompt
        with self.tabs:
            with TabPane("Lens", id="tab-lens"), Horizontal(id="lens-body"):
                yield self.grid
                with self.side:
                    yield self.detail_view
                    yield self.chart
            with TabPane("Layers", id="tab-layers"):
                yield self.layer_pane
            with TabPane("Heads", id="tab-heads"):
                yield self.head_pane
            with TabPane("Output", id="tab-output"), VerticalScroll(id="output-scroll"):
                yield self.output
            with TabPane("Overview", id="tab-overview"):
                yield self.overview
        yield self.status
        yield Footer()

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    def on_mount(self) -> None:
        self.mark_prompt()
        for message, severity in self._startup_notices:
            self.notify(message, severity=severity, timeout=8)
        self._apply_keymap()
        self._install_hangup()
        self.set_interval(0.2, self.flush_charts)
        self.theme_changed_signal.subscribe(self, lambda _theme: setattr(self, "_charts_dirty", True))
        self.grid.focus() if self.initial_prompt else self.prompt.focus()
        if self.lm is None:  # after the first paint: importing torch in the worker holds the GIL for a while
            self.call_after_refresh(self.start_load, self.model_source)
        else:
            self.post_message(ModelLoaded(self.model_source, self.runs.load_id, self.lm))

    def _apply_keymap(self) -> None:
        try:
            self.set_keymap(load_keymap(self._keymap_path))
        except LayerscopeError as error:
            self.notify(str(error), severity="warning", timeout=8)

    def _install_hangup(self) -> None:
        """A closed terminal (SIGHUP) exits the app, which cancels the workers and frees the model."""
        if self.is_headless or not hasattr(signal, "SIGHUP"):
            return
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.action_quit_now)
        except (NotImplementedError, RuntimeError, ValueError):
            pass

    async def action_quit(self) -> None:
        """Cancel the workers first: each stops at its next block, so the process can end at once."""
        self.workers.cancel_all()
        self.exit()

    def action_quit_now(self) -> None:
        """The terminal is gone: exit at once; `layerscope tui` then ends the process (see `hung_up`)."""
        self.hung_up = True
        self.workers.cancel_all()
        self.exit()

    def set_status(self, text: str) -> None:
        """Stale results (not while a run replaces them) lead the line; then `text` (what is happening), the
        interventions, and what is shown (see views.status_line)."""
        self.status_text = text
        model = self.lm.name if self.lm else self.model_source
        with self.drawing("status line"):
            self.status.update(
                status_line(
                    [] if self.runs.running else self.stale_changes(),
                    text,
                    self.toggles.parts(),
                    [self.method, f"view {self.grid.view}", model],
                    self.status.content_region.width or self.size.width,
                )
            )

    def current_origin(self) -> RunOrigin:
        return RunOrigin(self.lm.name if self.lm else self.model_source, self.prompt.text, self.method, self.toggles)

    def stale_changes(self) -> list[str]:
        """What changed since the shown results were computed (prompt, model, method, interventions)."""
        return self.runs.changes(self.current_origin())

    def refresh_stale(self) -> None:
        """Dim the grid and say so in the status and the Output pane while the results are stale."""
        stale = bool(self.stale_changes())
        self.grid.set_class(stale, "-stale")
        self.set_status(self.status_text)
        self.update_output()

    def mark_prompt(self) -> None:
        """The prompt's title says whether keys go into it."""
        self.prompt.border_title = (
            "prompt · editing, Esc leaves · Ctrl+R runs"
            if self.prompt.has_focus
            else "prompt · e edits · Ctrl+R runs · p: samples"
        )

    def on_descendant_focus(self) -> None:
        self.mark_prompt()

    def on_descendant_blur(self) -> None:
        self.mark_prompt()

    @on(TextArea.Changed, "#prompt")
    def prompt_changed(self) -> None:
        self.refresh_stale()

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = False,
    ) -> None:
        """Messages quote prompts, paths and errors: shown as plain text ('[INST]' stays), control characters
        escaped."""
        super().notify(visible(message), title=title, severity=severity, timeout=timeout, markup=markup)

    @contextmanager
    def drawing(self, what: str) -> Iterator[None]:
        """Draw one pane inside: an exception (a bug, a colour Rich cannot read) becomes one notice per distinct
        failure, and the app stays up with its results; the pane keeps what it showed before."""
        try:
            yield
        except Exception as error:  # whatever goes wrong while drawing, the results stay
            self.drawing_failed(what, error)

    def drawing_failed(self, what: str, error: Exception) -> None:
        text = f"Could not draw the {what} ({type(error).__name__}: {error}".splitlines()[0] + "); results are kept."
        if text not in self._draw_failures:
            self._draw_failures.add(text)
            self.notify(text, severity="error", timeout=10)

    def on_decode_grid_view_draw_failed(self, message: DecodeGridView.DrawFailed) -> None:
        self.drawing_failed("grid", message.error)

    # workers ------------------------------------------------------------
    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every worker's end: an error of any type or a cancel becomes a RunFailed (or LoadFailed) for its job,
        so no 'running …' stays on screen and the next Ctrl+R works."""
        if event.state not in (WorkerState.SUCCESS, WorkerState.ERROR, WorkerState.CANCELLED):
            return
        job = self.runs.job_ended(event.worker)
        if job is None or event.state is WorkerState.SUCCESS:
            return
        error, severity = job.failure(event.worker.error if event.state is WorkerState.ERROR else None)
        if job.kind == "load":
            self.post_message(LoadFailed(job.source, job.ident, error))
        else:
            self.post_message(RunFailed(job.ident, error, severity))

    def start_worker(self, job: Job, group: str, work: Callable[[Worker], None]) -> None:
        """Run `work` in a thread worker of `group` (a new run or scores worker replaces its group's old one) and
        remember its job, so that its end is told whatever happens (on_worker_state_changed)."""
        worker = self.run_worker(
            lambda: work(get_current_worker()), group=group, exclusive=group != "load", thread=True, exit_on_error=False
        )
        self.runs.track(worker, job)

    def start_run(self, kind: str, label: str, cancelled: str, work: Callable[[RunContext], None]) -> None:
        """A new run (older runs' messages are dropped from now on) doing `work` (see tui/workers.py); `label`
        names it in the status line until its first phase reports."""
        run_id, lm = self.runs.begin(), self.lm
        assert lm is not None, "every caller checks first that the model is loaded"
        self.run_label = label
        self.show_progress()
        group = "scores" if kind == "scores" else "run"  # a causal trace replaces the lens run: one grid shows either
        self.start_worker(
            Job(kind, run_id, cancelled),
            group,
            lambda worker: work(RunContext(self.post_message, worker, run_id, lm, self.model_lock)),
        )

    # model loading ------------------------------------------------------
    def start_load(self, source: str) -> None:
        load_id = self.runs.begin_load(source)
        self.set_status(f"loading {source} … · {ESC}")
        self.start_worker(
            Job("load", load_id, f"loading {source} cancelled", source),
            "load",
            lambda _worker: self.load_model(source, load_id),
        )

    def load_model(self, source: str, load_id: int) -> None:
        """In a thread, without the model lock: the loaded model keeps running until the new one replaces it."""
        from layerscope.models.loading import load_model

        def progress(done: int, total: int, description: str) -> None:
            if load_id == self.runs.load_id:
                self.call_from_thread(self.set_status, f"loading {source}: {description} {done}/{total} · {ESC}")

        lm = load_model(
            source,
            device=self.device,
            dtype=self.dtype,
            device_map=self.device_map,
            trust_remote_code=self.trust_remote_code,
            progress=progress,
        )
        self.post_message(ModelLoaded(source, load_id, lm))

    def say_in_panes(self, text: str) -> None:
        """Until a model is loaded, the panes say why they are empty: what is loading and for how long, or that
        no model is. (A query, not query_one: the timer may tick while the app closes and its panes are gone.)"""
        for pane in (
            self.detail_view,
            self.output,
            self.overview,
            *self.query("#layer-hint, #head-hint").results(Static),
        ):
            pane.update(text)

    def on_load_failed(self, message: LoadFailed) -> None:
        if not self.runs.load_ended(message.load_id):  # cancelled with Esc, or replaced by a later load
            return
        self.notify(message.error, severity="error", timeout=10)
        if self.lm is None:
            self.say_in_panes("No model is loaded: L loads one.")
            self.set_status("no model (L: load another)")
        else:
            self.set_status(f"could not load {message.source}; {self.lm.name} stays loaded")

    def on_model_loaded(self, message: ModelLoaded) -> None:
        if not self.runs.load_ended(message.load_id):
            return
        if self.lm is not None and self.lm is not message.lm:  # another model: its blocks and heads differ
            self.toggles = Toggles(seed=self.toggles.seed)
        self.lm = message.lm
        self.model_source = message.source
        self.lens = None
        if self.lens_dir is not None:
            self.load_lens(self.lens_dir)
        if self.steer_file is not None:
            self.load_steer(self.steer_file)
        if not self.runs_now(self.method):
            self.method = "logit_lens"
        self.refresh_panes()
        self.update_detail()
        self._charts_dirty = True
        self.set_status("ready")
        self.refresh_stale()
        if self.prompt.text.strip():
            self.action_run()

    def refresh_panes(self) -> None:
        if self.lm is None:
            return
        adapter = self.lm.adapter
        with self.drawing("Layers pane"):
            self.layer_pane.show(self.toggles, adapter.n_blocks)
        with self.drawing("Heads pane"):
            self.head_pane.show(self.toggles, adapter.n_blocks, adapter.n_heads, adapter.n_kv_heads)
        self.refresh_stale()

    # runs ---------------------------------------------------------------
    def runnable_prompt(self) -> str | None:
        """The prompt, or None (and a notice) while no model is loaded or the prompt is empty."""
        if self.lm is None:
            loading = self.runs.loading
            self.notify(
                f"{loading} is still loading." if loading else "No model is loaded (L loads one).", severity="warning"
            )
            return None
        text = self.prompt.text
        if not text.strip():
            self.notify("The prompt is empty: type one, or press p for samples.", severity="error")
            return None
        return text

    def action_run(self) -> None:
        """Run the prompt; while the first model loads, as soon as it is ready (on_model_loaded runs the prompt)."""
        if self.lm is None and self.runs.loading is not None:
            self.notify(f"Ctrl+R: the prompt runs as soon as {self.runs.loading} is loaded.", timeout=4)
            return
        text = self.runnable_prompt()
        if text is None:
            return
        if self.focused is self.prompt:  # from typing to reading: e goes back to the prompt
            self.focus_pane()
        method, toggles, top_k, lens, length, grow = (
            self.method,
            self.toggles,
            self.top_k,
            self.lens,
            self.continuation_tokens,
            self.grow_grid,
        )
        self.start_run(
            "run",
            "starting",
            RUN_CANCELLED,
            lambda run: workers.lens_run(run, text, method, toggles, top_k, lens, length, grow),
        )

    def on_run_started(self, message: RunStarted) -> None:
        self.runs.start_results(message.run_id, message.baseline, message.intervened, message.origin)

    def on_row_computed(self, message: RowComputed) -> None:
        if not self.runs.is_current(message.run_id):
            return
        if self.runs.take_pending():
            self.show_results()
            self.refresh_stale()
        self.runs.add_row(message.row)
        self.grid.rows_added()
        self._charts_dirty = True
        self.update_detail()

    def on_column_computed(self, message: ColumnComputed) -> None:
        if not self.runs.is_current(message.run_id):
            return
        self.runs.add_column(message.column)
        self.grid.rows_added()
        self._charts_dirty = True
        self.update_detail()
        self.update_output()  # the divergence, once the continuations part

    def on_run_progress(self, message: RunProgress) -> None:
        if self.runs.set_progress(message.run_id, message.description, message.done, message.total):
            self.show_progress()

    def show_progress(self) -> None:
        """The running phase with its count, the time since it started, once a step is done the time it still
        needs at its pace so far, and how to stop it ('lens rows 12/31 · 1.4 s · ~0.2 s left · Esc cancels'); the
        chart timer refreshes it, so the clock moves while a step that reports nothing (a forward pass) works."""
        phase = self.run_label if self.runs.progress is None else "{} {}/{}".format(*self.runs.progress)
        left = self.runs.time_left()
        estimate = f" · ~{duration(left)} left" if left is not None else ""
        self.set_status(f"{phase} · {self.runs.elapsed():.1f} s{estimate} · {ESC}")

    def on_run_finished(self, message: RunFinished) -> None:
        if self.runs.end(message.run_id):
            self.runs.results.continuation = message.continuation
            self.update_output()
            self.set_status(f"done in {self.runs.elapsed():.1f} s")

    def on_run_failed(self, message: RunFailed) -> None:
        """A failed or cancelled worker of the current, still running run (a late cancel of a finished one is
        dropped): a notice, and the status says it instead of 'running …'."""
        if self.runs.running and self.runs.end(message.run_id):
            self.notify(message.error, severity=message.severity)
            self.set_status(message.error)

    def action_cancel(self) -> None:
        """Esc stops the running work; with nothing running it leaves the prompt for the grid."""
        if self.runs.running:
            self.workers.cancel_group(self, "run")
            self.workers.cancel_group(self, "scores")
        elif (source := self.runs.cancel_load()) is not None:  # the loader cannot be interrupted: result dropped
            kept = f"{self.lm.name} stays loaded" if self.lm else "no model"
            if self.lm is None:
                self.say_in_panes("No model is loaded: L loads one.")
            self.set_status(f"loading {source} cancelled; {kept}")
        elif self.focused is self.prompt:
            self.focus_pane()

    # showing results ----------------------------------------------------
    def show_results(self) -> None:
        results, origin = self.runs.results, self.runs.origin
        self.grid.set_grids(REGISTRY[origin.method if origin else self.method], results.baseline, results.intervened)
        self._charts_dirty = True
        self.update_detail()
        self.update_output()

    def shown(self) -> tuple[GridMethod, Results]:
        """The method the grid shows and its results: the lens results, or the last grid of another method (a
        causal trace, a head pattern) while the grid shows that."""
        method = self.grid.method or REGISTRY[self.method]
        other = self.runs.other
        if other is not None and other[0] == method.name:
            return method, other[1]
        return method, self.runs.results

    def cursor(self) -> Cursor:
        """The grid's cursor and the row labels of the whole run (`emb`, 0..L-1 for a lens, however many rows
        have arrived), as the detail text and the charts use them."""
        method, results = self.shown()
        baseline = results.baseline
        if method.rows is not None and self.lm is not None:
            from layerscope.analyses.residual import layer_labels  # torch: loaded with the model

            rows = layer_labels(self.lm.n_blocks)
        else:
            rows = list(baseline.layers) if baseline is not None else []
        return Cursor(self.grid.cursor_layer, self.grid.cursor_position, rows)

    def update_detail(self) -> None:
        method, results = self.shown()
        if self.lm is None and results.baseline is None:  # the panes say what is loading (see say_in_panes)
            return
        width = self.detail_view.size.width or DETAIL_WIDTH
        with self.drawing("cell detail"):
            self.detail = method.detail(results, self.cursor(), width)
            self.detail_view.update(self.detail)

    def chart_data(self) -> list[Chart]:
        """The side charts at the cursor, as the shown method makes them (tui/methods.py)."""
        method, results = self.shown()
        shown = self.grid.shown
        return [] if shown is None else method.charts(results, shown, self.cursor(), self.current_theme)

    def charts(self, width: int, height: int) -> Text:
        return stack(self.chart_data(), width, height)

    def flush_charts(self) -> None:
        """Called on a timer: at most one chart build per tick, however fast rows or keys arrive."""
        if self.runs.running:
            self.show_progress()
        if self.lm is None and self.runs.loading is not None:
            self.say_in_panes(
                f"Loading {self.runs.loading} … {self.runs.load_elapsed():.0f} s\n"
                "Ctrl+R runs the prompt as soon as it is ready."
            )
        if not self._charts_dirty:
            return
        self._charts_dirty = False
        if self.chart.size.area:  # hidden: drawn when it shows again (its resize marks it dirty)
            with self.drawing("chart"):
                self.chart.update(self.charts(self.chart.size.width, self.chart.size.height))
        if self.overview.size.area:
            self.update_overview()

    def update_overview(self) -> None:
        with self.drawing("overview"):
            self._update_overview()

    def _update_overview(self) -> None:
        if self.overview.metric == "kl_base_int" and not self.runs.results.kl_base_int:
            self.overview.metric = "kl_to_final"
        method = self.grid.method
        if method is not None and method.rows is None:  # the methods Ctrl+R runs are the lens grids it maps
            self.overview.update(
                f"The overview maps the lens grids; the {method.name.replace('_', ' ')} is in the Lens tab (1)."
            )
            return
        grid, size = self.grid, self.overview.size
        shown = cast("DecodeGrid | None", grid.shown)
        self.overview.update(
            overview(
                self.runs.results,
                shown,
                grid.view,
                self.overview.metric,
                (grid.cursor_layer, grid.cursor_position),
                size.width,
                size.height,
                rich_theme(self.current_theme).primary,
            )
        )

    def on_detail_pane_resized(self) -> None:
        self.update_detail()

    def on_chart_pane_resized(self) -> None:
        self._charts_dirty = True

    def on_overview_pane_moved(self, message: OverviewPane.Moved) -> None:
        self.grid.move_to(self.grid.cursor_layer + message.dx, self.grid.cursor_position + message.dy)
        self.update_overview()

    def on_overview_pane_open_cell(self) -> None:
        self.action_tab(0)

    def update_output(self) -> None:
        with self.drawing("Output pane"):
            self.output_text = output_text(
                self.runs.results, self.runs.origin, self.stale_changes(), self.toggles.describe()
            )
            self.output.update(self.output_text)

    @on(DecodeGridView.CursorMoved)
    def cursor_moved(self) -> None:
        self.update_detail()
        self._charts_dirty = True

    # toggles ------------------------------------------------------------
    def apply_toggles(self, toggles: Toggles) -> None:
        """Check the new set against the engine's rules before any compute; an incompatible one is refused."""
        if self.lm is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return
        from layerscope.interventions import ModelShape, check_interventions

        shape = ModelShape(self.lm.n_blocks, self.lm.adapter.n_heads)
        try:
            check_interventions(toggles.interventions(self.lm.n_blocks), shape)
        except LayerscopeError as error:
            self.notify(refusal(self.toggles, toggles, shape, error), severity="error")
            return
        changed = toggles.effective() != self.toggles.effective()  # a seed or factor nothing uses changes nothing
        self.toggles = toggles
        self.refresh_panes()
        if not REGISTRY[self.method].intervenable and not toggles.is_empty:
            lenses = " and ".join(name.replace("_", " ") for name, m in REGISTRY.items() if m.intervenable)
            self.notify(f"Interventions apply to the {lenses}; press m to switch.", severity="warning")
        if changed and self.prompt.text.strip():
            self.action_run()

    def on_layer_pane_toggled(self, message: LayerPane.Toggled) -> None:
        if message.kind == "steer" and not self._has_steer_vector():
            return
        self.apply_toggles(self.toggles.toggle(message.kind, message.block))

    def on_layer_pane_seed_changed(self) -> None:
        self.apply_toggles(replace(self.toggles, seed=self.toggles.seed + 1))

    def on_head_pane_mask_toggled(self, message: HeadPane.MaskToggled) -> None:
        """Masks wait for the next run (Ctrl+R): masking several heads should not start several runs."""
        self.toggles = self.toggles.toggle_head(message.layer, message.head)
        self.refresh_panes()

    def on_head_pane_mode_toggled(self) -> None:
        self.toggles = replace(self.toggles, mask_mode="uniform" if self.toggles.mask_mode == "zero" else "zero")
        self.refresh_panes()

    def _has_steer_vector(self) -> bool:
        """Whether the steer column has a vector; if not, a notice says how to give one."""
        if self.toggles.steer_vector is None:
            self.notify(
                "No steering vector: start the explorer with --steer FILE (from 'layerscope steer vector').",
                severity="warning",
            )
        return self.toggles.steer_vector is not None

    def on_layer_pane_steer_factor_changed(self) -> None:
        """The next factor of STEER_FACTORS (the steer column adds the vector times it)."""
        if not self._has_steer_vector():
            return
        at = STEER_FACTORS.index(self.toggles.steer_factor) if self.toggles.steer_factor in STEER_FACTORS else -1
        self.apply_toggles(replace(self.toggles, steer_factor=STEER_FACTORS[(at + 1) % len(STEER_FACTORS)]))

    def on_layer_pane_steer_positions_asked(self) -> None:
        """Where the steer column adds the vector: all, last, or prompt positions (`--steer-positions`)."""
        if not self._has_steer_vector():
            return

        def chosen(answer: str | None) -> None:
            if answer is None:
                return
            try:
                positions = parse_option("steer_positions", answer)
            except LayerscopeError as error:
                self.notify(f"Steer positions: {error}", severity="error")
                return
            self.apply_toggles(replace(self.toggles, steer_positions=positions))

        self.push_screen(
            InputScreen(
                "Steer positions (all, last, or prompt positions such as 0,4-6):",
                steer_where(self.toggles.steer_positions),
            ),
            chosen,
        )

    def load_steer(self, path: Path) -> None:
        """The steering vector for the steer column, checked against the loaded model; a bad file is a notice."""
        from layerscope.analyses.steering import SavedVector

        assert self.lm is not None  # loaded with the model
        try:
            saved = SavedVector.load(path)
            saved.check_model(self.lm)
        except LayerscopeError as error:
            self.notify(f"No steering vector: {error}", severity="error")
            return
        self.toggles = replace(self.toggles, steer_vector=saved)
        self.refresh_panes()

    def action_clear_interventions(self) -> None:
        self.apply_toggles(Toggles(seed=self.toggles.seed, steer_vector=self.toggles.steer_vector))

    # head scores --------------------------------------------------------
    def on_head_pane_scores_wanted(self, message: HeadPane.ScoresWanted) -> None:
        if self.lm is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return
        kind, quick = message.kind, message.quick
        self.start_run(
            "scores",
            f"{kind} scores{' (quick)' if quick else ''}",
            f"{kind} scores cancelled",
            lambda run: workers.head_scores(run, kind, quick),
        )

    def on_scores_computed(self, message: ScoresComputed) -> None:
        """Scores are kept even when a newer run started: they do not depend on the prompt."""
        self.runs.end(message.run_id)
        assert self.lm is not None, "scores come from a run, and runs start only with a model loaded"
        sources = QUICK_SOURCES if message.quick else SCORE_SOURCES
        self.head_pane.set_scores(message.kind, message.scores, f"{self.lm.name}, {sources[message.kind]}")
        self.set_status(f"{message.kind} scores ready")

    def on_head_pane_load_wanted(self) -> None:
        self._ask_path("Load head scores (JSON from a head command):", "head-scores.json", self.load_scores)

    def load_scores(self, path: Path) -> None:
        if self.lm is None:
            raise LayerscopeError("Load a model before its head scores.")
        from layerscope.analyses.heads import load_head_scores

        scores = load_head_scores(path, self.lm)
        self.head_pane.set_scores(
            scores.kind, {(h.layer, h.head): h.score for h in scores.heads}, f"{scores.model}, loaded from {path}"
        )
        self.notify(f"{scores.kind} scores loaded from {path}")

    # a head's attention pattern ---------------------------------------
    def on_head_pane_pattern_wanted(self, message: HeadPane.PatternWanted) -> None:
        self.show_pattern((message.layer, message.head))

    def show_pattern(self, head: tuple[int, int]) -> None:
        """Read the head's attention over the prompt (with the current interventions, if any) in the run worker's
        group; its grid takes the lens grid's place."""
        text = self.runnable_prompt()
        if text is None:
            return
        toggles = self.toggles
        self.start_run(
            "pattern",
            f"head {head[0]}.{head[1]} attention",
            "attention pattern cancelled",
            lambda run: workers.head_pattern(run, text, head, toggles),
        )

    def on_pattern_computed(self, message: PatternComputed) -> None:
        if not self.runs.end(message.run_id):
            return
        method = REGISTRY["head_pattern"]
        baseline = PatternGrid.of(message.baseline, message.head)
        intervened = PatternGrid.of(message.intervened, message.head) if message.intervened is not None else None
        self.runs.other = (method.name, Results(baseline, intervened))
        self.grid.set_grids(method, baseline, intervened)
        self.action_tab(0)
        self._charts_dirty = True
        self.update_detail()
        layer, head = message.head
        self.set_status(f"head {layer}.{head} attention pattern; Space masks it, Ctrl+R returns to the lens")

    def on_decode_grid_view_mask_head_wanted(self) -> None:
        """Space on a head's pattern: mask (or unmask) that head, then show its pattern again with the mask."""
        method, results = self.shown()
        if method.name != "head_pattern":
            return
        head = results.baseline.head
        self.toggles = self.toggles.toggle_head(*head)
        self.refresh_panes()
        self.notify(
            f"head {head[0]}.{head[1]} {'masked' if head in self.toggles.masked_heads else 'unmasked'} "
            f"({self.toggles.mask_mode}); the pattern reruns with it"
        )
        self.show_pattern(head)

    # causal trace -------------------------------------------------------
    def action_causal_trace(self) -> None:
        """Ask for the subject (noised) and the answer, then trace the prompt in the run worker's group."""
        text = self.runnable_prompt()
        if text is None:
            return

        def got_subject(subject: str | None) -> None:
            if subject:
                self.trace_subject = subject
                self.push_screen(
                    InputScreen("Answer word (a space goes before it; empty: the model's own next token):", ""),
                    lambda answer: self.start_trace(text, subject, answer),
                )

        self.push_screen(
            InputScreen("Causal trace: the subject (a part of the prompt, noised):", self.trace_subject), got_subject
        )

    def start_trace(self, text: str, subject: str, answer: str | None) -> None:
        answer = None if answer is None else f" {answer}"
        self.start_run(
            "trace",
            "causal trace",
            "causal trace cancelled",
            lambda run: workers.causal_trace(run, text, subject, answer),
        )

    def on_trace_computed(self, message: TraceComputed) -> None:
        if not self.runs.end(message.run_id):
            return
        method = REGISTRY["causal_trace"]
        self.runs.other = (method.name, Results(message.trace))
        self.grid.set_grids(method, message.trace, None)
        self._charts_dirty = True
        self.update_detail()
        self.set_status(f"causal trace done in {self.runs.elapsed():.1f} s; the lens grid returns with Ctrl+R")

    # actions ------------------------------------------------------------
    def action_tab(self, index: int) -> None:
        self.tabs.active = TABS[index]
        self.focus_pane()

    def focus_pane(self) -> None:
        """Focus the shown tab's pane at once (not after the keys already typed: see `action_edit_prompt`)."""
        target = {
            "tab-lens": self.grid,
            "tab-layers": self.layer_pane.query_one(DataTable),
            "tab-heads": self.head_pane.query_one(DataTable),
            "tab-output": self.query_one("#output-scroll"),
            "tab-overview": self.overview,
        }[self.tabs.active]
        self.screen_stack[0].set_focus(target)

    def action_edit_prompt(self) -> None:
        """Focus the prompt with the cursor at its end, ready to extend it. A priority binding, handled as the
        key arrives: a plain one runs only once the key has gone through the focused pane, and the keys typed
        right after it would already be on their way to that pane as commands (`e x` opened the CSV export).
        In the prompt or a dialog, `e` is text."""
        if self.focused is self.prompt or self.screen is not self.screen_stack[0]:
            raise SkipAction
        self.screen.set_focus(self.prompt)
        self.prompt.move_cursor(self.prompt.document.end)

    def runs_now(self, method: str) -> bool:
        """Whether `method` can run: it reads no lens, or the kind of lens loaded."""
        kind = REGISTRY[method].lens
        return not kind or (self.lens is not None and self.lens.kind == kind)

    def action_switch_method(self) -> None:
        """The next method `m` cycles (logit lens -> tuned or Jacobian lens -> Patchscope); a lens method is
        skipped while its kind of lens is not loaded (said once while none is)."""
        methods = cycled()
        method = methods[(methods.index(self.method) + 1) % len(methods)]
        while not self.runs_now(method):
            method = methods[(methods.index(method) + 1) % len(methods)]
        if self.lens is None and not self._said_no_lens:
            self._said_no_lens = True
            self.notify("No lens loaded, so m skips the tuned and Jacobian lenses: press T (or start with --lens DIR).")
        self.method = method
        self.set_status(self.status_text)
        if self.lm is not None and self.prompt.text.strip():
            self.action_run()

    def action_cycle_view(self) -> None:
        grid = self.grid
        grid.view = VIEWS[(VIEWS.index(grid.view) + 1) % len(VIEWS)]
        self._charts_dirty = True
        self.update_detail()
        self.set_status(self.status_text)

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(pane, binding_rows([owner], self._keymap)) for pane, owner, _ in self.panes()]))

    def panes(self) -> list[tuple[str, type[DOMNode], DOMNode]]:
        """(name, class, instance) of every owner of bindings: the app, then each pane."""
        return [
            ("Everywhere", type(self), self),
            ("Lens grid", DecodeGridView, self.grid),
            ("Side", SidePane, self.side),
            ("Layers", LayerPane, self.layer_pane),
            ("Heads", HeadPane, self.head_pane),
            ("Overview", OverviewPane, self.overview),
        ]

    def binding_rows(self) -> list[tuple[str, str, str]]:
        """(keys, description, id) of every binding, with the user's keymap applied."""
        return binding_rows([owner for _, owner, _ in self.panes()], self._keymap)

    def action_next_theme(self) -> None:
        names = sorted(self.available_themes)
        self.theme = names[(names.index(self.theme) + 1) % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)

    def action_samples(self) -> None:
        choices = sample_prompts(SAMPLE_PROMPTS)
        if not choices:
            self.notify(f"No sample prompts in {SAMPLE_PROMPTS}.", severity="warning")
            return

        def chosen(index: int | None) -> None:
            """A picked prompt runs at once (with a model loaded); until its rows come the grid shows stale."""
            if index is not None:
                self.prompt.text = choices[index][1]
                if self.lm is not None:
                    self.action_run()

        self.push_screen(PickScreen("Sample prompts", [label for label, _ in choices]), chosen)

    def action_open_model(self) -> None:
        def chosen(source: str | None) -> None:
            if source:
                self.start_load(source)

        self.push_screen(InputScreen("Model ('demo', hub id, folder or .gguf):", self.model_source), chosen)

    def action_open_lens(self) -> None:
        self._ask_path(
            "Lens folder (from `layerscope tunedlens train` or `jacobianlens fit`):",
            str(self.lens_dir or ""),
            self.load_lens,
        )

    def load_lens(self, folder: Path) -> None:
        """Load and check the lens against the model; a bad folder is one error notice and the old lens stays."""
        if self.lm is None:
            self.lens_dir = folder  # loaded with the model
            return
        from layerscope.analyses.jacobian_lens import read_lens

        try:
            self.lens, mismatch = read_lens(self.lm, folder)
        except LayerscopeError as error:
            self.notify(str(error), severity="error", timeout=10)
            return
        if mismatch is not None:
            self.notify(mismatch, severity="warning", timeout=10)
        self.lens_dir = folder
        if not self.runs_now(self.method):  # the other kind of lens replaced the one this method reads
            self.method = "logit_lens"
            self.set_status(self.status_text)
        self.notify(f"{self.lens.kind} lens loaded from {folder}: m switches to it")

    def _ask_path(self, title: str, default: str, then: Callable[[Path], None], writes: bool = False) -> None:
        """Ask for a path and pass it on; a user mistake or a file error (a folder given as the file, a full disk)
        is one error notice and the app stays up. With `writes`, an existing file is replaced only once the user
        says so."""

        def use(path: Path) -> None:
            try:
                then(path)
            except LayerscopeError as error:
                self.notify(str(error), severity="error")
            except OSError as error:
                self.notify(f"Cannot use '{path}': {error.strerror or error}", severity="error")

        def chosen(answer: str | None) -> None:
            if not answer:
                return
            path = Path(answer).expanduser()
            if writes and path.is_file():
                self.push_screen(
                    ConfirmScreen(f"'{path}' exists. Replace it?"),
                    lambda yes: use(path) if yes else self.notify(f"Not saved: '{path}' is unchanged."),
                )
            else:
                use(path)

        self.push_screen(InputScreen(title, default), chosen)

    def session(self) -> Session:
        return Session(
            self.lm.name if self.lm else self.model_source,
            self.prompt.text,
            self.method,
            self.toggles,
            self.runs.results,
        )

    def action_save_session(self) -> None:
        self._ask_path(
            "Save session to:", str(self.last_session or "layerscope-session.json"), self.save_session, writes=True
        )

    def save_session(self, path: Path) -> None:
        self.session().save(path)
        self.last_session = path
        self.notify(f"session saved to {path}")

    def action_load_session(self) -> None:
        self._ask_path("Open session:", str(self.last_session or "layerscope-session.json"), self.load_session)

    def load_session(self, path: Path) -> None:
        """The session's prompt, method, interventions and results replace the app's; a running run is stopped."""
        session = Session.load(path)
        if session.toggles.chosen("steer") and self.toggles.steer_vector is None:
            rows = ", ".join(map(str, sorted(session.toggles.chosen("steer"))))
            raise LayerscopeError(
                f"'{path}' steers at row {rows}: start the explorer with --steer FILE (its vector) to open it."
            )
        self.workers.cancel_group(self, "run")
        self.runs.adopt(session.results, RunOrigin(session.model, session.prompt, session.method, session.toggles))
        self.prompt.text = session.prompt
        self.method, self.toggles = session.method, replace(session.toggles, steer_vector=self.toggles.steer_vector)
        self.refresh_panes()
        self.show_results()
        self.refresh_stale()
        if self.lm is not None and session.model != self.lm.name:
            self.notify(
                f"The session was made with {session.model}; the loaded model is {self.lm.name}.", severity="warning"
            )
        self.last_session = path
        self.notify(f"session loaded from {path}")

    def action_export_csv(self) -> None:
        self._ask_path("Export the grid (CSV) to:", "layerscope-grid.csv", self.export_csv, writes=True)

    def export_csv(self, path: Path) -> None:
        """The shown grid, with its view and the interventions its numbers were computed with."""
        method, _ = self.shown()
        self.notify(export_csv(method, self.grid.shown, path, *self.shown_provenance()))

    def action_export_figure(self) -> None:
        self._ask_path(
            "Export the grid as a figure (.svg, .png or .pdf) to:",
            "layerscope-grid.svg",
            self.export_figure,
            writes=True,
        )

    def export_figure(self, path: Path) -> None:
        """The shown grid as a figure, its view and interventions in the caption."""
        self.notify(export_figure(self.grid.shown, path, *self.shown_provenance()))

    def on_side_pane_export_charts(self) -> None:
        self._ask_path(
            "Export the side panel's charts as a figure (.svg, .png or .pdf) to:",
            "layerscope-charts.svg",
            self.export_charts,
            writes=True,
        )

    def export_charts(self, path: Path) -> None:
        """The side panel's charts at the cursor, drawn from their own data, with the model, prompt, method,
        position and interventions they were computed from in the caption."""
        from layerscope.figures.common import prompt_caption

        method, results = self.shown()
        origin, position = self.runs.origin, self.grid.cursor_position
        tokens = results.baseline.tokens if results.baseline is not None else []
        token = f" ({token_label(tokens[position], 16)})" if position < len(tokens) else ""
        toggles = origin.toggles if origin is not None else self.toggles
        interventions = toggles.describe() if results.intervened is not None else "none"
        self.notify(
            export_charts(
                self.chart_data(),
                path,
                f"{method.name.replace('_', ' ')} at position {position}{token}",
                [
                    f"model: {origin.model if origin is not None else self.model_source}",
                    prompt_caption(tokens),
                    f"interventions: {interventions}",
                ],
            )
        )

    def shown_provenance(self) -> tuple[str, str]:
        """The view the grid shows (baseline or intervened) and the interventions its numbers were computed with."""
        origin = self.runs.origin
        _, results = self.shown()
        intervened = self.grid.shown is not None and self.grid.shown is results.intervened
        toggles = origin.toggles if origin is not None else self.toggles
        return "intervened" if intervened else "baseline", toggles.describe() if intervened else "none"

    def action_copy_cell(self) -> None:
        """The cell under the cursor as plain text, its tokens raw, as the shown method writes it."""
        grid, shown = self.grid, self.grid.shown
        if shown is None or not grid.n_layers:
            self.notify("Nothing to copy yet: run a prompt first.", severity="warning")
            return
        method, results = self.shown()
        text = method.clipboard(results, self.cursor())
        self.copy_to_clipboard(text)
        self.notify(
            f"copied cell {shown.layers[grid.cursor_layer]}@{grid.cursor_position} · {byte_size(text)} (OSC 52)",
            timeout=3,
        )

    def action_copy_grid(self) -> None:
        shown = self.grid.shown
        text = grid_text(self.grid.method, shown)
        if shown is None or not text:
            self.notify("Nothing to copy yet: run a prompt first.", severity="warning")
            return
        self.copy_to_clipboard(text)
        self.notify(f"copied grid · {grid_shape(shown)} · {byte_size(text)} TSV (OSC 52)", timeout=3)

    def action_toggle_side(self) -> None:
        """Hide or show the detail and chart panel: the grid gets the room."""
        self.side.toggle_class("-hidden")
        focused = self.focused
        if self.side.has_class("-hidden") and focused is not None and self.side in focused.ancestors_with_self:
            self.screen.set_focus(self.grid)
        self._charts_dirty = True

    def action_grow_grid(self) -> None:
        """The lens grid over the prompt and the continuation (the default), or over the prompt alone."""
        self.grow_grid = not self.grow_grid
        if self.grow_grid:
            self.notify(
                f"The lens grid grows over the {self.continuation_tokens}-token continuation from the next run "
                "(Ctrl+R); n sets its length, d goes to where baseline and intervened diverge."
            )
        else:
            self.notify("The lens grid covers the prompt only from the next run (Ctrl+R); g grows it again.")

    def action_go_to_divergence(self) -> None:
        """The grid's cursor to the first generated position where the baseline's and the intervened
        continuations differ (a grid grown over them: `g`), in the Lens tab."""
        position, why = divergence_point(self.runs.results)
        if position is None:
            self.notify(why, severity="warning")
            return
        self.action_tab(0)
        self.grid.move_to(self.grid.cursor_layer, position)

    def action_continuation_length(self) -> None:
        def chosen(answer: str | None) -> None:
            if answer is None:
                return
            tokens = whole_number_in(answer, 0, 512)
            if tokens is None:
                self.notify(
                    f"Continuation length must be a whole number from 0 to 512, not '{answer}'.", severity="error"
                )
                return
            self.continuation_tokens = tokens
            self.notify(f"continuation: {self.continuation_tokens} tokens from the next run (Ctrl+R)")

        self.push_screen(InputScreen("Continuation tokens (0-512):", str(self.continuation_tokens)), chosen)

    def get_system_commands(self, screen: Screen) -> Iterator[SystemCommand]:
        """Textual's commands, then every action of every pane with its keys ('Side panel (z)'); cursor moves
        are left to the keys. A pane's action shows its pane first."""
        yield from super().get_system_commands(screen)
        for pane, owner, node in self.panes():
            keys: dict[str, list[str]] = {}  # action -> its keys, in binding order
            titles: dict[str, str] = {}
            for binding in owner.BINDINGS:
                if isinstance(binding, Binding) and not binding.action.startswith("move("):
                    keys.setdefault(binding.action, []).append(self._keymap.get(binding.id or "", binding.key))
                    titles.setdefault(binding.action, binding.description or binding.action)
            for action, its_keys in keys.items():
                help_text = PALETTE_HELP.get(action, "anywhere" if node is self else f"in the {pane} pane")
                yield SystemCommand(
                    f"{titles[action]} ({key_display(','.join(its_keys))})",
                    help_text,
                    partial(self.run_from_palette, node, action),
                )

    def run_from_palette(self, node: DOMNode, action: str) -> None:
        """A palette command: a pane's action runs on that pane, shown and focused first."""
        if node is not self:
            self.action_tab(next(i for i, tab in enumerate(TABS) if node in self.query_one(f"#{tab}").walk_children()))
        self.call_later(self.run_action, action, node)
