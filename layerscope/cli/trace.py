"""`layerscope trace`: causal tracing, which (row, position) states carry the answer."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, OccurrenceOption, Output, PromptInput, StderrProgress, command
from layerscope.cli.tables import trace_table
from layerscope.errors import LayerscopeError


class Corrupt(str, Enum):
    noise = "noise"
    swap = "swap"


class Site(str, Enum):
    resid = "resid"
    attn = "attn"
    mlp = "mlp"


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
    with StderrProgress() as progress:
        result = trace_prompt(lm, text, subject, answer, corrupt.value, corrupt_prompt, site.value, window, approx,
                              seed, noise_scale, progress, occurrence)
    output.write(result.to_dict, result.records, lambda: trace_table(result), result.plot)
