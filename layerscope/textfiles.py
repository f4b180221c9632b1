"""Reading the user's text files (prompts, haystacks, calibration text) with one clear error."""

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
