"""Theme files: TOML tables with the fields of `textual.theme.Theme`, read from folders at start.

A bad file is reported (one line each) and skipped, so the app always starts
with the shipped themes or Textual's own.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from textual.color import Color, ColorParseError
from textual.theme import Theme

from layerscope.locations import SHIPPED_THEMES, user_theme_folder  # noqa: F401 (importers use these names from here)

DEFAULT_THEME = "layerscope-dark"
FALLBACK_THEME = "textual-dark"

_FIELDS = {field.name for field in dataclasses.fields(Theme)}
_COLOURS = (
    "primary",
    "secondary",
    "warning",
    "error",
    "success",
    "accent",
    "foreground",
    "background",
    "surface",
    "panel",
    "boost",
)


def theme_from_dict(data: dict, default_name: str) -> Theme:
    """Validate every field before building: Theme itself would accept a bad colour and fail later."""
    unknown = set(data) - _FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    if "primary" not in data:
        raise ValueError("'primary' colour is required")
    for name in _COLOURS:
        if data.get(name) is not None:
            Color.parse(data[name])
    if not isinstance(data.get("variables", {}), dict):
        raise ValueError("'variables' must be a table")
    return Theme(**{"name": default_name, **data})


def load_theme_file(path: Path) -> Theme:
    try:
        return theme_from_dict(tomllib.loads(path.read_text(encoding="utf-8")), path.stem)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, TypeError, ColorParseError) as error:
        raise ValueError(f"theme file '{path}': {error}") from error


def load_themes(folders: list[Path]) -> tuple[list[Theme], list[str]]:
    """Every `*.toml` in the folders, in order (a later file with the same name wins); plus the problems."""
    themes: dict[str, Theme] = {}
    problems: list[str] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.toml")):
            try:
                theme = load_theme_file(path)
            except ValueError as error:
                problems.append(str(error))
                continue
            themes[theme.name] = theme
    return list(themes.values()), problems


def theme_names(folders: list[Path]) -> tuple[list[str], list[str]]:
    """Every name --theme accepts (the theme files in the folders, then Textual's own), and the problems."""
    from textual.theme import BUILTIN_THEMES

    themes, problems = load_themes(folders)
    return list(dict.fromkeys([theme.name for theme in themes] + list(BUILTIN_THEMES))), problems


def rich_theme(theme: Theme) -> Theme:
    """The theme with every colour spelled as Rich reads it in a Text style: an ANSI theme's 'ansi_blue' is
    'color(4)' and 'ansi_default' is 'default' (Rich knows neither name); '#0178D4' stays as it is."""
    colours: dict[str, Any] = {
        name: Color.parse(value).rich_color.name for name in _COLOURS if (value := getattr(theme, name)) is not None
    }
    return dataclasses.replace(theme, **colours)


def choose_theme(requested: str | None, available: Iterable[str]) -> tuple[str, list[str]]:
    """The theme to start with: the one asked for, else layerscope's own, else Textual's; plus the notice for an
    unknown name that was asked for."""
    wanted = requested or DEFAULT_THEME
    if wanted in available:
        return wanted, []
    return FALLBACK_THEME, [f"Unknown theme '{requested}'; using {FALLBACK_THEME}."] if requested is not None else []
