"""Neuron census: one matrix product per tile of neurons vs the obvious Python loop over neurons.

The obvious way: for each neuron, its cosines with the vocabulary (one matrix-vector product) and their moments
with torch, one neuron at a time. Both use the same readout directions (final norm folded in, centred, unit rows)
and are checked equal. The loop is slow enough that it runs on a few blocks only (`--blocks`); the whole model's
census is timed too.

Run: python benchmarks/bench_neurons.py [--blocks 29] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed
from layerscope.analyses.neurons import neuron_census, output_weights
from layerscope.analyses.readout import norm_form, readout_matrix
from layerscope.models.loading import load_model


def per_neuron(lm, blocks: list[int]) -> torch.Tensor:
    """(neurons, 4): mean, variance, skew, kurtosis, one neuron at a time."""
    directions = readout_matrix(lm.adapter, norm_form(lm.adapter))
    directions = torch.nn.functional.normalize(directions - directions.mean(dim=0), dim=-1)
    rows = []
    with torch.inference_mode():
        for block in blocks:
            weights = output_weights(lm.adapter, block).float()
            for neuron in range(len(weights)):
                w = torch.nn.functional.normalize(weights[neuron], dim=0)
                cosines = directions @ w
                z = cosines - cosines.mean()
                variance = z.pow(2).mean()
                z = z / variance.sqrt()
                rows.append(torch.stack([cosines.mean(), variance, z.pow(3).mean(), z.pow(4).mean()]))
    return torch.stack(rows)


def census(lm, blocks: list[int] | None) -> torch.Tensor:
    result = neuron_census(lm, blocks=blocks)
    return torch.tensor([moments for b in result.blocks for moments in zip(b.mean, b.variance, b.skew, b.kurtosis)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="29", help="Blocks the loop and the census are compared on, e.g. 28,29.")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    lm = load_model("demo", device="cpu")
    blocks = [int(block) for block in args.blocks.split(",")]
    neurons = sum(len(output_weights(lm.adapter, block)) for block in blocks)
    print(
        f"model {lm.name}, blocks {blocks}: {neurons} neurons x {lm.adapter.unembed.weight.shape[0]} tokens, "
        f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}"
    )
    fast_times, slow_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        fast_time, fast = timed(census, lm, blocks)
        slow_time, slow = timed(per_neuron, lm, blocks)
        fast_times.append(fast_time)
        slow_times.append(slow_time)
    difference = float(((fast - slow).abs() / (1e-6 + slow.abs())).max())
    fast, slow = statistics.median(fast_times), statistics.median(slow_times)
    print(f"census (tiles of neurons)  {fast:8.2f} s")
    print(
        f"loop over neurons          {slow:8.2f} s   ratio {slow / fast:.1f}x; largest relative difference "
        f"{difference:.1e}"
    )
    whole, _ = timed(census, lm, None)
    print(f"whole model census ({lm.n_blocks} blocks) {whole:8.2f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
