"""The decode grid as a line-rendered scroll view.

Rows are prompt TOKENS and columns are LAYERS. A prompt can be hundreds of
tokens and reads top to bottom like the text itself, so it takes the long,
vertical axis; the layer count is bounded (31 for the demo, 81 for an 80-block
model) and scrolls sideways. The token column and the layer header stay put.

Only visible lines are drawn (`render_line`). Each row's full strip is cached,
with its drawn lines per scroll offset, until the data, the view or the theme
changes; a cursor move rebuilds and redraws two rows and the header. Every cell carries a glyph for its probability and a mark when its
top-1 changed (a leading ≠), so the grid reads without colour (NO_COLOR, 16 colours).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace, TraceCell
    from layerscope.analyses.grid import DecodeGrid, GridCell

CELL_WIDTH = 10
LABEL_WIDTH = 15
GLYPHS = "▁▂▃▄▅▆▇█"
VIEWS = ("intervened", "baseline", "diff")


_WHITESPACE = str.maketrans({" ": "·", "\n": "⏎", "\t": "⇥"})
_CONTROLS = str.maketrans({**{code: chr(0x2400 + code) for code in range(0x20) if code != 0x0A}, 0x7F: "␡",
                           **{code: f"\\x{code:02x}" for code in range(0x80, 0xA0)}})


def visible(text: str) -> str:
    """Control characters as their pictures (ESC -> ␛, BEL -> ␇, NUL -> ␀; C1 codes as \\x9b), so text from a
    prompt or a model can never drive the terminal. Newlines stay: callers that need one line use token_label."""
    return text.translate(_CONTROLS) if not text.isprintable() else text


def token_label(text: str, width: int) -> str:
    """Whitespace and control characters made visible (' Paris' -> '·Paris', ESC -> ␛), cut to width."""
    text = visible(text.translate(_WHITESPACE))
    return text if len(text) <= width else text[: width - 1] + "…"


def prob_glyph(prob: float) -> str:
    return GLYPHS[min(len(GLYPHS) - 1, max(0, int(prob * len(GLYPHS))))]


def prob_bin(prob: float) -> int:
    return min(3, int(prob * 4))


def cell_text(cell: GridCell | TraceCell, width: int = CELL_WIDTH - 2) -> tuple[float, str]:
    """(probability for the glyph and shade, text) of a cell: a lens cell's top-1 token, or a causal trace
    cell's indirect effect (shaded by the answer's restored probability)."""
    if hasattr(cell, "top"):
        return cell.top[0].prob, token_label(cell.top[0].token, width)
    return cell.p_answer, f"{cell.indirect_effect:+.3f}"


def arrow_bindings(prefix: str) -> list[Binding]:
    """The arrows as `move(dx, dy)` by one cell, with ids '{prefix}.up' ... for the keymap: the grid and the
    overview move their cursor the same way."""
    return [Binding(key, f"move({dx}, {dy})", key.capitalize(), show=False, id=f"{prefix}.{key}")
            for key, dx, dy in (("up", 0, -1), ("down", 0, 1), ("left", -1, 0), ("right", 1, 0))]


class DecodeGridView(ScrollView, can_focus=True):
    """Tokens down, layers across; a cell shows the top-1 token, a probability glyph and a change mark.
    It also shows a causal trace (same rows and columns): its cells show the indirect effect."""

    COMPONENT_CLASSES = {"decode-grid--header", "decode-grid--corner", "decode-grid--label", "decode-grid--cursor", "decode-grid--p0",
                         "decode-grid--p1", "decode-grid--p2", "decode-grid--p3", "decode-grid--changed",
                         "decode-grid--same"}
    DEFAULT_CSS = """
    DecodeGridView { background: $surface; }
    DecodeGridView > .decode-grid--header { background: $panel; color: $foreground; text-style: bold; }
    DecodeGridView > .decode-grid--label { background: $panel; color: $foreground; }
    DecodeGridView > .decode-grid--corner { background: $panel; color: $foreground; text-style: bold; }
    DecodeGridView:focus > .decode-grid--corner { background: $accent; color: $background; }
    DecodeGridView > .decode-grid--cursor { background: $foreground 45%; color: $background; text-style: bold; }
    DecodeGridView:focus > .decode-grid--cursor { background: $foreground; }
    DecodeGridView > .decode-grid--p0 { color: $foreground 60%; }
    DecodeGridView > .decode-grid--p1 { background: $primary 20%; color: $foreground; }
    DecodeGridView > .decode-grid--p2 { background: $primary 45%; color: $foreground; }
    DecodeGridView > .decode-grid--p3 { background: $primary 75%; color: $foreground; text-style: bold; }
    DecodeGridView > .decode-grid--changed { color: $error; text-style: bold; }
    DecodeGridView > .decode-grid--same { color: $foreground 35%; }
    """
    BINDINGS = [
        *arrow_bindings("grid"),
        Binding("pageup", "move(0, -10)", "Page up", show=False, id="grid.page_up"),
        Binding("pagedown", "move(0, 10)", "Page down", show=False, id="grid.page_down"),
        Binding("home", "move(-100000, 0)", "First layer", show=False, id="grid.first_layer"),
        Binding("end", "move(100000, 0)", "Last layer", show=False, id="grid.last_layer"),
        Binding("ctrl+home", "move(0, -100000)", "First position", show=False, id="grid.first_position"),
        Binding("ctrl+end", "move(0, 100000)", "Last position", show=False, id="grid.last_position"),
    ]

    cursor_layer: reactive[int] = reactive(0, init=False)
    cursor_position: reactive[int] = reactive(0, init=False)
    view: reactive[str] = reactive("intervened", init=False)

    class DrawFailed(Message):
        """A line could not be drawn (see `render_line`): the app says so once; the grid stays up."""

        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

    class CursorMoved(Message):
        def __init__(self, layer: int, position: int) -> None:
            super().__init__()
            self.layer = layer
            self.position = position

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.baseline: DecodeGrid | CausalTrace | None = None  # a causal trace has no intervened grid
        self.intervened: DecodeGrid | None = None
        self._cache: dict[int, tuple[Strip, dict[tuple[int, int], Strip]]] = {}  # row strip, drawn lines
        self._styles: dict[str, Style] = {}
        self.wanted: tuple[int, int] | None = None
        """(layer, position) the user put the cursor on, kept across reruns, method and view switches even while
        the rows it needs are still coming; None: the answer cell (last row, last position), the first view."""

    def on_mount(self) -> None:
        self.app.theme_changed_signal.subscribe(self, lambda _theme: self.invalidate())

    def on_resize(self) -> None:
        self._scroll_to_cursor()

    def on_focus(self) -> None:
        """Focused, the corner of the header is marked and the cursor is bright; unfocused, it dims."""
        self.invalidate()

    def on_blur(self) -> None:
        self.invalidate()

    # data ---------------------------------------------------------------
    def set_grids(self, baseline: DecodeGrid | CausalTrace | None, intervened: DecodeGrid | None) -> None:
        """Show these grids (they may still be growing: call `rows_added` as rows arrive)."""
        self.baseline, self.intervened = baseline, intervened
        self.rows_added()

    def rows_added(self) -> None:
        """Grow the canvas and put the cursor as near the wanted cell as the rows so far allow."""
        # room for one more partial cell, so a scroll by whole cells can always show the last column
        self.virtual_size = Size(LABEL_WIDTH + CELL_WIDTH * (self.n_layers + 1) - 1, self.n_positions + 1)
        layer, position = self.wanted or (self.n_layers - 1, self.n_positions - 1)
        self.cursor_layer = max(0, min(layer, self.n_layers - 1))
        self.cursor_position = max(0, min(position, self.n_positions - 1))
        self.invalidate()
        self.call_after_refresh(self._scroll_to_cursor)  # once the new virtual size allows the scroll

    def invalidate(self) -> None:
        self._cache.clear()
        self._styles.clear()
        self.refresh()

    def _style(self, name: str) -> Style:
        """Component styles, looked up once per theme or data change (a CSS lookup per cell is slow)."""
        style = self._styles.get(name)
        if style is None:
            style = self._styles[name] = self.get_component_rich_style(f"decode-grid--{name}")
        return style

    @property
    def shown(self) -> DecodeGrid | CausalTrace | None:
        """The grid whose tokens the cells show."""
        if self.view == "baseline" or self.intervened is None:
            return self.baseline
        return self.intervened

    @property
    def n_layers(self) -> int:
        return len(self.shown.cells) if self.shown else 0

    @property
    def n_positions(self) -> int:
        return len(self.baseline.tokens) if self.baseline else 0

    def changed(self, layer: int, position: int) -> bool:
        """Whether the intervened top-1 differs from the baseline's at this cell."""
        if self.intervened is None or self.baseline is None or layer >= len(self.intervened.cells):
            return False
        baseline = cast("DecodeGrid", self.baseline)  # an intervened grid comes only with a lens baseline
        return self.intervened.top1(layer, position).id != baseline.top1(layer, position).id

    # cursor -------------------------------------------------------------
    def action_move(self, dx: int, dy: int) -> None:
        self.move_to(self.cursor_layer + dx, self.cursor_position + dy)

    def move_to(self, layer: int, position: int) -> None:
        """Put the cursor on a cell (clamped to the grid); it stays there across reruns."""
        if not self.n_layers:
            return
        self.cursor_layer = max(0, min(self.n_layers - 1, layer))
        self.cursor_position = max(0, min(self.n_positions - 1, position))
        self.wanted = (self.cursor_layer, self.cursor_position)

    def watch_cursor_layer(self, old: int, new: int) -> None:
        self._cursor_changed(self.cursor_position, self.cursor_position)

    def watch_cursor_position(self, old: int, new: int) -> None:
        self._cursor_changed(old, new)

    def watch_view(self) -> None:
        self.rows_added()

    def _cursor_changed(self, old_position: int, new_position: int) -> None:
        """Redraw the cursor's old and new rows and the header; a scroll redraws everything anyway."""
        for position in {old_position, new_position}:
            self._cache.pop(position, None)
        if not self._scroll_to_cursor():
            for position in {old_position, new_position}:
                self.refresh_line(position + 1)
            self.refresh_line(self.scroll_offset.y)  # the header (sticky on the first screen line)
        self.post_message(self.CursorMoved(self.cursor_layer, self.cursor_position))

    def _scroll_to_cursor(self) -> bool:
        """Scroll the cursor's cell into view, clear of the header and the scrollbars; True when the view moved."""
        region = self.scrollable_content_region
        visible_rows = max(1, region.height - 1)
        visible_width = max(CELL_WIDTH, region.width - LABEL_WIDTH)
        x, y = self.scroll_offset
        left = self.cursor_layer * CELL_WIDTH
        if left < x:
            x = left
        elif left + CELL_WIDTH > x + visible_width:  # scroll by whole cells so columns stay aligned
            x = -(-(left + CELL_WIDTH - visible_width) // CELL_WIDTH) * CELL_WIDTH
        if self.cursor_position < y:
            y = self.cursor_position
        elif self.cursor_position >= y + visible_rows:
            y = self.cursor_position - visible_rows + 1
        if (x, y) == tuple(self.scroll_offset):
            return False
        self.scroll_to(x, y, animate=False, immediate=True, force=True)  # force: the scrollbars may not be laid out yet
        return True

    # drawing ------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        """One screen line; an exception while drawing it leaves it blank and is told once (DrawFailed)."""
        try:
            return self._render_line(y)
        except Exception as error:  # noqa: BLE001 (a drawing bug must not take the results down)
            self.app.post_message(self.DrawFailed(error))  # to the app itself: sent while the screen draws, it
            # would stop bubbling at the screen
            return Strip.blank(self.size.width, self.rich_style)

    def _render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        scroll_x -= scroll_x % CELL_WIDTH  # whole cells, however the scrollbar or the mouse moved
        width = self.size.width
        shown, baseline = self.shown, self.baseline
        if shown is None:
            return Strip.blank(width, self.rich_style)
        if y == 0:
            label, cells = self._header(shown)
        else:
            position = scroll_y + y - 1
            if baseline is None or position >= len(baseline.tokens):
                return Strip.blank(width, self.rich_style)
            if position not in self._cache:
                self._cache[position] = (self._row(shown, position), {})
            cells, lines = self._cache[position]
            line = lines.get((scroll_x, width))
            if line is None:
                if len(lines) > 8:  # drawn at scroll offsets long left
                    lines.clear()
                line = lines[scroll_x, width] = self._join(self._label(position, baseline.tokens[position]), cells,
                                                           scroll_x, width)
            return line
        return self._join(label, cells, scroll_x, width)

    def _join(self, label: Strip, cells: Strip, scroll_x: int, width: int) -> Strip:
        body = cells.crop(scroll_x, scroll_x + width - LABEL_WIDTH)
        return Strip.join([label, body]).adjust_cell_length(width, self.rich_style)

    def _header(self, shown: DecodeGrid | CausalTrace) -> tuple[Strip, Strip]:
        style = self._style("header")
        cursor = self._style("cursor")
        label = Strip([Segment(f"{'pos token':<{LABEL_WIDTH - 1}}", self._style("corner")), Segment("│", style)])
        cells = [Segment(f"{name:^{CELL_WIDTH}}", cursor if layer == self.cursor_layer else style)
                 for layer, name in enumerate(shown.layers)]
        return label, Strip(cells)

    def _label(self, position: int, token: str) -> Strip:
        name = "cursor" if position == self.cursor_position else "label"
        text = f"{position:>4} {token_label(token, LABEL_WIDTH - 6)}"
        return Strip([Segment(f"{text:<{LABEL_WIDTH - 1}}│", self._style(name))])

    def _row(self, shown: DecodeGrid | CausalTrace, position: int) -> Strip:
        diff = self.view == "diff" and self.intervened is not None
        segments = []
        rows: Sequence[Sequence[GridCell | TraceCell]] = shown.cells
        for layer, row in enumerate(rows):
            cell = row[position]
            prob, label = cell_text(cell)
            changed = self.changed(layer, position)
            text = f"{prob_glyph(prob)}{label:<{CELL_WIDTH - 2}}"
            if diff and not changed:
                style = self._style("same")
                text = f"{'=':^{CELL_WIDTH - 1}}"
            else:
                style = self._style(f"p{prob_bin(prob)}")
            if layer == self.cursor_layer and position == self.cursor_position:
                style = self._style("cursor")
            mark_style = self._style("changed") if changed else style
            segments.append(Segment("≠" if changed else " ", mark_style))
            segments.append(Segment(text, style))
        return Strip(segments)
