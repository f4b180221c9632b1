"""Modal screens: help, a one-line question, a pick list. Escape closes each without an answer."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, OptionList

from layerscope.tui.keymap import key_display

PALETTE = (
    ("Run", "Run the prompt with the current toggles", "run"),
    ("Cancel", "Stop the running computation, keeping its rows", "cancel"),
    ("Switch method", "Logit lens / tuned lens / Patchscope", "switch_method"),
    ("Causal trace", "Noise the subject, restore each state: the answer's probability per cell", "causal_trace"),
    ("Load tuned lens", "A folder from `layerscope tunedlens train` (or a published lens)", "open_lens"),
    ("Cycle view", "Intervened / baseline / diff", "cycle_view"),
    ("Clear interventions", "Remove every toggle and head mask", "clear_interventions"),
    ("Save session", "Prompt, model, interventions and results as JSON", "save_session"),
    ("Open session", "Load a saved session", "load_session"),
    ("Export grid as CSV", "The shown grid, one line per cell and rank", "export_csv"),
    ("Copy cell", "The cell's detail, through the terminal (OSC 52)", "copy_cell"),
    ("Copy grid", "Top-1 tokens as TSV, through the terminal (OSC 52)", "copy_grid"),
    ("Sample prompts", "Pick a prompt from sample_prompts/", "samples"),
    ("Load model", "Load another model", "open_model"),
    ("Help", "All key bindings", "help"),
)
"""The command palette's entries (Ctrl+P): title, help, and the app action (without 'action_') they run."""


class _Modal(ModalScreen):
    DEFAULT_CSS = """
    _Modal { align: center middle; }
    _Modal > Vertical { width: 90%; max-width: 100; height: auto; max-height: 90%; border: round $primary;
                        background: $surface; padding: 0 1; }
    _Modal DataTable, _Modal OptionList { height: auto; max-height: 20; }
    """
    BINDINGS = [Binding("escape", "dismiss_none", "Close", id="modal.close")]

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class HelpScreen(_Modal):
    """Every binding with its current keys (after the user's keymap) and the id to remap it by."""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Key bindings (remap by id in keymap.toml; Ctrl+P: command palette; Esc closes)")
            table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("keys", "action", "id")
            for keys, action, binding_id in self.rows:
                table.add_row(key_display(keys), action, binding_id)
            yield table


class InputScreen(_Modal):
    def __init__(self, title: str, default: str = "") -> None:
        super().__init__()
        self.title_text, self.default = title, default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield Input(self.default, id="answer")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)


class ConfirmScreen(_Modal):
    """A yes/no question: y or Enter answers True; n or Esc answers False."""

    BINDINGS = [Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
                Binding("n,escape", "answer(False)", "No", id="confirm.no")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Label("y / Enter: yes · n / Esc: no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class PickScreen(_Modal):
    """Answers the index of the chosen line. Typing filters the list (every word must appear); Up/Down move
    in the list, Enter takes the highlighted line."""

    BINDINGS = [Binding("down", "move(1)", show=False), Binding("up", "move(-1)", show=False)]

    def __init__(self, title: str, choices: list[str]) -> None:
        super().__init__()
        self.title_text, self.choices = title, choices
        self.shown = list(range(len(choices)))

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield Input(placeholder="type to filter", id="filter")
            yield OptionList(*self.choices)

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = 0 if self.choices else None
        self.query_one("#filter", Input).focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        words = event.value.lower().split()
        self.shown = [i for i, choice in enumerate(self.choices) if all(w in choice.lower() for w in words)]
        options = self.query_one(OptionList)
        options.clear_options()
        options.add_options([self.choices[i] for i in self.shown])
        options.highlighted = 0 if self.shown else None

    def action_move(self, step: int) -> None:
        options = self.query_one(OptionList)
        if self.shown:
            options.highlighted = max(0, min(len(self.shown) - 1, (options.highlighted or 0) + step))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        highlighted = self.query_one(OptionList).highlighted
        if highlighted is not None and self.shown:
            self.dismiss(self.shown[highlighted])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.shown[event.option_index])
