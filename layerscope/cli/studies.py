"""`layerscope sweep`, `influence`, `stages` and `exit`: the layer studies, one command each."""

from __future__ import annotations

import hashlib
import json
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from layerscope.cli.common import (
    BosModelOptions,
    FigureOption,
    Format,
    ModelOptions,
    OutOption,
    Output,
    Reads,
    StderrProgress,
    Writes,
    command,
    command_line_with,
    spec_option,
)
from layerscope.cli.tables import exit_table, influence_table, stages_table, sweep_table
from layerscope.errors import LayerscopeError
from layerscope.figures.common import add_caption, save_figure
from layerscope.interventions import chosen_by_block
from layerscope.interventions.core import parse_option
from layerscope.locations import SAMPLE_PROMPTS, sample_file
from layerscope.outputs import json_line, streamed_lines
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.prompt_sets import PromptItem
    from layerscope.analyses.sweep import SweepPoint
    from layerscope.analyses.token_swap import TokenSwapPoint
    from layerscope.models.loading import LoadedModel
    from layerscope.progress import ProgressFn

SWEEP_KINDS = (*chosen_by_block(), "swap-token")


class SweepFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    jsonl = "jsonl"


@dataclass(frozen=True)
class SweepOutput:
    """`Output`, whose formats a sweep extends with jsonl: one sweep point a line as it is computed, which --resume
    continues. Not a subclass: its format is another enum."""

    format: Annotated[SweepFormat, typer.Option("--format", "-f", help="table, json, csv or jsonl.")] = (
        SweepFormat.table
    )
    out: OutOption = None
    figure: FigureOption = None


def _sample(name: str) -> Path:
    path = sample_file(name)
    if not path.is_file():
        raise LayerscopeError(f"The sample file '{name}' is not here ({SAMPLE_PROMPTS}); give the file explicitly.")
    return path


def sweep_source(
    lm: LoadedModel,
    kind: str,
    layers: list[int],
    items: list[PromptItem],
    prompts: Path,
    accuracy: bool,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    donor: tuple[str, str, str],
    settings: dict[str, Any],
) -> dict:
    """What a sweep's rows are computed from: the first line of a jsonl file, checked by --resume.

    Only settings that change the numbers count: the seed for `random`, the batch for the batched kinds
    (float sums in another batch differ in the last bits), the decode length where something is decoded."""
    from layerscope.analyses.resumable import prompts_fingerprint
    from layerscope.analyses.sweep import sweep_factors

    source = {
        "model": lm.name,
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "bos": lm.add_bos,
        "intervention": kind,
        "layers": layers,
        "prompts": {"file": prompts.name, "count": len(items), "sha256": prompts_fingerprint(items)},
    }
    if kind == "swap-token":
        return {**source, "donor": list(donor), "max_new_tokens": max_new_tokens}
    source.update(accuracy=accuracy, batch_size=batch_size)
    if accuracy:
        source["max_new_tokens"] = max_new_tokens
    if kind == "random":
        source["seed"] = seed
    if kind == "steer":
        vector, positions = settings["steer"].vector, settings["steer_positions"]
        steer: dict[str, Any] = {
            "sha256": hashlib.sha256(vector.numpy().tobytes()).hexdigest(),
            "norm": float(vector.norm()),
            "factors": sweep_factors(kind, settings),
        }
        if positions != "all":  # named only when chosen: a file from before --steer-positions still resumes
            steer["positions"] = list(positions) if isinstance(positions, tuple) else positions
        source["steer"] = steer
    return source


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def read_done(path: Path, kind: str) -> tuple[dict | None, list[dict], int]:
    """The source line and rows of an interrupted JSONL sweep, (None, [], 0) for a new or empty file, and the
    bytes that hold them: a last line cut off mid-write is not counted (the rows written next replace it)."""
    if not path.is_file():
        return None, [], 0
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    try:
        text = whole.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LayerscopeError(f"--resume: {path} is not UTF-8 text ({error.reason} at byte {error.start}).") from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            lines.append(json.loads(line, parse_constant=_not_a_number))
        except ValueError:  # JSONDecodeError included
            raise LayerscopeError(
                f"--resume: {path} line {number} is not valid JSON (NaN and Infinity are not JSON numbers)."
            ) from None
    if not lines:
        return None, [], 0
    first = lines[0]
    if not (isinstance(first, dict) and isinstance(first.get("source"), dict)):
        raise LayerscopeError(
            f"--resume: {path} does not start with the source line of a layerscope sweep; "
            f"it cannot be checked, so it is not continued."
        )
    for number, row in enumerate(lines[1:], start=2):
        if not isinstance(row, dict) or row.get("intervention") != kind:
            raise LayerscopeError(f"--resume: {path} line {number} is not a row of a '{kind}' sweep.")
    return first["source"], lines[1:], len(whole)


def check_same_source(path: Path, written: dict, now: dict) -> None:
    """Rows computed from other prompts, layers or settings would mix into the averages unnoticed."""
    for key in dict.fromkeys([*now, *written]):
        if written.get(key) != now.get(key):
            raise LayerscopeError(
                f"--resume: {path} was computed with other {key} ({json.dumps(written.get(key))}, "
                f"now {json.dumps(now.get(key))}); give the same settings or a new --out file."
            )


Point = TypeVar("Point")


def _points_from(dicts: list[dict], from_dict: Callable[[dict], Point], path: Path | None) -> list[Point]:
    try:
        return [from_dict(point) for point in dicts]
    except TypeError:
        raise LayerscopeError(f"--resume: {path} holds rows of another layerscope version or command.") from None


@command
def sweep(
    *,
    model: BosModelOptions,
    intervention: Annotated[
        str, typer.Option("--intervention", "-i", help=f"One of {', '.join(SWEEP_KINDS)}.")
    ] = "drop",
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Prompt set: .txt one prompt a line, or .jsonl with answers. "
            "Default: sample_prompts/general.txt (capitals.jsonl for swap-token)."
        ),
        Reads((sample_file("general.txt"), sample_file("capitals.jsonl"))),
    ] = None,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Blocks to sweep, e.g. 0-29 or 3,5 (swap: lower block of a pair; "
            "swap-token: grid rows 0..L). Default: all."
        ),
    ] = None,
    accuracy: Annotated[
        bool | None,
        typer.Option(
            "--accuracy/--no-accuracy", help="Greedy answer accuracy. Default: on when every prompt has an answer."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Greedy tokens decoded for accuracy.")] = 6,
    seed: Annotated[int, typer.Option(help="Seed of the noise for 'random'.")] = 0,
    steer: Annotated[
        Path | None, typer.Option(help="steer: the steering vector file (from 'layerscope steer vector')."), Reads()
    ] = None,
    steer_factor: Annotated[
        str | None,
        typer.Option(
            help="steer: the scale of the vector, or several to sweep, e.g. -4,0,4 (a point each). Default 1."
        ),
    ] = None,
    steer_positions: Annotated[
        str | None,
        typer.Option(help="steer: where the vector is added: all (default), last, or prompt positions, e.g. 0,4-6."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Interventions run together in one batched pass.")] = 8,
    donor_prompt: Annotated[str, typer.Option(help="swap-token: the donor prompt.")] = "The country Italy",
    donor_word: Annotated[str, typer.Option(help="swap-token: the donor word whose state is copied.")] = "Italy",
    donor_answer: Annotated[str, typer.Option(help="swap-token: the answer that shows the donor won.")] = "Rome",
    resume: Annotated[bool, typer.Option(help="Continue an interrupted --format jsonl --out FILE sweep.")] = False,
    output: SweepOutput,
) -> None:
    """Apply one intervention at every layer over a prompt set: KL, top-1 agreement, entropy, loss, accuracy.

    jsonl streams one row per (prompt, layer) as it is computed, then the set average per layer
    (prompt_index null); Ctrl-C keeps every finished row and --resume continues the file.

    Example: layerscope sweep --model demo --intervention drop --format jsonl --out drop.jsonl
    """
    from layerscope.analyses.prompt_sets import load_prompt_set, require_answers
    from layerscope.analyses.steering import SavedVector

    if intervention not in SWEEP_KINDS:
        raise LayerscopeError(f"Unknown intervention '{intervention}': use one of {', '.join(SWEEP_KINDS)}.")
    swap_token = intervention == "swap-token"
    if swap_token and model.bos:
        raise LayerscopeError("--bos is not available with swap-token: its word positions are found without BOS.")
    path = prompts or _sample("capitals.jsonl" if swap_token else "general.txt")
    items = load_prompt_set(path)
    with_answers = all(item.answer is not None for item in items)
    if accuracy and not swap_token:
        require_answers(items, path)
    measure_accuracy = with_answers if accuracy is None else accuracy
    if resume and (output.out is None or output.format is not SweepFormat.jsonl):
        raise LayerscopeError("--resume needs --format jsonl and --out FILE (the file to continue).")
    factors = _numbers("--steer-factor", steer_factor or "1")
    positions = parse_option("steer_positions", steer_positions or "all")
    if (intervention == "steer") != (steer is not None) or (
        steer is None and (steer_factor is not None or steer_positions is not None)
    ):
        raise LayerscopeError(
            "-i steer needs --steer FILE, and --steer, --steer-factor and --steer-positions go with -i steer."
        )
    vector = SavedVector.load(steer) if steer is not None else None
    settings: dict[str, Any] = (
        {"steer": vector, "steer_factor": factors, "steer_positions": positions} if vector is not None else {}
    )
    chosen = spec_option("--layers", layers, "layer") if layers else None
    resumed = output.out if resume else None  # never None with --resume: checked above
    written, done, keep = read_done(resumed, intervention) if resumed is not None else (None, [], 0)
    lm = model.load()
    if vector is not None:
        vector.check_model(lm)
    donor = (donor_prompt, donor_word, donor_answer)
    valid = _sweep_layers(lm, items, intervention, chosen, donor, settings)
    source = sweep_source(
        lm, intervention, valid, items, path, measure_accuracy, max_new_tokens, seed, batch_size, donor, settings
    )
    if resumed is not None and written is not None:
        check_same_source(resumed, written, source)
    with StderrProgress() as progress:
        points = _sweep_points(
            lm,
            items,
            intervention,
            chosen,
            valid,
            measure_accuracy,
            max_new_tokens,
            seed,
            batch_size,
            donor,
            done,
            output.out,
            progress,
            settings,
        )
        _write_sweep(points, source, output, keep if written is not None else None, done)


def _sweep_layers(
    lm: LoadedModel,
    items: list[PromptItem],
    kind: str,
    layers: Sequence[int] | None,
    donor: tuple[str, str, str],
    settings: dict[str, Any],
) -> list[int]:
    """The layers (grid rows for swap-token) the sweep covers; checks the input before anything is written."""
    from layerscope.analyses.sweep import check_layers, sweep_layers
    from layerscope.analyses.token_swap import Donor, check_rows, usable_targets

    if kind == "swap-token":
        usable_targets(items, Donor(*donor))
        return check_rows(layers, lm.n_blocks)
    return check_layers(
        kind, sweep_layers(kind, lm.n_blocks, settings) if layers is None else layers, lm.n_blocks, settings
    )


def _sweep_points(
    lm: LoadedModel,
    items: list[PromptItem],
    kind: str,
    layers: Sequence[int] | None,
    valid: list[int],
    accuracy: bool,
    max_new_tokens: int,
    seed: int,
    batch_size: int,
    donor: tuple[str, str, str],
    done: list[dict],
    out: Path | None,
    progress: ProgressFn,
    settings: dict[str, Any],
) -> Iterator[SweepPoint | TokenSwapPoint]:
    """Sweep points not yet in `done`, in the order an uninterrupted run writes them. The generators only start
    when the first point is asked for, after the output file is opened."""
    from layerscope.analyses.sweep import SweepPoint, sweep
    from layerscope.analyses.token_swap import Donor, TokenSwapPoint, token_swap_sweep

    where = "row" if kind == "swap-token" else "layer"
    done = [{**row, where: row.get(where, row.get("layer"))} for row in done]  # old swap-token files wrote "layer"
    for row in done:
        index = row.get("prompt_index", -1)
        if row.get(where) not in valid or not (index is None or (isinstance(index, int) and 0 <= index < len(items))):
            raise LayerscopeError(f"--resume: {out} was written by a sweep over other prompts or layers.")
    seen = {(row["prompt_index"], row[where]) for row in done}
    points: Iterator[SweepPoint] | Iterator[TokenSwapPoint]
    if kind == "swap-token":
        points = token_swap_sweep(
            lm,
            items,
            Donor(*donor),
            layers,
            max_new_tokens,
            _points_from(done, TokenSwapPoint.from_dict, out),
            progress,
        )
    else:
        points = sweep(
            lm,
            items,
            kind,
            layers,
            seed,
            accuracy,
            max_new_tokens,
            batch_size,
            _points_from(done, SweepPoint.from_dict, out),
            progress,
            settings,
        )
    return (point for point in points if point.key not in seen)


def _write_sweep(
    points: Iterable[SweepPoint | TokenSwapPoint], source: dict, output: SweepOutput, keep: int | None, done: list[dict]
) -> None:
    """jsonl: the source line (unless continuing a file that has it, after its first `keep` bytes), then each
    point as it comes; a failure other than Ctrl-C leaves --out as it was. The figure (--figure) is drawn from the
    points of `done` (a resumed file's) and the new ones, after them."""
    kind = source["intervention"]
    from layerscope.analyses.sweep_result import SweepResult
    from layerscope.distributed import is_writer
    from layerscope.figures.interventions import sweep_figure

    if not is_writer():  # under torchrun the other ranks compute their share of the points; rank 0 writes
        deque(points, maxlen=0)
        return
    out = output.out
    drawn: list[dict | SweepPoint | TokenSwapPoint] = list(done)  # the figure's
    prompts = f"{source['prompts']['file']} ({source['prompts']['count']} prompts)"

    def plot() -> Figure:
        return sweep_figure(drawn, source["model"], prompts)

    if output.format is SweepFormat.jsonl:
        written = 0
        try:
            with streamed_lines(out, keep) as write:
                if keep is None:
                    write(json_line({"source": source}))
                for point in points:
                    write(json_line(point.to_dict()))
                    written += 1
                    drawn.append(point)
        except KeyboardInterrupt:
            where = f"; to continue, run: {command_line_with('--resume')}" if out else "."
            raise LayerscopeError(f"interrupted after {written} new rows, all kept{where}") from None
        if output.figure is not None:
            save_figure(plot(), output.figure, "--figure")
        return
    result = SweepResult.collect(kind, points, source)
    drawn.extend(result.points)
    Output(Format(output.format.value), out, output.figure).write(
        result.to_dict, result.records, lambda: sweep_table(result), plot
    )


@command
def influence(
    *,
    model: ModelOptions,
    text: Annotated[
        Path | None,
        typer.Option(help="Calibration text. Default: sample_prompts/calibration.txt."),
        Reads((sample_file("calibration.txt"),)),
    ] = None,
    prune: Annotated[int, typer.Option(min=0, help="Remove the N lowest-BI blocks and compare perplexity.")] = 0,
    eval_text: Annotated[
        Path | None,
        typer.Option(help="Held-out text for --prune. Default: sample_prompts/heldout.txt."),
        Reads((sample_file("heldout.txt"),)),
    ] = None,
    window: Annotated[int, typer.Option(min=2, help="Tokens per forward pass.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed of the random blocks removed for comparison.")] = 0,
    save: Annotated[
        Path | None,
        typer.Option(help="With --prune: save the pruned model in this new or empty folder (safetensors)."),
        Writes(folder=True),
    ] = None,
    output: Output,
) -> None:
    """Block Influence per block (ShortGPT) and, with --prune N, held-out perplexity after removing the N
    lowest-BI blocks, next to N random blocks and the last N.

    Example: layerscope influence --model demo --prune 4 --format json
    """
    from layerscope.analyses.influence import check_prune, influence, save_pruned
    from layerscope.distributed import is_writer

    if save is not None and not prune:
        raise LayerscopeError("--save needs --prune N: there is nothing to save otherwise.")
    text, eval_text = text or _sample("calibration.txt"), eval_text or _sample("heldout.txt")
    calibration = read_text_file(text, "calibration text")
    held_out = read_text_file(eval_text, "held-out text") if prune else None
    lm = model.load()
    if prune:
        check_prune(prune, lm.n_blocks)
    with StderrProgress() as progress:
        report = influence(lm, calibration, window, prune, held_out, seed, progress)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if save is not None and report.prune and is_writer():
        save_pruned(lm, report.prune.removed, save)
    texts = f"calibration text: {text}" + (f" · held-out text: {eval_text}" if prune else "")
    output.write(
        report.to_dict, report.records, lambda: influence_table(report), lambda: add_caption(report.plot(), texts)
    )


@command
def stages(
    *,
    model: BosModelOptions,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompt set. Default: sample_prompts/general.txt."),
        Reads((sample_file("general.txt"),)),
    ] = None,
    probe_data: Annotated[
        Path | None,
        typer.Option(
            help="A labelled prompt set (.jsonl, as for 'layerscope probe --data'): its probe's accuracy per block "
            "joins the signatures and the segmentation. Needs --probe-label."
        ),
        Reads(),
    ] = None,
    probe_label: Annotated[
        str | None, typer.Option(help="The field of each --probe-data record that holds its class.")
    ] = None,
    output: Output,
) -> None:
    """Stage map: per-block signatures (drop/swap KL, lens KL and entropy, attention/MLP norms, attention to the
    previous five tokens, prediction and suppression neurons, and with --probe-data a linear probe's accuracy) and
    a heuristic split into the four stages of inference, with the evidence.

    Example: layerscope stages --model demo --prompts sample_prompts/general.txt
    """
    from layerscope.analyses.probes import probe_rows
    from layerscope.analyses.prompt_sets import load_prompt_set
    from layerscope.analyses.stages import stage_map
    from layerscope.cli.probes import PROBE_FOLDS, labelled_prompts

    fit_probe = None
    if probe_data is not None or probe_label is not None:
        if probe_data is None or probe_label is None:
            raise LayerscopeError("--probe-data and --probe-label go together: give both, or neither.")
        texts, labels = labelled_prompts(probe_data, probe_label, "--probe-label", PROBE_FOLDS)
        fit_probe = partial(probe_rows, texts=texts, labels=labels, label=probe_label, folds=PROBE_FOLDS)
    prompts = prompts or _sample("general.txt")
    items = load_prompt_set(prompts)
    lm = model.load()
    with StderrProgress() as progress:
        probe = fit_probe(lm) if fit_probe is not None else None
        result = stage_map(lm, items, progress=progress, probe=probe)
    output.write(
        result.to_dict,
        result.records,
        lambda: stages_table(result),
        lambda: add_caption(result.plot(), f"prompts: {prompts}"),
    )


def _numbers(flag: str, spec: str) -> list[float]:
    """A comma-separated list of finite numbers, such as 0.5,0.9."""
    from layerscope.specs import parse_number

    try:
        return [float(parse_number(part.strip(), float)) for part in spec.split(",")]
    except ValueError as error:
        raise LayerscopeError(f"{flag} '{spec}': {error}") from None


def _thresholds(spec: str) -> list[float]:
    values = _numbers("--thresholds", spec)
    if not all(0 < value <= 1 for value in values):
        raise LayerscopeError(f"--thresholds '{spec}': each must be a probability above 0 and at most 1.")
    return values


@command
def exit_estimate(
    *,
    model: BosModelOptions,
    prompts: Annotated[
        Path | None,
        typer.Option(help="Prompt set. Default: sample_prompts/general.txt."),
        Reads((sample_file("general.txt"),)),
    ] = None,
    thresholds: Annotated[
        str, typer.Option(help="Confidence thresholds: exit at the first row whose top-1 probability reaches one.")
    ] = "0.5,0.7,0.9,0.95",
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Prompts per forward pass.")] = 8,
    output: Output,
) -> None:
    """Early-exit estimate: per prompt and position, the grid row from which the logit lens's top-1 stays the
    final top-1, and the blocks an oracle exit and a confidence-threshold exit would skip.

    Example: layerscope exit --model demo --prompts sample_prompts/general.txt --thresholds 0.5,0.9
    """
    from layerscope.analyses.early_exit import early_exit
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.prompt_sets import load_prompt_set

    levels = _thresholds(thresholds)
    prompts = prompts or _sample("general.txt")
    texts = [item.text for item in load_prompt_set(prompts)]
    lm = model.load()
    grids = [
        grid
        for start in range(0, len(texts), batch_size)
        for grid in logit_lens(lm, lm.encode(texts[start : start + batch_size]), top_k=1)
    ]
    result = early_exit(grids, levels)
    output.write(
        result.to_dict,
        result.records,
        lambda: exit_table(result),
        lambda: add_caption(result.plot(), f"prompts: {prompts}"),
    )
