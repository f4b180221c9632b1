"""The text of the status line, the Overview and the Output pane, built from results: no widget, no app state.

The app passes what it shows (results, the cursor, the theme) and puts the returned Text in its widget.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text

from layerscope.tui.charts import overview_text
from layerscope.tui.grid_view import visible
from layerscope.tui.panes import OVERVIEW_TITLES

if TYPE_CHECKING:
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.tui.state import Results, RunOrigin


def status_line(stale: list[str], activity: str, interventions: list[str], shown: list[str], width: int) -> Text:
    """One line of `width`: what changed since the shown results (if anything) leads, then what is happening,
    the interventions (the first and a count, 'drop 2 +3 more', when all of them do not fit), then what is
    shown; cut with an ellipsis."""
    line = Text(no_wrap=True, overflow="ellipsis")
    if stale:
        line.append(f"STALE: {', '.join(stale)} changed · Ctrl+R reruns", "bold reverse")
        line.append(" · ")
    line.append(visible(activity))
    rest = " · " + " · ".join(shown)
    named = " · ".join(interventions) or "no interventions"
    if len(interventions) > 1 and line.cell_len + 3 + cell_len(named) + len(rest) > width:
        named = f"{interventions[0]} +{len(interventions) - 1} more"
    line.append(f" · {named}{visible(rest)}")
    return line


def duration(seconds: float) -> str:
    """A time left as people say it: '40 s', '27 min', '2 h 5 min'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"


def overview(
    results: Results,
    shown: DecodeGrid | None,
    view: str,
    metric: str,
    cursor: tuple[int, int],
    width: int,
    height: int,
    colour: str,
) -> Text:
    """The Overview pane: one metric of the shown grid as a heatmap, a character per cell, under a title line."""
    if shown is None or not shown.cells:
        return Text("No results yet: type a prompt and press Ctrl+R.")
    values = (
        (results.kl_base_int or [])
        if metric == "kl_base_int"
        else [[getattr(cell, metric) for cell in row] for row in shown.cells]
    )
    text = Text(
        f"overview · {OVERVIEW_TITLES[metric]} · {view} · v: metric, Enter: open in the grid\n", "bold", no_wrap=True
    )
    text.append(
        overview_text(
            values,
            shown.tokens,
            shown.layers,
            cursor,
            width,
            height - 1,
            metric != "entropy_bits",
            colour,
            shown.prompt_length,
        )
    )
    return text


def continuation_text(continuations: dict[str, str]) -> Text:
    """Each continuation on its line; where baseline and intervened part ways, the rest is highlighted."""
    texts = list(continuations.values())
    shared = len(os.path.commonprefix(texts)) if len(texts) == 2 and texts[0] != texts[1] else None
    text = Text()
    for name, continuation in continuations.items():
        text.append(f'\n{name:>10} continuation: "')
        end = len(continuation) if shared is None else shared
        text.append(visible(continuation[:end].replace("\n", "⏎")))
        text.append(visible(continuation[end:].replace("\n", "⏎")), "bold reverse")
        text.append('"')
    if shared is not None:
        text.append(f"\ncontinuations diverge after {shared} character{'' if shared == 1 else 's'} (highlighted)")
    return text


def divergence_point(results: Results) -> tuple[int | None, str]:
    """Where the baseline's and the intervened continuations part ways, as a position of a grid grown over them
    (the default; `g` switches it), and a line that says so (or why there is none)."""
    from layerscope.analyses.grid import divergence  # the grids are loaded: so is the engine

    baseline, intervened = results.baseline, results.intervened
    if getattr(baseline, "prompt_length", None) is None:
        return None, "The grid covers the prompt only: g grows it over the continuation again (from the next Ctrl+R)."
    if intervened is None:
        return None, "No intervened run to compare the continuation with: toggle an intervention (2)."
    position = divergence(baseline, intervened)
    if position is None:
        return None, "The continuations agree over the grid's generated positions."
    tokens = [grid.tokens[position] if position < len(grid.tokens) else "(ended)" for grid in (baseline, intervened)]
    return position, (
        f"continuations diverge at grid position {position}: baseline {visible(repr(tokens[0]))}, intervened "
        f"{visible(repr(tokens[1]))} · d puts the grid's cursor there"
    )


def output_text(results: Results, origin: RunOrigin | None, changes: list[str], interventions_now: str) -> Text:
    """The Output pane: what the results were computed from (and what changed since), the last row's agreement
    between baseline and intervened, and the continuations."""
    lines = []
    if origin is not None:
        lines.append(f"results of: {origin.model} · {origin.method} · {origin.toggles.describe()}")
        lines.append(f'prompt: "{origin.prompt.replace(chr(10), "⏎")}"')
        if changes:
            lines.append(f"STALE: {', '.join(changes)} changed since; Ctrl+R reruns (now: {interventions_now})")
    if results.kl_base_int and results.baseline is not None and results.intervened is not None:
        # over the prompt: past it, each run reads its own continuation
        prompt = getattr(results.baseline, "prompt_length", None) or len(results.kl_base_int[-1])
        last, row = results.kl_base_int[-1][:prompt], len(results.kl_base_int) - 1
        agree = sum(results.baseline.top1(row, t).id == results.intervened.top1(row, t).id for t in range(len(last)))
        lines.append(
            f"row {results.intervened.layers[-1]}: mean KL(base‖int) {sum(last) / len(last):.4f} nats, "
            f"top-1 agreement {agree}/{len(last)}"
        )
    text = Text(visible("\n".join(lines)))
    text.append(continuation_text(results.continuation))
    if getattr(results.baseline, "prompt_length", None) is not None and results.intervened is not None:
        text.append("\n" + divergence_point(results)[1], "bold")
    return text
