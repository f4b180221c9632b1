"""A fitted lens (tuned, Jacobian) against the logit lens: KL to the final distribution per row, on held-out text."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerscope.figures.common import new_figure, provenance

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from layerscope.analyses.tuned_lens import LensComparison


def lens_comparison_figure(comparison: LensComparison, model: str = "") -> Figure:
    figure = new_figure(8, 4)
    axes = figure.add_subplot()
    rows = range(len(comparison.layers))
    axes.plot(rows, comparison.logit_lens_kl, marker="o", label="logit lens")
    axes.plot(rows, comparison.lens_kl, marker="s", label=comparison.lens_name)
    axes.set_xticks(rows, comparison.layers, fontsize="x-small")
    axes.set_xlabel("row (emb, blocks)")
    axes.set_ylabel("mean KL(final || lens) (nats)")
    axes.legend(fontsize="small")
    provenance(
        figure,
        f"{comparison.lens_name} vs logit lens" + (f" · {model}" if model else ""),
        f"{comparison.tokens} held-out tokens",
    )
    return figure
