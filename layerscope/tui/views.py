"""The text of the side chart and the Output pane, built from results: no widget, no app state.

The app passes what it shows (results, the cursor, the theme) and puts the returned Text in its widget.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rich.cells import cell_len
from rich.text import Text

from layerscope.tui.charts import MIN_PLOT_HEIGHT, Series, first_final_bars, layer_chart, overview_text
from layerscope.tui.grid_view import visible
from layerscope.tui.panes import OVERVIEW_TITLES, first_final_rows

if TYPE_CHECKING:
    from textual.theme import Theme

    from layerscope.analyses.causal_trace import CausalTrace
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


def lens_charts(results: Results, shown: DecodeGrid | None, cursor: tuple[int, int], n_rows: int, theme: Theme,
                width: int, height: int) -> Text:
    """At the cursor's position: KL to final (log scale), KL(base‖int) with interventions, the first row where
    each position's final top-1 appears, entropy; baseline and intervened on one plot each. As many as fit at
    their minimum height, in that order."""
    base, intervened = results.baseline, results.intervened
    layer, position = cursor
    if base is None or shown is None or not base.cells or position >= len(base.tokens) or width < 20:
        return Text()
    colours = {"base": theme.primary, "int.": theme.accent or theme.warning or theme.secondary}
    grids = [("base", base)] + ([("int.", intervened)] if intervened is not None and intervened.cells else [])
    marks = {"base": "●", "int.": "○"}

    def lines(field: str) -> list[Series]:
        return [Series(name, g.column(position, field), colours[name], marks[name]) for name, g in grids]

    plots = [
        lambda h: layer_chart(f"KL→final @{position} (log)", lines("kl_to_final"), n_rows, layer, width, h, log=True),
        lambda h: first_final_bars(first_final_rows(shown), shown.tokens, n_rows, position, width, h,
                                   colours["int." if shown is intervened else "base"]),
        lambda h: layer_chart(f"entropy @{position} (bits)", lines("entropy_bits"), n_rows, layer, width, h,
                              log=False),
    ]
    if results.kl_base_int:
        kl = [row[position] for row in results.kl_base_int]
        plots.insert(1, lambda h: layer_chart(f"KL(base‖int) @{position} (log)",
                                           [Series("KL", kl, theme.secondary or theme.primary, "◆")], n_rows,
                                           layer, width, h, log=True))
    fit = max(1, min(len(plots), height // MIN_PLOT_HEIGHT))
    return Text("\n\n", no_wrap=True).join(plot(height // fit - 1) for plot in plots[:fit])


def trace_chart(trace: CausalTrace, cursor: tuple[int, int], theme: Theme, width: int, height: int) -> Text:
    """The causal trace at the cursor's position: per row, the indirect effect and the restored p_answer."""
    layer, position = cursor
    series = [Series("IE", trace.column(position), theme.primary, "●"),
              Series("p", trace.column(position, "p_answer"), theme.accent or theme.secondary, "○")]
    return layer_chart(f"indirect effect @{position}", series, len(trace.layers), layer, width, height - 1, log=False)


def overview(results: Results, shown: DecodeGrid | None, view: str, metric: str, cursor: tuple[int, int],
             width: int, height: int, colour: str) -> Text:
    """The Overview pane: one metric of the shown grid as a heatmap, a character per cell, under a title line."""
    if shown is None or not shown.cells:
        return Text("No results yet: type a prompt and press Ctrl+R.")
    values = (results.kl_base_int or []) if metric == "kl_base_int" else [
        [getattr(cell, metric) for cell in row] for row in shown.cells]
    text = Text(f"overview · {OVERVIEW_TITLES[metric]} · {view} · v: metric, Enter: open in the grid\n", "bold",
                no_wrap=True)
    text.append(overview_text(values, shown.tokens, shown.layers, cursor, width, height - 1, metric != "entropy_bits",
                              colour))
    return text


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


def output_text(results: Results, origin: RunOrigin | None, changes: list[str], interventions_now: str) -> Text:
    """The Output pane: what the results were computed from (and what changed since), the last row's agreement
    between baseline and intervened, and the continuations."""
    lines = []
    if origin is not None:
        lines.append(f"results of: {origin.model} · {origin.method} · {origin.toggles.describe()}")
        lines.append(f"prompt: \"{origin.prompt.replace(chr(10), '⏎')}\"")
        if changes:
            lines.append(f"STALE: {', '.join(changes)} changed since; Ctrl+R reruns (now: {interventions_now})")
    if results.kl_base_int and results.baseline is not None and results.intervened is not None:
        last, row = results.kl_base_int[-1], len(results.kl_base_int) - 1
        agree = sum(results.baseline.top1(row, t).id == results.intervened.top1(row, t).id for t in range(len(last)))
        lines.append(f"row {results.intervened.layers[-1]}: mean KL(base‖int) {sum(last) / len(last):.4f} nats, "
                     f"top-1 agreement {agree}/{len(last)}")
    text = Text(visible("\n".join(lines)))
    text.append(continuation_text(results.continuation))
    return text
