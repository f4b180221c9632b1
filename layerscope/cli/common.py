"""What every command shares: options, prompt input, progress, output, errors.

A command declares the option groups it takes as parameters typed with the dataclasses below
(`ModelOptions`, `PromptInput`, `Output`, ...); `@command` turns each group into its options for typer,
adds --debug, and hands the command the filled dataclass. Every path option says in its type whether the
command reads it (`Reads`) or writes it (`Writes`); `@command` checks the outputs against the inputs before
any work. Engine modules are imported inside functions so `--help` and the TUI start fast.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import itertools
import os
import re
import shlex
import sys
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.models import OptionInfo

from layerscope.errors import LayerscopeError, require_utf8
from layerscope.figures.common import check_figure_path, figure_bytes
from layerscope.locations import model_path
from layerscope.outputs import (
    check_finite,
    check_output,
    check_output_folder,
    check_stdout,
    files_read,
    to_csv,
    to_json,
    write_atomic,
)
from layerscope.specs import parse_blocks, parse_number
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.progress import Progress, TaskID

    from layerscope.models.loading import LoadedModel
    from layerscope.records import Records


@dataclass(frozen=True)
class Reads:
    """In a path option's Annotated type: the command reads this file, or every file in this folder (a model's,
    a lens's); `defaults` are the files read when the option is not given, `locate` finds the file or folder
    a value names (`--model demo` or a hub id: in a cache). No output may replace one."""

    defaults: tuple[Path, ...] = ()
    locate: Callable[[str], Path] = Path


@dataclass(frozen=True)
class Writes:
    """In a path option's Annotated type: the command writes here. A file (not given, or '-': standard output),
    or with `folder`, a folder that gets the files `files()` names (None: any files, so it must be new or empty).
    With `check`, a file written only when given (never standard output) that `check(flag, path)` accepts first
    (a figure: its suffix names a format)."""

    folder: bool = False
    files: Callable[[], Collection[str]] | None = None
    check: Callable[[str, Path], None] | None = None


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


ModelOption = Annotated[
    str,
    typer.Option("--model", "-m", help="'demo', a hub id, a local directory, or a .gguf file."),
    Reads(locate=model_path),
]
DeviceOption = Annotated[str, typer.Option(help="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps.")]
DtypeOption = Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16, float16.")]
DeviceMapOption = Annotated[
    str | None, typer.Option("--device-map", help="'auto' spreads a large model over GPUs (accelerate).")
]
TrustOption = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run the model repository's own code. Off unless asked.")
]
PromptOption = Annotated[str | None, typer.Option("--prompt", "-p", help="The prompt text.")]
PromptFileOption = Annotated[Path | None, typer.Option("--prompt-file", help="Read the prompt from a file."), Reads()]
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="table, json or csv.")]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Write the result to this file (atomically; a device or pipe is written through; '-': stdout).",
    ),
    Writes(),
]
FigureOption = Annotated[
    Path | None,
    typer.Option(
        "--figure", help="Also draw the result as a figure in this file: .png, .svg or .pdf (needs layerscope[plot])."
    ),
    Writes(check=check_figure_path),
]
TopKOption = Annotated[int, typer.Option("--top-k", "-k", min=1, max=100, help="Tokens kept per cell.")]
OccurrenceOption = Annotated[
    int | None,
    typer.Option(
        "--occurrence",
        min=1,
        help="Where the word (--subject, --placeholder) occurs more than once as whole tokens: "
        "which one, 1 = the first.",
    ),
]
DebugOption = Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")]
BosOption = Annotated[
    bool,
    typer.Option(
        "--bos",
        help="Start every prompt with the tokenizer's BOS token (as the "
        "Stages of Inference scripts do); an error if it has none.",
    ),
]


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
        with StderrProgress() as progress:
            lm = load_model(
                self.model,
                device=device,
                dtype=self.dtype,
                device_map=self.device_map,
                trust_remote_code=self.trust_remote_code,
                progress=progress,
            )
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
            raise LayerscopeError("The prompt on stdin is empty.")
        return text


@dataclass(frozen=True)
class Output:
    """Where the result goes (--out, else stdout) and in which format, and where its figure goes (--figure)."""

    format: FormatOption = Format.table
    out: OutOption = None
    figure: FigureOption = None

    def write(
        self,
        data: Callable[[], dict],
        records: Callable[[], Records],
        table: Callable[[], str],
        plot: Callable[[], Figure],
    ) -> None:
        """Only the asked format is rendered: json of `data()`, csv of `records()` (a result's own), or `table()`;
        with --figure, `plot()` too, drawn before anything is written so that a failure leaves both files as they
        were."""
        if self.format is Format.table:
            check_finite(data())  # json and csv check what they render
        render = {"json": lambda: to_json(data()), "csv": lambda: to_csv(records()), "table": table}
        drawn = None if self.figure is None else figure_bytes(plot(), self.figure, "--figure")
        write_atomic(render[self.format.value](), self.out)
        if drawn is not None:
            write_atomic(drawn, self.figure)


def _is_group(annotation: object) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


INT_MAX = 2**31 - 1
"""The largest whole number any option takes (a seed, a count, a block): torch's int32 tensors and seeds end
near it, and no model or run needs more."""
NUMBER_BOUNDS: dict[type, tuple[float | None, float | None]] = {int: (0, INT_MAX), float: (None, None)}
"""Every int and float option's bounds where it declares none (`min=`, `max=`); floats must also be finite."""


def strict_number(annotation: object) -> object:
    """An int or float option's annotation, parsed by `parse_number` within its bounds (its own `min`/`max`, else
    `NUMBER_BOUNDS`): one rule for every option of every command, so `--noise-scale inf`, `--seed ²` and
    `--steps 99999999999` are refused by the parser, naming the flag, before anything loads."""
    if typing.get_origin(annotation) is not Annotated:
        return annotation
    base, *extras = typing.get_args(annotation)
    kind = next((number for number in (int, float) if base in (number, number | None)), None)
    declared = next((extra for extra in extras if isinstance(extra, OptionInfo)), None)
    if kind is None or declared is None or declared.parser is not None:
        return annotation
    info = copy.copy(declared)
    low, high = NUMBER_BOUNDS[kind]
    info.min = low if info.min is None else info.min
    info.max = high if info.max is None else info.max

    def parse(text: str | int | float) -> int | float:
        try:
            value = text if isinstance(text, kind) else parse_number(str(text), kind)  # a default comes as it is
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
        if (info.min is not None and value < info.min) or (info.max is not None and value > info.max):
            bounds = (
                f"from {info.min}"
                if info.max is None
                else f"at most {info.max}"
                if info.min is None
                else f"from {info.min} to {info.max}"
            )
            raise typer.BadParameter(f"{value} is out of range: give a number {bounds}")
        return value

    info.parser = parse
    arguments = (base, *(info if extra is declared else extra for extra in extras))
    return Annotated.__class_getitem__(arguments)  # Annotated[base, *extras], written so for Python 3.10


def spec_option(flag: str, spec: str, what: str, count: int | None = None) -> tuple[int, ...]:
    """A number spec option ('3,5,10-12', `parse_blocks`) parsed before the work; its error names the flag."""
    try:
        return parse_blocks(spec, what, count)
    except LayerscopeError as error:
        raise LayerscopeError(f"{flag}: {error}") from None


def with_option_groups(function: Callable) -> Callable:
    """Typer sees each parameter typed with an option dataclass as that dataclass's options, in its place;
    the function receives the dataclass, filled. Number options are made strict (`strict_number`)."""
    signature = inspect.signature(function, eval_str=True)
    groups = {name: p.annotation for name, p in signature.parameters.items() if _is_group(p.annotation)}
    parameters = []
    for name, parameter in signature.parameters.items():
        if name not in groups:
            parameters.append(
                parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=strict_number(parameter.annotation))
            )
            continue
        hints = typing.get_type_hints(groups[name], include_extras=True)
        parameters += [
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=field.default,
                annotation=strict_number(hints[field.name]),
            )
            for field in dataclasses.fields(groups[name])
        ]

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


ENGINE_NAMES = {
    "source": "model",
    "n_prune": "prune",
    "k": "top",
    "donor.word": "donor_word",
    "prepend_bos": "bos",
    "contrast_id": "contrast",
}
"""Engine parameters (and methods) whose option has another name; any other parameter `name=` is `--name`."""


def flag_of(name: str, annotation: object) -> str:
    """The long flag of a parameter's option (`--lens`), from its Annotated typer.Option, else from its name.
    typer.Option("--lens", ...) in Annotated holds its first flag as `default` until typer reads it."""
    declared = [
        d
        for info in getattr(annotation, "__metadata__", ())
        if isinstance(info, typer.models.OptionInfo)
        for d in (info.default, *(info.param_decls or ()))
        if isinstance(d, str) and d.startswith("--")
    ]
    return declared[0] if declared else "--" + name.replace("_", "-")


def option_flags(signature: inspect.Signature) -> dict[str, str]:
    """Each engine parameter a command's options stand for, and the flag of that option."""
    flags = {name: flag_of(name, parameter.annotation) for name, parameter in signature.parameters.items()}
    flags.update({engine: flags[option] for engine, option in ENGINE_NAMES.items() if option in flags})
    return flags


def flag_message(message: str, flags: Mapping[str, str]) -> str:
    """An engine message in the command line's words: each parameter it names as `subject=` (with or without a
    value after it), or method as `prepend_bos()`, becomes the flag of this command's option, `--subject`."""
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({names})(=|\(\))(?=([^\s.,;:)]?))")
    return pattern.sub(lambda match: flags[match[1]] + (" " if match[2] == "=" and match[3] else ""), message)


def command(function: Callable) -> Callable:
    """A command: its option groups expanded (`with_option_groups`), --debug added, its outputs checked before
    any work (`check_files`), and the user's mistakes (LayerscopeError, and OSError from the files named) shown
    as one `error:` line with exit code 1, the engine's parameters named as this command's flags
    (`flag_message`). Any other exception is a bug and keeps its traceback."""
    grouped = with_option_groups(function)
    marks = file_options(grouped)
    flags = option_flags(inspect.signature(grouped))

    @functools.wraps(grouped)
    def wrapper(*, debug: bool = False, **options: Any) -> Any:
        try:
            check_text_options(options)
            check_files(options, marks)
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


def file_options(function: Callable) -> dict[str, tuple[str, Reads | Writes]]:
    """Each path option of `function` (its expanded signature) with its flag and its `Reads` or `Writes` mark."""
    marks = {}
    for name, parameter in inspect.signature(function).parameters.items():
        extras = (
            typing.get_args(parameter.annotation)[1:] if typing.get_origin(parameter.annotation) is Annotated else ()
        )
        for mark in (extra for extra in extras if isinstance(extra, (Reads, Writes))):
            marks[name] = (flag_of(name, parameter.annotation), mark)
    return marks


def check_files(options: dict[str, Any], marks: dict[str, tuple[str, Reads | Writes]]) -> None:
    """Before any work: every output can be written and replaces no file read (an option's file, each file of
    its folder, the default files, a local model's files). Sets a file output given as '-' to None (stdout)."""
    inputs = [
        read
        for name, (flag, mark) in marks.items()
        if isinstance(mark, Reads)
        for path in ((mark.locate(str(options[name])),) if options.get(name) is not None else mark.defaults)
        for read in files_read(flag, path)
    ]
    files, folders = [], []
    for name, (flag, mark) in marks.items():
        out = options.get(name)
        if not isinstance(mark, Writes):
            continue
        if mark.folder:
            if out is not None:
                if str(out) == "-":
                    raise LayerscopeError(f"{flag} is a folder: '-' (standard output) cannot be one.")
                check_output_folder(out, flag, None if mark.files is None else mark.files(), inputs)
                folders.append((flag, os.path.realpath(out)))
        elif mark.check is not None:
            if out is not None:
                check_output(out, flag, inputs)
                mark.check(flag, out)
                files.append((flag, out))
        elif out is None or str(out) == "-":
            options[name] = None
            check_stdout()
        else:
            check_output(out, flag, inputs)
            files.append((flag, out))
    for (flag, out), (other_flag, other) in itertools.combinations(files, 2):
        if os.path.realpath(out) == os.path.realpath(other):
            raise LayerscopeError(f"{other_flag} '{other}' is the {flag} file too; write each to its own file.")
    for flag, out in files:  # e.g. --out in the --save folder: the second write would replace the first's file
        for folder_flag, folder in folders:
            if folder in (os.path.realpath(out), os.path.dirname(os.path.realpath(out))):
                raise LayerscopeError(f"{flag} '{out}' is in the {folder_flag} folder; write it elsewhere.")


def fail(message: str) -> typer.Exit:
    """One line, whatever the message quotes from the user's input."""
    typer.echo(f"error: {escaped(message)}", err=True)
    return typer.Exit(code=1)


def check_text_options(options: dict) -> None:
    """Text options are checked before anything is loaded, and the error names the option: none may be empty,
    a prompt (an option named *prompt: --prompt, --corrupt-prompt, --target-prompt, ...) may not be only
    whitespace, and none but --model (a path need not be UTF-8) may hold bytes that are not UTF-8."""
    for name, value in options.items():
        if not isinstance(value, str):
            continue
        flag = "--" + name.replace("_", "-")
        if not value or (name.endswith("prompt") and not value.strip()):
            raise LayerscopeError(f"{flag} is empty{'' if not value else ' (only whitespace)'}: give its text.")
        if name != "model":
            require_utf8(value, flag)


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

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

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

    def __enter__(self) -> StderrProgress:
        return self

    def __exit__(self, *exception: object) -> None:
        """`with StderrProgress() as progress:` closes the bar however the work ends."""
        self.close()


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escaped(text: str) -> str:
    """Control characters (C0, DEL, C1, line separators) as escapes like \\n and \\x1b: text from a prompt
    must not move the cursor, ring the bell or restyle the terminal, nor break a table row."""
    return _CONTROL.sub(lambda match: match[0].encode("unicode_escape").decode("ascii"), text)


def shorten(text: str, width: int) -> str:
    """A token fit for a table cell: control characters escaped, cut to width."""
    text = escaped(text)
    return text if len(text) <= width else text[: width - 1] + "…"
