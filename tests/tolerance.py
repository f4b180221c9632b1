"""Tolerances for two fp32 computations of one quantity that differ only in the order of their sums: another
batch shape or padding (other kernel tilings), another thread count, a hook instead of a module.

Derived from the arithmetic, not from one machine. A dot product over `width` terms summed in another order
differs by about sqrt(width) * eps relative to the magnitude of its terms (rounding errors of a long sum
behave like a random walk; the worst case is width * eps). Through `depth` residual blocks these differences
add up, at most linearly. So a value of magnitude M after `depth` blocks of inner width `width` may differ by

    delta = depth * sqrt(width) * eps * M.

Quantities computed from logits inherit it through their derivatives (z: logits, delta their difference):
- a probability: |dp_i| = p_i |dz_i - sum_j p_j dz_j| <= 2 delta p_i <= delta / 2 ... bounded by delta;
- entropy: dH/dz_k = -p_k (log p_k + H), so sum_k |dH/dz_k| <= 2 log V nats (V the vocabulary), in bits / ln 2;
- KL(P || Q) with both sides perturbed: at most 2 delta (Q's side) plus 2 delta max|log p/q| (P's side), which
  `kl_atol` bounds by 2 log V as for the entropy.
"""

from __future__ import annotations

import math

import torch

EPS = torch.finfo(torch.float32).eps


def reordered(magnitude: float, depth: int, width: int) -> float:
    """The bound `delta` above for a value of size `magnitude` after `depth` blocks of inner width `width`."""
    return max(depth, 1) * math.sqrt(width) * EPS * magnitude


def model_delta(lm, magnitude: float) -> float:
    """`reordered` for a loaded model's last block: its depth and its widest inner sum (MLP or hidden)."""
    config = lm.model.config.get_text_config()
    width = max(config.hidden_size, getattr(config, "intermediate_size", None) or 4 * config.hidden_size)
    return reordered(magnitude, lm.n_blocks, width)


def probability_atol(delta: float) -> float:
    return delta


def entropy_bits_atol(delta: float, vocab: int) -> float:
    return 2 * math.log(vocab) * delta / math.log(2)


def kl_atol(delta: float, vocab: int) -> float:
    return 2 * delta + 2 * math.log(vocab) * delta
