"""Writing results: where a result may go, writing it there without losing a file, JSON and CSV text.
Engine side, so the CLI and the explorer share it.

A result goes to standard output (`out=None`), to a regular file, or through a path that is not one:
- a regular file (or a new one) is written to a temporary file beside it, flushed to disk and renamed over it,
  so a failure leaves the old file whole; through a symlink, the link's target is written and the link kept;
- a character device (/dev/null, /dev/full), a named pipe, or a path naming an open descriptor (/dev/stdout,
  /dev/fd/N, /proc/self/fd/N, or a symlink to one) is opened and written in place, appending, never renamed
  over, truncated or created;
- a folder, a block device or a socket is refused.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
import stat
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from layerscope.errors import LayerscopeError
from layerscope.records import Records

Inputs = Sequence[tuple[str, Path]]
"""The files a command reads, each with what it is ('--prompts file', 'config.json of the --model folder')."""


def files_read(what: str, path: Path) -> list[tuple[str, Path]]:
    """The input files behind an option: the file itself, or every file in a folder (a model's, a lens's)."""
    if path.is_dir():
        return [(f"{file.name} of the {what} folder", file) for file in sorted(path.iterdir()) if file.is_file()]
    return [(f"{what} file", path)] if path.is_file() else []


def writes_through(out: Path) -> bool:
    """Whether `out` is written in place: a character device, a named pipe, or a name for an open descriptor
    (a path in /proc or /dev/fd, or a symlink to one: /dev/stdout), which a rename would not reach."""
    hop, descriptor = os.path.abspath(out), False
    for _ in range(40):  # the kernel's limit on links followed
        descriptor = descriptor or hop.startswith(("/proc/", "/dev/fd/"))
        if not os.path.islink(hop):
            break
        hop = os.path.abspath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    try:
        mode = os.stat(out).st_mode
    except OSError:
        return descriptor  # a closed descriptor: refused when opened
    return not stat.S_ISDIR(mode) and (descriptor or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode))


def _target(out: Path, name: str = "") -> Path:
    """The regular file a result replaces (a symlink's target), after checking it can: refuses folders, block
    devices, sockets, and a folder that is missing or not writable. `name`: the option that gave `out`."""
    what = f"{name} '{out}'".lstrip()
    if out.is_dir():
        raise LayerscopeError(f"{what} is a folder; name a file (in it, or elsewhere).")
    if out.exists() and not out.is_file():
        raise LayerscopeError(f"{what} is not a regular file, a character device or a pipe; name a file.")
    target = Path(os.path.realpath(out))
    if not target.parent.is_dir() or not os.access(target.parent, os.W_OK | os.X_OK):
        raise LayerscopeError(f"Cannot write '{out}': the folder does not exist or is not writable.")
    return target


def _check_not_read(path: Path, what: str, inputs: Inputs) -> None:
    """`path` (about to be written) is none of `inputs` (symlinks, ./x and hard links included)."""
    if not path.exists():
        return
    for name, read in inputs:
        if read.is_file() and os.path.samefile(path, read):
            raise LayerscopeError(f"{what} is the {name} this command reads; write the result elsewhere.")


def check_output(out: Path, name: str, inputs: Inputs = ()) -> None:
    """Before any work: a result can be written to `out` (given as option `name`), and replaces no input."""
    if writes_through(out):
        if not os.access(out, os.W_OK):
            raise LayerscopeError(f"Cannot write '{out}': it does not exist or is not writable.")
    else:
        _target(out, name)
    _check_not_read(out, f"{name} '{out}'", inputs)


def check_output_folder(out: Path, name: str, files: Collection[str] | None, inputs: Inputs = ()) -> None:
    """Before any work: `out` is a folder or can be made one, and none of the `files` written in it is an input.
    With `files` None (any files may be written), the folder must be new or empty."""
    if out.exists() and not out.is_dir():
        raise LayerscopeError(f"{name} '{out}' exists and is not a folder.")
    if files is None and out.is_dir() and any(out.iterdir()):
        raise LayerscopeError(f"{name} '{out}' exists and is not empty.")
    existing = Path(os.path.abspath(out))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise LayerscopeError(f"Cannot write in '{out}': '{existing}' is not a writable folder.")
    for file in files or ():
        _check_not_read(out / file, f"{name} '{out}' (its {file})", inputs)


def check_stdout() -> None:
    if sys.stdout is None:
        raise LayerscopeError("Standard output is closed: give --out FILE for the result.")


def write_atomic(text: str | bytes, out: Path | None) -> None:
    """The result to stdout, or to `out` as the module docstring says (rank 0 only, under torchrun): a
    failure leaves a regular file as it was, and is one LayerscopeError naming the file. Bytes (a figure) go
    to a file only."""
    from layerscope.distributed import is_writer

    if not is_writer():
        return
    if out is None:
        if isinstance(text, bytes):
            raise LayerscopeError("A figure is written to a file, not to standard output; name one.")
        _stdout_write(text if text.endswith("\n") else text + "\n")
        return
    with _writing(out) as write:
        write(text.encode("utf-8") if isinstance(text, str) else text)


@contextmanager
def streamed_lines(out: Path | None, keep: int | None = None) -> Iterator[Callable[[str], None]]:
    """A function that writes one line of a result as it comes (a sweep's JSONL lines), flushed, to stdout or
    `out`: Ctrl-C keeps every line written, for `--resume`; any other failure leaves `out` as it was.
    `keep`: bytes at the start of `out` that stay, the new lines following them (None: `out` is replaced).

    An existing file that is replaced stays whole until the new one is (a temporary file); a new file, or one
    continued, is written in place, so that a killed run leaves its lines for `--resume` too."""

    def lines(write: Callable[[bytes], None]) -> Callable[[str], None]:
        return lambda line: write(line.encode("utf-8") + b"\n")

    if out is None:
        yield lambda line: _stdout_write(line + "\n")
        return
    if writes_through(out) or (keep is None and out.is_file()):
        with _writing(out, keep_on_interrupt=True) as write:
            yield lines(write)
        return
    target = _target(out)
    with _errors_name(out):
        original = target.read_bytes() if target.exists() else None
        file = io.FileIO(target, "xb" if original is None else "r+b")
    try:
        with file:
            with _errors_name(out):
                file.truncate(keep or 0)
                file.seek(keep or 0)
            yield lines(_writer(file, out))
    except KeyboardInterrupt:
        raise
    except BaseException:
        with _errors_name(out):
            if original is None:
                target.unlink(missing_ok=True)
            else:
                target.write_bytes(original)
        raise


@contextmanager
def _errors_name(out: Path | str) -> Iterator[None]:
    """An OSError while writing (a full disk, a closed pipe) becomes one LayerscopeError naming the file."""
    try:
        yield
    except OSError as error:
        where = out if isinstance(out, str) else f"'{out}'"
        raise LayerscopeError(f"Cannot write {where}: {error.strerror or error}.") from error


def _stdout_write(text: str) -> None:
    with _errors_name("standard output"):
        sys.stdout.write(text)
        sys.stdout.flush()


def _writer(file: io.FileIO, out: Path) -> Callable[[bytes], None]:
    """Writes each piece whole, unbuffered, so that a failure shows at once and names `out`, not at close."""

    def write(data: bytes) -> None:
        with _errors_name(out):
            view = memoryview(data)
            while view:
                view = view[file.write(view) or 0 :]

    return write


@contextmanager
def _writing(out: Path, keep_on_interrupt: bool = False) -> Iterator[Callable[[bytes], None]]:
    """A function writing `out`'s new content: written through, or to a temporary file beside the target that
    replaces it when the block ends (on Ctrl-C too with `keep_on_interrupt`) and is removed otherwise."""
    if writes_through(out):
        with _errors_name(out):
            file = io.FileIO(os.open(out, os.O_WRONLY | os.O_APPEND), "wb")  # no create, no truncate
        with file:
            yield _writer(file, out)
        return
    target = _target(out)
    temp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    with _errors_name(out):
        file = io.FileIO(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb")  # the umask applies
    try:
        with file:
            if target.is_file():
                os.chmod(file.fileno(), target.stat().st_mode & 0o7777)  # rewriting a file keeps its mode
            try:
                yield _writer(file, out)
            except KeyboardInterrupt:
                if keep_on_interrupt:
                    _commit(file, temp, target, out)
                raise
            _commit(file, temp, target, out)
    finally:
        temp.unlink(missing_ok=True)


def _commit(file: io.FileIO, temp: Path, target: Path, out: Path) -> None:
    with _errors_name(out):
        os.fsync(file.fileno())
        os.replace(temp, target)


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
        raise LayerscopeError(
            f"The result is not finite ({found}): the computation overflowed, so nothing is "
            "written; try float32 or gentler settings."
        )


def to_json(data: object) -> str:
    """Strict JSON (no NaN or Infinity, which JSON does not have): a result that holds them is refused."""
    check_finite(data)
    return json.dumps(data, ensure_ascii=False, indent=1, allow_nan=False)


def json_line(data: object) -> str:
    """One line of a JSONL file (without its newline), as strict as `to_json`."""
    check_finite(data)
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


def to_csv(records: Records) -> str:
    """The header line and one line per record; a NaN or an infinity is refused, named by line and column."""
    check_finite(list(records.dicts()))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(records.columns)
    writer.writerows(records.lines)
    return buffer.getvalue()
