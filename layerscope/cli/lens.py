"""`layerscope lens` and `layerscope run`: the decode grid, with and without interventions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from layerscope.cli.common import (
    BosModelOptions,
    Output,
    PromptInput,
    Reads,
    TopKOption,
    command,
)
from layerscope.cli.tables import grid_table, report_table
from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from layerscope.analyses.jacobian_lens import FittedLens
    from layerscope.interventions.core import CliOption


class LensMethod(str, Enum):
    logit = "logit"
    tuned = "tuned"
    jacobian = "jacobian"


@command
def lens(
    *,
    model: BosModelOptions,
    prompt: PromptInput,
    method: Annotated[
        LensMethod, typer.Option(help="logit, tuned or jacobian (tuned and jacobian need --lens).")
    ] = LensMethod.logit,
    lens_dir: Annotated[
        Path | None,
        typer.Option(
            "--lens",
            help="Lens folder for --method tuned (tunedlens train) or jacobian (jacobianlens fit).",
        ),
        Reads(),
    ] = None,
    top_k: TopKOption = 5,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            "--generate",
            min=0,
            help="Also decode N greedy tokens after the prompt: the grid covers them, marked as generated.",
        ),
    ] = None,
    output: Output,
) -> None:
    """Logit lens: decode every layer's residual stream at every prompt token.

    Example: layerscope lens --model demo --prompt "The capital of France is" --format json
    """
    from layerscope.analyses.jacobian_lens import JacobianLens, jacobian_lens, read_jacobian_lens
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.lens_generate import lens_generate
    from layerscope.analyses.tuned_lens import TunedLens, tuned_lens
    from layerscope.cli.tunedlens import echo_mismatch, load_lens

    text = prompt.read()
    if (method is LensMethod.logit) != (lens_dir is None):
        raise LayerscopeError("--method tuned and --method jacobian need --lens DIR, and --lens goes with one of them.")
    lm = model.load()
    ids = lm.encode(text)
    lens: FittedLens | None = None
    if lens_dir is not None:  # with --method tuned or jacobian (checked above)
        tuned = method is LensMethod.tuned
        lens = load_lens(lm, lens_dir) if tuned else echo_mismatch(*read_jacobian_lens(lm, lens_dir))
    if max_new_tokens is not None:
        grid = lens_generate(lm, ids, max_new_tokens, top_k=top_k, lens=lens)
    elif isinstance(lens, TunedLens):
        grid = tuned_lens(lm, ids, lens, top_k=top_k)
    elif isinstance(lens, JacobianLens):
        grid = jacobian_lens(lm, ids, lens, top_k=top_k)
    else:
        grid = logit_lens(lm, ids, top_k=top_k)
    output.write(grid.to_dict, grid.records, lambda: grid_table(grid), grid.plot)


def with_intervention_options(command: Callable[..., None]) -> Callable[..., None]:
    """Declare one option per way of choosing a registered intervention kind (`--drop`, `--freeze-from`, ...,
    and each kind's settings such as `--seed`), after the prompt options; `command` gets them in **chosen."""
    from layerscope.interventions.core import cli_options

    def typed(option: CliOption) -> object:
        if option.reads:
            return Annotated[Path | None, typer.Option(option.flag, help=option.help), Reads()]
        kind = option.type if option.default is not None else option.type | None
        return Annotated[kind, typer.Option(option.flag, help=option.help)]

    parameters = [
        inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=typed(option))
        for option in cli_options()
    ]
    declared = inspect.signature(command, eval_str=True).parameters.values()
    own = [p for p in declared if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = 1 + max(i for i, p in enumerate(own) if p.name in ("prompt", "prompt_file"))  # a PromptInput, or its options
    setattr(command, "__signature__", inspect.Signature([*own[:at], *parameters, *own[at:]]))  # typeshed lacks it
    return command


@command
@with_intervention_options
def run(
    *,
    model: BosModelOptions,
    prompt: PromptInput,
    max_new_tokens: Annotated[int, typer.Option(min=0, help="Greedy continuation length for both runs.")] = 20,
    generate: Annotated[
        bool,
        typer.Option(
            "--generate",
            help="The lens grids cover the continuations too, each run its own, the generated tokens marked.",
        ),
    ] = False,
    top_k: TopKOption = 5,
    output: Output,
    **chosen: Any,
) -> None:
    """Run with interventions: the intervened lens, its comparison with the baseline, and both continuations.

    Example: layerscope run --model demo --prompt "The capital of France is" --drop 3,5 --swap 10
    """
    from layerscope.analyses.compare import run_interventions
    from layerscope.interventions import ModelShape, check_interventions
    from layerscope.interventions.core import cli_options, interventions_from_options, options_given

    text = prompt.read()
    interventions_from_options(chosen, 0)  # a bad spec is refused before the model loads
    if not options_given(chosen):
        flags = [option.flag for option in cli_options() if option.chooses]
        raise LayerscopeError(
            f"No intervention given: use {', '.join(flags[:-1])} or {flags[-1]} "
            "(or 'layerscope lens' for the plain lens)."
        )
    lm = model.load()
    interventions = interventions_from_options(chosen, lm.n_blocks)
    ids = lm.encode(text)
    check_interventions(interventions, ModelShape(lm.n_blocks, lm.adapter.n_heads, ids.shape[1]))
    report = run_interventions(
        lm, ids, interventions, top_k=top_k, max_new_tokens=max_new_tokens, lens_over_continuation=generate
    )
    output.write(report.to_dict, report.records, lambda: report_table(report), report.plot)
