"""Block Influence against the formula by hand; pruning against the engine's drop; save and reload."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from layerscope.analyses.compare import greedy_continuation, intervened_logits
from layerscope.analyses.influence import block_influence, influence, perplexity, pruned, save_pruned, text_windows
from layerscope.analyses.residual import capture_residuals
from layerscope.errors import LayerscopeError
from layerscope.interventions import DropBlocks
from tests.studies import TINY_TEXT, invoke
from tests.tiny import FAMILIES, random_ids, tiny_model


def hand_bi(lm, windows):
    """Plain forward hooks on each block: input args[0], output[0]; 1 - mean cosine over all tokens."""
    pairs: dict[int, list] = {b: [] for b in range(lm.n_blocks)}
    handles = []
    for b, block in enumerate(lm.adapter.blocks):

        def hook(module, args, kwargs, output, b=b):
            hidden_in = args[0] if args else kwargs["hidden_states"]
            pairs[b].append((hidden_in[0], output[0][0] if isinstance(output, tuple) else output[0]))

        handles.append(block.register_forward_hook(hook, with_kwargs=True))
    with torch.no_grad():
        for ids in windows:
            lm.model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    result = []
    for b in range(lm.n_blocks):
        cosines = [float(x @ y / (x.norm() * y.norm())) for x_in, x_out in pairs[b] for x, y in zip(x_in, x_out)]
        result.append(1 - sum(cosines) / len(cosines))
    return result


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bi_equals_the_formula_by_hand(family):
    lm = tiny_model(family)
    windows = text_windows(lm, TINY_TEXT + " " + TINY_TEXT, window=7)
    assert [w.shape[1] for w in windows] == [7, 7, 7, 7, 6]
    assert block_influence(lm, windows) == pytest.approx(hand_bi(lm, windows), abs=1e-5)


def test_last_block_uses_the_pre_norm_output():
    lm = tiny_model("llama")
    with torch.no_grad():
        lm.adapter.final_norm.weight.uniform_(0.1, 3.0, generator=torch.Generator().manual_seed(0))  # so norm turns x
    ids = random_ids(10)
    bi = block_influence(lm, [ids])[-1]
    assert bi == pytest.approx(hand_bi(lm, [ids])[-1], abs=1e-5)
    with torch.no_grad():
        hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    normed_last = 1 - F.cosine_similarity(hidden[-2][0], hidden[-1][0], dim=-1).mean().item()  # the official code's bug
    assert abs(bi - normed_last) > 1e-2


def _layer_index(lm, block: int) -> int:
    """The cache index of a block's attention (Bloom keeps it on the attention, not its output projection)."""
    return next(m.layer_idx for m in lm.adapter.blocks[block].modules() if hasattr(m, "layer_idx"))


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_model_equals_the_engine_drop(family):
    lm = tiny_model(family)
    ids = random_ids(12)
    before = intervened_logits(lm, ids)
    dropped = intervened_logits(lm, ids, [DropBlocks((1, 2))])
    expected_text = greedy_continuation(lm, ids, 5, [DropBlocks((1, 2))]).token_ids
    with pruned(lm, [2, 1]):
        assert len(lm.adapter.blocks) == 2 and lm.model.config.num_hidden_layers == 2
        assert [_layer_index(lm, b) for b in range(2)] == [0, 1]
        torch.testing.assert_close(intervened_logits(lm, ids), dropped, rtol=0, atol=1e-5)
        # generation with a KV cache runs on the shorter model and matches the engine's drop
        with torch.no_grad():
            out = lm.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=1
            )
        assert out[0, ids.shape[1] :].tolist() == expected_text
    assert len(lm.adapter.blocks) == 4 and lm.model.config.num_hidden_layers == 4
    assert [_layer_index(lm, b) for b in range(4)] == [0, 1, 2, 3]
    torch.testing.assert_close(intervened_logits(lm, ids), before, rtol=0, atol=0)


def test_residuals_captured_inside_pruned_follow_the_shorter_model():
    """`n_blocks` is counted from the live block list: read before pruning, it must not stay at 4."""
    lm = tiny_model("llama")
    ids = random_ids(10)
    assert lm.n_blocks == 4
    with pruned(lm, [1]):
        captured = capture_residuals(lm.adapter, ids)
        with torch.no_grad():
            hidden = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    assert captured.states.shape[0] == 4  # emb + 3 kept blocks
    for row in range(3):  # HF's last entry is after the final norm
        torch.testing.assert_close(captured.states[row], hidden[row], rtol=0, atol=1e-6)
    assert lm.n_blocks == 4


def test_saved_pruned_model_loads_in_plain_transformers(tmp_path):
    lm = tiny_model("gemma2")  # gemma2 also carries per-layer types in its config
    ids = random_ids(12)
    expected = intervened_logits(lm, ids, [DropBlocks((0, 3))])
    save_pruned(lm, [0, 3], tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.num_hidden_layers == 2
    assert loaded.config.layer_types == [lm.model.config.layer_types[1], lm.model.config.layer_types[2]]
    assert any(p.suffix == ".safetensors" for p in tmp_path.iterdir())
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits[0], expected, rtol=0, atol=1e-5)


def test_prune_report_and_perplexity_by_hand():
    lm = tiny_model("qwen2")
    report = influence(lm, TINY_TEXT, window=8, n_prune=1, eval_text=TINY_TEXT + " red blue", seed=3)
    assert report.prune.removed == [report.ranking[0]]
    assert report.prune.random_removed == sorted(random.Random(3).sample(range(4), 1))
    assert report.prune.last_removed == [3]
    held = text_windows(lm, TINY_TEXT + " red blue", 8)
    nll, count = 0.0, 0
    for ids in held:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
        log_probs = torch.log_softmax(logits.double(), -1)
        nll -= sum(log_probs[t, ids[0, t + 1]].item() for t in range(ids.shape[1] - 1))
        count += ids.shape[1] - 1
    assert report.prune.perplexity["baseline"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    with pruned(lm, [3]):
        assert report.prune.perplexity["last"] == pytest.approx(perplexity(lm, held), rel=1e-6)
    data = report.to_dict()
    assert [b["block"] for b in data["blocks"]] == [0, 1, 2, 3] and data["removed"] == report.prune.removed
    assert set(data["perplexity"]) == {"baseline", "block_influence", "random", "last"}


def test_cli_influence_json_and_save(tiny_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text(TINY_TEXT * 3)
    out = tmp_path / "pruned"
    result = invoke(
        "influence",
        "--model",
        str(tiny_dir),
        "--text",
        str(text),
        "--eval-text",
        str(text),
        "--prune",
        "2",
        "--window",
        "16",
        "--format",
        "json",
        "--save",
        str(out),
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["blocks"]) == 4 and set(data["blocks"][0]) == {"block", "bi"}
    assert len(data["removed"]) == 2 and data["perplexity"]["baseline"] > 0
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "4"], "--prune must be between 1 and 3"),
        (["--save", "{dir}/x"], "--save needs --prune"),
        (["--text", "{dir}/empty.txt"], "the file is empty"),
        (["--out", "{dir}/no/such/out.json"], "not writable"),
    ],
)
def test_cli_influence_bad_input(tiny_dir, tmp_path, args, message):
    (tmp_path / "empty.txt").write_text("  \n")
    args = [a.format(dir=tmp_path) for a in args]
    result = invoke("influence", "--model", str(tiny_dir), *args)
    assert result.exit_code == 1 and result.stderr.startswith("error: ") and message in result.stderr
    assert result.stdout == "" and not (tmp_path / "x").exists() and not (tmp_path / "no").exists()


def test_prune_limits():
    lm = tiny_model("llama")
    with pytest.raises(LayerscopeError, match="between 1 and 3"):
        influence(lm, TINY_TEXT, n_prune=4, eval_text=TINY_TEXT)
    with pytest.raises(LayerscopeError, match="held-out"):
        influence(lm, TINY_TEXT, n_prune=1)
