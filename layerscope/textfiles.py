"""Reading the user's text files (prompts, haystacks, calibration text, JSON Lines records) with one clear error."""

from __future__ import annotations

import json
from pathlib import Path

from layerscope.errors import LayerscopeError


def read_text_file(path: Path, what: str) -> str:
    """The file's text; a missing, unreadable, non-UTF-8 or empty file is one LayerscopeError naming `what`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise LayerscopeError(f"Cannot read {what} '{path}': {error}") from error
    if not text.strip():
        raise LayerscopeError(f"{what.capitalize()} '{path}': the file is empty.")
    return text


def read_records(
    path: Path, what: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> list[tuple[int, dict[str, str]]]:
    """Each record of a JSON Lines file with its line number (blank lines and lines starting with '#' skipped):
    a JSON object with every `required` field, any of the `optional` ones and no other, each a string with more
    than whitespace. The first line that is not is one LayerscopeError naming the file and the line: a field
    given as null, a number or "" is refused, not read as the text 'None', '3' or nothing."""
    records = []
    for number, line in enumerate(read_text_file(path, what).splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{what.capitalize()} '{path}' line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise LayerscopeError(f"{where}: not valid JSON ({error.msg}).") from None
        if not isinstance(data, dict):
            raise LayerscopeError(f"{where}: expected a JSON object with {_names(required)}.")
        missing = [key for key in required if key not in data]
        unknown = [key for key in data if key not in (*required, *optional)]
        if missing or unknown:
            problem = f"no {_names(missing)}" if missing else f"unknown {_names(unknown)}"
            raise LayerscopeError(
                f"{where}: {problem} (a record has {_names(required)}"
                f"{f', and may have {_names(optional)}' if optional else ''})."
            )
        for key, value in data.items():
            if not isinstance(value, str) or not value.strip():
                raise LayerscopeError(f'{where}: "{key}" must be text, not {json.dumps(value, ensure_ascii=False)}.')
        records.append((number, data))
    return records


def _names(keys: list[str] | tuple[str, ...]) -> str:
    quoted = [f'"{key}"' for key in keys]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"
