"""`layerscope jacobianlens fit|eval`: fit a Jacobian lens (read it with `layerscope lens --method jacobian`), and
compare it with the logit lens."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, Reads, StderrProgress, Writes, command
from layerscope.cli.tunedlens import CalibrationText, HeldoutText, HeldoutTokens, evaluate_lens
from layerscope.errors import LayerscopeError
from layerscope.locations import sample_file
from layerscope.textfiles import read_text_file

jacobianlens_app = typer.Typer(
    help="Jacobian lens (Gurnee et al. 2026): fit one, compare it with the logit lens; read it with "
    "`layerscope lens --method jacobian`.",
    no_args_is_help=True,
)


def lens_files() -> tuple[str, ...]:
    """The files `jacobianlens fit` writes in its folder."""
    from layerscope.analyses.tuned_lens import CONFIG, WEIGHTS

    return WEIGHTS, CONFIG


@jacobianlens_app.command("fit")
@command
def fit(
    *,
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the lens (lens.safetensors and config.json)."),
        Writes(folder=True, files=lens_files),
    ],
    model: ModelOptions,
    text: CalibrationText = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="Fitting prompts instead of --text (one prompt each): one a line (or .jsonl), each its first "
            "--context tokens."
        ),
        Reads(),
    ] = None,
    max_prompts: Annotated[
        int | None, typer.Option(min=1, help="Fit on the first N prompts only. Default: all of them.")
    ] = None,
    context: Annotated[int, typer.Option(min=2, help="Tokens per prompt.")] = 128,
    skip_first: Annotated[
        int, typer.Option(min=0, help="Leading positions of each prompt left out of the average (attention sinks).")
    ] = 16,
    dim_batch: Annotated[
        int, typer.Option(min=1, help="Output dimensions per backward pass (copies of the prompt in memory).")
    ] = 8,
) -> None:
    """Fit a Jacobian lens: per row, the average Jacobian of the last block's output with respect to that row's.

    Example: layerscope jacobianlens fit --model demo --max-prompts 4 --out lenses/demo-jacobian
    """
    from layerscope.analyses.jacobian_lens import FitSettings, fit_jacobian_lens
    from layerscope.analyses.prompt_sets import load_prompt_set

    if text is not None and prompts is not None:
        raise LayerscopeError("Give --text (a text cut into prompts) or --prompts (a prompt set), not both.")
    if prompts is not None:
        fitting: str | list[str] = [item.text for item in load_prompt_set(prompts)]
    else:
        fitting = read_text_file(text or sample_file("calibration.txt"), "fitting text")
    settings = FitSettings(max_prompts=max_prompts, context=context, skip_first=skip_first, dim_batch=dim_batch)
    settings.check()
    lm = model.load()
    with StderrProgress() as progress:
        lens = fit_jacobian_lens(lm, fitting, settings, progress)
    lens.save(out)
    typer.echo(
        f"Jacobian lens ({lens.n_prompts} prompts) saved in {out}; read it: "
        f"layerscope lens --model {model.model} --method jacobian --lens {out} --prompt ..."
    )


@jacobianlens_app.command("eval")
@command
def evaluate(
    *,
    lens: Annotated[Path, typer.Option("--lens", help="A Jacobian lens folder (jacobianlens fit's --out)."), Reads()],
    model: ModelOptions,
    text: HeldoutText = None,
    tokens: HeldoutTokens = 256,
    output: Output,
) -> None:
    """Per row, KL to the model's output on held-out text: logit lens vs Jacobian lens.

    Example: layerscope jacobianlens eval --model demo --lens lenses/demo-jacobian
    """
    evaluate_lens(model, lens, text, tokens, output, "jacobian")
