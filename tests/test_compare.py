"""Comparison metrics against their formulas by hand."""

import math

import torch

from layerscope.analyses.compare import compare_logits


def test_comparison_formulas():
    generator = torch.Generator().manual_seed(0)
    base, other = torch.randn(5, 11, generator=generator), torch.randn(5, 11, generator=generator)
    other[0] = base[0]
    ids = torch.tensor([3, 1, 4, 1, 5])
    result = compare_logits(base, other, ids)
    p, q = torch.softmax(base.double(), -1), torch.softmax(other.double(), -1)

    def entropy(d: torch.Tensor) -> float:
        return float(-(d * d.log2()).sum())

    for t in range(5):
        kl = float((p[t] * (p[t] / q[t]).log()).sum())
        assert math.isclose(float(result.kl[t]), kl, rel_tol=1e-4, abs_tol=1e-6)
        assert bool(result.top1_agree[t]) == (int(p[t].argmax()) == int(q[t].argmax()))
        assert math.isclose(float(result.entropy_delta[t]), entropy(q[t]) - entropy(p[t]), rel_tol=1e-4, abs_tol=1e-6)
    for t in range(4):
        expected = -math.log(q[t, ids[t + 1]]) + math.log(p[t, ids[t + 1]])
        assert math.isclose(float(result.loss_delta[t]), expected, rel_tol=1e-4)
    assert float(result.kl[0]) < 1e-6 and bool(result.top1_agree[0])
    assert result.loss_delta.shape == (4,)
