"""Modal screens: help, a one-line question, a pick list. Escape closes each without an answer."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, OptionList

from layerscope.tui.keymap import key_display

PALETTE_HELP = {
    "run": "Run the prompt with the current toggles",
    "cancel": "Stop the running computation, keeping its rows",
    "switch_method": "Logit lens / tuned or Jacobian lens / Patchscope",
    "causal_trace": "Noise the subject, restore each state in turn",
    "open_lens": "A folder from `layerscope tunedlens train` or `jacobianlens fit`",
    "cycle_view": "Intervened / baseline / diff",
    "clear_interventions": "Remove every toggle and head mask",
    "save_session": "Prompt, model, interventions and results as JSON",
    "load_session": "Load a saved session",
    "export_csv": "The shown grid, a line per cell and rank",
    "export_figure": "The shown grid as a figure: .svg, .png or .pdf by the name",
    "copy_cell": "The cell as plain text, tokens raw (OSC 52)",
    "copy_grid": "Top-1 tokens as TSV (OSC 52)",
    "samples": "Pick a prompt from sample_prompts/",
    "open_model": "Load another model",
    "help": "Every key, by pane",
    "toggle_side": "Hide or show the cell detail and charts",
    "continuation_length": "Tokens generated after the prompt",
    "grow_grid": "The lens grid grows over the continuation as it is generated",
    "go_to_divergence": "Grid cursor to where baseline and intervened continuations diverge",
    "edit_prompt": "Type in the prompt; Esc leaves it",
}
"""The command palette's help line per app action; the palette lists every binding (see
`LayerscopeApp.get_system_commands`), pane bindings under their pane's name."""


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
    """Every binding by pane, with its current keys (after the user's keymap) and the id to remap it by."""

    def __init__(self, groups: list[tuple[str, list[tuple[str, str, str]]]]) -> None:
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Keys by pane · remap by id in keymap.toml · Esc closes")
            table: DataTable[str | Text] = DataTable(cursor_type="row", zebra_stripes=True)
            table.add_columns("keys", "action", "id")
            for pane, rows in self.groups:
                table.add_row(Text(pane, style="bold reverse"), "", "")
                for keys, action, binding_id in rows:
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

    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]

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
