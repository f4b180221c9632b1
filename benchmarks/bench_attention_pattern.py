"""Attention pattern reading: `attention_pattern` (only the chosen heads' probabilities, through layerscope's
attention function, the model's own sdpa kernel left as it is) vs the obvious way (eager attention with
`output_attentions=True`: every head of every block materialised as (tokens x tokens), one head kept).

Both read the same head on the same prompt in the same process, interleaved, and are checked equal. Besides the
times, the bytes of attention probabilities each way materialises are printed (the naive way: blocks x heads x
tokens^2 float32, returned at once; layerscope: one tokens^2 matrix per head read).

Run: python benchmarks/bench_attention_pattern.py [--tokens 256] [--head 20.3] [--repeats 5] [--threads 1]
(on a CPU shared with other work, --threads 1 keeps torch's threads from waiting on each other)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report, timed
from layerscope.analyses.heads import attention_pattern
from layerscope.locations import sample_file
from layerscope.models.loading import load_model


def eager_pattern(lm, ids: torch.Tensor, block: int, head: int) -> torch.Tensor:
    """The naive way: eager attention, every block's and head's weights returned, one head kept."""
    current = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            attentions = lm.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        lm.model.set_attn_implementation(current)
    return attentions[block][0, head].float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="Prompt length (from the calibration text).")
    parser.add_argument("--head", default="20.3", help="block.head read.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch's CPU threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("demo", device="cpu")
    block, head = (int(part) for part in args.head.split("."))
    ids = lm.encode(sample_file("calibration.txt").read_text())[:, : args.tokens]
    tokens = ids.shape[1]
    print(
        f"model {lm.name}, head {block}.{head}, {tokens} tokens, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ours_times, eager_times = [], []
    eager_pattern(lm, ids, block, head)  # warm-up, both ways
    attention_pattern(lm, ids, [(block, head)])
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        seconds, ours = timed(attention_pattern, lm, ids, [(block, head)])
        ours_times.append(seconds)
        seconds, eager = timed(eager_pattern, lm, ids, block, head)
        eager_times.append(seconds)
    difference = float((torch.tensor(ours.weights[block, head]) - eager).abs().max())
    report(
        f"one head's pattern over {tokens} tokens (median of {args.repeats}; largest difference {difference:.1e})",
        {
            "eager output_attentions": statistics.median(eager_times),
            "layerscope attention_pattern": statistics.median(ours_times),
        },
        "eager output_attentions",
    )
    per_head = tokens * tokens * 4
    print(
        f"attention probabilities materialised: eager {lm.n_blocks * lm.adapter.n_heads * per_head / 2**20:.1f} MiB "
        f"(all {lm.n_blocks} x {lm.adapter.n_heads} heads), layerscope {per_head / 2**20:.2f} MiB (the one head); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
