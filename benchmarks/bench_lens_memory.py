"""Peak memory and time of the logit lens grid on long prompts (demo model, CPU).

layerscope decodes a tile of rows x positions at a time (`DECODE_BUDGET` bytes of logits) and keeps only each
cell's top-k, entropy and KL, so memory grows with the residual states, (L+1) x T x hidden. The old way
(`--old-tokens`: still in the code as `lens_logits` + `build_grid`, which `run` uses) held a whole row's T x vocab
logits several times over, and the model's T x vocab output besides. Each measurement runs in a fresh
process (Linux): after loading the model and a short warm-up the peak resident size is reset, and the figure
is the peak during the run minus the resident size before it.

Run: python benchmarks/bench_lens_memory.py [--tokens 2000,8000] [--old-tokens 2000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval_memory import reset_peak, status_mib

TOKENS = (2000, 8000)
TEXT = Path(__file__).resolve().parents[1] / "sample_prompts" / "calibration.txt"


def child(tokens: int, way: str) -> dict:
    import torch

    from layerscope.analyses.grid import build_grid
    from layerscope.analyses.lens import lens_logits, logit_lens
    from layerscope.analyses.residual import layer_labels
    from layerscope.models.loading import load_model

    lm = load_model("demo", device="cpu")
    text = TEXT.read_text(encoding="utf-8")
    ids = lm.encode(text)
    while ids.shape[1] < tokens:
        ids = torch.cat([ids, ids], dim=1)
    ids = ids[:, :tokens]

    def run(prompt: torch.Tensor):
        if way == "old":
            rows, final = lens_logits(lm, prompt)
            return build_grid(lm, "logit_lens", prompt, rows, final, layer_labels(lm.n_blocks), 5)
        return logit_lens(lm, prompt)

    run(ids[:, :16])
    reset_peak()
    before = status_mib("VmRSS")
    start = time.perf_counter()
    grid = run(ids)
    seconds = time.perf_counter() - start
    return {
        "tokens": ids.shape[1],
        "way": way,
        "growth_mib": status_mib("VmHWM") - before,
        "seconds": seconds,
        "top1_last_row": [cell.top[0].id for cell in grid.cells[-1][-50:]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--old-tokens", default="", help="Lengths to measure the old way at too (GBs at 2000).")
    parser.add_argument("--child", nargs=2, metavar=("TOKENS", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1])))
        return
    lengths = [int(n) for n in args.tokens.split(",")]
    old_lengths = [int(n) for n in args.old_tokens.split(",") if n]
    results = {}
    for way, way_lengths in (("layerscope", lengths), ("old", old_lengths)):
        for length in way_lengths:
            output = subprocess.run(
                [sys.executable, __file__, "--child", str(length), way], capture_output=True, text=True, check=True
            ).stdout
            results[way, length] = json.loads(output.strip().splitlines()[-1])
            result = results[way, length]
            print(
                f"{way:<12} {result['tokens']:>6} tokens  peak growth {result['growth_mib']:>8.1f} MiB  "
                f"{result['seconds']:>7.1f} s",
                flush=True,
            )
    for length in (n for n in old_lengths if ("layerscope", n) in results):
        same = results["layerscope", length]["top1_last_row"] == results["old", length]["top1_last_row"]
        print(f"{length} tokens: same top-1 tokens in the last row, both ways: {same}")
    for length in lengths[1:]:
        small, large = results["layerscope", lengths[0]], results["layerscope", length]
        print(
            f"layerscope: {large['tokens'] / small['tokens']:.1f}x the tokens -> "
            f"{large['growth_mib'] / max(small['growth_mib'], 1e-9):.1f}x the peak growth, "
            f"{large['seconds'] / small['seconds']:.1f}x the time"
        )


if __name__ == "__main__":
    main()
