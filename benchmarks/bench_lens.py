"""Logit lens grid (top-5, entropy, KL to final for every row and position) on the demo model:
layerscope vs the naive way (output_hidden_states, full softmax tensors for all rows) vs nnsight.
All three must give the same top-1 tokens and KL (checked). Run: python benchmarks/bench_lens.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import median_seconds, report
from layerscope.analyses.lens import logit_lens
from layerscope.models.loading import load_model

PROMPT = (
    "In the quiet town by the river, the baker opened her shop before dawn and the smell of fresh bread "
    "drifted down the street, waking the children who"
)


def grid_stats(log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log_probs (rows, tokens, vocab) -> top-5 ids, entropy bits, KL(final || row)."""
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1) / math.log(2)
    kl = (probs[-1] * (log_probs[-1] - log_probs)).sum(-1)
    return probs.topk(5, dim=-1).indices, entropy, kl


def naive(lm, ids):
    with torch.inference_mode():
        hidden = lm.model(ids, output_hidden_states=True).hidden_states
        rows = [lm.model.model.norm(h) for h in hidden[:-1]] + [hidden[-1]]  # HF's last state is already normed
        probs = torch.stack([torch.log_softmax(lm.model.lm_head(h)[0].float(), -1) for h in rows])
    return grid_stats(probs)


def with_nnsight(wrapped, ids):
    saved = []
    with torch.inference_mode(), wrapped.trace(ids):
        states = [wrapped.model.layers[0].input] + [layer.output for layer in wrapped.model.layers]
        for i, state in enumerate(states):
            normed = wrapped.model.norm(state) if i < len(states) - 1 else wrapped.model.norm.output
            saved.append(torch.log_softmax(wrapped.lm_head(normed)[0].float(), -1).save())
    return grid_stats(torch.stack([s for s in saved]))


def main() -> None:
    torch.manual_seed(0)
    lm = load_model("demo", device="cpu")
    ids = lm.encode(PROMPT)
    grid = logit_lens(lm, ids)
    top_ids, _, kl = naive(lm, ids)
    assert [[c.top[0].id for c in row] for row in grid.cells] == top_ids[..., 0].tolist()
    assert (
        max(abs(c.kl_to_final - float(kl[r, t])) for r, row in enumerate(grid.cells) for t, c in enumerate(row)) < 1e-3
    )
    rows = {
        "naive: hidden_states + log_softmax": median_seconds(lambda: naive(lm, ids), repeats=7),
        "layerscope logit_lens": median_seconds(lambda: logit_lens(lm, ids), repeats=7),
    }
    try:
        from nnsight import LanguageModel

        wrapped = LanguageModel(lm.model, tokenizer=lm.tokenizer)
        peer_top, _, peer_kl = with_nnsight(wrapped, ids)
        assert torch.equal(peer_top[..., 0], top_ids[..., 0]) and float((peer_kl - kl).abs().max()) < 1e-3
        rows["nnsight trace"] = median_seconds(lambda: with_nnsight(wrapped, ids), repeats=7)
    except ImportError:
        print("nnsight is not installed (pip install -e '.[bench]'); peer column skipped")
    report(
        f"Logit lens grid, demo model, {ids.shape[1]} tokens x 31 rows, CPU",
        rows,
        baseline="naive: hidden_states + log_softmax",
    )


if __name__ == "__main__":
    main()
