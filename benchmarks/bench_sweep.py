"""Sweep speed: layerscope's cached, batched sweep vs the naive loop, same outputs.

The naive loop is one full hooked forward per intervention through the engine's
`intervene`. Both run an all-blocks drop sweep and an all-pairs swap sweep over
the general prompt set on the demo model (CPU), alternating, several times; the
report is the ratio of median times and the largest |dKL| between the two.

    python benchmarks/bench_sweep.py [--repeats 3] [--prompts N] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from layerscope.analyses.prompt_sets import load_prompt_set
from layerscope.analyses.sweep import sweep
from layerscope.analyses.sweep_reference import naive_sweep
from layerscope.models.loading import load_model

PROMPTS = Path(__file__).resolve().parent.parent / "sample_prompts" / "general.txt"


def timed(rows_of, *args) -> tuple[float, list]:
    start = time.perf_counter()
    rows = list(rows_of(*args))
    return time.perf_counter() - start, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=0, help="use the first N prompts (0: all)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: stable timings on a shared CPU; with more threads the two "
        "paths split reductions differently and KL can differ by ~1e-4 on the most damaging rows)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("demo", device="cpu")
    prompts = load_prompt_set(PROMPTS)
    prompts = prompts[: args.prompts] if args.prompts else prompts
    print(
        f"{lm.name}, {lm.n_blocks} blocks, {len(prompts)} prompts, {torch.get_num_threads()} threads, "
        f"{args.repeats} repeats"
    )
    for kind in ("drop", "swap"):
        fast_times, naive_times, worst = [], [], 0.0
        for _ in range(args.repeats):
            fast_time, fast_rows = timed(sweep, lm, prompts, kind)
            naive_time, naive_rows = timed(naive_sweep, lm, prompts, kind)
            fast_times.append(fast_time)
            naive_times.append(naive_time)
            assert [(r.layer, r.prompt_index) for r in fast_rows] == [(r.layer, r.prompt_index) for r in naive_rows]
            worst = max(worst, max(abs(a.kl - b.kl) for a, b in zip(fast_rows, naive_rows)))
        fast, naive = statistics.median(fast_times), statistics.median(naive_times)
        print(
            f"{kind:>5}: layerscope {fast:7.2f} s   naive {naive:7.2f} s   speed-up x{naive / fast:.2f}   "
            f"max |dKL| {worst:.2e}   ({len(fast_rows)} rows)"
        )
        assert worst < 1e-4, f"{kind}: outputs differ (max |dKL| {worst})"


if __name__ == "__main__":
    main()
