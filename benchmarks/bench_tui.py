"""The explorer's responsiveness, measured with Textual's own test driver (App.run_test / Pilot), in one run:

1. Time to first frame, in a fresh process (imports included): the app as shipped (torch and the model
   load in a worker after the first paint) vs the naive way (import the engine and load the model,
   then start the app). Target < 1 s.
2. Keypress-to-repaint latency of the decode grid alone at 200 tokens x 31 and x 81 rows: the line-rendered
   DecodeGridView vs a DataTable holding the same cells (the naive way).
3. Keypress-to-repaint latency (cursor moves in the decode grid), median and p95: idle; while a long
   computation over all layers (baseline + intervened lens of a 300-token prompt, then continuations) runs
   in the thread worker; and the naive way, the same computation run on the UI thread. Target: p95 < 100 ms.
4. Time from Ctrl+R to the first row on screen, for that 300-token run.
5. At 160x50, where the side panel shows three plotext charts: the chart redraw (building the charts' data,
   plotext drawing them, Rich reading its output) per arriving row during that run, median and max, in wall
   time and in the UI thread's own CPU time (the difference is the wait for the worker thread, which holds the
   GIL between torch operations), and the keypress-to-repaint latency during the run. Target: redraw < 20 ms
   median, keys p95 < 100 ms.
6. The head pattern view (Enter on a head) on the 300-token prompt: from Enter to the pattern on screen, and
   keypress-to-repaint in its 300 x 300 grid (checked equal to the engine's attention_pattern).

A repaint is the widget drawing its lines after the key moved its cursor (until the pass ends). The grid the
app shows is checked equal to `logit_lens` on the same prompt. Run: python benchmarks/bench_tui.py [--charts]
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
FIRST_FRAME_RUNS = 5
KEYS = 30
LONG_PROMPT = " ".join(
    [
        "In the quiet town by the river, the baker opened her shop before dawn and the smell of",
        "fresh bread drifted down the street, waking the children who ran to the window.",
    ]
    * 9
)


def first_frame_child(way: str) -> None:
    """Runs in a fresh process: prints seconds from process start to the end of the first screen refresh."""
    start = time.perf_counter()
    lm = None
    if way == "naive":
        from layerscope.models.loading import load_model

        lm = load_model("demo", device="cpu")
    from textual.app import App
    from textual.widgets import Static

    from layerscope.tui.app import LayerscopeApp

    painted: list[float] = []

    class Bare(App):
        def compose(self):
            yield Static("hello")

        def on_mount(self) -> None:
            self.call_after_refresh(lambda: painted.append(time.perf_counter()))

    class Timed(LayerscopeApp):
        def on_mount(self) -> None:
            """Textual runs this before LayerscopeApp.on_mount, so the mark comes before the model load starts."""
            self.call_after_refresh(lambda: painted.append(time.perf_counter()))

    async def main() -> None:
        app = Bare() if way == "bare" else Timed(lm=lm)
        async with app.run_test(size=(120, 40)):
            while not painted:
                await asyncio.sleep(0.001)
            print(painted[0] - start)
            app.workers.cancel_all()

    asyncio.run(main())


def first_frame(way: str) -> float:
    times = []
    for _ in range(FIRST_FRAME_RUNS):
        out = subprocess.run(
            [sys.executable, __file__, "--first-frame", way], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
        times.append(float(out.strip().splitlines()[-1]))
    return statistics.median(times)


def cursor_of(widget):
    """The widget's cursor: what a key press changes and a repaint must show."""
    return getattr(widget, "cursor_coordinate", None) or (widget.cursor_layer, widget.cursor_position)


async def press_and_repaint(pilot, widget, key: str) -> float:
    """Seconds from pressing the key to the end of the first repaint that shows the moved cursor (lines of
    one pass are drawn back to back, so 5 ms without a new line ends it).

    The press runs as a task: Pilot.press then waits for the whole app to go idle, which a busy worker
    delays by seconds, while the repaint itself happens long before."""
    before = cursor_of(widget)
    drawn: list[float] = []
    original = widget.render_line

    def recording(y: int):
        if cursor_of(widget) != before:
            drawn.append(time.perf_counter())
        return original(y)

    widget.render_line = recording
    start = time.perf_counter()
    press = asyncio.create_task(pilot.press(key))
    done_at = None
    while not drawn:  # a key that moves no cursor gives up 1 s after Pilot has seen the app idle
        if press.done():
            done_at = done_at or time.perf_counter()
            if time.perf_counter() - done_at > 1:
                break
        await asyncio.sleep(0.001)
    while drawn and time.perf_counter() - drawn[-1] < 0.005:
        await asyncio.sleep(0.001)
    latency = drawn[-1] - start if drawn else math.inf
    await press
    widget.render_line = original
    return latency


async def key_latencies(app, pilot, keys: int, busy) -> list[float]:
    """Cursor moves in the app's decode grid, one at a time, while `busy()` holds."""
    latencies = []
    for index in range(keys):
        if not busy():
            break
        latencies.append(await press_and_repaint(pilot, app.grid, "down" if index % 4 < 2 else "up"))
        await asyncio.sleep(0.02)
    return latencies


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]


async def latency_run(lm) -> tuple[dict[str, list[float]], float]:
    from layerscope.analyses.lens import logit_lens
    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.state import Toggles

    results: dict[str, list[float]] = {}
    app = LayerscopeApp(lm=lm, prompt=LONG_PROMPT, continuation_tokens=8)
    async with app.run_test(size=(120, 40)) as pilot:
        while app.runs.running or app.runs.results.baseline is None:  # the first (baseline) run, unmeasured
            await pilot.pause(0.05)
        expected = logit_lens(lm, lm.encode(LONG_PROMPT))
        assert [[c.top[0].id for c in r] for r in app.runs.results.baseline.cells] == [
            [c.top[0].id for c in r] for r in expected.cells
        ], "the grid differs from logit_lens"
        await pilot.press("escape", "1", "ctrl+home", "home")  # from the answer cell (the last) to the first
        results["idle"] = await key_latencies(app, pilot, KEYS, lambda: True)

        app.toggles = Toggles(drop=frozenset({3}))
        first = app.runs.results
        started = time.perf_counter()
        await pilot.press("ctrl+r")  # baseline + intervened over all layers, then two continuations
        while app.runs.results is first:  # measure from the new run's first row on
            await asyncio.sleep(0.001)
        first_row = time.perf_counter() - started
        results["during background run (worker)"] = await key_latencies(app, pilot, KEYS, lambda: app.runs.running)
        while app.runs.running:
            await pilot.pause(0.05)

        def blocking() -> None:  # the naive way: the same kind of work on the UI thread
            from layerscope.interventions import DropBlocks

            logit_lens(lm, lm.encode(LONG_PROMPT), interventions=[DropBlocks((3,))])

        latencies = []
        for _ in range(3):
            app.call_later(blocking)
            latencies += await key_latencies(app, pilot, 1, lambda: True)
        results["during run on the UI thread (naive)"] = latencies
    return results, first_row


def synthetic_grid(rows: int, tokens: int):
    """A decode grid of the given size with varied tokens and probabilities (no model needed)."""
    from layerscope.analyses.grid import DecodeGrid, GridCell, TopToken

    words = [f" w{i}" for i in range(97)]
    cells = [
        [
            GridCell([TopToken(words[(r * 7 + t) % 97], (r * 7 + t) % 97, ((r + t) % 10) / 10 + 0.05)], 1.0, 0.5)
            for t in range(tokens)
        ]
        for r in range(rows)
    ]
    return DecodeGrid("synthetic", "logit_lens", words[:1] * tokens, [0] * tokens, [str(r) for r in range(rows)], cells)


async def grid_latency(widget_kind: str, rows: int, tokens: int) -> list[float]:
    """Cursor keys on a grid of rows x tokens: DecodeGridView, or a DataTable holding the same cells (naive)."""
    from textual.app import App
    from textual.widgets import DataTable

    from layerscope.tui.grid_view import DecodeGridView
    from layerscope.tui.methods import REGISTRY

    grid = synthetic_grid(rows, tokens)

    class GridApp(App):
        def compose(self):
            if widget_kind == "DecodeGridView":
                yield DecodeGridView(id="grid")
            else:
                yield DataTable(id="grid", cursor_type="cell")

        def on_mount(self) -> None:
            widget = self.query_one("#grid")
            if isinstance(widget, DecodeGridView):
                widget.set_grids(REGISTRY["logit_lens"], grid, None)
                widget.move_to(0, 0)  # it starts on the answer cell, the last one
            else:
                widget.add_columns("token", *grid.layers)
                for position in range(tokens):
                    widget.add_row(
                        grid.tokens[position],
                        *(f"{row[position].top[0].token} {row[position].top[0].prob:.2f}" for row in grid.cells),
                    )
            widget.focus()

    app = GridApp()
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        widget = app.query_one("#grid")
        await pilot.press(*["down"] * 40)  # near the bottom of the view: the downs below scroll it
        latencies = [
            await press_and_repaint(pilot, widget, "down" if index < KEYS // 2 else "right") for index in range(KEYS)
        ]
    return latencies


async def charts_and_pattern_run(lm) -> dict[str, list[float]]:
    """Item 5 and 6 of the docstring, at 160x50: chart redraws per arriving row and keys during a run, then the
    head pattern view."""
    from layerscope.analyses.heads import attention_pattern
    from layerscope.interventions import DropBlocks
    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.state import Toggles

    results: dict[str, list[float]] = {}
    app = LayerscopeApp(lm=lm, prompt=LONG_PROMPT, continuation_tokens=8)
    async with app.run_test(size=(160, 50)) as pilot:
        while app.runs.running or app.runs.results.baseline is None:  # the first (baseline) run, unmeasured
            await pilot.pause(0.05)
        await pilot.press("escape", "1", "ctrl+home", "home")
        redraws: list[float] = []
        redraw_cpu: list[float] = []
        charts = app.charts

        def timed_charts(width: int, height: int):
            start, start_cpu = time.perf_counter(), time.thread_time()
            text = charts(width, height)
            redraws.append(time.perf_counter() - start)
            redraw_cpu.append(time.thread_time() - start_cpu)
            return text

        app.charts = timed_charts
        app.toggles = Toggles(drop=frozenset({3}))
        first = app.runs.results
        await pilot.press("ctrl+r")
        while app.runs.results is first:
            await asyncio.sleep(0.001)
        rows_before = len(redraws)
        results["keys during a run, 160x50 (charts shown)"] = await key_latencies(
            app, pilot, KEYS, lambda: app.runs.running
        )
        while app.runs.running:
            await pilot.pause(0.05)
        assert app.chart.size.width >= 40 and len(redraws) > rows_before, "the charts were not drawn"
        results["chart redraw per tick while rows arrive"] = redraws[rows_before:]
        results["  its CPU time on the UI thread (the rest: waiting for the worker)"] = redraw_cpu[rows_before:]
        app.charts = charts

        await pilot.press("3")
        started = time.perf_counter()
        app.show_pattern((20, 3))
        while app.grid.method is None or app.grid.method.name != "head_pattern":
            await asyncio.sleep(0.001)
        results["head pattern: from Enter to its grid"] = [time.perf_counter() - started]
        want = attention_pattern(lm, lm.encode(LONG_PROMPT), [(20, 3)], [DropBlocks((3,))]).weights[20, 3]
        shown = app.grid.shown
        assert all(
            abs(shown.cells[k][q].weight - want[q][k]) < 1e-6
            for q in range(0, len(want), 37)
            for k in range(0, q + 1, 11)
        ), "the pattern differs from attention_pattern"
        await pilot.press("ctrl+home", "home")
        results["head pattern grid: keys (300 x 300)"] = await key_latencies(app, pilot, KEYS, lambda: True)
    return results


def slowest(values: list[float]) -> str:
    worst = max(values)
    return "no repaint seen" if math.isinf(worst) else f"{worst * 1000:.1f} ms"


def main(only_charts: bool) -> None:
    import torch

    from common import report
    from layerscope.models.loading import load_model

    torch.set_num_threads(1)  # leave the UI thread a core on a 2-core machine
    if only_charts:
        charts_and_pattern(load_model("demo", device="cpu"))
        return
    print(f"first frame, {FIRST_FRAME_RUNS} fresh processes each (median):")
    frames = {
        "lazy engine import (shipped)": first_frame("shipped"),
        "engine + model before app (naive)": first_frame("naive"),
        "bare Textual app (reference)": first_frame("bare"),
    }
    report("time to first frame (target < 1 s)", frames, "engine + model before app (naive)")

    for rows, tokens in ((31, 200), (81, 200)):
        runs = {kind: asyncio.run(grid_latency(kind, rows, tokens)) for kind in ("DecodeGridView", "DataTable")}
        report(
            f"grid of {tokens} tokens x {rows} rows: keypress-to-repaint (downs, then rights; some scroll)",
            {kind: statistics.median(values) for kind, values in runs.items()},
            "DataTable",
        )
        for kind, values in runs.items():
            print(f"  {kind}: {len(values)} keys, max {slowest(values)}")

    lm = load_model("demo", device="cpu")
    latencies, first_row = asyncio.run(latency_run(lm))
    medians = {name: statistics.median(values) for name, values in latencies.items()}
    report(
        f"keypress-to-repaint latency, {len(lm.encode(LONG_PROMPT)[0])}-token prompt (median)",
        medians,
        "during run on the UI thread (naive)",
    )
    print("p95 (target < 100 ms during the run):")
    for name, values in latencies.items():
        print(f"  {name}: {len(values)} keys, p95 {p95(values) * 1000:.1f} ms, max {slowest(values)}")
    print(f"Ctrl+R to the first row on screen (lens + intervened lens, 300 tokens): {first_row:.2f} s")

    charts_and_pattern(lm)


def charts_and_pattern(lm) -> None:
    timings = asyncio.run(charts_and_pattern_run(lm))
    print("\nat 160x50 (targets: chart redraw < 20 ms median, keys p95 < 100 ms during the run):")
    for name, values in timings.items():
        print(
            f"  {name}: {len(values)} times, median {statistics.median(values) * 1000:.1f} ms, "
            f"p95 {p95(values) * 1000:.1f} ms, max {slowest(values)}"
        )
    print(f"machine load (1, 5, 15 min): {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    if "--first-frame" in sys.argv:
        first_frame_child(sys.argv[-1])
    else:
        main(only_charts="--charts" in sys.argv)  # --charts: items 5 and 6 only
