"""Writing results: atomic files, JSON and CSV text. Engine side, so the CLI and the explorer share it."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from layerscope.errors import LayerscopeError


def write_atomic(text: str, out: Path | None) -> None:
    """stdout, or a temporary file renamed over `out` so a failure leaves no partial file; rank 0 only."""
    from layerscope.distributed import is_writer

    if not is_writer():
        return
    if out is None:
        sys.stdout.write(text)
        if not text.endswith("\n"):
            sys.stdout.write("\n")
        return
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise LayerscopeError(f"Cannot write '{out}': the folder does not exist or is not writable.")
    temp = directory / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}"
    handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as with open()
    try:
        if out.is_file():
            os.chmod(handle, out.stat().st_mode & 0o7777)  # rewriting a file keeps its mode
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as file:
            file.write(text)
        os.replace(temp, out)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def check_writable(out: Path | None) -> None:
    """Fail before the compute, not after it."""
    if out is None:
        if sys.stdout is None:
            raise LayerscopeError("Standard output is closed: give --out FILE for the result.")
        return
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir() or not os.access(directory, os.W_OK):
        raise LayerscopeError(f"Cannot write '{out}': the folder does not exist or is not writable.")


def check_not_input(out: Path | None, model: str, inputs: Mapping[str, Path | None] | None = None) -> None:
    """--out must not be a file the command reads (symlinks, ./x and hard links included): the results would
    replace it. `inputs` maps each file option to its path (None where not given); a .gguf model is a file too."""
    if out is None or not out.exists():
        return
    model_file = {"--model": Path(model)} if model.endswith(".gguf") else {}
    for option, path in {**model_file, **(inputs or {})}.items():
        if path is not None and Path(path).is_file() and os.path.samefile(out, path):
            raise LayerscopeError(f"--out '{out}' is the {option} file this command reads; write the result elsewhere.")


def non_finite(data: object, where: str = "") -> str | None:
    """Where in `data` (dicts, lists, numbers) the first NaN or infinity is, as `cells[3][2].kl = nan`; None if
    nowhere."""
    if isinstance(data, float) and not math.isfinite(data):
        return f"{where or 'the value'} = {data}"
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, (list, tuple)) else ()
    for key, value in items:
        found = non_finite(value, f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key)
        if found is not None:
            return found
    return None


def check_finite(data: object) -> None:
    """A result with a NaN or an infinity is an error, not an output: JSON has no such numbers, and a table of
    them answers nothing."""
    found = non_finite(data)
    if found is not None:
        raise LayerscopeError(f"The result is not finite ({found}): the computation overflowed, so nothing is "
                              "written; try float32 or gentler settings.")


def to_json(data: object) -> str:
    """Strict JSON (no NaN or Infinity, which JSON does not have): a result that holds them is refused."""
    check_finite(data)
    return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False)


def json_line(data: object) -> str:
    """One line of a JSONL file, as strict as `to_json`."""
    check_finite(data)
    return json.dumps(data, ensure_ascii=False, allow_nan=False) + "\n"


def to_csv(rows: Iterable[dict]) -> str:
    rows = list(rows)
    check_finite(rows)
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()
