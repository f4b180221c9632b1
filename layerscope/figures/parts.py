"""What the parts write to the logits: prediction and suppression neurons per block, direct logit attribution."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerscope.figures.common import heatmap, labels, new_figure, prompt_caption, provenance, whole_blocks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.attribution import LogitAttribution
    from layerscope.analyses.neurons import NeuronCensus


def neuron_census_figure(census: NeuronCensus) -> Figure:
    """Prediction neurons up and suppression neurons down, per block (Gurnee et al.'s census)."""
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    blocks = [b.block for b in census.blocks]
    axes.bar(blocks, [b.prediction for b in census.blocks], color="tab:blue", label="prediction (skew > 0)")
    axes.bar(blocks, [-b.suppression for b in census.blocks], color="tab:red", label="suppression (skew < 0)")
    axes.axhline(0, color="black", linewidth=0.5)
    axes.set_xlabel("block")
    axes.set_ylabel("neurons (suppression below 0)")
    whole_blocks(axes)
    axes.legend(fontsize="small")
    provenance(
        figure,
        f"prediction and suppression neurons · {census.model}",
        f"kurtosis of the vocabulary cosines > {census.min_kurtosis:g}, |skew| > {census.min_skew:g}",
    )
    return figure


def attribution_figure(result: LogitAttribution) -> Figure:
    """Each block's attention and MLP direct contribution to the logit, and each head's."""
    figure = new_figure(12, 2 + 0.22 * len(result.heads))
    parts, heads = figure.subplots(1, 2)
    blocks = range(len(result.mlp))
    parts.barh([b - 0.2 for b in blocks], result.attention, height=0.4, label="attention", color="tab:red")
    parts.barh([b + 0.2 for b in blocks], result.mlp, height=0.4, label="MLP", color="tab:green")
    parts.axvline(0, color="black", linewidth=0.5)
    parts.set_yticks(list(blocks), [str(b) for b in blocks], fontsize="x-small")
    parts.set_ylabel("block")
    parts.set_xlabel("direct contribution to the logit")
    parts.legend(fontsize="small")
    heatmap(
        heads,
        result.heads,
        x_labels=[str(h) for h in range(len(result.heads[0]) if result.heads else 0)],
        y_labels=[str(b) for b in blocks],
        colour="direct contribution",
        cmap="RdBu_r",
        centre=True,
    )
    heads.set_xlabel("head")
    heads.set_ylabel("block")
    target = labels([result.answer], 30)[0] + (f" - {labels([result.contrast], 30)[0]}" if result.contrast else "")
    provenance(
        figure,
        f"direct logit attribution of {target} · {result.model}",
        prompt_caption(result.tokens),
        f"logit {result.logit:.3f} = embedding {result.embedding:.3f} + attention {sum(result.attention):.3f}"
        f" + MLP {sum(result.mlp):.3f} + bias {result.bias:.3f}",
    )
    return figure
