"""`layerscope lens` and `layerscope run`: the decode grid, with and without interventions."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from layerscope.cli.common import (
    BosOption,
    DebugOption,
    DeviceMapOption,
    DeviceOption,
    DtypeOption,
    Format,
    FormatOption,
    ModelOption,
    OutOption,
    PromptFileOption,
    PromptOption,
    TopKOption,
    TrustOption,
    handles_errors,
    load,
    read_prompt,
    shorten,
)
from layerscope.outputs import check_not_input, check_writable, to_csv, to_json, write_atomic
from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from layerscope.analyses.compare import InterventionReport
    from layerscope.analyses.grid import DecodeGrid

CELL = 12


def grid_table(grid: DecodeGrid) -> str:
    """Rows are layers, columns are prompt tokens; each cell the top-1 token and its probability."""
    head = f"{'layer':>5} | " + " ".join(f"{shorten(t, CELL):<{CELL}}" for t in grid.tokens)
    lines = [head, "-" * len(head)]
    for label, row in zip(grid.layers, grid.cells):
        cells = " ".join(f"{shorten(c.top[0].token, CELL - 5) + f' {c.top[0].prob:.2f}':<{CELL}}" for c in row)
        lines.append(f"{label:>5} | {cells}")
    return "\n".join(lines)


class LensMethod(str, Enum):
    logit = "logit"
    tuned = "tuned"


def lens(
    model: ModelOption = "demo",
    prompt: PromptOption = None,
    prompt_file: PromptFileOption = None,
    method: Annotated[LensMethod, typer.Option(help="logit, or tuned (needs --lens).")] = LensMethod.logit,
    lens_dir: Annotated[Path | None, typer.Option("--lens", help="Tuned lens folder for --method tuned "
                                                                 "(layerscope tunedlens train).")] = None,
    top_k: TopKOption = 5,
    format: FormatOption = Format.table,
    out: OutOption = None,
    bos: BosOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
    trust_remote_code: TrustOption = False,
    debug: DebugOption = False,
) -> None:
    """Logit lens: decode every layer's residual stream at every prompt token.

    Example: layerscope lens --model demo --prompt "The capital of France is" --format json
    """
    run_lens(**locals())


@handles_errors
def run_lens(model, prompt, prompt_file, method, lens_dir, top_k, format, out, bos, device, dtype, device_map,
             trust_remote_code, debug):
    from layerscope.analyses.lens import logit_lens
    from layerscope.analyses.tuned_lens import load_tuned_lens, tuned_lens

    text = read_prompt(prompt, prompt_file)
    check_writable(out)
    if (method is LensMethod.tuned) != (lens_dir is not None):
        raise LayerscopeError("--method tuned needs --lens DIR, and --lens goes with --method tuned.")
    check_not_input(out, model, {"--prompt-file": prompt_file})
    lm = load(model, device, dtype, device_map, trust_remote_code, bos)
    if lens_dir is None:
        grid = logit_lens(lm, lm.encode(text), top_k=top_k)
    else:
        grid = tuned_lens(lm, lm.encode(text), load_tuned_lens(lm, lens_dir), top_k=top_k)
    rendered = {Format.json: lambda: to_json(grid.to_dict()), Format.csv: lambda: to_csv(grid.csv_rows()),
                Format.table: lambda: grid_table(grid)}[format]()
    write_atomic(rendered, out)


def report_table(report: InterventionReport) -> str:
    comparison = report.comparison
    lines = [f"interventions: {', '.join(i['kind'] for i in report.interventions) or 'none'}", "",
             "intervened logit lens:", grid_table(report.intervened), "",
             f"{'pos':>4} {'token':<14} {'KL':>8} {'top1':>5} {'dH bits':>8} {'dloss':>8}"]
    for p in comparison.positions:
        loss = "" if p.loss_delta is None else f"{p.loss_delta:8.3f}"
        lines.append(f"{p.position:>4} {shorten(p.token, 14):<14} {p.kl:8.4f} {'yes' if p.top1_agree else 'NO':>5} "
                     f"{p.entropy_delta:8.3f} {loss:>8}")
    lines.append(f"mean KL {comparison.mean_kl:.4f} nats, top-1 agreement {comparison.top1_agreement:.0%}")
    for name, continuation in report.continuation.items():
        lines.append(f"{name:>10}: {continuation.text!r}")
    return "\n".join(lines)


def with_intervention_options(command: Callable[..., None]) -> Callable[..., None]:
    """Declare one option per way of choosing a registered intervention kind (`--drop`, `--freeze-from`, ...,
    and each kind's settings such as `--seed`), after `--prompt-file`; `command` gets them in **chosen."""
    from layerscope.interventions.core import cli_options

    def typed(option):
        kind = option.type if option.default is not None else option.type | None
        return Annotated[kind, typer.Option(option.flag, help=option.help)]

    parameters = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default,
                                    annotation=typed(option)) for option in cli_options()]
    declared = inspect.signature(command, eval_str=True).parameters.values()
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in declared
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in own].index("prompt_file") + 1
    command.__signature__ = inspect.Signature([*own[:at], *parameters, *own[at:]])
    return command


@with_intervention_options
def run(
    model: ModelOption = "demo",
    prompt: PromptOption = None,
    prompt_file: PromptFileOption = None,
    max_new_tokens: Annotated[int, typer.Option(min=0, help="Greedy continuation length for both runs.")] = 20,
    top_k: TopKOption = 5,
    format: FormatOption = Format.table,
    out: OutOption = None,
    bos: BosOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    device_map: DeviceMapOption = None,
    trust_remote_code: TrustOption = False,
    debug: DebugOption = False,
    **chosen: Any,
) -> None:
    """Run with interventions: the intervened lens, its comparison with the baseline, and both continuations.

    Example: layerscope run --model demo --prompt "The capital of France is" --drop 3,5 --swap 10
    """
    run_run(**locals())


@handles_errors
def run_run(model, prompt, prompt_file, max_new_tokens, top_k, format, out, bos, device, dtype, device_map,
            trust_remote_code, debug, chosen):
    from layerscope.analyses.compare import run_interventions
    from layerscope.interventions import ModelShape, check_interventions
    from layerscope.interventions.core import cli_options, interventions_from_options, options_given

    text = read_prompt(prompt, prompt_file)
    check_writable(out)
    check_not_input(out, model, {"--prompt-file": prompt_file})
    interventions_from_options(chosen, 0)  # a bad spec is refused before the model loads
    if not options_given(chosen):
        flags = [option.flag for option in cli_options() if option.chooses]
        raise LayerscopeError(f"No intervention given: use {', '.join(flags[:-1])} or {flags[-1]} "
                              "(or 'layerscope lens' for the plain lens).")
    lm = load(model, device, dtype, device_map, trust_remote_code, bos)
    interventions = interventions_from_options(chosen, lm.n_blocks)
    ids = lm.encode(text)
    check_interventions(interventions, ModelShape(lm.n_blocks, lm.adapter.n_heads, ids.shape[1]))
    report = run_interventions(lm, ids, interventions, top_k=top_k, max_new_tokens=max_new_tokens)
    if format is Format.json:
        rendered = to_json(report.to_dict())
    elif format is Format.csv:
        rendered = to_csv({"position": p.position, "token": p.token, "kl": p.kl, "top1_agree": p.top1_agree,
                           "entropy_delta": p.entropy_delta, "loss_delta": p.loss_delta}
                          for p in report.comparison.positions)
    else:
        rendered = report_table(report)
    write_atomic(rendered, out)
