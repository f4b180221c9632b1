"""What every command shares: options, prompt input, progress, output, errors.

A command declares the option groups it takes as parameters typed with the dataclasses below
(`ModelOptions`, `PromptInput`, `Output`, ...); `@command` turns each group into its options for typer,
adds --debug, and hands the command the filled dataclass. Engine modules are imported inside functions so
`--help` and the TUI start fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
import shlex
import sys
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from layerscope.errors import LayerscopeError, require_utf8
from layerscope.outputs import check_not_input, check_writable, to_csv, to_json, write_atomic
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

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
OccurrenceOption = Annotated[int | None, typer.Option(
    "--occurrence", min=1, help="Where the word (--subject, --placeholder) occurs more than once as whole tokens: "
                                "which one, 1 = the first.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
BosOption = Annotated[bool, typer.Option("--bos", help="Start every prompt with the tokenizer's BOS token (as the "
                                                       "Stages of Inference scripts do); an error if it has none.")]


@dataclass(frozen=True)
class ModelOptions:
    """Which model, and where and how it runs: the options every command takes."""

    model: ModelOption = "demo"
    device: DeviceOption = "auto"
    dtype: DtypeOption = "auto"
    device_map: DeviceMapOption = None
    trust_remote_code: TrustOption = False
    bos = False  # not a field: BosModelOptions makes it an option for the commands that take --bos

    def load(self) -> LoadedModel:
        """The model, with progress on stderr; under torchrun this rank joins the job first."""
        from layerscope.distributed import start
        from layerscope.models.loading import load_model

        device = start(self.device, self.device_map)  # under torchrun: this rank's device
        progress = StderrProgress()
        try:
            lm = load_model(self.model, device=device, dtype=self.dtype, device_map=self.device_map,
                            trust_remote_code=self.trust_remote_code, progress=progress)
        finally:
            progress.close()
        if self.bos:
            lm.prepend_bos()
        return lm


@dataclass(frozen=True)
class BosModelOptions(ModelOptions):
    """The model options and --bos, for the commands whose prompts can start with BOS."""

    bos: BosOption = False


@dataclass(frozen=True)
class PromptInput:
    """The prompt: from --prompt, --prompt-file, or stdin when it is piped."""

    prompt: PromptOption = None
    prompt_file: PromptFileOption = None

    def read(self) -> str:
        """The prompt's text; stdin is read as bytes (it need not be UTF-8, nor open)."""
        if self.prompt is not None and self.prompt_file is not None:
            raise LayerscopeError("Give --prompt or --prompt-file, not both.")
        if self.prompt_file is not None:
            text = read_text_file(self.prompt_file, "prompt file")
        elif self.prompt is not None:
            text = self.prompt
        elif sys.stdin is not None and not sys.stdin.isatty():
            stream = getattr(sys.stdin, "buffer", None)
            text = require_utf8(stream.read(), "The prompt on stdin") if stream else sys.stdin.read()
        else:
            raise LayerscopeError("No prompt: give --prompt, --prompt-file, or pipe text on stdin.")
        text = text.rstrip("\n")
        if not text.strip():
            raise LayerscopeError("The prompt is empty.")
        return text

    @property
    def files(self) -> dict[str, Path | None]:
        """The files read, for `Output.check`."""
        return {"--prompt-file": self.prompt_file}


@dataclass(frozen=True)
class Output:
    """Where the result goes (--out, else stdout) and in which format."""

    format: FormatOption = Format.table
    out: OutOption = None

    def check(self, model: ModelOptions, inputs: Mapping[str, Path | None] | None = None) -> None:
        """Before any compute: the folder of --out is writable, and --out is none of the files read."""
        check_writable(self.out)
        check_not_input(self.out, model.model, inputs)

    def write(self, data: Callable[[], dict], rows: Callable[[], Iterable[dict]], table: Callable[[], str]) -> None:
        """Only the asked format is rendered: json of `data()`, csv of `rows()`, or `table()`."""
        render = {"json": lambda: to_json(data()), "csv": lambda: to_csv(rows()), "table": table}
        write_atomic(render[self.format.value](), self.out)


def _is_group(annotation: object) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def with_option_groups(function: Callable) -> Callable:
    """Typer sees each parameter typed with an option dataclass as that dataclass's options, in its place;
    the function receives the dataclass, filled."""
    signature = inspect.signature(function, eval_str=True)
    groups = {name: p.annotation for name, p in signature.parameters.items() if _is_group(p.annotation)}
    parameters = []
    for name, parameter in signature.parameters.items():
        if name not in groups:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))
            continue
        hints = typing.get_type_hints(groups[name], include_extras=True)
        parameters += [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default,
                                         annotation=hints[field.name]) for field in dataclasses.fields(groups[name])]

    signature = inspect.Signature(parameters)

    @functools.wraps(function)
    def wrapper(**options: Any) -> Any:
        bound = signature.bind(**options)  # also callable from Python, with the options' defaults
        bound.apply_defaults()
        options = bound.arguments
        for name, group in groups.items():
            options[name] = group(**{field.name: options.pop(field.name) for field in dataclasses.fields(group)})
        return function(**options)

    setattr(wrapper, "__signature__", signature)  # read by inspect (and so typer); typeshed does not declare it
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


ENGINE_NAMES = {"source": "model", "n_prune": "prune", "k": "top", "donor.word": "donor_word", "prepend_bos": "bos"}
"""Engine parameters (and methods) whose option has another name; any other parameter `name=` is `--name`."""


def option_flags(signature: inspect.Signature) -> dict[str, str]:
    """Each engine parameter a command's options stand for, and the flag of that option."""
    flags = {}
    for name, parameter in signature.parameters.items():
        options = [info for info in getattr(parameter.annotation, "__metadata__", ())
                   if isinstance(info, typer.models.OptionInfo)]
        declared = [d for info in options for d in (info.default, *(info.param_decls or ()))
                    if isinstance(d, str) and d.startswith("--")]
        flags[name] = declared[0] if declared else "--" + name.replace("_", "-")
    flags.update({engine: flags[option] for engine, option in ENGINE_NAMES.items() if option in flags})
    return flags


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """An engine message in the command line's words: each parameter it names as `subject=` (with or without a
    value after it), or method as `prepend_bos()`, becomes the flag of this command's option, `--subject`."""
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({names})(=|\(\))(?=([^\s.,;:)]?))")
    return pattern.sub(lambda match: flags[match[1]] + (" " if match[2] == "=" and match[3] else ""), message)


def command(function: Callable) -> Callable:
    """A command: its option groups expanded (`with_option_groups`), --debug added, and the user's mistakes
    (LayerscopeError, and OSError from the files named) shown as one `error:` line with exit code 1, the engine's
    parameters named as this command's flags (`flag_message`). Any other exception is a bug and keeps its
    traceback."""
    grouped = with_option_groups(function)
    flags = option_flags(inspect.signature(grouped))

    @functools.wraps(grouped)
    def wrapper(*, debug: bool = False, **options: Any) -> Any:
        try:
            check_text_options(options)
            return grouped(**options)
        except (LayerscopeError, OSError) as error:
            if debug:
                raise
            raise fail(flag_message(str(error), flags) or type(error).__name__) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    debug = inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=DebugOption)
    parameters = [*inspect.signature(grouped).parameters.values(), debug]
    setattr(wrapper, "__signature__", inspect.Signature(parameters))  # as in with_option_groups
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


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


def command_line_with(flag: str) -> str:
    """This run's command line with `flag` added, quoted so that it can be pasted back as printed."""
    args = sys.argv[1:]
    return shlex.join(["layerscope", *args, *([] if flag in args else [flag])])


class StderrProgress:
    """Progress on stderr: a bar on a terminal, one line per stage otherwise."""

    def __init__(self) -> None:
        from layerscope.distributed import is_writer

        self._last = ""
        self._bar: Progress | None = None
        self._task: TaskID | None = None
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




_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def visible(text: str) -> str:
    """Control characters (C0, DEL, C1, line separators) as escapes like \\n and \\x1b: text from a prompt
    must not move the cursor, ring the bell or restyle the terminal, nor break a table row."""
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, width: int) -> str:
    """A token fit for a table cell: control characters escaped, cut to width."""
    text = visible(text)
    return text if len(text) <= width else text[: width - 1] + "…"
