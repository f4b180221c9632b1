"""Direct logit attribution: `logit_attribution` (every part from one hooked forward pass) vs the obvious way
(one forward pass per component, each with a plain torch hook capturing that component's output at the last
position: the embedding, each block's attention and MLP output, and each head's slice of the output
projection's input), as hand-written TransformerLens-style code does it.

Both use the same readout direction and the final norm's scale frozen from the clean run, and are checked equal.

Run: python benchmarks/bench_attribution.py [--prompt TEXT] [--repeats 3] [--threads 1]
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
from layerscope.analyses.attribution import attention_projection, logit_attribution
from layerscope.analyses.readout import norm_form, readout_matrix
from layerscope.models.loading import load_model


def captured_at_last(lm, ids: torch.Tensor, module: torch.nn.Module, read_input: bool = False) -> torch.Tensor:
    """One forward pass with one plain hook: the module's output (or input) at the last position, float32."""
    seen = []

    def hook(module, args, kwargs, output):
        value = (
            (args[0] if args else kwargs["hidden_states"])
            if read_input
            else output[0]
            if isinstance(output, tuple)
            else output
        )
        seen.append(value[0, -1].float().clone())

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        handle.remove()
    return seen[0]


@torch.inference_mode()
def per_component(lm, ids: torch.Tensor, answer: int) -> list[float]:
    """[embedding, then per block: attention, MLP, each head], one forward pass per component."""
    adapter = lm.adapter
    form = norm_form(adapter)
    direction = readout_matrix(adapter, form)[answer]
    last = captured_at_last(lm, ids, adapter.blocks[-1])
    scale = float(form.scale(adapter.final_norm, last)[0])
    head_dim = adapter.config.hidden_size // adapter.n_heads

    def contribution(vector: torch.Tensor) -> float:
        return float(adapter.logit_scale * (direction @ vector) / scale)

    parts = [contribution(captured_at_last(lm, ids, adapter.blocks[0], read_input=True))]
    for block in range(adapter.n_blocks):
        parts.append(contribution(captured_at_last(lm, ids, adapter.attention(block))))
        parts.append(contribution(captured_at_last(lm, ids, adapter.mlp(block))))
        projection = attention_projection(adapter, block)
        for head in range(adapter.n_heads):
            heads_in = captured_at_last(lm, ids, projection, read_input=True)
            columns = slice(head * head_dim, (head + 1) * head_dim)
            parts.append(contribution(projection.weight[:, columns].float() @ heads_in[columns]))
    return parts


def engine_parts(lm, ids: torch.Tensor, answer: int) -> list[float]:
    result = logit_attribution(lm, ids, answer)
    parts = [result.embedding]
    for block in range(lm.n_blocks):
        parts += [result.attention[block], result.mlp[block], *result.heads[block]]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", default="The Eiffel Tower is in the city of")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch's CPU threads.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("demo", device="cpu")
    ids = lm.encode(args.prompt)
    answer = logit_attribution(lm, ids).answer_id  # warm-up; the model's own next token
    components = 1 + lm.n_blocks * (2 + lm.adapter.n_heads)
    print(
        f"model {lm.name}, {ids.shape[1]} tokens, {components} components, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    ours_times, naive_times = [], []
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit both alike
        seconds, ours = timed(engine_parts, lm, ids, answer)
        ours_times.append(seconds)
        seconds, naive = timed(per_component, lm, ids, answer)
        naive_times.append(seconds)
    difference = max(abs(a - b) for a, b in zip(ours, naive))
    report(
        f"direct logit attribution of {lm.token_texts([answer])[0]!r} (median of {args.repeats}; largest "
        f"difference {difference:.1e} in logits)",
        {
            "one hooked forward per component": statistics.median(naive_times),
            "layerscope logit_attribution": statistics.median(ours_times),
        },
        "one hooked forward per component",
    )
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
