"""Patchscopes grid: batched cells over a shared KV-cached target prefix vs the obvious per-cell loop.

The obvious way: for each (row, position), one forward of the whole target prompt with the state patched
in by the engine's PatchState. Both produce next-token logits for every cell; they are checked equal.

Run: python benchmarks/bench_patchscope.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed
from layerscope.analyses.patchscope import parse_target, patched_rows
from layerscope.analyses.residual import capture_residuals
from layerscope.interventions import PatchState, intervene
from layerscope.models.loading import load_model

PROMPT = "The Eiffel Tower is a landmark in the French capital city of"


def batched(lm, states, target) -> torch.Tensor:
    return torch.stack([row.logits for row in patched_rows(lm, states, target)])


def per_cell(lm, states, target) -> torch.Tensor:
    rows = []
    with torch.inference_mode():
        for row in range(states.shape[0]):
            cells = []
            for position in range(states.shape[1]):
                patch = PatchState(row, target.placeholder, states[row, position])
                with intervene(lm, [patch], seq_len=target.ids.shape[1]):
                    cells.append(lm.model(input_ids=target.ids, use_cache=False, logits_to_keep=1).logits[0, -1])
            rows.append(torch.stack(cells))
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    lm = load_model("demo", device="cpu")
    ids = lm.encode(PROMPT)
    target = parse_target(lm)
    states = capture_residuals(lm.adapter, ids).states[:, 0]
    cells = states.shape[0] * states.shape[1]
    print(
        f"model {lm.name}, prompt {ids.shape[1]} tokens, {cells} cells, target prompt {target.ids.shape[1]} tokens, "
        f"threads {torch.get_num_threads()}"
    )
    fast_times, slow_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        fast_time, fast = timed(batched, lm, states, target)
        slow_time, slow = timed(per_cell, lm, states, target)
        fast_times.append(fast_time)
        slow_times.append(slow_time)
    torch.testing.assert_close(fast, slow, atol=2e-4, rtol=1e-4)
    agree = (fast.argmax(-1) == slow.argmax(-1)).float().mean().item()
    fast_median, slow_median = statistics.median(fast_times), statistics.median(slow_times)
    print(f"per-cell loop (PatchState hook, full target prompt): median {slow_median:.2f} s  {slow_times}")
    print(f"batched rows + shared KV prefix:                     median {fast_median:.2f} s  {fast_times}")
    print(f"outputs equal (atol 2e-4), top-1 agreement {agree:.1%}; speed-up {slow_median / fast_median:.1f}x")


if __name__ == "__main__":
    main()
