"""Causal tracing: batched cells over the corrupted run's KV cache vs the obvious per-cell loop, and attribution
patching (--approx) vs exact patching.

The obvious way: for each (row, position), one forward of the whole corrupted prompt (noise hook on the
embeddings) with the clean state written back by the engine's PatchState. Both grids are checked equal.
Then the rank correlation of attribution patching's grid with the exact one, on the same prompt and on
facts from sample_prompts/capitals.jsonl.

Run: python benchmarks/bench_causal_trace.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed
from layerscope.analyses.causal_trace import (
    answer_token,
    causal_trace,
    noise_corruption,
    rank_correlation,
)
from layerscope.analyses.residual import capture_residuals
from layerscope.analyses.spans import token_span
from layerscope.interventions import PatchState, intervene
from layerscope.models.loading import load_model

PROMPT, SUBJECT, ANSWER = "The Eiffel Tower is in the city of", "Eiffel Tower", " Paris"
CAPITALS = Path(__file__).resolve().parents[1] / "sample_prompts" / "capitals.jsonl"


def per_cell(lm, ids, corruption, answer_id) -> torch.Tensor:
    states = capture_residuals(lm.adapter, ids).states[:, 0]
    noise_at = list(corruption.noise_positions)

    def add_noise(module, args, output):
        output = output.clone()
        output[:, noise_at] += corruption.noise.to(output.dtype)
        return output

    grid = torch.zeros(states.shape[0], states.shape[1])
    handle = lm.adapter.embed.register_forward_hook(add_noise)
    try:
        with torch.inference_mode():
            for row in range(states.shape[0]):
                for position in range(states.shape[1]):
                    with intervene(lm, [PatchState(row, position, states[row, position])], ids.shape[1]):
                        logits = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1]
                    grid[row, position] = torch.softmax(logits.float(), -1)[answer_id]
    finally:
        handle.remove()
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 stays steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("demo", device="cpu")
    ids = lm.encode(PROMPT)
    found = token_span(lm, PROMPT, SUBJECT, "subject")
    span = (found.start, found.stop)
    corruption = noise_corruption(lm, ids, span)
    answer_id = answer_token(lm, ANSWER)
    print(
        f"model {lm.name}, prompt {ids.shape[1]} tokens, {(lm.n_blocks + 1) * ids.shape[1]} cells, "
        f"subject tokens {span[0]}..{span[1] - 1}, threads {torch.get_num_threads()}"
    )
    times: dict[str, list[float]] = {"per-cell": [], "batched": [], "approx": []}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all alike
        slow_time, slow = timed(per_cell, lm, ids, corruption, answer_id)
        fast_time, fast = timed(causal_trace, lm, ids, corruption, answer_id)
        approx_time, approx = timed(causal_trace, lm, ids, corruption, answer_id, "resid", 10, True)
        for name, seconds in zip(times, (slow_time, fast_time, approx_time)):
            times[name].append(seconds)
    torch.testing.assert_close(fast.values("value"), slow, atol=2e-5, rtol=1e-4)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"per-cell loop (PatchState, full corrupted prompt): median {medians['per-cell']:.2f} s")
    print(f"batched cells + corrupted KV cache per position:   median {medians['batched']:.2f} s")
    print(f"attribution patching (--approx, one backward):     median {medians['approx']:.2f} s")
    print(
        f"grids equal (atol 2e-5); batched speed-up {medians['per-cell'] / medians['batched']:.1f}x, "
        f"approx speed-up over batched {medians['batched'] / medians['approx']:.1f}x"
    )
    after = slice(corruption.first, None)  # before the subject both grids are exactly zero: no ranks to compare
    print(
        f"rank correlation approx vs exact (indirect effects, cells from the subject on): "
        f"{rank_correlation(approx.values()[:, after], fast.values()[:, after]):.3f}"
    )
    facts = [json.loads(line) for line in CAPITALS.read_text(encoding="utf-8").splitlines()[:5]]
    for fact in facts:
        fact_ids = lm.encode(fact["prompt"])
        subject = token_span(lm, fact["prompt"], fact["subject"], "subject")
        fact_corruption = noise_corruption(lm, fact_ids, (subject.start, subject.stop))
        fact_answer = answer_token(lm, " " + fact["answer"])
        exact = causal_trace(lm, fact_ids, fact_corruption, fact_answer)
        estimate = causal_trace(lm, fact_ids, fact_corruption, fact_answer, approx=True)
        after = slice(fact_corruption.first, None)
        print(
            f"{fact['prompt']!r} -> {fact['answer']}: p clean {exact.clean['p_answer']:.2f}, corrupted "
            f"{exact.corrupted['p_answer']:.2f}; rank correlation approx vs exact "
            f"{rank_correlation(estimate.values()[:, after], exact.values()[:, after]):.3f}"
        )


if __name__ == "__main__":
    main()
