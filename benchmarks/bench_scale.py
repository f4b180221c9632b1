"""Peak resident memory of each analysis at Llama-3.2-1B's shape, as a multiple of the weights' bytes.

A randomly initialised model with Llama-3.2-1B's shape (16 blocks, hidden 2048, 32 query heads, 8 KV heads,
MLP 8192, vocabulary 128256, tied embeddings) is built on the CPU; no weights are downloaded. Each
measurement runs in a fresh process with one torch thread: build the model, warm up on a few tokens, give
freed heap back and reset the peak (Linux: /proc/self/clear_refs), run the analysis once, and read the peak
resident size (VmHWM). The figure is that peak, everything in the process included (the weights, Python,
torch), divided by the weights' bytes; the goal is at most 1.5x plus the analysis's own output.

Each analysis is measured the layerscope way and next to a naive way:
- lens: `logit_lens` on one prompt / output_hidden_states and every row's logits at once.
- sweep: `sweep` dropping every block in turn / `naive_sweep` (a full forward and full logits per block).
- patchscope: `patchscope_grid` / a full target-prompt forward per cell, with the source's output_hidden_states
  (one grid row of cells: the peak is a cell's, the time would be the grid's).
- trace: `causal_trace` with noise on the last two tokens of a long prompt, so that every cell restores a state
  on top of the longest KV cache (all positions of a long prompt would take hours here) / the clean run's
  output_hidden_states and a full forward without cache for one restored cell.
- trace-start: `causal_trace` with noise on tokens 1-2, stopped (through its progress callback) after the first
  batched forward of cells, which feeds the whole prompt after the restored state, in pieces, for as many cells
  as their caches' budget allows: the early positions' memory peak (the whole grid would take hours here).
- retrieval: `run_test` (chunked prefill, one attention row per head per step) / eager attention with
  output_attentions over the whole prompt, which holds tokens^2 per head and layer (at --naive-retrieval-tokens:
  at 4096 tokens that is 16 GiB in bf16, more than the machine this ran on).

Run: python benchmarks/bench_scale.py [--dtype bfloat16] [--lens-tokens 512] [--long-tokens 4096] ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_retrieval_memory import reset_peak, status_mib

LLAMA_3_2_1B = dict(
    num_hidden_layers=16,
    hidden_size=2048,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    intermediate_size=8192,
    vocab_size=128256,
    tie_word_embeddings=True,
    max_position_embeddings=131072,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
ANALYSES = ("lens", "sweep", "patchscope", "trace", "trace-start", "retrieval")


def build(dtype_name: str):
    """The random model with the demo model's tokenizer (its ids are all inside the larger vocabulary)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from layerscope.models.adapter import ModelAdapter
    from layerscope.models.demo import demo_dir, prepare_demo
    from layerscope.models.loading import LoadedModel

    prepare_demo(lambda *_: None)
    config = LlamaConfig(**LLAMA_3_2_1B)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):  # built without memory, then given it once in the chosen dtype
        model = LlamaForCausalLM(config)
    model = model.to(getattr(torch, dtype_name)).to_empty(device="cpu").eval()
    model.tie_weights()  # Llama-3.2-1B's unembedding is its embedding
    # Gaussian noise of the usual scale, drawn once and tiled over every weight (drawing 1.2B numbers would cost
    # each measurement tens of seconds of a shared CPU; the period is prime, so no two rows are alike).
    noise = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)) * config.initializer_range
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.fill_(1.0)
            else:
                flat = parameter.view(-1)
                for start in range(0, flat.numel(), noise.numel()):
                    piece = flat[start : start + noise.numel()]
                    piece.copy_(noise[: piece.numel()])
    model.model.rotary_emb = LlamaRotaryEmbedding(config)  # its inverse frequencies: a buffer, not a weight
    tokenizer = AutoTokenizer.from_pretrained(str(demo_dir()))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
    return LoadedModel("random Llama-3.2-1B shape", model, tokenizer, ModelAdapter(model)), weights


def prompt_ids(lm, tokens: int):
    import torch

    generator = torch.Generator().manual_seed(1)
    return torch.randint(100, len(lm.tokenizer), (1, tokens), generator=generator)


def naive_lens(lm, ids) -> int:
    import torch

    with torch.inference_mode():
        states = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False, logits_to_keep=1).hidden_states
        logits = torch.stack([lm.adapter.decode(state) for state in states])
        return int(logits.float().log_softmax(-1).topk(5, dim=-1).indices.sum())


def _writer(position: int, vector):
    """A block-input edit that writes `vector` at `position`."""

    def write(hidden):
        hidden = hidden.clone()
        hidden[:, position] = vector
        return hidden

    return write


def run_analysis(lm, analysis: str, way: str, args: argparse.Namespace) -> object:
    """One analysis, the layerscope way or the naive way; returns something small that depends on its result."""
    import torch

    from layerscope.models.hooks import hook_input

    if analysis == "lens":
        ids = prompt_ids(lm, args.lens_tokens)
        if way == "naive":
            return naive_lens(lm, ids)
        from layerscope.analyses.lens import logit_lens

        return logit_lens(lm, ids).cells[-1][-1].top[0].id
    if analysis == "sweep":
        from layerscope.analyses.prompt_sets import PromptItem
        from layerscope.analyses.sweep import sweep
        from layerscope.analyses.sweep_reference import naive_sweep

        texts = [lm.tokenizer.decode(prompt_ids(lm, args.sweep_tokens)[0]) for _ in range(args.sweep_prompts)]
        prompts = [PromptItem(text) for text in texts]
        rows = list(naive_sweep(lm, prompts, "drop") if way == "naive" else sweep(lm, prompts, "drop"))
        return len(rows)
    if analysis == "patchscope":
        from layerscope.analyses.patchscope import parse_target, patchscope_grid

        ids = prompt_ids(lm, args.patchscope_tokens)
        if way == "layerscope":
            return patchscope_grid(lm, ids).cells[-1][-1].top[0].id
        target = parse_target(lm)
        row = lm.n_blocks // 2
        with torch.inference_mode():
            states = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            tops = []
            for position in range(ids.shape[1]):
                with ExitStack() as stack:
                    hook_input(stack, lm.adapter.blocks[row], _writer(target.placeholder, states[row][0, position]))
                    tops.append(int(lm.model(input_ids=target.ids, use_cache=False).logits[0, -1].argmax()))
            return sum(tops)
    if analysis == "trace":
        from layerscope.analyses.causal_trace import causal_trace, noise_corruption

        ids = prompt_ids(lm, args.long_tokens)
        tokens = ids.shape[1]
        corruption = noise_corruption(lm, ids, (tokens - 2, tokens))
        if way == "layerscope":
            return causal_trace(lm, ids, corruption, answer_id=100).clean["p_answer"]
        from layerscope.analyses.causal_trace import capture_sites

        with torch.inference_mode():
            clean = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            capture_sites(lm, ids, "resid", corruption)  # the corrupted run
            with ExitStack() as stack:  # one cell: row 8 restored at the second-to-last position
                hook_input(stack, lm.adapter.blocks[8], _writer(tokens - 2, clean[8][0, tokens - 2]))
                return float(lm.model(input_ids=ids, use_cache=False).logits[0, -1, 100])
    if analysis == "trace-start":  # noise on tokens 1-2: the first positions feed the longest suffixes
        from layerscope.analyses.causal_trace import causal_trace, noise_corruption

        ids = prompt_ids(lm, args.long_tokens)

        def stop_after_first_forward(done: int, total: int, description: str) -> None:
            if done:
                raise StopIteration(f"stopped after {done} of {total} cells")

        try:
            causal_trace(lm, ids, noise_corruption(lm, ids, (1, 3)), answer_id=100, progress=stop_after_first_forward)
        except StopIteration as stopped:
            return str(stopped)
    if analysis == "retrieval":
        from layerscope.analyses.needles import build_tests, load_haystack, load_needles
        from layerscope.analyses.retrieval import run_test

        tokens = args.naive_retrieval_tokens if way == "naive" else args.long_tokens
        haystack, needle = load_haystack() * 4, load_needles()[3]
        frame = build_tests(lm, haystack, [needle], [1], [50])[0].ids.shape[1] - 1
        test = build_tests(lm, haystack, [needle], [tokens - frame], [50])[0]
        if way == "layerscope":
            return run_test(lm, test, max_new_tokens=args.steps).span_tokens
        lm.model.set_attn_implementation("eager")
        with torch.inference_mode():
            attentions = lm.model(
                input_ids=test.ids, output_attentions=True, use_cache=False, logits_to_keep=1
            ).attentions
        return len(attentions)
    raise ValueError(analysis)


def child(analysis: str, way: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    lm, weights = build(args.dtype)
    with torch.inference_mode():
        lm.model(input_ids=prompt_ids(lm, 8))
    reset_peak()
    before = status_mib("VmRSS")
    start = time.perf_counter()
    check = run_analysis(lm, analysis, way, args)
    seconds = time.perf_counter() - start
    peak = status_mib("VmHWM")
    return {
        "analysis": analysis,
        "way": way,
        "weights_mib": weights / 2**20,
        "before_mib": before,
        "peak_mib": peak,
        "seconds": seconds,
        "check": str(check),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    parser.add_argument("--analyses", default=",".join(ANALYSES))
    parser.add_argument("--ways", default="layerscope,naive")
    parser.add_argument("--lens-tokens", type=int, default=512)
    parser.add_argument("--sweep-tokens", type=int, default=64, help="Tokens per sweep prompt.")
    parser.add_argument("--sweep-prompts", type=int, default=2)
    parser.add_argument("--patchscope-tokens", type=int, default=16)
    parser.add_argument("--long-tokens", type=int, default=4096, help="Prompt of the causal trace and retrieval.")
    parser.add_argument("--naive-retrieval-tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4, help="Greedy steps of the retrieval test.")
    parser.add_argument("--child", nargs=2, metavar=("ANALYSIS", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args)))
        return
    forwarded = sys.argv[1:]
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    print(f"{'analysis':<11} {'way':<11} {'peak MiB':>9} {'x weights':>9} {'growth MiB':>10} {'seconds':>8}")
    for analysis in args.analyses.split(","):
        for way in args.ways.split(",") if analysis != "trace-start" else ["layerscope"]:
            done = subprocess.run(
                [sys.executable, __file__, *forwarded, "--child", analysis, way], capture_output=True, text=True
            )
            if done.returncode != 0:
                print(f"{analysis:<11} {way:<11} failed: {done.stderr.strip().splitlines()[-1:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            growth = result["peak_mib"] - result["before_mib"]
            print(
                f"{analysis:<11} {way:<11} {result['peak_mib']:>9.0f} "
                f"{result['peak_mib'] / result['weights_mib']:>9.2f} {growth:>10.0f} {result['seconds']:>8.1f}",
                flush=True,
            )
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
