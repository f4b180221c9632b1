"""`layerscope neurons` and `layerscope attribute`: what the MLP neurons, the blocks and the heads write to the
logits directly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, PromptInput, StderrProgress, command, shorten, spec_option

if TYPE_CHECKING:
    from layerscope.analyses.attribution import LogitAttribution
    from layerscope.analyses.neurons import NeuronCensus


def census_table(census: NeuronCensus, top: int) -> str:
    lines = [f"prediction / suppression neurons: kurtosis > {census.min_kurtosis:g}, skew > {census.min_skew:g} / "
             f"< -{census.min_skew:g} (cosines of W_out with the unembedding, Pearson kurtosis)", "",
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
    output.write(census.to_dict, census.csv_rows, lambda: census_table(census, top), census.plot)


def attribution_table(result: LogitAttribution, top: int) -> str:
    what = repr(result.answer) + (f" - {result.contrast!r}" if result.contrast is not None else "")
    lines = [f"direct logit attribution of {what} at the last position (before any soft-cap; final norm scale "
             f"{result.norm_scale:.4g} frozen)",
             f"logit {result.logit:.4f} = embedding {result.embedding:.4f} + attention {sum(result.attention):.4f} "
             f"+ MLP {sum(result.mlp):.4f} + bias {result.bias:.4f}", "",
             f"{'block':>5} {'attention':>10} {'mlp':>10}  strongest head"]
    for block, (attention, mlp) in enumerate(zip(result.attention, result.mlp)):
        head = max(range(len(result.heads[block])), key=lambda h: abs(result.heads[block][h]))
        lines.append(f"{block:>5} {attention:10.4f} {mlp:10.4f}  {block}.{head} {result.heads[block][head]:.4f}")
    ranked = sorted(((abs(value), block, head, value) for block, heads in enumerate(result.heads)
                     for head, value in enumerate(heads)), reverse=True)[:top]
    if ranked:
        lines += ["", f"top {len(ranked)} heads by |contribution|:"]
        lines += [f"{f'{block}.{head}':>7} {value:10.4f}" for _, block, head, value in ranked]
    return "\n".join(lines)


@command
def attribute(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    answer: Annotated[str | None, typer.Option(help="The answer token as it follows the prompt, e.g. ' Paris' "
                                                    "(default: the model's own next token).")] = None,
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
    output.write(result.to_dict, result.csv_rows, lambda: attribution_table(result, top), result.plot)
