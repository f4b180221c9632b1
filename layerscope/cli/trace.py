"""`layerscope trace`: causal tracing, which (row, position) states carry the answer."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, OccurrenceOption, Output, PromptInput, Reads, StderrProgress, command
from layerscope.cli.tables import trace_table
from layerscope.errors import LayerscopeError
from layerscope.locations import sample_file


class Corrupt(str, Enum):
    noise = "noise"
    swap = "swap"


class Site(str, Enum):
    resid = "resid"
    attn = "attn"
    mlp = "mlp"
    head = "head"


class Metric(str, Enum):
    prob = "prob"
    logit_diff = "logit-diff"
    kl = "kl"


class NoiseStd(str, Enum):
    embedding = "embedding"
    subjects = "subjects"


@command
def trace(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    subject: Annotated[
        str | None, typer.Option(help="The subject, as it appears in the prompt (noise corrupts it).")
    ] = None,
    occurrence: OccurrenceOption = None,
    answer: Annotated[
        str | None,
        typer.Option(
            help="The answer's text as it follows the prompt, e.g. ' Paris' "
            "(its first token counts). Default: the model's own top token."
        ),
    ] = None,
    corrupt: Annotated[
        Corrupt,
        typer.Option(
            help="noise: Gaussian noise on the subject's embeddings; swap: a counterfactual prompt (--corrupt-prompt)."
        ),
    ] = Corrupt.noise,
    corrupt_prompt: Annotated[
        str | None, typer.Option(help="The counterfactual prompt for --corrupt swap (same token length).")
    ] = None,
    site: Annotated[
        Site,
        typer.Option(
            help="resid: one residual state; attn or mlp: that module's outputs in a "
            "window of blocks; head: one attention head's output (rows block.head)."
        ),
    ] = Site.resid,
    window: Annotated[int, typer.Option(min=1, help="Blocks restored together for --site attn|mlp.")] = 10,
    metric: Annotated[
        Metric,
        typer.Option(
            help="What a cell measures at the last position: prob = p(answer); "
            "logit-diff = logit(answer) - logit(--contrast); kl = KL(clean || "
            "run) of the next-token distribution."
        ),
    ] = Metric.prob,
    contrast: Annotated[
        str | None,
        typer.Option(
            help="The second token of --metric logit-diff, e.g. the "
            "counterfactual answer ' Rome' (its first token counts)."
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1000,
            help="Noise samples, all in the same forward passes; cells are their mean. Default: 10 (ROME's).",
        ),
    ] = None,
    noise_scale: Annotated[float, typer.Option(min=0.0, max=100.0, help="Noise std in units of --noise-std.")] = 3.0,
    noise_std: Annotated[
        NoiseStd,
        typer.Option(
            help="The std the noise is scaled by: embedding = of the embedding "
            "matrix's entries; subjects = of the token embeddings of the "
            "--noise-subjects (ROME's s3 with --noise-scale 3)."
        ),
    ] = NoiseStd.embedding,
    noise_subjects: Annotated[
        Path | None,
        typer.Option(
            help="The subjects for --noise-std subjects: a .jsonl with "
            'a "subject" a line, or one subject a line. Default: '
            "sample_prompts/capitals.jsonl."
        ),
        Reads((sample_file("capitals.jsonl"),)),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise.")] = 0,
    approx: Annotated[
        bool,
        typer.Option("--approx", help="Attribution patching: gradient x activation difference, one backward pass."),
    ] = False,
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
    if (metric is Metric.logit_diff) != (contrast is not None):
        raise LayerscopeError("--metric logit-diff needs --contrast (the second token), and --contrast is only for it.")
    if noise_subjects is not None and noise_std is not NoiseStd.subjects:
        raise LayerscopeError("--noise-subjects is for --noise-std subjects.")
    subjects = _subjects(noise_subjects) if noise_subjects is not None else None
    lm = model.load()
    with StderrProgress() as progress:
        result = trace_prompt(
            lm,
            text,
            subject,
            answer,
            corrupt.value,
            corrupt_prompt,
            site.value,
            window,
            approx,
            seed,
            noise_scale,
            progress,
            occurrence,
            metric.value,
            contrast,
            samples,
            noise_std.value,
            subjects,
        )
    output.write(result.to_dict, result.records, lambda: trace_table(result), result.plot)


def _subjects(path: Path) -> list[str]:
    """The subjects of a prompt set: each item's "subject" in a .jsonl, else each line."""
    from layerscope.analyses.prompt_sets import load_prompt_set

    items = load_prompt_set(path)
    missing = next(
        (number for number, item in enumerate(items, 1) if path.suffix == ".jsonl" and not item.subject), None
    )
    if missing is not None:
        raise LayerscopeError(f'{path}: prompt {missing} has no "subject".')
    return [item.subject or item.text for item in items]
