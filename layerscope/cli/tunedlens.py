"""`layerscope tunedlens train|eval`: train a tuned lens, and compare it with the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, Reads, StderrProgress, Writes, command
from layerscope.cli.tables import comparison_table
from layerscope.locations import sample_file
from layerscope.textfiles import read_text_file

tunedlens_app = typer.Typer(help="Tuned lens (Belrose et al. 2023): train one, compare it with the logit lens.",
                            no_args_is_help=True)

LensOption = Annotated[Path, typer.Option("--lens", help="A tuned lens folder (ours, or the tuned-lens project's "
                                                         "params.pt + config.json)."), Reads()]


def lens_files() -> tuple[str, ...]:
    """The files `tunedlens train` writes in its folder."""
    from layerscope.analyses.tuned_lens import CHECKPOINT, CHECKPOINT_STATE, CONFIG, WEIGHTS

    return WEIGHTS, CONFIG, CHECKPOINT, CHECKPOINT_STATE


@tunedlens_app.command("train")
@command
def train(
    *,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the lens (and its checkpoint while training)."),
                   Writes(folder=True, files=lens_files)],
    model: ModelOptions,
    text: Annotated[Path | None, typer.Option(help="Calibration text. Default: sample_prompts/calibration.txt."),
                    Reads((sample_file("calibration.txt"),))] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps, one chunk of --context tokens each.")] = 40,
    context: Annotated[int, typer.Option(min=2, help="Tokens per step.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, max=1.0, help="Adam learning rate.")] = 1e-3,
) -> None:
    """Train a tuned lens; run it again with the same options to resume an interrupted training.

    Example: layerscope tunedlens train --model demo --out lenses/demo
    """
    from layerscope.analyses.tuned_lens import TrainSettings, train_tuned_lens

    calibration = read_text_file(text or sample_file("calibration.txt"), "calibration text")
    settings = TrainSettings(steps=steps, context=context, lr=lr)
    settings.check()
    lm = model.load()
    with StderrProgress() as progress:
        train_tuned_lens(lm, calibration, out, settings, progress)
    typer.echo(f"tuned lens saved in {out}; compare it: layerscope tunedlens eval --model {model.model} --lens {out}")


@tunedlens_app.command("eval")
@command
def evaluate(
    *,
    lens: LensOption,
    model: ModelOptions,
    text: Annotated[Path | None, typer.Option(help="Held-out text. Default: sample_prompts/heldout.txt."),
                    Reads((sample_file("heldout.txt"),))] = None,
    tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens used (the first N).")] = 256,
    output: Output,
) -> None:
    """Per row, KL to the model's output on held-out text: logit lens vs tuned lens.

    Example: layerscope tunedlens eval --model demo --lens lenses/demo
    """
    from layerscope.analyses.tuned_lens import compare_lenses, load_tuned_lens

    heldout = read_text_file(text or sample_file("heldout.txt"), "held-out text")
    lm = model.load()
    comparison = compare_lenses(lm, load_tuned_lens(lm, lens), heldout, tokens)
    output.write(comparison.to_dict, comparison.records, lambda: comparison_table(comparison), lambda: comparison.plot(lm.name))
