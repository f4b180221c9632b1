"""The decode grid as a line-rendered scroll view.

Rows are prompt TOKENS and columns are LAYERS. A prompt can be hundreds of
tokens and reads top to bottom like the text itself, so it takes the long,
vertical axis; the layer count is bounded (31 for the demo, 81 for an 80-block
model) and scrolls sideways. The token column and the layer header stay put.

Only visible lines are drawn (`render_line`). Each row's full strip is cached,
with its drawn lines per scroll offset, until the data, the view or the theme
changes; a cursor move rebuilds and redraws two rows and the header. Every cell carries a glyph for its
probability and a mark when its top-1 changed (a leading ≠), so the grid reads without colour (NO_COLOR, 16 colours).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from layerscope.display import WHITESPACE, token_label, visible  # noqa: F401 (the views import them from here)
from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from layerscope.tui.methods import Grid, GridMethod

CELL_WIDTH = 10
LABEL_WIDTH = 15
GLYPHS = "▁▂▃▄▅▆▇█"
VIEWS = ("intervened", "baseline", "diff")
GENERATED_MARK = "+"  # between a generated token's position and its text


def prob_glyph(prob: float) -> str:
    return GLYPHS[min(len(GLYPHS) - 1, max(0, int(prob * len(GLYPHS))))]


def prob_bin(prob: float) -> int:
    return min(3, int(prob * 4))


def find_cell(
    text_at: Callable[[int, int], str], n_rows: int, n_positions: int, start: tuple[int, int], query: str, step: int = 1
) -> tuple[int, int] | None:
    """The next (`step` 1) or previous (-1) cell after `start` = (row, position), in reading order (position by
    position, each across its rows) and around the end, whose text (`text_at(row, position)`, as the grid shows
    it) holds `query`, ignoring case; a space in the query matches the grid's `·`. None: no cell has it."""
    wanted = {query.lower(), query.lower().translate(WHITESPACE)}
    total = n_rows * n_positions
    here = start[1] * n_rows + start[0]
    for offset in range(1, total + 1):
        index = (here + step * offset) % total
        row, position = index % n_rows, index // n_rows
        text = text_at(row, position).lower()
        if any(part in text for part in wanted):
            return row, position
    return None


def parse_jump(answer: str, rows: list[str]) -> tuple[int | None, int | None]:
    """(row, position) from what the user typed at `:`: a number is a position, `L12` (or `emb`) the row the
    grid labels 12 (emb); either or both, in any order. Raises LayerscopeError for anything else."""
    row = position = None
    for part in answer.split():
        label = part[1:] if part[:1] in ("L", "l") and part[1:].isdigit() else part
        if part.isdigit():
            position = int(part)
        elif label in rows:
            row = rows.index(label)
        else:
            raise LayerscopeError(f"'{part}' is neither a position (a number) nor a row ({rows[0]}, L0..L{rows[-1]}).")
    if row is None and position is None:
        raise LayerscopeError("Type a position (a number), a row (L12 or emb), or both.")
    return row, position


def arrow_bindings(prefix: str) -> list[Binding]:
    """The arrows as `move(dx, dy)` by one cell, with ids '{prefix}.up' ... for the keymap: the grid and the
    overview move their cursor the same way."""
    return [
        Binding(key, f"move({dx}, {dy})", key.capitalize(), show=False, id=f"{prefix}.{key}")
        for key, dx, dy in (("up", 0, -1), ("down", 0, 1), ("left", -1, 0), ("right", 1, 0))
    ]


class DecodeGridView(ScrollView, can_focus=True):
    """Tokens down, layers across; a cell shows what its method's summary says (a lens: the top-1 token and a
    probability glyph; a causal trace: the indirect effect) and a change mark."""

    COMPONENT_CLASSES = {
        "decode-grid--header",
        "decode-grid--corner",
        "decode-grid--label",
        "decode-grid--cursor",
        "decode-grid--p0",
        "decode-grid--p1",
        "decode-grid--p2",
        "decode-grid--p3",
        "decode-grid--changed",
        "decode-grid--same",
    }
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
        Binding("space", "mask_head", "Mask the head (pattern)", show=False, id="grid.mask_head"),
        Binding("slash", "find", "Find a token", show=False, id="grid.find"),
        Binding("right_square_bracket", "find_next(1)", "Next match", show=False, id="grid.next_match"),
        Binding("left_square_bracket", "find_next(-1)", "Previous match", show=False, id="grid.previous_match"),
        Binding("colon", "jump", "Go to a position or row", show=False, id="grid.jump"),
    ]

    cursor_layer: reactive[int] = reactive(0, init=False)
    cursor_position: reactive[int] = reactive(0, init=False)
    view: reactive[str] = reactive("intervened", init=False)

    class DrawFailed(Message):
        """A line could not be drawn (see `render_line`): the app says so once; the grid stays up."""

        def __init__(self, error: Exception) -> None:
            super().__init__()
            self.error = error

    class MaskHeadWanted(Message):
        """Space: mask (or unmask) the head whose attention pattern the grid shows."""

    class CursorMoved(Message):
        def __init__(self, layer: int, position: int) -> None:
            super().__init__()
            self.layer = layer
            self.position = position

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.method: GridMethod | None = None  # the method whose grids these are (tui/methods.py)
        self.baseline: Grid | None = None
        self.intervened: Grid | None = None
        self._cache: dict[int, tuple[Strip, dict[tuple[int, int], Strip]]] = {}  # row strip, drawn lines
        self._styles: dict[str, Style] = {}
        self.query_text = ""  # the last search (/), for [ and ]
        self.wanted: tuple[int, int] | None = None
        """(layer, position) the user put the cursor on, kept across reruns, method and view switches even while
        the rows it needs are still coming; None: the answer cell (last row, the prompt's last position), the first
        view, which stays there while the grid grows over the continuation."""

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
    def set_grids(self, method: GridMethod, baseline: Grid | None, intervened: Grid | None) -> None:
        """Show these grids of `method` (they may still be growing: call `rows_added` as rows arrive)."""
        self.method, self.baseline, self.intervened = method, baseline, intervened
        self.rows_added()

    def rows_added(self) -> None:
        """Grow the canvas and put the cursor as near the wanted cell as the rows so far allow."""
        # room for one more partial cell, so a scroll by whole cells can always show the last column
        self.virtual_size = Size(LABEL_WIDTH + CELL_WIDTH * (self.n_layers + 1) - 1, self.n_positions + 1)
        layer, position = self.wanted or (self.n_layers - 1, self.answer_position)
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
    def shown(self) -> Grid | None:
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

    @property
    def answer_position(self) -> int:
        """The prompt's last position (where the next token is predicted), also in a grid grown over the
        continuation."""
        prompt_length = getattr(self.baseline, "prompt_length", None)
        return (prompt_length or self.n_positions) - 1

    def changed(self, layer: int, position: int) -> bool:
        """Whether the intervened cell differs from the baseline's (the method's summary says what to compare:
        a lens's top-1 token)."""
        if (
            self.method is None
            or self.intervened is None
            or self.baseline is None
            or layer >= len(self.intervened.cells)
        ):
            return False
        summary = self.method.summary
        identity = summary(self.intervened.cells[layer][position], 1).identity
        return identity is not None and identity != summary(self.baseline.cells[layer][position], 1).identity

    def action_mask_head(self) -> None:
        self.post_message(self.MaskHeadWanted())

    # find and jump ------------------------------------------------------
    def action_find(self) -> None:
        from layerscope.tui.screens import InputScreen

        def chosen(query: str | None) -> None:
            if query:
                self.query_text = query
                self.action_find_next(1, from_here=True)

        self.app.push_screen(
            InputScreen("Find a token in the grid ([ and ] go to the previous and next match):", self.query_text),
            chosen,
        )

    def action_find_next(self, step: int, from_here: bool = False) -> None:
        """Move to the next (1) or previous (-1) match of the last search; `from_here` counts the cursor's cell."""
        shown, method = self.shown, self.method
        if not self.query_text or shown is None or method is None or not self.n_layers:
            self.app.notify("Nothing to find yet: / asks for a token.", severity="warning")
            return
        start = (self.cursor_layer, self.cursor_position)
        if from_here:  # the search starts on the cursor's cell itself
            start = (
                (self.cursor_layer - 1, self.cursor_position)
                if self.cursor_layer
                else (self.n_layers - 1, self.cursor_position - 1)
            )
        found = find_cell(
            lambda row, position: method.summary(shown.cells[row][position], 200).text,
            self.n_layers,
            self.n_positions,
            start,
            self.query_text,
            step,
        )
        if found is None:
            self.app.notify(f"No cell shows '{self.query_text}'.", severity="warning")
            return
        self.move_to(*found)

    def action_jump(self) -> None:
        from layerscope.tui.screens import InputScreen

        def chosen(answer: str | None) -> None:
            if not answer or self.shown is None:
                return
            try:
                row, position = parse_jump(answer, self.shown.layers)
            except LayerscopeError as error:
                self.app.notify(str(error), severity="error")
                return
            self.move_to(
                self.cursor_layer if row is None else row, self.cursor_position if position is None else position
            )

        self.app.push_screen(InputScreen("Go to a position (12), a row (L12, emb) or both (12 L3):", ""), chosen)

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
        except Exception as error:  # a drawing bug must not take the results down
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
                line = lines[scroll_x, width] = self._join(self._label(shown, position), cells, scroll_x, width)
            return line
        return self._join(label, cells, scroll_x, width)

    def _join(self, label: Strip, cells: Strip, scroll_x: int, width: int) -> Strip:
        body = cells.crop(scroll_x, scroll_x + width - LABEL_WIDTH)
        return Strip.join([label, body]).adjust_cell_length(width, self.rich_style)

    def _header(self, shown: Grid) -> tuple[Strip, Strip]:
        style = self._style("header")
        cursor = self._style("cursor")
        label = Strip([Segment(f"{'pos token':<{LABEL_WIDTH - 1}}", self._style("corner")), Segment("│", style)])
        cells = [
            Segment(f"{name:^{CELL_WIDTH}}", cursor if layer == self.cursor_layer else style)
            for layer, name in enumerate(shown.layers)
        ]
        return label, Strip(cells)

    def _label(self, shown: Grid, position: int) -> Strip:
        """The position and its token in the shown grid (after a divergence the runs' tokens differ), marked
        `+` where the token was generated (a grid grown over the continuation)."""
        name = "cursor" if position == self.cursor_position else "label"
        prompt_length = getattr(shown, "prompt_length", None)  # a DecodeGrid's; other grids cover the prompt
        mark = GENERATED_MARK if prompt_length is not None and position >= prompt_length else " "
        text = f"{position:>4}{mark}{token_label(shown.tokens[position], LABEL_WIDTH - 6)}"
        return Strip([Segment(f"{text:<{LABEL_WIDTH - 1}}│", self._style(name))])

    def _row(self, shown: Grid, position: int) -> Strip:
        diff = self.view == "diff" and self.intervened is not None
        segments = []
        assert self.method is not None, "a grid is shown with its method (set_grids)"
        for layer, row in enumerate(shown.cells):
            summary = self.method.summary(row[position], CELL_WIDTH - 2)
            prob, label = summary.shade, summary.text
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
