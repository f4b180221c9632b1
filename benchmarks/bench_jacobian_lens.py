"""Jacobian lens fit on the demo model: layerscope's `fit_jacobian_lens` against TransformerLens 4.3's
`JacobianLens.fit` (the peer; `pip install transformer-lens==4.3.0`, not a dependency of layerscope) on the same
prompts and tokens, in time and in agreement (max |difference| of the matrices of block outputs 0..L-2, our rows
1..L-1, and their largest relative Frobenius difference). Both in float32 on the CPU, one torch thread each.
Run: python benchmarks/bench_jacobian_lens.py [--prompts N] [--context TOKENS] [--skip-first N] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed
from layerscope.analyses.jacobian_lens import FitSettings, fit_jacobian_lens
from layerscope.locations import sample_file
from layerscope.models.demo import prepare_demo
from layerscope.models.loading import load_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=1)
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--skip-first", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis import JacobianLens

    lm = load_model("demo", device="cpu", dtype="float32")
    bridge = TransformerBridge.boot_transformers(str(prepare_demo()), device="cpu", dtype=torch.float32)
    words = sample_file("calibration.txt").read_text(encoding="utf-8").split()
    prompts = [" ".join(words[start : start + args.context]) for start in range(0, len(words), args.context)]
    prompts = prompts[: args.prompts]
    tl_tokens = [bridge.to_tokens(prompt)[0, : args.context] for prompt in prompts]
    if tl_tokens[0][0] == lm.tokenizer.bos_token_id:
        lm.prepend_bos()  # TransformerLens prepends BOS: encode the prompts as it does
    assert all(torch.equal(lm.encode(p)[0, : args.context], t) for p, t in zip(prompts, tl_tokens)), "other tokens"
    settings = FitSettings(context=args.context, skip_first=args.skip_first)
    ours_s, ours = timed(fit_jacobian_lens, lm, prompts, settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = functools.partial(
            JacobianLens.fit,
            corpus="layerscope calibration.txt",
            max_seq_len=args.context,
            skip_first_positions=args.skip_first,
            show_progress=False,
        )
        theirs_s, theirs = timed(fit, bridge, prompts)
    worst, relative = 0.0, 0.0
    for layer, matrix in theirs.jacobians.items():
        mine = ours.matrices[layer + 1]
        worst = max(worst, (mine - matrix).abs().max().item())
        relative = max(relative, ((mine - matrix).norm() / matrix.norm()).item())
    tokens = sum(len(t) for t in tl_tokens)
    print(
        f"demo model, {len(prompts)} prompts, {tokens} tokens, skip_first {args.skip_first}, {args.threads} thread(s)"
    )
    print(f"{'':>16} {'fit':>9}")
    print(f"{'layerscope':>16} {ours_s:>8.1f}s")
    print(f"{'TransformerLens':>16} {theirs_s:>8.1f}s")
    print(
        f"rows 1..{lm.n_blocks - 1}: max |J_ours - J_TL| {worst:.2e}, max relative Frobenius difference {relative:.2e}"
    )


if __name__ == "__main__":
    main()
