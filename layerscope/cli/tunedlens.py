"""`layerscope tunedlens train|eval`: train a tuned lens, and compare it with the logit lens."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, Reads, StderrProgress, Writes, command, escaped
from layerscope.cli.tables import comparison_table
from layerscope.errors import LayerscopeError
from layerscope.locations import sample_file
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from layerscope.analyses.jacobian_lens import FittedLens
    from layerscope.analyses.tuned_lens import Lens, TunedLens
    from layerscope.models.loading import LoadedModel

CalibrationText = Annotated[
    Path | None,
    typer.Option(
        help="Calibration text, cut into chunks of --context tokens. Default: sample_prompts/calibration.txt."
    ),
    Reads((sample_file("calibration.txt"),)),
]

tunedlens_app = typer.Typer(
    help="Tuned lens (Belrose et al. 2023): train one, compare it with the logit lens.", no_args_is_help=True
)

LensOption = Annotated[
    Path,
    typer.Option("--lens", help="A tuned lens folder (ours, or the tuned-lens project's params.pt + config.json)."),
    Reads(),
]


def lens_files() -> tuple[str, ...]:
    """The files `tunedlens train` writes in its folder."""
    from layerscope.analyses.tuned_lens import CHECKPOINT, CHECKPOINT_STATE, CONFIG, PUBLISHED_WEIGHTS, WEIGHTS

    return WEIGHTS, PUBLISHED_WEIGHTS, CONFIG, CHECKPOINT, CHECKPOINT_STATE


def load_lens(lm: LoadedModel, directory: Path) -> TunedLens:
    """`load_tuned_lens`, a lens recorded for another model shown as one `warning:` line on stderr."""
    from layerscope.analyses.tuned_lens import read_tuned_lens

    return echo_mismatch(*read_tuned_lens(lm, directory))


def echo_mismatch(lens: Lens, mismatch: str | None) -> Lens:
    """A lens as read with its mismatch note (`read_tuned_lens`, `read_jacobian_lens`), the note shown as one
    `warning:` line on stderr."""
    if mismatch is not None:
        typer.echo(f"warning: {escaped(mismatch)}", err=True)
    return lens


class LensFormat(str, Enum):
    layerscope = "layerscope"
    tuned_lens = "tuned-lens"


class UnembedDtype(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float32 = "float32"


@tunedlens_app.command("train")
@command
def train(
    *,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the lens (and its checkpoint while training)."),
        Writes(folder=True, files=lens_files),
    ],
    model: ModelOptions,
    text: CalibrationText = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps, one chunk of --context tokens each.")] = 40,
    context: Annotated[int, typer.Option(min=2, help="Tokens per step.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, max=1.0, help="Adam learning rate.")] = 1e-3,
    lens_format: Annotated[
        LensFormat,
        typer.Option(
            help="layerscope (lens.safetensors) or tuned-lens (params.pt, which the tuned-lens package reads)."
        ),
    ] = LensFormat.layerscope,
    unembed_dtype: Annotated[
        UnembedDtype,
        typer.Option(
            help="The unembedding's dtype while training: auto (bfloat16 where the device has fast bf16: a CUDA GPU "
            "with bf16, a CPU with AVX-512 BF16 or AMX; else float32), bfloat16 or float32."
        ),
    ] = UnembedDtype.auto,
) -> None:
    """Train a tuned lens; run it again with the same options to resume an interrupted training.

    Example: layerscope tunedlens train --model demo --out lenses/demo
    """
    from layerscope.analyses.tuned_lens import TrainSettings, train_tuned_lens

    calibration = read_text_file(text or sample_file("calibration.txt"), "calibration text")
    bf16 = {UnembedDtype.auto: None, UnembedDtype.bfloat16: True, UnembedDtype.float32: False}[unembed_dtype]
    settings = TrainSettings(steps=steps, context=context, lr=lr, bf16_unembed=bf16)
    settings.check()
    lm = model.load()
    with StderrProgress() as progress:
        train_tuned_lens(lm, calibration, out, settings, progress, lens_format=lens_format.value)
    typer.echo(f"tuned lens saved in {out}; compare it: layerscope tunedlens eval --model {model.model} --lens {out}")


HeldoutText = Annotated[
    Path | None,
    typer.Option(help="Held-out text. Default: sample_prompts/heldout.txt."),
    Reads((sample_file("heldout.txt"),)),
]
HeldoutTokens = Annotated[int, typer.Option(min=2, help="Held-out tokens used (the first N).")]


def read_kind(lm: LoadedModel, directory: Path, kind: str) -> FittedLens:
    """The lens of `kind` (tuned, jacobian) in a folder, its mismatch note shown (`echo_mismatch`); a folder that
    holds the other kind is an error naming the command for it."""
    from layerscope.analyses.jacobian_lens import read_jacobian_lens
    from layerscope.analyses.tuned_lens import LENS_NAMES, read_tuned_lens

    readers: dict[str, Callable[[LoadedModel, Path], tuple[FittedLens, str | None]]] = {
        "tuned": read_tuned_lens,
        "jacobian": read_jacobian_lens,
    }
    try:
        return echo_mismatch(*readers[kind](lm, directory))
    except LayerscopeError as error:
        other = next(name for name in readers if name != kind)
        try:
            readers[other](lm, directory)
        except LayerscopeError:
            raise error from None
        raise LayerscopeError(
            f"'{directory}' holds a {LENS_NAMES[other]}, not a {LENS_NAMES[kind]}: evaluate it with "
            f"`layerscope {other}lens eval --lens {directory}`."
        ) from None


def evaluate_lens(
    model: ModelOptions, directory: Path, text: Path | None, tokens: int, output: Output, kind: str
) -> None:
    """`tunedlens eval` and `jacobianlens eval`: the lens of `kind` in `directory` against the logit lens."""
    from layerscope.analyses.tuned_lens import compare_lenses

    heldout = read_text_file(text or sample_file("heldout.txt"), "held-out text")
    lm = model.load()
    comparison = compare_lenses(lm, read_kind(lm, directory, kind), heldout, tokens)
    output.write(
        comparison.to_dict, comparison.records, lambda: comparison_table(comparison), lambda: comparison.plot(lm.name)
    )


@tunedlens_app.command("eval")
@command
def evaluate(
    *, lens: LensOption, model: ModelOptions, text: HeldoutText = None, tokens: HeldoutTokens = 256, output: Output
) -> None:
    """Per row, KL to the model's output on held-out text: logit lens vs tuned lens.

    Example: layerscope tunedlens eval --model demo --lens lenses/demo
    """
    evaluate_lens(model, lens, text, tokens, output, "tuned")
