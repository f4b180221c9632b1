"""`layerscope neurons`: what the MLP neurons write to the logits, read from the weights alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, StderrProgress, command, shorten, spec_option

if TYPE_CHECKING:
    from layerscope.analyses.neurons import NeuronCensus


def census_table(census: NeuronCensus, top: int) -> str:
    lines = [f"prediction / suppression neurons: kurtosis > {census.min_kurtosis:g}, skew > {census.min_skew:g} / "
             f"< {-census.min_skew:g} (cosines of W_out with the unembedding, Pearson kurtosis)", "",
             f"{'block':>5} {'neurons':>8} {'predict':>8} {'suppress':>8}"]
    for b in census.blocks:
        lines.append(f"{b.block:>5} {len(b.kurtosis):>8} {b.prediction:>8} {b.suppression:>8}")
    for kind in ("prediction", "suppression"):
        chosen = census.top(kind, top)
        if chosen:
            lines += ["", f"top {kind} neurons by kurtosis:", f"{'neuron':>10} {'kurtosis':>9} {'skew':>7}  token"]
        for block, neuron in chosen:
            b = census.block(block)
            token = census.token_texts[b.extreme_tokens[neuron]]
            lines.append(f"{f'{block}.{neuron}':>10} {b.kurtosis[neuron]:9.1f} {b.skew[neuron]:7.2f}  "
                         f"{shorten(token, 20)}")
    return "\n".join(lines)


@command
def neurons(
    *,
    model: ModelOptions,
    min_kurtosis: Annotated[float, typer.Option(min=0, help="A neuron of higher kurtosis is a prediction or "
                                                            "suppression neuron (Gurnee et al. 2024 split at 10).")] = 10.0,
    min_skew: Annotated[float, typer.Option(min=0, help="Prediction: skew above it; suppression: below minus it.")] = 0.0,
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
    progress = StderrProgress()
    try:
        census = neuron_census(lm, min_kurtosis, min_skew, chosen, progress=progress)
    finally:
        progress.close()
    output.write(census.to_dict, census.csv_rows, lambda: census_table(census, top))
