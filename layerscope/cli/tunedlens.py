"""`layerscope tunedlens train|eval`: train a tuned lens, and compare it with the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.cli.common import (
    DebugOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    Format,
    FormatOption,
    ModelOption,
    OutOption,
    StderrProgress,
    TrustOption,
    handles_errors,
    load,
)
from layerscope.outputs import check_not_input, check_writable, to_csv, to_json, write_atomic
from layerscope.locations import sample_file
from layerscope.textfiles import read_text_file

if TYPE_CHECKING:
    from layerscope.analyses.tuned_lens import LensComparison

tunedlens_app = typer.Typer(help="Tuned lens (Belrose et al. 2023): train one, compare it with the logit lens.",
                            no_args_is_help=True)

LensOption = Annotated[Path, typer.Option("--lens", help="A tuned lens folder (ours, or the tuned-lens project's "
                                                         "params.pt + config.json).")]


def comparison_table(comparison: LensComparison) -> str:
    lines = [f"mean KL(final || lens) in nats over {comparison.tokens} held-out tokens",
             f"{'layer':>5} {'logit lens':>11} {'tuned lens':>11}", "-" * 29]
    for layer, logit, tuned in zip(comparison.layers, comparison.logit_lens_kl, comparison.tuned_lens_kl):
        lines.append(f"{layer:>5} {logit:>11.3f} {tuned:>11.3f}")
    return "\n".join(lines)


@tunedlens_app.command("train")
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the lens (and its checkpoint while training).")],
    model: ModelOption = "demo",
    text: Annotated[Path | None, typer.Option(help="Calibration text. Default: sample_prompts/calibration.txt.")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps, one chunk of --context tokens each.")] = 40,
    context: Annotated[int, typer.Option(min=2, help="Tokens per step.")] = 64,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-3,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
    trust_remote_code: TrustOption = False,
    debug: DebugOption = False,
) -> None:
    """Train a tuned lens; run it again with the same options to resume an interrupted training.

    Example: layerscope tunedlens train --model demo --out lenses/demo
    """
    run_train(**locals())


@handles_errors
def run_train(out, model, text, steps, context, lr, device, dtype, device_map, trust_remote_code, debug):
    from layerscope.analyses.tuned_lens import TrainSettings, train_tuned_lens

    calibration = read_text_file(text or sample_file("calibration.txt"), "calibration text")
    settings = TrainSettings(steps=steps, context=context, lr=lr)
    settings.check()
    lm = load(model, device, dtype, device_map, trust_remote_code)
    progress = StderrProgress()
    try:
        train_tuned_lens(lm, calibration, out, settings, progress)
    finally:
        progress.close()
    typer.echo(f"tuned lens saved in {out}; compare it: layerscope tunedlens eval --model {model} --lens {out}")


@tunedlens_app.command("eval")
def evaluate(
    lens: LensOption,
    model: ModelOption = "demo",
    text: Annotated[Path | None, typer.Option(help="Held-out text. Default: sample_prompts/heldout.txt.")] = None,
    tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens used (the first N).")] = 256,
    format: FormatOption = Format.table,
    out: OutOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
    trust_remote_code: TrustOption = False,
    debug: DebugOption = False,
) -> None:
    """Per row, KL to the model's output on held-out text: logit lens vs tuned lens.

    Example: layerscope tunedlens eval --model demo --lens lenses/demo
    """
    run_eval(**locals())


@handles_errors
def run_eval(lens, model, text, tokens, format, out, device, dtype, device_map, trust_remote_code, debug):
    from layerscope.analyses.tuned_lens import compare_lenses, load_tuned_lens

    heldout = read_text_file(text or sample_file("heldout.txt"), "held-out text")
    check_writable(out)
    check_not_input(out, model, {"--text": text})
    lm = load(model, device, dtype, device_map, trust_remote_code)
    comparison = compare_lenses(lm, load_tuned_lens(lm, lens), heldout, tokens)
    rows = [{"layer": layer, "logit_lens_kl": logit, "tuned_lens_kl": tuned} for layer, logit, tuned in
            zip(comparison.layers, comparison.logit_lens_kl, comparison.tuned_lens_kl)]
    rendered = {Format.json: lambda: to_json(comparison.to_dict()), Format.csv: lambda: to_csv(rows),
                Format.table: lambda: comparison_table(comparison)}[format]()
    write_atomic(rendered, out)
