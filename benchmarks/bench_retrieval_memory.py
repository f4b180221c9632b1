"""Peak memory of retrieval-head scoring at two context lengths 4x apart: it must grow linearly.

layerscope prefills on the model's fast attention path and then reads one attention row per head per
decoding step. The naive way asks the model for every attention weight (eager attention with
output_attentions=True over the whole prompt), which holds T x T per head and layer. Each measurement runs
in a fresh process (Linux): after loading the model and a short warm-up the peak resident size is reset
(/proc/self/clear_refs), and the figure is the peak during the run minus the resident size before it.

Run: python benchmarks/bench_retrieval_memory.py [--tokens 512,2048] [--steps 10]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys

TOKENS = (512, 2048)
"""Whole prompt lengths (chat frame, question and needle included): the haystack is cut to fit."""


def status_mib(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident since the last reset) of this process, Linux."""
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} is not in /proc/self/status")


def reset_peak() -> None:
    """Give freed heap back to the OS first (glibc), so a run cannot hide inside memory freed earlier."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as file:
        file.write("5")  # resets VmHWM to the current resident size


def child(tokens: int, way: str, steps: int) -> dict:
    import itertools

    import torch

    from layerscope.analyses.decoding import greedy_steps
    from layerscope.analyses.needles import build_tests, load_haystack, load_needles
    from layerscope.analyses.retrieval import copy_paste
    from layerscope.models.loading import load_model

    lm = load_model("demo", device="cpu")
    haystack, needle = load_haystack(), load_needles()[3]
    frame = build_tests(lm, haystack, [needle], [1], [50])[0].ids.shape[1] - 1
    test = build_tests(lm, haystack, [needle], [tokens - frame], [50])[0]
    warmup = build_tests(lm, haystack, [needle], [64], [50])[0]
    if way == "naive":
        lm.model.set_attn_implementation("eager")

    def run(ids: torch.Tensor) -> int:
        if way == "naive":
            with torch.inference_mode():
                attentions = lm.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
            return len(attentions)
        copies = 0
        for token, attention in itertools.islice(greedy_steps(lm, ids), steps):
            copies += int(copy_paste(attention, token, ids[0], test.span).sum())
        return copies

    run(warmup.ids)
    reset_peak()
    before = status_mib("VmRSS")
    run(test.ids)
    return {"tokens": test.ids.shape[1], "way": way, "growth_mib": status_mib("VmHWM") - before, "baseline_mib": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", nargs=2, metavar=("TOKENS", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1], args.steps)))
        return
    lengths = [int(n) for n in args.tokens.split(",")]
    results = {}
    for way in ("layerscope", "naive"):
        for length in lengths:
            output = subprocess.run(
                [sys.executable, __file__, "--child", str(length), way, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[way, length] = json.loads(output.strip().splitlines()[-1])
    print(f"{'way':<12} {'prompt':>7} {'peak growth':>12}")
    for (way, _), result in results.items():
        print(f"{way:<12} {result['tokens']:>7} {result['growth_mib']:>9.1f} MiB")
    for way in ("layerscope", "naive"):
        small = results[way, lengths[0]]
        for length in lengths[1:]:
            large = results[way, length]
            ratio = large["growth_mib"] / max(small["growth_mib"], 1e-9)
            print(f"{way}: {large['tokens'] / small['tokens']:.1f}x the tokens -> {ratio:.1f}x the peak growth")


if __name__ == "__main__":
    main()
