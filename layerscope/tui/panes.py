"""The explorer's panes besides the grid: layer toggles, head table, cell detail, charts, output.

Panes render what the app hands them and post messages for what the user asks (and when they are resized);
none of them touches the model or the app. The detail pane's text is built in `detail_text`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.widgets.data_table import RowKey

from layerscope.tui.grid_view import arrow_bindings
from layerscope.tui.state import Toggles, block_kinds, steer_where

TOGGLE_MARKS = {"on": "[x]", "covered": "[·]", "off": "[ ]"}
"""Shown as Text, never as a string: a DataTable reads a string as Rich markup, and '[x]' is a tag to it."""
SCORE_SOURCES = {
    "induction": "random tokens repeated twice, 10 samples (not your prompt)",
    "retrieval": "needle-in-a-haystack tests, 512-2048 tokens (not your prompt)",
    "previous_token": "sample_prompts/general.txt (not your prompt)",
}
SCORE_KINDS = ("retrieval", "induction", "previous_token")
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "retrieval": {"lengths": (512,), "depths": (0, 50, 100)},
    "induction": {"samples": 3},
    "previous_token": {},
}
"""The Heads pane's quick setting (`f`), a first look in a fraction of the time: retrieval from 15 needle tests
instead of 75 (one length, three depths), induction from 3 samples instead of 10."""
QUICK_SOURCES = {
    "induction": "random tokens repeated twice, 3 samples, quick (not your prompt)",
    "retrieval": "needle-in-a-haystack tests, 512 tokens, depths 0/50/100, quick (not your prompt)",
    "previous_token": SCORE_SOURCES["previous_token"],
}


# The footer shows each group as its keys and one word, so the app's Run and Cancel still fit at 80 columns;
# the help screen and the command palette keep each key's own description.
STEER_KEYS = Binding.Group("Steer")
SCORE_KEYS = Binding.Group("Scores")


def toggle_mark(state: str) -> Text:
    return Text(TOGGLE_MARKS[state], style="bold" if state == "on" else "")


def head_of(key: RowKey) -> tuple[int, int]:
    """(layer, head) of a head table row, added with the key 'layer.head'."""
    assert key.value is not None, "every head row has its key"
    layer, head = key.value.split(".")
    return int(layer), int(head)


class LayerPane(Vertical):
    """One row per block; a column per toggle. Space or Enter flips the cell under the cursor (on the block
    column: the first toggle, drop). The cursor starts on the first toggle column."""

    BINDINGS = [
        Binding("space", "toggle_cell", "Toggle", id="layers.toggle"),
        Binding("s", "next_seed", "Next seed", id="layers.next_seed"),
        Binding("t", "steer_factor", "Steer factor", id="layers.steer_factor", group=STEER_KEYS),
        Binding("w", "steer_positions", "Steer positions", id="layers.steer_positions", group=STEER_KEYS),
    ]

    class Toggled(Message):
        def __init__(self, kind: str, block: int) -> None:
            super().__init__()
            self.kind, self.block = kind, block

    class SeedChanged(Message):
        pass

    class SteerFactorChanged(Message):
        pass

    class SteerPositionsAsked(Message):
        pass

    def compose(self) -> ComposeResult:
        yield Static(id="layer-hint")
        yield DataTable(id="layer-table", cursor_type="cell", zebra_stripes=True)

    def show(self, toggles: Toggles, n_blocks: int) -> None:
        """Rebuild the rows when the model changes; otherwise update the marks in place."""
        table = self.query_one(DataTable)
        steer = (
            ""
            if toggles.steer_vector is None
            else f" · t: steer factor (×{toggles.steer_factor:g}) · w: where ({steer_where(toggles.steer_positions)})"
        )
        self.query_one("#layer-hint", Static).update(
            f"Space: toggle · s: next seed (random seed {toggles.seed}){steer} · interventions: {toggles.describe()}"
        )
        kinds = block_kinds()
        if table.row_count != n_blocks:
            table.clear(columns=True)
            table.add_column("block", key="block")
            for kind, choice in kinds.items():
                table.add_column(choice.title, key=kind)
            for block in range(n_blocks):
                table.add_row(str(block), *[toggle_mark(toggles.state_of(k, block)) for k in kinds], key=str(block))
            table.move_cursor(row=0, column=1, animate=False)
            return
        for block in range(n_blocks):
            for kind in kinds:
                table.update_cell(str(block), kind, toggle_mark(toggles.state_of(kind, block)))

    def action_toggle_cell(self) -> None:  # not action_toggle: that is DOMNode's own (toggle an attribute)
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        row, column = table.cursor_coordinate
        self.post_message(self.Toggled(list(block_kinds())[max(0, column - 1)], row))

    def on_data_table_cell_selected(self, event: DataTable.CellSelected) -> None:
        event.stop()
        self.action_toggle_cell()

    def action_next_seed(self) -> None:
        self.post_message(self.SeedChanged())

    def action_steer_factor(self) -> None:
        self.post_message(self.SteerFactorChanged())

    def action_steer_positions(self) -> None:
        self.post_message(self.SteerPositionsAsked())


class HeadPane(Vertical):
    """Every (layer, head) with its scores; sortable; Space masks the head for the next run, Enter shows its
    attention pattern over the prompt."""

    BINDINGS = [
        Binding("space", "toggle_mask", "Mask head", id="heads.toggle_mask"),
        Binding("o", "cycle_sort", "Sort", id="heads.sort"),
        Binding("u", "mask_mode", "Mask mode", id="heads.mask_mode"),
        Binding("i", "score('induction')", "Induction scores", id="heads.induction", group=SCORE_KEYS),
        Binding("r", "score('retrieval')", "Retrieval scores", id="heads.retrieval", group=SCORE_KEYS),
        Binding("b", "score('previous_token')", "Previous-token scores", id="heads.previous_token", group=SCORE_KEYS),
        Binding("l", "load_scores", "Load scores JSON", id="heads.load"),
        Binding("f", "quick", "Quick scores on/off", id="heads.quick"),
    ]
    SORTS = ("layer", *SCORE_KINDS)

    class MaskToggled(Message):
        def __init__(self, layer: int, head: int) -> None:
            super().__init__()
            self.layer, self.head = layer, head

    class ModeToggled(Message):
        pass

    class PatternWanted(Message):
        def __init__(self, layer: int, head: int) -> None:
            super().__init__()
            self.layer, self.head = layer, head

    class LoadWanted(Message):
        pass

    class ScoresWanted(Message):
        def __init__(self, kind: str, quick: bool) -> None:
            super().__init__()
            self.kind, self.quick = kind, quick

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scores: dict[str, dict[tuple[int, int], float]] = {kind: {} for kind in SCORE_KINDS}
        self.sources: dict[str, str] = {}  # kind -> where its scores came from
        self.sort = "layer"
        self.quick = False  # scores with QUICK_SETTINGS
        self._shape: tuple[int, int, int] = (0, 0, 1)
        self._toggles = Toggles()

    def compose(self) -> ComposeResult:
        yield Static(id="head-hint")
        yield DataTable(id="head-table", cursor_type="row", zebra_stripes=True)

    def show(self, toggles: Toggles, n_blocks: int, n_heads: int, n_kv_heads: int) -> None:
        table = self.query_one(DataTable)
        previous, self._toggles = self._toggles, toggles
        self._hint()
        if self._shape != (n_blocks, n_heads, n_kv_heads) or table.row_count != n_blocks * n_heads:
            self._shape = (n_blocks, n_heads, n_kv_heads)
            table.clear(columns=True)
            for name in ("layer", "head", "kv", *SCORE_KINDS, "mask"):
                table.add_column(self._title(name), key=name)
            per_group = max(1, n_heads // max(1, n_kv_heads))
            for layer in range(n_blocks):
                for head in range(n_heads):
                    table.add_row(
                        layer,
                        head,
                        head // per_group,
                        *self._score_cells(layer, head),
                        self._mask_cell(toggles, layer, head),
                        key=f"{layer}.{head}",
                    )
            self._sort()
            return
        for layer, head in previous.masked_heads ^ toggles.masked_heads | (
            toggles.masked_heads if previous.mask_mode != toggles.mask_mode else set()
        ):
            table.update_cell(f"{layer}.{head}", "mask", self._mask_cell(toggles, layer, head), update_width=True)

    def _title(self, column: str) -> Text:
        """A column's header; the sorted one says so and which way: 'retrieval ▼' (highest first), 'layer ▲'.
        Every sortable title keeps room for the arrow, so the columns keep their widths when the sort changes."""
        title = column.replace("previous_token", "prev-token")
        if column not in self.SORTS:
            return Text(title)
        if column != self.sort:
            return Text(f"{title}  ")
        return Text(f"{title} {'▲' if column == 'layer' else '▼'}", style="bold")

    def _hint(self) -> None:
        masked = ", ".join(f"{layer}.{head}" for layer, head in sorted(self._toggles.masked_heads)) or "none"
        hint = Text(
            f"Enter: pattern · Space: mask · u: mode ({self._toggles.mask_mode}) · o: sort ({self.sort}) · "
            f"r/i/b: retrieval/induction/previous-token scores · f: quick ({'on' if self.quick else 'off'}) · "
            f"l: load JSON · masked: {masked}"
        )
        for kind, source in self.sources.items():
            hint.append(f"\n{kind.replace('_', '-')} scores: {source}")
        self.query_one("#head-hint", Static).update(hint)

    def _mask_cell(self, toggles: Toggles, layer: int, head: int) -> Text:
        if (layer, head) in toggles.masked_heads:
            return Text(f"[x] {toggles.mask_mode}", style="bold")
        return Text("[ ]")

    def _score_cells(self, layer: int, head: int) -> list[str]:
        return [
            f"{self.scores[kind][(layer, head)]:.3f}" if (layer, head) in self.scores[kind] else "-"
            for kind in SCORE_KINDS
        ]

    def set_scores(self, kind: str, scores: dict[tuple[int, int], float], source: str) -> None:
        """`source` says what the scores were computed from (model, texts), shown under the hint."""
        self.scores[kind], self.sources[kind] = scores, source
        self._hint()
        table = self.query_one(DataTable)
        for key in table.rows:
            layer, head = head_of(key)
            table.update_cell(key, kind, self._score_cells(layer, head)[SCORE_KINDS.index(kind)])
        self._sort()

    def _sort(self, to_top: bool = False) -> None:
        """Sort by the chosen column (its header says so); the cursor stays on the head it was on, or with
        `to_top` goes to the first row, the view scrolled to the top."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return
        head = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        for column in table.columns.values():
            column.label = self._title(str(column.key.value))
        if self.sort == "layer":
            table.sort("layer", "head")
        else:
            scores = self.scores[self.sort]
            table.sort("layer", "head", key=lambda row: (-scores.get((row[0], row[1]), -1.0), row[0], row[1]))
        table.move_cursor(row=0 if to_top else table.get_row_index(head), animate=False)
        if to_top:
            table.scroll_home(animate=False)

    def action_cycle_sort(self) -> None:
        """The next sort column among the layer order and the score kinds computed (or loaded) so far."""
        ready = [kind for kind in self.SORTS if kind == "layer" or self.scores[kind]]
        following = ready[(ready.index(self.sort) + 1) % len(ready)] if self.sort in ready else "layer"
        if following == self.sort:
            self.app.notify("No scores to sort by yet: r, i or b compute them, l loads them.", severity="warning")
            return
        self.sort = following
        self._sort(to_top=True)
        self._hint()

    def action_toggle_mask(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            layer, head = head_of(table.coordinate_to_cell_key(table.cursor_coordinate).row_key)
            self.post_message(self.MaskToggled(layer, head))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter: the head's attention pattern over the prompt (Space masks it)."""
        event.stop()
        self.post_message(self.PatternWanted(*head_of(event.row_key)))

    def action_mask_mode(self) -> None:
        self.post_message(self.ModeToggled())

    def action_score(self, kind: str) -> None:
        self.post_message(self.ScoresWanted(kind, self.quick))

    def action_quick(self) -> None:
        self.quick = not self.quick
        self._hint()

    def action_load_scores(self) -> None:
        self.post_message(self.LoadWanted())


class DetailPane(Static):
    """The cell detail: the app lays it out again for its width when that changes (`Resized`)."""

    class Resized(Message):
        pass

    def on_resize(self) -> None:
        self.post_message(self.Resized())


class SidePane(VerticalScroll):
    """Beside the grid: the cell's detail, then the charts at the cursor. `Tab` focuses it, the arrows scroll it,
    `X` exports its charts as a figure (the app's `X` elsewhere exports the grid)."""

    BINDINGS = [Binding("X", "export_charts", "Export charts", id="side.export_charts")]

    class ExportCharts(Message):
        pass

    def action_export_charts(self) -> None:
        self.post_message(self.ExportCharts())


class ChartPane(Static):
    """Redrawn by the app at most a few times a second (see `LayerscopeApp.flush_charts`), and after it says it
    was resized (`Resized`)."""

    class Resized(Message):
        pass

    def on_resize(self) -> None:
        self.post_message(self.Resized())


OVERVIEW_METRICS = ("kl_to_final", "entropy_bits", "kl_base_int")
OVERVIEW_TITLES = {
    "kl_to_final": "KL to final (nats)",
    "entropy_bits": "entropy (bits)",
    "kl_base_int": "KL(base‖int) (nats)",
}


class OverviewPane(Static, can_focus=True):
    """The whole run at once: a heatmap of one metric, one character per cell. The arrows move the grid's
    cursor (the two stay in step), v cycles the metric, Enter opens the cell in the grid."""

    BINDINGS = [
        *arrow_bindings("overview"),
        Binding("v", "next_metric", "Metric", id="overview.metric"),
        Binding("enter", "open_cell", "Open in grid", id="overview.open"),
    ]
    metric = "kl_to_final"

    class Moved(Message):
        def __init__(self, dx: int, dy: int) -> None:
            super().__init__()
            self.dx, self.dy = dx, dy

    class OpenCell(Message):
        pass

    def action_move(self, dx: int, dy: int) -> None:
        self.post_message(self.Moved(dx, dy))

    def action_next_metric(self) -> None:
        self.metric = OVERVIEW_METRICS[(OVERVIEW_METRICS.index(self.metric) + 1) % len(OVERVIEW_METRICS)]
        self.post_message(self.Moved(0, 0))

    def action_open_cell(self) -> None:
        self.post_message(self.OpenCell())

    def on_resize(self) -> None:
        self.post_message(self.Moved(0, 0))
