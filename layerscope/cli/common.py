"""What every command shares: options, prompt input, progress, output, errors.

Engine modules are imported inside functions so `--help` and the TUI start fast.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.errors import LayerscopeError, require_utf8
from layerscope.specs import parse_blocks, parse_heads  # noqa: F401  (re-exported for the commands)
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from layerscope.models.loading import LoadedModel


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


ModelOption = Annotated[str, typer.Option("--model", "-m", help="'demo', a hub id, a local directory, or a .gguf file.")]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")]
DeviceMapOption = Annotated[str | None, typer.Option("--device-map", help="'auto' spreads a large model over GPUs (accelerate).")]
TrustOption = Annotated[bool, typer.Option("--trust-remote-code", help="Run the model repository's own code. Off unless asked.")]
PromptOption = Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt text.")]
PromptFileOption = Annotated[Path | None, typer.Option("--prompt-file", help="Read the prompt from a file.")]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="Write the result here (atomically) instead of stdout.")]
TopKOption = Annotated[int, typer.Option("--top-k", "-k", min=1, max=100, help="Tokens kept per cell.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
BosOption = Annotated[bool, typer.Option("--bos", help="Start every prompt with the tokenizer's BOS token (as the "
                                                       "Stages of Inference scripts do); an error if it has none.")]


def fail(message: str) -> typer.Exit:
    """One line, whatever the message quotes from the user's input."""
    typer.echo(f"error: {visible(message)}", err=True)
    return typer.Exit(code=1)


def check_text_options(options: dict) -> None:
    """Text options are checked for bytes that are not UTF-8 before anything is loaded. --model is left
    alone: it can be a path, and a path need not be UTF-8."""
    for name, value in options.items():
        if isinstance(value, str) and name != "model":
            require_utf8(value, "--" + name.replace("_", "-"))


def handles_errors(command: Callable) -> Callable:
    """User errors become one line on stderr and exit code 1; --debug shows the traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            check_text_options(kwargs)
            return command(*args, **kwargs)
        except (LayerscopeError, OSError, ValueError) as error:
            if kwargs.get("debug"):
                raise
            raise fail(str(error) or type(error).__name__) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    return wrapper


def command_line_with(flag: str) -> str:
    """This run's command line with `flag` added, quoted so that it can be pasted back as printed."""
    args = sys.argv[1:]
    return shlex.join(["layerscope", *args, *([] if flag in args else [flag])])


def read_prompt(prompt: str | None, prompt_file: Path | None) -> str:
    """From --prompt, --prompt-file, or stdin when it is piped (read as bytes: it need not be UTF-8, nor open)."""
    if prompt is not None and prompt_file is not None:
        raise LayerscopeError("Give --prompt or --prompt-file, not both.")
    if prompt_file is not None:
        text = read_text_file(prompt_file, "prompt file")
    elif prompt is not None:
        text = prompt
    elif sys.stdin is not None and not sys.stdin.isatty():
        stream = getattr(sys.stdin, "buffer", None)
        text = require_utf8(stream.read(), "The prompt on stdin") if stream else sys.stdin.read()
    else:
        raise LayerscopeError("No prompt: give --prompt, --prompt-file, or pipe text on stdin.")
    text = text.rstrip("\n")
    if not text.strip():
        raise LayerscopeError("The prompt is empty.")
    return text


class StderrProgress:
    """Progress on stderr: a bar on a terminal, one line per stage otherwise."""

    def __init__(self) -> None:
        from layerscope.distributed import is_writer

        self._last = ""
        self._bar = None
        self._task = None
        self._quiet = not is_writer()  # under torchrun only rank 0 reports
        if sys.stderr is not None and sys.stderr.isatty() and not self._quiet:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=True)

    def __call__(self, done: int, total: int, description: str) -> None:
        if self._quiet:
            return
        if self._bar is None:
            if description != self._last and sys.stderr is not None:
                print(f"[layerscope] {description}", file=sys.stderr, flush=True)
                self._last = description
            return
        if self._task is None:
            self._bar.start()
            self._task = self._bar.add_task(description, total=total)
        self._bar.update(self._task, completed=done, total=total, description=description)

    def close(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.stop()


def load(model: str, device: str, dtype: str, device_map: str | None, trust_remote_code: bool,
         bos: bool = False) -> LoadedModel:
    from layerscope.distributed import start
    from layerscope.models.loading import load_model

    device = start(device, device_map)  # under torchrun: join the job, this rank's device
    progress = StderrProgress()
    try:
        lm = load_model(model, device=device, dtype=dtype, device_map=device_map,
                        trust_remote_code=trust_remote_code, progress=progress)
    finally:
        progress.close()
    if bos:
        lm.prepend_bos()
    return lm


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def visible(text: str) -> str:
    """Control characters (C0, DEL, C1, line separators) as escapes like \\n and \\x1b: text from a prompt
    must not move the cursor, ring the bell or restyle the terminal, nor break a table row."""
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, width: int) -> str:
    """A token fit for a table cell: control characters escaped, cut to width."""
    text = visible(text)
    return text if len(text) <= width else text[: width - 1] + "…"
