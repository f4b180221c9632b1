"""The same analyses on the GPU and on the CPU agree, on the tiny random models of several families (fp32).

For each family: every lens row's logits, the logits under each intervention kind (head masks where the family
routes attention), the Patchscopes grid's logits and the causal trace grid, compared as the largest difference
over the bound for fp32 sums in another order (tests/tolerance.py: the GPU's kernels sum in other orders).
Prints one line per family and check; exits 1 if any check is over its bound.

    python benchmarks/check_gpu_cpu.py            # needs CUDA
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from layerscope.analyses.causal_trace import causal_trace, noise_corruption
from layerscope.analyses.lens import lens_logits
from layerscope.analyses.patchscope import parse_target, patched_rows
from layerscope.analyses.residual import capture_residuals
from layerscope.interventions import DropBlocks, FreezeFrom, MaskHeads, RandomizeAt, SkipAttention, SwapBlocks
from layerscope.interventions.attention import routes_attention
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel
from tests.tiny import random_ids, tiny_model
from tests.tolerance import model_delta

FAMILIES = ("llama", "qwen2", "gemma2", "gpt2", "gpt_neox", "falcon", "phi", "mixtral", "opt", "bloom")


def on(lm: LoadedModel, device: str) -> LoadedModel:
    model = lm.model.to(device)
    return LoadedModel(lm.name, model, lm.tokenizer, ModelAdapter(model))


def results(lm: LoadedModel) -> dict[str, torch.Tensor]:
    ids = random_ids(12).to(lm.adapter.input_device)
    rows, final = lens_logits(lm, ids)
    out = {"lens rows": torch.cat([r.float().cpu() for r in rows]), "final": final.float().cpu()}
    kinds = [DropBlocks((1,)), SwapBlocks(1), FreezeFrom(2), RandomizeAt(2, seed=3), SkipAttention((2, 3))]
    if routes_attention(lm.model):
        kinds += [MaskHeads(((1, 0), (2, 1)), "zero"), MaskHeads(((0, 1),), "uniform")]
    for kind in kinds:
        out[kind.kind + (f" {kind.mode}" if isinstance(kind, MaskHeads) else "")] = (
            lens_logits(lm, ids, [kind])[1].float().cpu()
        )
    states = capture_residuals(lm.adapter, ids[:, :4]).states[:, 0]
    target = parse_target(lm, "the cat sat on mat the dog")
    out["patchscope"] = torch.stack([row.logits.float().cpu() for row in patched_rows(lm, states, target)])
    corruption = noise_corruption(lm, ids, (2, 4), seed=0)
    trace = causal_trace(lm, ids, corruption, int(final[-1].argmax()), window=2)
    out["causal trace"] = torch.tensor([[cell.value for cell in row] for row in trace.cells])
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("CUDA is not available")
        return 2
    worst = 0.0
    for family in FAMILIES:
        cpu = results(tiny_model(family))
        gpu = results(on(tiny_model(family), "cuda"))
        for name, expected in cpu.items():
            bound = model_delta(tiny_model(family), max(1.0, float(expected.abs().max())))
            diff = float((gpu[name] - expected).abs().max())
            worst = max(worst, diff / bound)
            print(
                f"{family:10s} {name:16s} max |gpu - cpu| {diff:.2e}  bound {bound:.2e}  "
                f"{'ok' if diff <= bound else 'OVER'}"
            )
    print(f"worst ratio to bound: {worst:.3f}")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
