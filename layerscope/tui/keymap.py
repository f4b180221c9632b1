"""A user keymap file remaps bindings by id: `run = "f5,ctrl+r"` in keymap.toml."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from textual.binding import Binding
from textual.dom import DOMNode

from layerscope.errors import LayerscopeError
from layerscope.locations import user_keymap_path  # noqa: F401 (the app imports it from here)


def load_keymap(path: Path) -> dict[str, str]:
    """{binding id: keys}; a missing file is an empty keymap, a bad one a LayerscopeError."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise LayerscopeError(f"Keymap '{path}' ignored: {error}") from error
    bad = [key for key, value in data.items() if not isinstance(value, str)]
    if bad:
        raise LayerscopeError(f"Keymap '{path}' ignored: values must be key strings ({', '.join(bad)}).")
    return data


KEY_NAMES = {
    "question_mark": "?",
    "escape": "Esc",
    "space": "Space",
    "enter": "Enter",
    "pageup": "PgUp",
    "pagedown": "PgDn",
    "home": "Home",
    "end": "End",
    "up": "↑",
    "down": "↓",
    "left": "←",
    "right": "→",
    "tab": "Tab",
    "backspace": "Backspace",
    "delete": "Del",
    "backslash": "\\",
    "slash": "/",
}


def key_display(keys: str) -> str:
    """Keys as people write them: 'ctrl+r,f5' -> 'Ctrl+R, F5'; 'question_mark' -> '?'; 'Y' stays 'Y'."""

    def one(key: str) -> str:
        *modifiers, name = key.strip().split("+")
        name = KEY_NAMES.get(name, name.upper() if len(name) > 1 or modifiers else name)
        return "+".join([*(m.capitalize() for m in modifiers), name])

    return ", ".join(one(key) for key in keys.split(","))


def binding_rows(owners: Iterable[type[DOMNode]], keymap: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(keys, description, id) of every binding of the owners, with `keymap` applied. Textual also allows
    tuples in BINDINGS; layerscope writes only Binding objects, which alone have an id."""
    return [
        (
            keymap.get(binding.id, binding.key) if binding.id else binding.key,
            binding.description or binding.action,
            binding.id or "",
        )
        for owner in owners
        for binding in owner.BINDINGS
        if isinstance(binding, Binding)
    ]
