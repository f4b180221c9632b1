"""Causal tracing: every batched, prefix-cached cell equals a hand-written restoration loop with plain hooks."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from layerscope.analyses.causal_trace import (
    causal_trace,
    noise_corruption,
    rank_correlation,
    swap_corruption,
    trace_prompt,
    window_blocks,
)
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from tests.tiny import random_ids, tiny_model

ANSWER = 7


def _replace(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def site_modules(lm, site):
    layers = lm.adapter.blocks
    if site == "resid":
        return list(layers)
    return [getattr(block, "self_attn" if site == "attn" else "mlp") for block in layers]


def clean_states(lm, ids, site):
    """The clean run's states with plain hooks: block 0's input and every block's output, or module outputs."""
    kept = []
    handles = []
    if site == "resid":
        handles.append(lm.adapter.blocks[0].register_forward_pre_hook(lambda m, args: kept.append(args[0])))
    for module in site_modules(lm, site):
        handles.append(module.register_forward_hook(lambda m, args, output: kept.append(_first(output))))
    with torch.no_grad():
        lm.model(input_ids=ids)
    for handle in handles:
        handle.remove()
    return [state[0] for state in kept]


def restored_p(lm, corrupt_ids, noise_at, noise, site, states, position, answer):
    """One full forward of the corrupted prompt; plain hooks add the noise and write the clean states back."""
    handles = []
    if noise is not None:
        def add_noise(module, args, output):
            output = output.clone()
            output[0, noise_at] += noise
            return output
        handles.append(lm.adapter.embed.register_forward_hook(add_noise))
    modules = site_modules(lm, site)
    for index, state in states.items():
        def write(hidden, state=state):
            hidden = hidden.clone()
            hidden[0, position] = state[position]
            return hidden
        if site == "resid" and index < len(modules):
            handles.append(modules[index].register_forward_pre_hook(lambda m, args, write=write: (write(args[0]), *args[1:])))
        else:
            module = modules[index - 1] if site == "resid" else modules[index]
            handles.append(module.register_forward_hook(
                lambda m, args, output, write=write: _replace(output, write(_first(output)))))
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=corrupt_ids).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()
    return torch.softmax(logits.float(), -1)[answer].item()


def reference_grid(lm, ids, corruption, site, window=10):
    states = clean_states(lm, ids, site)
    noise_at = list(corruption.noise_positions)
    rows = len(states)
    grid = torch.zeros(rows, ids.shape[1])
    for row in range(rows):
        chosen = [row] if site == "resid" else window_blocks(row, rows, window)
        for position in range(ids.shape[1]):
            grid[row, position] = restored_p(lm, corruption.ids, noise_at, corruption.noise, site,
                                             {i: states[i] for i in chosen}, position, ANSWER)
    return grid


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_noise_trace_matches_hand_written_loop_on_tiny_models(family):
    lm = tiny_model(family)
    ids = random_ids(7, seed=3)
    corruption = noise_corruption(lm, ids, (2, 4), seed=1)
    trace = causal_trace(lm, ids, corruption, ANSWER)
    assert trace.layers == ["emb", "0", "1", "2", "3"]
    torch.testing.assert_close(trace.values("p_answer"), reference_grid(lm, ids, corruption, "resid"),
                               atol=2e-5, rtol=1e-4)
    p_corrupt = trace.corrupted["p_answer"]
    torch.testing.assert_close(trace.values("indirect_effect"), trace.values("p_answer") - p_corrupt)
    # the last row at the last position is the clean output itself
    assert trace.cells[-1][-1].p_answer == pytest.approx(trace.clean["p_answer"], abs=1e-5)


@pytest.mark.parametrize("family, site", [("llama", "resid"), ("gemma2", "resid"), ("qwen2", "mlp")])
def test_a_prompt_run_in_pieces_through_the_cache_gives_the_same_grid(family, site, monkeypatch):
    """Long prompts run in pieces of PREFILL_TOKENS (the clean and corrupted runs, the corrupted prefix, the
    restored suffixes); 3-token pieces over 11 tokens cross every boundary, sliding windows of 4 included."""
    import layerscope.analyses.causal_trace as engine

    lm = tiny_model(family)
    ids = random_ids(11, seed=7)
    corruption = noise_corruption(lm, ids, (4, 6), seed=5)
    monkeypatch.setattr(engine, "PREFILL_TOKENS", 3)
    trace = causal_trace(lm, ids, corruption, ANSWER, site=site, window=2)
    torch.testing.assert_close(trace.values("p_answer"), reference_grid(lm, ids, corruption, site, window=2),
                               atol=2e-5, rtol=1e-4)
    if site == "resid":  # the last row at the last position is the clean output, run in pieces too
        assert trace.cells[-1][-1].p_answer == pytest.approx(trace.clean["p_answer"], abs=1e-5)


@pytest.mark.parametrize("site", ["attn", "mlp"])
def test_module_windows_match_hand_written_loop(site):
    lm = tiny_model("llama")
    ids = random_ids(6, seed=4)
    corruption = noise_corruption(lm, ids, (1, 3), seed=2)
    trace = causal_trace(lm, ids, corruption, ANSWER, site=site, window=2)
    assert trace.layers == ["0", "1", "2", "3"]
    torch.testing.assert_close(trace.values("p_answer"), reference_grid(lm, ids, corruption, site, window=2),
                               atol=2e-5, rtol=1e-4)


def test_swap_trace_matches_hand_written_loop_and_small_batches():
    import layerscope.analyses.causal_trace as engine

    lm = tiny_model("qwen2")
    ids = random_ids(6, seed=5)
    corrupt_ids = ids.clone()
    corrupt_ids[0, 3] = (ids[0, 3] + 1) % 128
    corruption = swap_corruption(ids, corrupt_ids)
    assert corruption.first == 3
    reference = reference_grid(lm, ids, corruption, "resid")
    default = engine.TOKENS_PER_FORWARD
    try:
        engine.TOKENS_PER_FORWARD = 7  # 2 cells of 3 fed tokens per forward: many forwards
        trace = causal_trace(lm, ids, corruption, ANSWER)
    finally:
        engine.TOKENS_PER_FORWARD = default
    torch.testing.assert_close(trace.values("p_answer"), reference, atol=2e-5, rtol=1e-4)


def test_cache_copies_per_forward_stay_within_their_share_of_the_weights(monkeypatch):
    """A long prompt's cache copies, one per cell, are what fills memory: with a share that fits one copy, every
    forward carries one cell, and the grid is the hand-written loop's."""
    import layerscope.analyses.causal_trace as engine
    from layerscope.models.cache import cache_bytes

    lm = tiny_model("llama")
    ids = random_ids(8, seed=6)
    corruption = noise_corruption(lm, ids, (5, 6), seed=4)
    weights = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    batches: list[int] = []
    lm.model.register_forward_pre_hook(lambda module, args, kwargs: batches.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    with torch.inference_mode():
        one_copy = cache_bytes(engine.cached_forward(lm.model, None, input_ids=ids[:, :5])[1])  # the shortest
    monkeypatch.setattr(engine, "CACHE_SHARE", 1.5 * one_copy / weights)
    trace = causal_trace(lm, ids, corruption, ANSWER)
    assert batches and max(batches) == 1  # 5 grid rows, one per forward
    torch.testing.assert_close(trace.values("p_answer"), reference_grid(lm, ids, corruption, "resid"),
                               atol=2e-5, rtol=1e-4)


def test_entry_std_is_torch_std_without_a_float32_copy():
    from layerscope.analyses.causal_trace import entry_std

    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(10, 6, generator=generator) * 0.5 + 0.2).bfloat16()
    for rows in (1, 3, 10, 4096):  # chunks that split the rows unevenly, and one chunk
        assert entry_std(weight, rows) == pytest.approx(weight.double().std().item(), rel=1e-12)


def test_window_is_the_papers():
    assert list(window_blocks(0, 30, 10)) == list(range(0, 5))
    assert list(window_blocks(15, 30, 10)) == list(range(10, 20))
    assert list(window_blocks(29, 30, 10)) == list(range(24, 30))
    assert list(window_blocks(3, 30, 1)) == [3]


def test_approx_is_the_directional_derivative():
    """Attribution patching against a finite difference along (clean - corrupted), with plain hooks."""
    lm = tiny_model("llama")
    ids = random_ids(6, seed=6)
    corruption = noise_corruption(lm, ids, (1, 3), seed=3)
    approx = causal_trace(lm, ids, corruption, ANSWER, approx=True)
    clean = clean_states(lm, ids, "resid")
    handle = lm.adapter.embed.register_forward_hook(
        lambda m, a, output: output + torch.nn.functional.pad(corruption.noise, (0, 0, 1, 3))[None])
    try:
        corrupted = clean_states(lm, ids, "resid")
    finally:
        handle.remove()
    p_corrupt = approx.corrupted["p_answer"]
    eps = 1e-3
    for row, position in [(0, 1), (0, 2), (2, 2), (3, 5), (4, 5), (4, 2)]:
        moved = corrupted[row].clone()
        moved[position] += eps * (clean[row][position] - corrupted[row][position])
        p = restored_p(lm, ids, [1, 2], corruption.noise, "resid", {row: moved}, position, ANSWER)
        assert approx.cells[row][position].indirect_effect == pytest.approx((p - p_corrupt) / eps, abs=2e-4, rel=2e-2)


def test_rank_correlation():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, a * 10) == pytest.approx(1.0)
    assert rank_correlation(a, -a) == pytest.approx(-1.0)


def test_bad_input_is_a_clear_error():
    lm = tiny_model("llama")
    with pytest.raises(LayerscopeError, match="does not occur"):
        trace_prompt(lm, "the cat sat on mat", subject="dog")
    with pytest.raises(LayerscopeError, match="same token length"):
        trace_prompt(lm, "the cat sat on mat", corrupt="swap", corrupt_prompt="the dog sat")
    with pytest.raises(LayerscopeError, match="same as the prompt"):
        trace_prompt(lm, "the cat sat", corrupt="swap", corrupt_prompt="the cat sat")
    with pytest.raises(LayerscopeError, match="needs the subject"):
        trace_prompt(lm, "the cat sat")
    with pytest.raises(LayerscopeError, match="site"):
        trace_prompt(lm, "the cat sat", subject="cat", site="heads")


def test_demo_fact_subject_and_last_position(demo_lm):
    """A fact the demo model knows: noise on the subject destroys it, and restoring states brings it back."""
    trace = trace_prompt(demo_lm, "The capital of France is", subject="France", answer=" Paris")
    assert trace.subject_positions == [3, 4] and trace.answer == " Paris"
    assert trace.clean["p_answer"] > 0.3 and trace.corrupted["p_answer"] < trace.clean["p_answer"] / 3
    effects = trace.values()
    assert effects[:, :3].abs().max() == 0  # before the subject both runs are the same
    gap = trace.clean["p_answer"] - trace.corrupted["p_answer"]
    assert effects[-1, -1] == pytest.approx(gap, abs=1e-4)  # the model's output itself
    assert effects[1:10, 3].max() > 0.5 * gap  # the subject token's early states carry the fact


def test_cli_json_and_one_line_errors(cli_demo_lm):
    runner = CliRunner()
    result = runner.invoke(app, ["trace", "-p", "The capital of France is", "--subject", "France", "--answer",
                                 " Paris", "--site", "mlp", "--window", "5", "--approx", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "causal_trace" and data["site"] == "mlp" and data["approx"] is True
    assert data["layers"] == [str(b) for b in range(30)] and len(data["cells"][0]) == len(data["tokens"]) == 5
    assert set(data["cells"][0][0]) == {"p_answer", "indirect_effect"}
    assert data["clean"]["p_answer"] > data["corrupted"]["p_answer"]
    bad = runner.invoke(app, ["trace", "-p", "The capital of France is", "--corrupt", "swap",
                              "--corrupt-prompt", "The capital of the United Kingdom is"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
