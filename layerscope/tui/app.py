"""The layerscope explorer: prompt, decode grid, layer and head toggles, charts, continuation.

This module imports no torch, transformers or engine code at the top, so the
first frame paints at once; the model loads in a thread worker. All model
work runs in thread workers under one lock; every message carries the run id
it belongs to and the app drops stale ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane, TextArea
from textual.worker import get_current_worker

from layerscope.errors import LayerscopeError
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.tui.grid_view import VIEWS, DecodeGridView, cell_text, token_label, visible
from layerscope.tui.charts import MIN_PLOT_HEIGHT, Series, first_final_bars, layer_chart, overview_text
from layerscope.tui.keymap import load_keymap, user_keymap_path
from layerscope.tui.panes import (OVERVIEW_TITLES, SCORE_SOURCES, ChartPane, HeadPane, LayerPane, OverviewPane,
                                  detail_text, first_final_rows, trace_detail_text)
from layerscope.tui.screens import HelpScreen, InputScreen, PickScreen
from layerscope.tui.state import INTERVENABLE, Results, RunOrigin, Session, Toggles, sample_prompts
from layerscope.tui.themes import DEFAULT_THEME, FALLBACK_THEME, SHIPPED_THEMES, load_themes, user_theme_folder

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.tuned_lens import TunedLens
    from layerscope.models.loading import LoadedModel
    from layerscope.progress import ProgressFn
    from layerscope.tui.compute import LayerRow

METHODS = ("logit_lens", "tuned_lens", "patchscope")
TABS = ("tab-lens", "tab-layers", "tab-heads", "tab-output", "tab-overview")


def byte_size(text: str) -> str:
    """'161 B', '36 KB', '2.4 MB': the UTF-8 size of what was copied or written."""
    size = len(text.encode("utf-8"))
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.0f} KB" if size < 1_000_000 else f"{size / 1_000_000:.1f} MB"


def continuation_text(continuations: dict[str, str]) -> Text:
    """Each continuation on its line; where baseline and intervened part ways, the rest is highlighted."""
    texts = list(continuations.values())
    shared = len(os.path.commonprefix(texts)) if len(texts) == 2 and texts[0] != texts[1] else None
    text = Text()
    for name, continuation in continuations.items():
        text.append(f"\n{name:>10} continuation: \"")
        end = len(continuation) if shared is None else shared
        text.append(visible(continuation[:end].replace("\n", "⏎")))
        text.append(visible(continuation[end:].replace("\n", "⏎")), "bold reverse")
        text.append('"')
    if shared is not None:
        text.append(f"\ncontinuations diverge after {shared} character{'' if shared == 1 else 's'} (highlighted)")
    return text


class _Cancelled(Exception):
    """Raised inside a worker when the user cancelled a step that has no row boundary of its own."""


@contextmanager
def stop_between_blocks(lm: LoadedModel, cancelled: Callable[[], bool]) -> Iterator[None]:
    """While inside, every block checks `cancelled()` before it runs and raises _Cancelled: a quit or Esc lands
    within one block's time even in the middle of a forward pass (the process cannot exit before the worker)."""
    def check(_module, _args) -> None:
        if cancelled():
            raise _Cancelled

    handles = [block.register_forward_pre_hook(check) for block in lm.adapter.blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class ModelLoaded(Message):
    def __init__(self, lm: LoadedModel | None, error: str | None, source: str = "", load_id: int = 0) -> None:
        super().__init__()
        self.lm, self.error, self.source, self.load_id = lm, error, source, load_id


class RunMessage(Message):
    """Every message of a run carries its id; the app ignores ids other than the latest."""

    def __init__(self, run_id: int, **data: Any) -> None:
        super().__init__()
        self.run_id = run_id
        self.data = data


class RunStarted(RunMessage): ...


class RowArrived(RunMessage): ...


class RunProgress(RunMessage): ...


class RunFinished(RunMessage): ...


class RunFailed(RunMessage): ...


class ScoresComputed(RunMessage): ...


class TraceComputed(RunMessage): ...


class LayerscopeApp(App):
    """Keyboard-first explorer over one loaded model."""

    TITLE = "layerscope"
    CSS = """
    #prompt { height: 4; border: round $primary 50%; }
    #prompt:focus { border: round $primary; }
    #lens-body { height: 1fr; }
    #grid { width: 1fr; height: 1fr; }
    #grid.-stale { text-opacity: 55%; }
    #side { width: 34%; min-width: 26; max-width: 48; height: 1fr; border-left: vkey $panel; }
    #side.-hidden { display: none; }
    #detail { height: auto; max-height: 40%; overflow-y: auto; }
    #chart { height: 1fr; min-height: 9; text-wrap: nowrap; text-overflow: clip; }
    #overview { height: 1fr; text-wrap: nowrap; text-overflow: clip; }
    #status { height: 1; background: $panel; color: $foreground; padding: 0 1; }
    #layer-hint, #head-hint { height: auto; color: $foreground 80%; }
    LayerPane DataTable, HeadPane DataTable { height: 1fr; }
    TabbedContent { height: 1fr; }
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
        Binding("e", "edit_prompt", "Prompt", id="edit_prompt"),
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
        Binding("y", "copy_cell", "Copy cell", show=False, id="copy_cell"),
        Binding("Y", "copy_grid", "Copy grid", show=False, id="copy_grid"),
        Binding("t", "next_theme", "Theme", show=False, id="next_theme"),
        Binding("z", "toggle_side", "Side panel", id="toggle_side"),
        Binding("n", "continuation_length", "Continuation length", show=False, id="continuation_length"),
        Binding("L", "open_model", "Load model", show=False, id="open_model"),
        Binding("T", "open_lens", "Load tuned lens", show=False, id="open_lens"),
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
    ) -> None:
        super().__init__()
        self.device, self.dtype, self.top_k = device, dtype, top_k
        self.model_source = (getattr(lm.model, "name_or_path", "") or model) if lm is not None else model
        """What loaded (or is to load) the model, as the user can type it again: 'demo', a hub id or a path."""
        self.loading: str | None = None  # the source a load worker is loading, None when none is
        self.load_id = 0  # a cancelled load's result is dropped by its id
        self.continuation_tokens = continuation_tokens
        self.device_map, self.trust_remote_code = device_map, trust_remote_code
        self.lm: LoadedModel | None = lm
        self.initial_prompt = prompt
        self.toggles = Toggles()
        self.results = Results()
        self.origin: RunOrigin | None = None  # what self.results were computed from
        self._pending: tuple[Results, RunOrigin] | None = None
        self._progress: tuple[str, int, int] | None = None  # the running phase: description, done, total
        self._run_started = 0.0
        self.hung_up = False
        self.method = "logit_lens"
        self.lens_dir = lens_dir  # the tuned lens folder asked for; loaded (and checked) once the model is
        self.tuned: TunedLens | None = None
        self._said_no_lens = False
        self.trace: CausalTrace | None = None  # the last causal trace; shown until the next lens results
        self.trace_subject = ""
        self.run_id = 0
        self.running = False
        self.model_lock = threading.Lock()
        self.status_text = ""
        self._charts_dirty = False
        self.detail = Text()
        self.output_text = Text()
        self._keymap_path = keymap_path if keymap_path is not None else user_keymap_path()
        self._startup_notices: list[tuple[str, str]] = []
        folders = theme_folders if theme_folders is not None else [SHIPPED_THEMES, user_theme_folder()]
        themes, problems = load_themes(folders)
        for loaded in themes:
            self.register_theme(loaded)
        self._startup_notices += [(problem, "warning") for problem in problems]
        wanted = theme or DEFAULT_THEME
        if wanted not in self.available_themes:
            if theme is not None:
                self._startup_notices.append((f"Unknown theme '{theme}'; using {FALLBACK_THEME}.", "warning"))
            wanted = FALLBACK_THEME
        self.theme = wanted

    # layout -------------------------------------------------------------
    def compose(self) -> ComposeResult:
        """Widgets are kept as attributes: handlers and timers reach them even while a modal screen is up."""
        self.prompt = TextArea(self.initial_prompt or "", id="prompt", soft_wrap=True, show_line_numbers=False)
        self.grid, self.detail_view, self.chart = DecodeGridView(id="grid"), Static(id="detail"), ChartPane(id="chart")
        self.side = Vertical(id="side")
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
            with TabPane("Output", id="tab-output"), VerticalScroll():
                yield self.output
            with TabPane("Overview", id="tab-overview"):
                yield self.overview
        yield self.status
        yield Footer()

    def on_mount(self) -> None:
        self.prompt.border_title = "prompt (Ctrl+R runs, p: samples)"
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
            self.post_message(ModelLoaded(self.lm, None, self.model_source, self.load_id))

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
        """Stale results lead the line; then model, method, view, interventions and `text`."""
        self.status_text = text
        model = self.lm.name if self.lm else self.model_source
        line = Text(no_wrap=True, overflow="ellipsis")
        changes = self.stale_changes()
        if changes and not self.running:
            line.append(f"STALE: {', '.join(changes)} changed · Ctrl+R reruns", "bold reverse")
            line.append(" · ")
        line.append(visible(f"{model} · {self.method} · view {self.grid.view} · {self.toggles.describe()} · {text}"))
        self.status.update(line)

    def current_origin(self) -> RunOrigin:
        return RunOrigin(self.lm.name if self.lm else self.model_source, self.prompt.text, self.method, self.toggles)

    def stale_changes(self) -> list[str]:
        """What changed since the shown results were computed (prompt, model, method, interventions)."""
        if self.origin is None or self.results.baseline is None:
            return []
        return self.origin.changes(self.current_origin())

    def refresh_stale(self) -> None:
        """Dim the grid and say so in the status and the Output pane while the results are stale."""
        stale = bool(self.stale_changes())
        self.grid.set_class(stale, "-stale")
        self.set_status(self.status_text)
        self.update_output()

    @on(TextArea.Changed, "#prompt")
    def prompt_changed(self) -> None:
        self.refresh_stale()

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Messages quote prompts, paths and errors: shown as plain text ('[INST]' stays), control characters
        escaped."""
        super().notify(visible(message), title=title, severity=severity, timeout=timeout, markup=markup)

    # model loading ------------------------------------------------------
    def start_load(self, source: str) -> None:
        self.load_id += 1
        self.loading = source
        self.set_status(f"loading {source} … (Esc cancels)")
        self.load_model_worker(source, self.load_id)

    @work(thread=True, group="load", exit_on_error=False)
    def load_model_worker(self, source: str, load_id: int) -> None:
        """Loads without the model lock: the loaded model keeps running until the new one replaces it."""
        def progress(done: int, total: int, description: str) -> None:
            if load_id == self.load_id:
                self.call_from_thread(self.set_status, f"loading {source}: {description} {done}/{total} (Esc cancels)")

        try:
            from layerscope.models.loading import load_model

            lm = load_model(source, device=self.device, dtype=self.dtype, device_map=self.device_map,
                            trust_remote_code=self.trust_remote_code, progress=progress)
        except LayerscopeError as error:
            self.post_message(ModelLoaded(None, str(error), source, load_id))
            return
        except (OSError, RuntimeError, ValueError, MemoryError) as error:
            self.post_message(ModelLoaded(None, f"Could not load '{source}': {error}", source, load_id))
            return
        self.post_message(ModelLoaded(lm, None, source, load_id))

    def on_model_loaded(self, message: ModelLoaded) -> None:
        if message.load_id != self.load_id:  # cancelled with Esc, or replaced by a later load
            return
        self.loading = None
        if message.error is not None:
            self.notify(message.error, severity="error", timeout=10)
            if self.lm is None:
                self.set_status("no model (L: load another)")
            else:
                self.set_status(f"could not load {message.source}; {self.lm.name} stays loaded")
            return
        if self.lm is not None and self.lm is not message.lm:  # another model: its blocks and heads differ
            self.toggles = Toggles(seed=self.toggles.seed)
        self.lm = message.lm
        self.model_source = message.source
        self.tuned = None
        if self.lens_dir is not None:
            self.load_lens(self.lens_dir)
        if self.tuned is None and self.method == "tuned_lens":
            self.method = "logit_lens"
        self.refresh_panes()
        self.set_status("ready")
        self.refresh_stale()
        if self.prompt.text.strip():
            self.action_run()

    def refresh_panes(self) -> None:
        if self.lm is None:
            return
        adapter = self.lm.adapter
        self.layer_pane.show(self.toggles, adapter.n_blocks)
        self.head_pane.show(self.toggles, adapter.n_blocks, adapter.n_heads, adapter.n_kv_heads)
        self.refresh_stale()

    # runs ---------------------------------------------------------------
    def runnable_prompt(self) -> str | None:
        """The prompt, or None (and a notice) while no model is loaded or the prompt is empty."""
        if self.lm is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return None
        text = self.prompt.text
        if not text.strip():
            self.notify("The prompt is empty: type one, or press p for samples.", severity="error")
            return None
        return text

    def begin_run(self, status: str) -> int:
        """A new run id (older runs' messages are dropped from now on), the clock and the status reset."""
        self.run_id += 1
        self.running = True
        self._run_started, self._progress = time.monotonic(), None
        self.set_status(status)
        return self.run_id

    def action_run(self) -> None:
        text = self.runnable_prompt()
        if text is None:
            return
        run_id = self.begin_run("starting …")
        if self.focused is self.prompt:  # from typing to reading: e goes back to the prompt
            self.grid.focus()
        self.run_worker_thread(run_id, text, self.method, self.toggles)

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def run_worker_thread(self, run_id: int, text: str, method: str, toggles: Toggles) -> None:
        """Rows go to the UI as they are computed; the continuation comes last."""
        import torch

        from layerscope.analyses.compare import greedy_continuation
        from layerscope.tui.compute import decode_rows, empty_grid

        worker = get_current_worker()
        lm = self.lm

        def phase(name: str) -> ProgressFn:
            return self.phase_progress(run_id, worker, name)

        with self.reporting_failures(run_id, "cancelled; rows computed so far are kept"), self.model_lock, \
                torch.inference_mode(), stop_between_blocks(lm, lambda: worker.is_cancelled):
            ids = lm.encode(text)
            interventions = toggles.interventions(lm.n_blocks) if method in INTERVENABLE else []
            baseline = empty_grid(lm, method, ids)
            intervened = empty_grid(lm, method, ids) if interventions else None
            origin = RunOrigin(lm.name, text, method, toggles)
            self.post_message(RunStarted(run_id, baseline=baseline, intervened=intervened, origin=origin))
            rows_phase = phase({"logit_lens": "lens rows", "tuned_lens": "tuned lens rows"}.get(
                method, "patchscope rows"))
            total = lm.n_blocks + 1
            rows_phase(0, total, "")
            for row in decode_rows(lm, method, ids, interventions, self.top_k, lambda: worker.is_cancelled,
                                   rows_phase, self.tuned):
                self.post_message(RowArrived(run_id, row=row))
                rows_phase(row.row + 1, total, "")
            runs = {"baseline": [], "intervened": interventions} if interventions else {"baseline": []}
            continuation = {name: greedy_continuation(lm, ids, self.continuation_tokens, edits,
                                                      phase(f"generating {name}")).text
                            for name, edits in runs.items()}
            self.post_message(RunFinished(run_id, continuation=continuation))

    def phase_progress(self, run_id: int, worker, name: str) -> ProgressFn:
        """A progress callback that names its phase; raising _Cancelled stops the step it is called from."""
        def progress(done: int, total: int, description: str) -> None:
            if worker.is_cancelled:
                raise _Cancelled
            self.post_message(RunProgress(run_id, done=done, total=total, description=name))
        return progress

    @contextmanager
    def reporting_failures(self, run_id: int, cancelled: str) -> Iterator[None]:
        """A worker's cancel, user error or device error becomes a RunFailed message (a notice) for the app."""
        try:
            yield
        except _Cancelled:
            self.post_message(RunFailed(run_id, error=cancelled, severity="warning"))
        except LayerscopeError as error:
            self.post_message(RunFailed(run_id, error=str(error), severity="error"))
        except (RuntimeError, MemoryError) as error:  # out of memory, device errors
            self.post_message(RunFailed(run_id, error=f"{type(error).__name__}: {error}".splitlines()[0],
                                        severity="error"))

    def _current(self, message: RunMessage) -> bool:
        return message.run_id == self.run_id

    def on_run_started(self, message: RunStarted) -> None:
        """The new results wait for their first row: until then the grid keeps showing the last ones."""
        if self._current(message):
            self._pending = (Results(message.data["baseline"], message.data["intervened"],
                                     [] if message.data["intervened"] is not None else None), message.data["origin"])

    def on_row_arrived(self, message: RowArrived) -> None:
        if not self._current(message):
            return
        if self._pending is not None:
            (self.results, self.origin), self._pending = self._pending, None
            self.show_results()
            self.refresh_stale()
        row: LayerRow = message.data["row"]
        self.results.baseline.layers.append(row.label)
        self.results.baseline.cells.append(row.baseline)
        if self.results.intervened is not None and row.intervened is not None:
            self.results.intervened.layers.append(row.label)
            self.results.intervened.cells.append(row.intervened)
            self.results.kl_base_int.append(row.kl_base_int)
        self.grid.rows_added()
        self._charts_dirty = True
        self.update_detail()

    def on_run_progress(self, message: RunProgress) -> None:
        if self._current(message) and self.running:
            data = message.data
            self._progress = (data["description"], data["done"], data["total"])
            self.show_progress()

    def show_progress(self) -> None:
        """The running phase with its count and the time since Ctrl+R; the chart timer refreshes it, so the
        clock moves while a step that reports nothing (a forward pass) works."""
        elapsed = f"{time.monotonic() - self._run_started:.1f} s"
        if self._progress is None:
            self.set_status(f"starting … {elapsed} (Esc cancels)")
        else:
            name, done, total = self._progress
            self.set_status(f"{name} {done}/{total} · {elapsed} (Esc cancels)")

    def on_run_finished(self, message: RunFinished) -> None:
        if self._current(message):
            self.running = False
            self.results.continuation = message.data["continuation"]
            self.update_output()
            self.set_status(f"done in {time.monotonic() - self._run_started:.1f} s")

    def on_run_failed(self, message: RunFailed) -> None:
        if self._current(message):
            self.running = False
            self.notify(message.data["error"], severity=message.data["severity"])
            self.set_status(message.data["error"])

    def action_cancel(self) -> None:
        """Esc stops the running work; with nothing running it leaves the prompt for the grid."""
        if self.running:
            self.workers.cancel_group(self, "run")
            self.workers.cancel_group(self, "scores")
        elif self.loading is not None:  # the loader cannot be interrupted: its result is dropped instead
            self.load_id += 1
            kept = f"{self.lm.name} stays loaded" if self.lm else "no model"
            self.set_status(f"loading {self.loading} cancelled; {kept}")
            self.loading = None
        elif self.focused is self.prompt:
            self.grid.focus()

    # showing results ----------------------------------------------------
    def show_results(self) -> None:
        self.grid.set_grids(self.results.baseline, self.results.intervened)
        self._charts_dirty = True
        self.update_detail()
        self.update_output()

    def update_detail(self) -> None:
        grid = self.grid
        if self.showing_trace():
            self.detail = trace_detail_text(self.trace, grid.cursor_layer, grid.cursor_position)
            self.detail_view.update(self.detail)
            return
        self.detail = detail_text(self.results.baseline, self.results.intervened, self.results.kl_base_int,
                                  grid.cursor_layer, grid.cursor_position, self.n_rows())
        self.detail_view.update(self.detail)

    def n_rows(self) -> int:
        """Rows of a complete grid: the embedding row and one per block."""
        if self.lm is not None:
            return self.lm.n_blocks + 1
        return len(self.results.baseline.cells) if self.results.baseline is not None else 0

    def charts(self, width: int, height: int) -> Text:
        """At the cursor's position: KL to final (log scale), KL(base‖int) with interventions, the first row where
        each position's final top-1 appears, entropy; baseline and intervened on one plot each. As many as fit at
        their minimum height, in that order."""
        grid, results = self.grid, self.results
        base, intervened = results.baseline, results.intervened
        position, n_rows = grid.cursor_position, self.n_rows()
        if self.showing_trace() and width >= 20:
            return self.trace_chart(width, height)
        if base is None or not base.cells or position >= len(base.tokens) or width < 20:
            return Text()
        theme = self.current_theme
        colours = {"base": theme.primary, "int.": theme.accent or theme.warning or theme.secondary}
        grids = [("base", base)] + ([("int.", intervened)] if intervened is not None and intervened.cells else [])
        marks = {"base": "●", "int.": "○"}

        def lines(field: str) -> list[Series]:
            return [Series(name, g.column(position, field), colours[name], marks[name]) for name, g in grids]

        shown = grid.shown
        plots = [
            lambda h: layer_chart(f"KL→final @{position} (log)", lines("kl_to_final"), n_rows, grid.cursor_layer,
                                  width, h, log=True),
            lambda h: first_final_bars(first_final_rows(shown), shown.tokens, n_rows, position, width, h,
                                       colours["int." if shown is intervened else "base"]),
            lambda h: layer_chart(f"entropy @{position} (bits)", lines("entropy_bits"), n_rows, grid.cursor_layer,
                                  width, h, log=False),
        ]
        if results.kl_base_int:
            kl = [row[position] for row in results.kl_base_int]
            plots.insert(1, lambda h: layer_chart(f"KL(base‖int) @{position} (log)",
                                               [Series("KL", kl, theme.secondary or theme.primary, "◆")], n_rows,
                                               grid.cursor_layer, width, h, log=True))
        fit = max(1, min(len(plots), height // MIN_PLOT_HEIGHT))
        return Text("\n\n", no_wrap=True).join(plot(height // fit - 1) for plot in plots[:fit])

    def trace_chart(self, width: int, height: int) -> Text:
        """The causal trace at the cursor's position: per row, the indirect effect and the restored p_answer."""
        theme, trace, position = self.current_theme, self.trace, self.grid.cursor_position
        series = [Series("IE", trace.column(position), theme.primary, "●"),
                  Series("p", trace.column(position, "p_answer"), theme.accent or theme.secondary, "○")]
        return layer_chart(f"indirect effect @{position}", series, len(trace.layers), self.grid.cursor_layer,
                           width, height - 1, log=False)

    def flush_charts(self) -> None:
        """Called on a timer: at most one chart build per tick, however fast rows or keys arrive."""
        if self.running and self.status_text.endswith("(Esc cancels)"):
            self.show_progress()
        if not self._charts_dirty:
            return
        self._charts_dirty = False
        if self.chart.size.area:  # hidden: drawn when it shows again (its resize marks it dirty)
            self.chart.update(self.charts(self.chart.size.width, self.chart.size.height))
        if self.overview.size.area:
            self.update_overview()

    def update_overview(self) -> None:
        results, grid, metric = self.results, self.grid, self.overview.metric
        if metric == "kl_base_int" and not results.kl_base_int:
            metric = self.overview.metric = "kl_to_final"
        shown = grid.shown
        if shown is None or not shown.cells:
            self.overview.update("No results yet: type a prompt and press Ctrl+R.")
            return
        if self.showing_trace():
            self.overview.update("The overview maps the lens grids; the causal trace is in the Lens tab (1).")
            return
        values = results.kl_base_int if metric == "kl_base_int" else [
            [getattr(cell, metric) for cell in row] for row in shown.cells]
        text = Text(f"overview · {OVERVIEW_TITLES[metric]} · {grid.view} · v: metric, Enter: open in the grid\n",
                    "bold", no_wrap=True)
        text.append(overview_text(values, shown.tokens, shown.layers, (grid.cursor_layer, grid.cursor_position),
                                  self.overview.size.width, self.overview.size.height - 1, metric != "entropy_bits",
                                  self.current_theme.primary))
        self.overview.update(text)

    def on_overview_pane_moved(self, message: OverviewPane.Moved) -> None:
        self.grid.move_to(self.grid.cursor_layer + message.dx, self.grid.cursor_position + message.dy)
        self.update_overview()

    def on_overview_pane_open_cell(self) -> None:
        self.action_tab(0)

    def update_output(self) -> None:
        results, lines = self.results, []
        if self.origin is not None:
            origin = self.origin
            lines.append(f"results of: {origin.model} · {origin.method} · {origin.toggles.describe()}")
            lines.append(f"prompt: \"{origin.prompt.replace(chr(10), '⏎')}\"")
            changes = self.stale_changes()
            if changes:
                lines.append(f"STALE: {', '.join(changes)} changed since; Ctrl+R reruns "
                             f"(now: {self.toggles.describe()})")
        if results.kl_base_int:
            last = results.kl_base_int[-1]
            agree = sum(results.baseline.top1(len(results.kl_base_int) - 1, t).id ==
                        results.intervened.top1(len(results.kl_base_int) - 1, t).id for t in range(len(last)))
            lines.append(f"row {results.intervened.layers[-1]}: mean KL(base‖int) {sum(last) / len(last):.4f} nats, "
                         f"top-1 agreement {agree}/{len(last)}")
        text = Text(visible("\n".join(lines)))
        text.append(continuation_text(results.continuation))
        self.output_text = text
        self.output.update(text)

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

        try:
            check_interventions(toggles.interventions(self.lm.n_blocks),
                                ModelShape(self.lm.n_blocks, self.lm.adapter.n_heads))
        except LayerscopeError as error:
            self.notify(str(error), severity="error")
            return
        self.toggles = toggles
        self.refresh_panes()
        if self.method not in INTERVENABLE and not toggles.is_empty:
            self.notify("Interventions apply to the logit and tuned lenses; press m to switch.", severity="warning")
        if self.prompt.text.strip():
            self.action_run()

    def on_layer_pane_toggled(self, message: LayerPane.Toggled) -> None:
        self.apply_toggles(self.toggles.toggle(message.kind, message.block))

    def on_layer_pane_seed_changed(self) -> None:
        from dataclasses import replace

        self.apply_toggles(replace(self.toggles, seed=self.toggles.seed + 1))

    def on_head_pane_mask_toggled(self, message: HeadPane.MaskToggled) -> None:
        """Masks wait for the next run (Ctrl+R): masking several heads should not start several runs."""
        self.toggles = self.toggles.toggle_head(message.layer, message.head)
        self.refresh_panes()

    def on_head_pane_mode_toggled(self) -> None:
        from dataclasses import replace

        self.toggles = replace(self.toggles, mask_mode="uniform" if self.toggles.mask_mode == "zero" else "zero")
        self.refresh_panes()

    def action_clear_interventions(self) -> None:
        self.apply_toggles(Toggles(seed=self.toggles.seed))

    # head scores --------------------------------------------------------
    def on_head_pane_scores_wanted(self, message: HeadPane.ScoresWanted) -> None:
        if self.lm is None:
            self.notify("The model is not loaded yet.", severity="warning")
        else:
            self.scores_worker(self.begin_run(f"{message.kind} scores …"), message.kind)

    @work(thread=True, exclusive=True, group="scores", exit_on_error=False)
    def scores_worker(self, run_id: int, kind: str) -> None:
        """Scores take a while (retrieval runs needle tests): progress shows, Esc stops between steps.
        Any `{kind}_scores(lm, progress=...) -> HeadScores` in analyses.heads plugs in here."""
        import torch

        from layerscope.analyses import heads

        worker = get_current_worker()
        progress = self.phase_progress(run_id, worker, f"{kind} scores")
        with self.reporting_failures(run_id, f"{kind} scores cancelled"):
            with self.model_lock, torch.inference_mode(), stop_between_blocks(self.lm, lambda: worker.is_cancelled):
                result = getattr(heads, f"{kind}_scores")(self.lm, progress=progress)
            scores = {(h.layer, h.head): h.score for h in result.heads}
            self.post_message(ScoresComputed(run_id, kind=kind, scores=scores))

    # causal trace -------------------------------------------------------
    def action_causal_trace(self) -> None:
        """Ask for the subject (noised) and the answer, then trace the prompt in the run worker's group."""
        text = self.runnable_prompt()
        if text is None:
            return

        def got_subject(subject: str | None) -> None:
            if subject:
                self.trace_subject = subject
                self.push_screen(InputScreen("Answer word (a space goes before it; empty: the model's own next "
                                             "token):", ""), lambda answer: self.start_trace(text, subject, answer))

        self.push_screen(InputScreen("Causal trace: the subject (a part of the prompt, noised):", self.trace_subject),
                         got_subject)

    def start_trace(self, text: str, subject: str, answer: str | None) -> None:
        run_id = self.begin_run("causal trace … (Esc cancels)")
        self.trace_worker(run_id, text, subject, None if answer is None else f" {answer}")

    @work(thread=True, exclusive=True, group="run", exit_on_error=False)
    def trace_worker(self, run_id: int, text: str, subject: str, answer: str | None) -> None:
        """Noise on the subject's embeddings, every (row, position) of the residual restored in turn."""
        from layerscope.analyses.causal_trace import trace_prompt

        worker = get_current_worker()
        progress = self.phase_progress(run_id, worker, "causal trace cells")
        with self.reporting_failures(run_id, "causal trace cancelled"):
            with self.model_lock, stop_between_blocks(self.lm, lambda: worker.is_cancelled):
                trace = trace_prompt(self.lm, text, subject, answer, progress=progress)
            self.post_message(TraceComputed(run_id, trace=trace))

    def on_trace_computed(self, message: TraceComputed) -> None:
        if not self._current(message):
            return
        self.running = False
        self.trace = message.data["trace"]
        self.grid.set_grids(self.trace, None)
        self._charts_dirty = True
        self.update_detail()
        self.set_status(f"causal trace done in {time.monotonic() - self._run_started:.1f} s; the lens grid "
                        f"returns with Ctrl+R")

    def showing_trace(self) -> bool:
        return self.trace is not None and self.grid.baseline is self.trace

    def on_scores_computed(self, message: ScoresComputed) -> None:
        """Scores are kept even when a newer run started: they do not depend on the prompt."""
        self.running = False if self._current(message) else self.running
        kind = message.data["kind"]
        self.head_pane.set_scores(kind, message.data["scores"], f"{self.lm.name}, {SCORE_SOURCES[kind]}")
        self.set_status(f"{message.data['kind']} scores ready")

    def on_head_pane_load_wanted(self) -> None:
        self._ask_path("Load head scores (JSON from a head command):", "head-scores.json", self.load_scores)

    def load_scores(self, path: Path) -> None:
        if self.lm is None:
            raise LayerscopeError("Load a model before its head scores.")
        from layerscope.analyses.heads import load_head_scores

        scores = load_head_scores(path, self.lm)
        self.head_pane.set_scores(scores.kind, {(h.layer, h.head): h.score for h in scores.heads},
                                  f"{scores.model}, loaded from {path}")
        self.notify(f"{scores.kind} scores loaded from {path}")

    # actions ------------------------------------------------------------
    def action_tab(self, index: int) -> None:
        self.tabs.active = TABS[index]
        target = {0: self.grid, 1: self.layer_pane.query_one(DataTable), 2: self.head_pane.query_one(DataTable),
                  4: self.overview}
        if index in target:
            target[index].focus()

    def action_edit_prompt(self) -> None:
        """Focus the prompt with the cursor at its end, ready to extend it."""
        self.prompt.focus()
        self.prompt.move_cursor(self.prompt.document.end)

    def action_switch_method(self) -> None:
        """logit lens -> tuned lens -> Patchscope; the tuned lens is skipped (said once) while none is loaded."""
        method = METHODS[(METHODS.index(self.method) + 1) % len(METHODS)]
        if method == "tuned_lens" and self.tuned is None:
            method = METHODS[(METHODS.index(method) + 1) % len(METHODS)]
            if not self._said_no_lens:
                self._said_no_lens = True
                self.notify("No tuned lens loaded, so m skips it: press T (or start with --lens DIR) to load one.")
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
        self.push_screen(HelpScreen(self.binding_rows()))

    def binding_rows(self) -> list[tuple[str, str, str]]:
        """(keys, description, id) of every binding, with the user's keymap applied."""
        rows = []
        for owner in (type(self), DecodeGridView, LayerPane, HeadPane):
            for binding in owner.BINDINGS:
                keys = self._keymap.get(binding.id, binding.key) if binding.id else binding.key
                rows.append((keys, binding.description or binding.action, binding.id or ""))
        return rows

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
        self._ask_path("Tuned lens folder (from `layerscope tunedlens train`):", str(self.lens_dir or ""),
                       self.load_lens)

    def load_lens(self, folder: Path) -> None:
        """Load and check the lens against the model; a bad folder is one error notice and the old lens stays."""
        if self.lm is None:
            self.lens_dir = folder  # loaded with the model
            return
        from layerscope.analyses.tuned_lens import load_tuned_lens

        try:
            self.tuned = load_tuned_lens(self.lm, folder)
        except LayerscopeError as error:
            self.notify(str(error), severity="error", timeout=10)
            return
        self.lens_dir = folder
        self.notify(f"tuned lens loaded from {folder}: m switches to it")

    def _ask_path(self, title: str, default: str, then) -> None:
        def chosen(path: str | None) -> None:
            if path:
                try:
                    then(Path(path).expanduser())
                except LayerscopeError as error:
                    self.notify(str(error), severity="error")

        self.push_screen(InputScreen(title, default), chosen)

    def session(self) -> Session:
        return Session(self.lm.name if self.lm else self.model_source, self.prompt.text,
                       self.method, self.toggles, self.results)

    def action_save_session(self) -> None:
        self._ask_path("Save session to:", "layerscope-session.json", self.save_session)

    def save_session(self, path: Path) -> None:
        self.session().save(path)
        self.notify(f"session saved to {path}")

    def action_load_session(self) -> None:
        self._ask_path("Open session:", "layerscope-session.json", self.load_session)

    def load_session(self, path: Path) -> None:
        session = Session.load(path)
        self.workers.cancel_group(self, "run")
        self.run_id += 1
        self.running = False
        self.origin = RunOrigin(session.model, session.prompt, session.method, session.toggles)
        self.prompt.text = session.prompt
        self.method, self.toggles, self.results = session.method, session.toggles, session.results
        self.refresh_panes()
        self.show_results()
        self.refresh_stale()
        if self.lm is not None and session.model != self.lm.name:
            self.notify(f"The session was made with {session.model}; the loaded model is {self.lm.name}.",
                        severity="warning")
        self.notify(f"session loaded from {path}")

    def action_export_csv(self) -> None:
        self._ask_path("Export the grid (CSV) to:", "layerscope-grid.csv", self.export_csv)

    def export_csv(self, path: Path) -> None:
        from layerscope.outputs import to_csv, write_atomic

        grid = self.grid.shown
        if grid is None:
            raise LayerscopeError("Nothing to export yet: run a prompt first.")
        text = to_csv(grid.csv_rows())
        write_atomic(text, path)
        self.notify(f"exported grid · {self.grid_shape()} · {byte_size(text)} CSV → {path}")

    def action_copy_cell(self) -> None:
        text, grid = self.detail.plain, self.grid
        self.copy_to_clipboard(text)
        label = grid.shown.layers[grid.cursor_layer] if grid.n_layers else "-"
        self.notify(f"copied cell {label}@{grid.cursor_position} · {byte_size(text)} (OSC 52)", timeout=3)

    def grid_text(self) -> str:
        """The shown grid as tab-separated top-1 tokens (a causal trace's indirect effects): a row per prompt token,
        a column per layer."""
        grid = self.grid.shown
        if grid is None:
            return ""
        lines = ["\t".join(["token", *grid.layers])]
        for position, token in enumerate(grid.tokens):
            lines.append("\t".join([token_label(token, 40), *(cell_text(row[position], 40)[1] for row in grid.cells)]))
        return "\n".join(lines)

    def action_copy_grid(self) -> None:
        text = self.grid_text()
        if not text:
            self.notify("Nothing to copy yet: run a prompt first.", severity="warning")
            return
        self.copy_to_clipboard(text)
        self.notify(f"copied grid · {self.grid_shape()} · {byte_size(text)} TSV (OSC 52)", timeout=3)

    def grid_shape(self) -> str:
        """'31x5': layers by positions of the shown grid."""
        return f"{self.grid.n_layers}x{self.grid.n_positions}"

    def action_toggle_side(self) -> None:
        """Hide or show the detail and chart panel: the grid gets the room."""
        self.side.toggle_class("-hidden")
        self._charts_dirty = True

    def action_continuation_length(self) -> None:
        def chosen(answer: str | None) -> None:
            if answer is None:
                return
            if not answer.isdigit() or not 0 <= int(answer) <= 512:
                self.notify(f"Continuation length must be a whole number from 0 to 512, not '{answer}'.",
                            severity="error")
                return
            self.continuation_tokens = int(answer)
            self.notify(f"continuation: {self.continuation_tokens} tokens from the next run (Ctrl+R)")

        self.push_screen(InputScreen("Continuation tokens (0-512):", str(self.continuation_tokens)), chosen)

    def get_system_commands(self, screen: Screen):
        yield from super().get_system_commands(screen)
        for title, help_text, callback in (
            ("Run", "Run the prompt with the current toggles", self.action_run),
            ("Cancel", "Stop the running computation, keeping its rows", self.action_cancel),
            ("Switch method", "Logit lens / tuned lens / Patchscope", self.action_switch_method),
            ("Causal trace", "Noise the subject, restore each state: the answer's probability per cell",
             self.action_causal_trace),
            ("Load tuned lens", "A folder from `layerscope tunedlens train` (or a published lens)",
             self.action_open_lens),
            ("Cycle view", "Intervened / baseline / diff", self.action_cycle_view),
            ("Clear interventions", "Remove every toggle and head mask", self.action_clear_interventions),
            ("Save session", "Prompt, model, interventions and results as JSON", self.action_save_session),
            ("Open session", "Load a saved session", self.action_load_session),
            ("Export grid as CSV", "The shown grid, one line per cell and rank", self.action_export_csv),
            ("Copy cell", "The cell's detail, through the terminal (OSC 52)", self.action_copy_cell),
            ("Copy grid", "Top-1 tokens as TSV, through the terminal (OSC 52)", self.action_copy_grid),
            ("Sample prompts", "Pick a prompt from sample_prompts/", self.action_samples),
            ("Load model", "Load another model", self.action_open_model),
            ("Help", "All key bindings", self.action_help),
        ):
            yield SystemCommand(title, help_text, callback)
