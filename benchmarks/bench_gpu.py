"""GPU figures on a model with Llama-3-8B's shape: layerscope vs the naive way vs nnsight, with achieved TFLOP/s.

The model is built from a config and randomly initialised (no download), in bf16 on CUDA. Three workloads:
- the logit lens grid of one 512-token prompt (top-5, entropy, KL to final for every row and position);
- a drop sweep over all 32 blocks on 64 prompts (KL, top-1 agreement, entropy and loss change per cell);
- the Patchscopes grid of a short prompt (every row x position patched into the identity target prompt).
Each is timed for layerscope, the naive way (output_hidden_states / one full hooked forward per intervention /
one forward per cell) and nnsight (skipped with a note where it is not installed: pip install -e '.[bench]').
The ways are checked to agree (top-1 agreement printed; bf16 on a random model leaves near-ties).

Achieved TFLOP/s counts the matmul work each way really does (2 x weights x tokens per block, attention
scores and mixing, the unembedding of every decoded position) over its median time, as a share of the
GPU's dense bf16 peak (known GPUs below, or --peak-tflops).

    python benchmarks/bench_gpu.py                          # CUDA, Llama-3-8B shape
    python benchmarks/bench_gpu.py --device cpu --tiny      # smoke run of every path on a tiny shape
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

sys.path.insert(0, str(Path(__file__).parent))
from bench_lens import naive, with_nnsight
from bench_patchscope import per_cell
from common import median_seconds
from layerscope.analyses.compare import compare_logits
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.patchscope import parse_target, patched_rows
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.residual import capture_residuals
from layerscope.analyses.sweep import sweep
from layerscope.analyses.sweep_reference import naive_sweep
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel

LLAMA3_8B = dict(
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
TINY = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    max_position_embeddings=1024,
    tie_word_embeddings=False,
)
PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H200": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
}
"""Dense (no sparsity) bf16 tensor-core peaks from the vendor's data sheets; the longest matching name wins."""


def build_model(shape: dict, device: str) -> LoadedModel:
    """A random model of the given shape, built in place on the device, with a tokenizer of one word per id."""
    torch.manual_seed(0)
    config = LlamaConfig(**shape, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    with torch.device(device):  # built in place in its dtype: no 8B fp32 copy anywhere
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0", eos_token="t1", pad_token="t1")
    return LoadedModel(
        "random Llama-3-8B shape" if shape is LLAMA3_8B else "random tiny Llama", model, tokenizer, ModelAdapter(model)
    )


def random_text(n_tokens: int, vocab: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"t{int(i)}" for i in torch.randint(2, vocab, (n_tokens,), generator=generator))


# ---- FLOP counts: 2 x multiply-adds of the matmuls ----


@dataclass(frozen=True)
class Shape:
    hidden: int
    block_weights: int  # matmul weights per block (attention projections and MLP)
    vocab: int
    blocks: int

    @classmethod
    def of(cls, lm: LoadedModel) -> Shape:
        block = lm.adapter.blocks[0]
        weights = sum(p.numel() for p in block.parameters() if p.dim() == 2)
        config = lm.adapter.config
        return cls(config.hidden_size, weights, config.vocab_size, lm.n_blocks)

    def blocks_flops(self, n_blocks: int, tokens: int, context: int | None = None) -> float:
        """`tokens` new tokens through `n_blocks` blocks, each attending to `context` keys on average."""
        context = tokens / 2 if context is None else context
        return n_blocks * (2 * self.block_weights * tokens + 4 * tokens * context * self.hidden)

    def unembed_flops(self, positions: int) -> float:
        return 2 * self.hidden * self.vocab * positions


def synchronized(function: Callable[[], object]) -> Callable[[], object]:
    def run():
        result = function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return result

    return run


def gpu_seconds(function: Callable[[], object], repeats: int) -> float:
    """Median wall time, the GPU's queue drained after each call."""
    return median_seconds(synchronized(function), repeats)


def peak_tflops(device: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (given)"
    if not device.startswith("cuda"):
        return None, "no GPU peak (CPU run)"
    name = torch.cuda.get_device_name(torch.device(device))
    known = [key for key in PEAK_BF16_TFLOPS if key in name]
    if not known:
        return None, f"{name}: peak unknown, give --peak-tflops"
    key = max(known, key=len)
    return PEAK_BF16_TFLOPS[key], f"{name}, dense bf16 peak {PEAK_BF16_TFLOPS[key]:g} TFLOP/s"


class Table:
    def __init__(self, peak: float | None):
        self.peak = peak
        self.lines = [
            "| workload | way | median s | speed-up vs naive | TFLOP/s | share of peak |",
            "|---|---|---:|---:|---:|---:|",
        ]

    def add(self, workload: str, timings: dict[str, tuple[float, float]]) -> None:
        """timings: way -> (seconds, FLOPs it executes); the first way is the naive one."""
        naive_seconds = next(iter(timings.values()))[0]
        for way, (seconds, flops) in timings.items():
            tflops = flops / seconds / 1e12
            share = f"{tflops / self.peak:.1%}" if self.peak else "-"
            self.lines.append(
                f"| {workload} | {way} | {seconds:.3f} | {naive_seconds / seconds:.2f}x | {tflops:.3g} | {share} |"
            )
        print("\n".join(self.lines[-len(timings) :]), flush=True)


def nnsight_model(lm: LoadedModel):
    try:
        from nnsight import LanguageModel
    except ImportError:
        print("note: nnsight is not installed (pip install -e '.[bench]'); its column is skipped", flush=True)
        return None
    return LanguageModel(lm.model, tokenizer=lm.tokenizer)


def top1_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


# ---- 1. logit lens grid ----


def bench_lens(lm, wrapped, shape: Shape, tokens: int, repeats: int, table: Table) -> None:
    ids = lm.encode(random_text(tokens, shape.vocab, seed=1))
    grid = logit_lens(lm, ids)
    top, _, _ = naive(lm, ids)
    ours = torch.tensor([[cell.top[0].id for cell in row] for row in grid.cells])
    print(f"lens: top-1 agreement layerscope vs naive {(ours == top[..., 0].cpu()).float().mean():.1%}")
    flops = shape.blocks_flops(shape.blocks, tokens) + shape.unembed_flops((shape.blocks + 1) * tokens)
    timings = {
        "naive (hidden_states + log_softmax)": (gpu_seconds(lambda: naive(lm, ids), repeats), flops),
        "layerscope logit_lens": (gpu_seconds(lambda: logit_lens(lm, ids), repeats), flops),
    }
    if wrapped is not None:
        peer_top, _, _ = with_nnsight(wrapped, ids)
        print(f"lens: top-1 agreement nnsight vs naive {(peer_top[..., 0] == top[..., 0]).float().mean():.1%}")
        timings["nnsight trace"] = (gpu_seconds(lambda: with_nnsight(wrapped, ids), repeats), flops)
    table.add(f"logit lens, {tokens} tokens", timings)


# ---- 2. drop sweep ----


def sweep_nnsight(lm: LoadedModel, wrapped, prompts: list[PromptItem]) -> list[float]:
    """KL per (prompt, block): one nnsight trace per intervention, the block's output replaced by its input."""
    kls = []
    for item in prompts:
        ids = lm.encode(item.text)
        with torch.inference_mode():
            base = lm.model(ids, use_cache=False).logits[0]
        for block in range(lm.n_blocks):
            with torch.inference_mode(), wrapped.trace(ids):
                layer = wrapped.model.layers[block]
                layer.output = layer.input
                logits = wrapped.lm_head.output.save()
            kls.append(compare_logits(base, logits[0], ids[0]).kl.double().mean().item())
    return kls


def bench_sweep(lm, wrapped, shape: Shape, n_prompts: int, tokens: int, repeats: int, table: Table) -> None:
    prompts = [PromptItem(random_text(tokens, shape.vocab, seed=100 + i)) for i in range(n_prompts)]
    L = shape.blocks
    ours = [r.kl for r in sweep(lm, prompts, "drop") if r.prompt_index is not None]
    naive_kls = [r.kl for r in naive_sweep(lm, prompts, "drop") if r.prompt_index is not None]
    print(f"sweep: largest |dKL| layerscope vs naive {max(abs(a - b) for a, b in zip(ours, naive_kls)):.2e}")
    unembeds = shape.unembed_flops((L + 1) * tokens)
    full = n_prompts * (shape.blocks_flops(L, tokens) + L * shape.blocks_flops(L - 1, tokens) + unembeds)
    cached = n_prompts * (
        shape.blocks_flops(L, tokens) + sum(shape.blocks_flops(L - 1 - b, tokens) for b in range(L)) + unembeds
    )
    timings = {
        "naive (a hooked forward per cell)": (
            gpu_seconds(lambda: list(naive_sweep(lm, prompts, "drop")), repeats),
            full,
        ),
        "layerscope sweep": (gpu_seconds(lambda: list(sweep(lm, prompts, "drop")), repeats), cached),
    }
    if wrapped is not None:
        peer = sweep_nnsight(lm, wrapped, prompts)
        print(f"sweep: largest |dKL| nnsight vs naive {max(abs(a - b) for a, b in zip(peer, naive_kls)):.2e}")
        timings["nnsight (a trace per cell)"] = (
            gpu_seconds(lambda: sweep_nnsight(lm, wrapped, prompts), repeats),
            full,
        )
    table.add(f"drop sweep, {L} blocks x {n_prompts} prompts of {tokens} tokens", timings)


# ---- 3. Patchscopes grid ----


def patchscope_nnsight(wrapped, states: torch.Tensor, target) -> torch.Tensor:
    """One nnsight trace per cell: row 0 is written at the embedding's output, row r at block r-1's output."""
    rows = []
    for row in range(states.shape[0]):
        cells = []
        for position in range(states.shape[1]):
            with torch.inference_mode(), wrapped.trace(target.ids):
                module = wrapped.model.embed_tokens if row == 0 else wrapped.model.layers[row - 1]
                module.output[0, target.placeholder] = states[row, position]
                cells.append(wrapped.lm_head.output[0, -1].save())
        rows.append(torch.stack(list(cells)))
    return torch.stack(rows)


def patchscope_layerscope(lm: LoadedModel, states: torch.Tensor, target) -> torch.Tensor:
    return torch.stack([row.logits for row in patched_rows(lm, states, target)])


def bench_patchscope(lm, wrapped, shape: Shape, tokens: int, repeats: int, table: Table) -> None:
    ids = lm.encode(random_text(tokens, shape.vocab, seed=2))
    target = parse_target(lm, "t5 t6 t7 t8 t9 t10 t11 t12 t13 t14 t15")
    states = capture_residuals(lm.adapter, ids).states[:, 0]
    cells = states.shape[0] * states.shape[1]
    ours = patchscope_layerscope(lm, states, target)
    reference = per_cell(lm, states, target)
    print(f"patchscope: top-1 agreement layerscope vs naive {top1_agreement(ours, reference):.1%}")
    length, prefix = target.ids.shape[1], target.placeholder
    fed = length - prefix
    cell_flops = shape.blocks_flops(shape.blocks, length) + shape.unembed_flops(1)
    shared = shape.blocks_flops(shape.blocks, prefix) + cells * (
        shape.blocks_flops(shape.blocks, fed, context=prefix + fed / 2) + shape.unembed_flops(1)
    )
    timings = {
        "naive (a forward per cell)": (gpu_seconds(lambda: per_cell(lm, states, target), repeats), cells * cell_flops),
        "layerscope (batched, shared prefix)": (
            gpu_seconds(lambda: patchscope_layerscope(lm, states, target), repeats),
            shared,
        ),
    }
    if wrapped is not None:
        peer = patchscope_nnsight(wrapped, states, target)
        print(f"patchscope: top-1 agreement nnsight vs naive {top1_agreement(peer, reference):.1%}")
        timings["nnsight (a trace per cell)"] = (
            gpu_seconds(lambda: patchscope_nnsight(wrapped, states, target), repeats),
            cells * cell_flops,
        )
    table.add(f"Patchscopes grid, {states.shape[0]} rows x {tokens} tokens", timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and small workloads: a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lens-tokens", type=int, default=512)
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the drop sweep")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="tokens per sweep prompt")
    parser.add_argument("--patch-tokens", type=int, default=16, help="source prompt tokens of the Patchscopes grid")
    parser.add_argument(
        "--only", choices=("lens", "sweep", "patchscope"), action="append", help="run only these workloads (repeatable)"
    )
    parser.add_argument("--no-nnsight", action="store_true", help="skip the nnsight column")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known here")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("CUDA is not available here; use --device cpu --tiny for a smoke run")
    if args.tiny:
        args.lens_tokens, args.prompts, args.prompt_tokens, args.patch_tokens = 32, 3, 16, 4
        args.repeats = min(args.repeats, 2)
    lm = build_model(TINY if args.tiny else LLAMA3_8B, args.device)
    shape = Shape.of(lm)
    peak, peak_text = peak_tflops(args.device, args.peak_tflops)
    print(
        f"{lm.name}: {shape.blocks} blocks, hidden {shape.hidden}, vocab {shape.vocab}, "
        f"{next(lm.model.parameters()).dtype} on {args.device}; {peak_text}; median of {args.repeats}",
        flush=True,
    )
    wrapped = None if args.no_nnsight else nnsight_model(lm)
    table = Table(peak)
    only = set(args.only or ("lens", "sweep", "patchscope"))
    if "lens" in only:
        bench_lens(lm, wrapped, shape, args.lens_tokens, args.repeats, table)
    if "sweep" in only:
        bench_sweep(lm, wrapped, shape, args.prompts, args.prompt_tokens, args.repeats, table)
    if "patchscope" in only:
        bench_patchscope(lm, wrapped, shape, args.patch_tokens, args.repeats, table)
    print("\n" + "\n".join(table.lines))


if __name__ == "__main__":
    main()
