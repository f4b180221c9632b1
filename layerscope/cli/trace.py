"""`layerscope trace`: causal tracing, which (row, position) states carry the answer."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.cli.common import (ModelOptions, OccurrenceOption, Output, PromptInput, StderrProgress, command,
                                   shorten)
from layerscope.errors import LayerscopeError

if TYPE_CHECKING:
    from layerscope.analyses.causal_trace import CausalTrace

CELL = 7


class Corrupt(str, Enum):
    noise = "noise"
    swap = "swap"


class Site(str, Enum):
    resid = "resid"
    attn = "attn"
    mlp = "mlp"


def trace_table(trace: CausalTrace) -> str:
    """Rows are layers, columns prompt tokens (* marks the subject); each cell the indirect effect."""
    subject = range(*trace.subject_positions) if trace.subject_positions else range(0)
    names = [("*" if i in subject else "") + shorten(t, CELL - 1) for i, t in enumerate(trace.tokens)]
    site = trace.site if trace.site == "resid" else f"{trace.site}, window {trace.window}"
    kind = "attribution patching (approx)" if trace.approx else "restoring one state at a time"
    lines = [f"causal trace of {trace.answer!r} ({site}; {kind}; corruption: {trace.corrupt})",
             f"p(answer) clean {trace.clean['p_answer']:.4f}, corrupted {trace.corrupted['p_answer']:.4f}; "
             "cells: indirect effect = p(answer) with the state restored - corrupted", ""]
    head = f"{'layer':>5} | " + " ".join(f"{name:>{CELL}}" for name in names)
    lines += [head, "-" * len(head)]
    for label, row in zip(trace.layers, trace.cells):
        lines.append(f"{label:>5} | " + " ".join(f"{cell.indirect_effect:>{CELL}.3f}" for cell in row))
    lines.append("")
    positions = [("last subject token", trace.subject_positions[1] - 1)] if trace.subject_positions else []
    for name, position in [*positions, ("last position", len(trace.tokens) - 1)]:
        peak_row, effect = trace.peak(position)
        lines.append(f"strongest at the {name} ({trace.tokens[position]!r}): row {peak_row}, {effect:.3f}")
    return "\n".join(lines)


@command
def trace(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    subject: Annotated[str | None, typer.Option(help="The subject, as it appears in the prompt (noise corrupts it).")] = None,
    occurrence: OccurrenceOption = None,
    answer: Annotated[str | None, typer.Option(help="The answer's text as it follows the prompt, e.g. ' Paris' "
                                                     "(its first token counts). Default: the model's own top token.")] = None,
    corrupt: Annotated[Corrupt, typer.Option(help="noise: Gaussian noise on the subject's embeddings; swap: a "
                                                  "counterfactual prompt (--corrupt-prompt).")] = Corrupt.noise,
    corrupt_prompt: Annotated[str | None, typer.Option(help="The counterfactual prompt for --corrupt swap "
                                                            "(same token length).")] = None,
    site: Annotated[Site, typer.Option(help="resid: one residual state; attn or mlp: that module's outputs in a "
                                            "window of blocks.")] = Site.resid,
    window: Annotated[int, typer.Option(min=1, help="Blocks restored together for --site attn|mlp.")] = 10,
    noise_scale: Annotated[float, typer.Option(min=0.0, max=100.0, help="Noise std in units of the embeddings' std.")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    approx: Annotated[bool, typer.Option("--approx", help="Attribution patching: gradient x activation "
                                                          "difference, one backward pass.")] = False,
    output: Output,
) -> None:
    """Causal tracing (Meng et al. 2022): restore each clean state into a corrupted run and see how much of the
    answer comes back.

    Example: layerscope trace --prompt "The Eiffel Tower is in the city of" --subject "Eiffel Tower" --answer " Paris"
    """
    from layerscope.analyses.causal_trace import trace_prompt

    text = prompt.read()
    if corrupt is Corrupt.noise and subject is None:
        raise LayerscopeError("Noise corruption needs the subject: give --subject (a part of the prompt).")
    if corrupt is Corrupt.swap and corrupt_prompt is None:
        raise LayerscopeError("Swap corruption needs the counterfactual prompt: give --corrupt-prompt.")
    lm = model.load()
    progress = StderrProgress()
    try:
        result = trace_prompt(lm, text, subject, answer, corrupt.value, corrupt_prompt, site.value, window, approx,
                              seed, noise_scale, progress, occurrence)
    finally:
        progress.close()
    output.write(result.to_dict, result.csv_rows, lambda: trace_table(result), result.plot)
