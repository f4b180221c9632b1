"""`layerscope neurons` and `layerscope attribute`: what the MLP neurons, the blocks and the heads write to the
logits directly."""

from __future__ import annotations

from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, PromptInput, StderrProgress, command, spec_option
from layerscope.cli.tables import attribution_table, census_table


@command
def neurons(
    *,
    model: ModelOptions,
    min_kurtosis: Annotated[
        float,
        typer.Option(
            min=0,
            help="A neuron of higher kurtosis is a prediction or suppression neuron (Gurnee et al. 2024 split at 10).",
        ),
    ] = 10.0,
    min_skew: Annotated[
        float, typer.Option(min=0, help="Prediction: skew above it; suppression: below minus it.")
    ] = 0.0,
    blocks: Annotated[str | None, typer.Option(help="Blocks to census, e.g. 20-29 (default: every block).")] = None,
    top: Annotated[int, typer.Option(min=0, max=1000, help="Neurons of each kind listed in the table.")] = 10,
    output: Output,
) -> None:
    """Prediction and suppression neurons: the moments over the vocabulary of each MLP neuron's output weight
    against the unembedding, and the count of each kind per block. Weights only, no prompt.

    Example: layerscope neurons --model demo --top 5
    """
    from layerscope.analyses.neurons import neuron_census

    if blocks:
        spec_option("--blocks", blocks, "block")  # a bad spec is refused before the model loads
    lm = model.load()
    chosen = list(spec_option("--blocks", blocks, "block", lm.n_blocks)) if blocks else None
    with StderrProgress() as progress:
        census = neuron_census(lm, min_kurtosis, min_skew, chosen, progress=progress)
    output.write(census.to_dict, census.records, lambda: census_table(census, top), census.plot)


@command
def attribute(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    answer: Annotated[
        str | None,
        typer.Option(
            help="The answer token as it follows the prompt, e.g. ' Paris' (default: the model's own next token)."
        ),
    ] = None,
    contrast: Annotated[str | None, typer.Option(help="Attribute the logit difference answer - contrast.")] = None,
    top: Annotated[int, typer.Option(min=0, max=1000, help="Heads listed in the table.")] = 10,
    output: Output,
) -> None:
    """Direct logit attribution: how much the embedding, each block's attention and MLP, and each head write the
    answer's logit at the last position, through the final norm with its scale frozen.

    Example: layerscope attribute --prompt "The capital of France is" --answer " Paris" --contrast " the"
    """
    from layerscope.analyses.attribution import logit_attribution, token_id

    text = prompt.read()
    lm = model.load()
    answer_id = token_id(lm, answer, "answer") if answer is not None else None
    contrast_id = token_id(lm, contrast, "contrast") if contrast is not None else None
    result = logit_attribution(lm, lm.encode(text), answer_id, contrast_id)
    output.write(result.to_dict, result.records, lambda: attribution_table(result, top), result.plot)
