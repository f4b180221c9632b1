"""Tuned lens training on the demo model with the defaults of `layerscope tunedlens train` (model load not
counted), with one and with two torch threads, and what it buys: mean held-out KL(final || lens) per row,
logit lens vs tuned lens. No peer: the tuned-lens project's trainer is not a dependency here.
Run: python benchmarks/bench_tuned_lens.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import timed
from layerscope.analyses.tuned_lens import compare_lenses, train_tuned_lens
from layerscope.locations import sample_file
from layerscope.models.loading import load_model


def main() -> None:
    lm = load_model("demo", device="cpu")
    calibration = sample_file("calibration.txt").read_text(encoding="utf-8")
    heldout = sample_file("heldout.txt").read_text(encoding="utf-8")
    print(f"{'threads':>7} {'train':>9} {'rows where tuned < logit':>26} {'mean KL logit':>14} {'mean KL tuned':>14}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as folder:
            seconds, lens = timed(train_tuned_lens, lm, calibration, folder)
        comparison = compare_lenses(lm, lens, heldout)
        pairs = list(zip(comparison.logit_lens_kl[:-1], comparison.lens_kl[:-1]))  # last row: both 0
        better = sum(tuned < logit for logit, tuned in pairs)
        print(
            f"{threads:>7} {seconds:>8.1f}s {f'{better}/{len(pairs)}':>26} "
            f"{sum(p[0] for p in pairs) / len(pairs):>14.2f} {sum(p[1] for p in pairs) / len(pairs):>14.2f}"
        )


if __name__ == "__main__":
    main()
