"""Causal tracing: every batched, prefix-cached cell equals a hand-written restoration loop with plain hooks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from layerscope.analyses.causal_trace import (
    causal_trace,
    noise_corruption,
    rank_correlation,
    subject_std,
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


def noise_hook(lm, noise_at, noise):
    """A plain hook adding (noised positions, hidden) noise to the embeddings; None without noise."""

    def add_noise(module, args, output):
        output = output.clone()
        output[0, noise_at] += noise
        return output

    return lm.adapter.embed.register_forward_hook(add_noise) if noise is not None else None


def corrupted_logits(lm, corrupt_ids, handles):
    try:
        with torch.no_grad():
            return lm.model(input_ids=corrupt_ids).logits[0, -1].float()
    finally:
        for handle in handles:
            if handle is not None:
                handle.remove()


def restored_p(lm, corrupt_ids, noise_at, noise, site, states, position, answer):
    return torch.softmax(restored_logits(lm, corrupt_ids, noise_at, noise, site, states, position), -1)[answer].item()


def restored_logits(lm, corrupt_ids, noise_at, noise, site, states, position):
    """One full forward of the corrupted prompt; plain hooks add the noise and write the clean states back."""
    handles = [noise_hook(lm, noise_at, noise)]
    modules = site_modules(lm, site)
    for index, state in states.items():

        def write(hidden, state=state):
            hidden = hidden.clone()
            hidden[0, position] = state[position]
            return hidden

        if site == "resid" and index < len(modules):
            handles.append(
                modules[index].register_forward_pre_hook(lambda m, args, write=write: (write(args[0]), *args[1:]))
            )
        else:
            module = modules[index - 1] if site == "resid" else modules[index]
            handles.append(
                module.register_forward_hook(
                    lambda m, args, output, write=write: _replace(output, write(_first(output)))
                )
            )
    return corrupted_logits(lm, corrupt_ids, handles)


def p_answer(logits):
    return torch.softmax(logits, -1)[ANSWER].item()


def reference_grid(lm, ids, corruption, site, window=10, sample=0, measure=p_answer):
    """The metric `measure` of the hand-restored logits of every cell, with the noise of one sample."""
    states = clean_states(lm, ids, site)
    noise_at = list(corruption.noise_positions)
    noise = corruption.noise[sample] if corruption.noise is not None else None
    rows = len(states)
    grid = torch.zeros(rows, ids.shape[1])
    for row in range(rows):
        chosen = [row] if site == "resid" else window_blocks(row, rows, window)
        for position in range(ids.shape[1]):
            grid[row, position] = measure(
                restored_logits(lm, corruption.ids, noise_at, noise, site, {i: states[i] for i in chosen}, position)
            )
    return grid


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_noise_trace_matches_hand_written_loop_on_tiny_models(family):
    lm = tiny_model(family)
    ids = random_ids(7, seed=3)
    corruption = noise_corruption(lm, ids, (2, 4), seed=1)
    trace = causal_trace(lm, ids, corruption, ANSWER)
    assert trace.layers == ["emb", "0", "1", "2", "3"]
    torch.testing.assert_close(
        trace.values("value"), reference_grid(lm, ids, corruption, "resid"), atol=2e-5, rtol=1e-4
    )
    p_corrupt = trace.corrupted["p_answer"]
    torch.testing.assert_close(trace.values("indirect_effect"), trace.values("value") - p_corrupt)
    # the last row at the last position is the clean output itself
    assert trace.cells[-1][-1].value == pytest.approx(trace.clean["p_answer"], abs=1e-5)


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
    torch.testing.assert_close(
        trace.values("value"), reference_grid(lm, ids, corruption, site, window=2), atol=2e-5, rtol=1e-4
    )
    if site == "resid":  # the last row at the last position is the clean output, run in pieces too
        assert trace.cells[-1][-1].value == pytest.approx(trace.clean["p_answer"], abs=1e-5)


@pytest.mark.parametrize("site", ["attn", "mlp"])
def test_module_windows_match_hand_written_loop(site):
    lm = tiny_model("llama")
    ids = random_ids(6, seed=4)
    corruption = noise_corruption(lm, ids, (1, 3), seed=2)
    trace = causal_trace(lm, ids, corruption, ANSWER, site=site, window=2)
    assert trace.layers == ["0", "1", "2", "3"]
    torch.testing.assert_close(
        trace.values("value"), reference_grid(lm, ids, corruption, site, window=2), atol=2e-5, rtol=1e-4
    )


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
    torch.testing.assert_close(trace.values("value"), reference, atol=2e-5, rtol=1e-4)


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
    lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    with torch.inference_mode():
        one_copy = cache_bytes(engine.cached_forward(lm.model, None, input_ids=ids[:, :5])[1])  # the shortest
    monkeypatch.setattr(engine, "CACHE_SHARE", 1.5 * one_copy / weights)
    trace = causal_trace(lm, ids, corruption, ANSWER)
    assert batches and max(batches) == 1  # 5 grid rows, one per forward
    torch.testing.assert_close(
        trace.values("value"), reference_grid(lm, ids, corruption, "resid"), atol=2e-5, rtol=1e-4
    )


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


CONTRAST = 9


def clean_logits(lm, ids):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits[0, -1].float()


def measures(lm, ids):
    """Each metric by its formula, on hand-computed logits: (measure, the sign of an improvement)."""
    clean = torch.log_softmax(clean_logits(lm, ids), -1)
    return {
        "prob": (p_answer, 1.0),
        "logit-diff": (lambda logits: (logits[ANSWER] - logits[CONTRAST]).item(), 1.0),
        "kl": (lambda logits: float((clean.exp() * (clean - torch.log_softmax(logits, -1))).sum()), -1.0),
    }


@pytest.mark.parametrize("metric", ["prob", "logit-diff", "kl"])
def test_approx_is_the_directional_derivative(metric):
    """Attribution patching against a finite difference along (clean - corrupted), with plain hooks, in each metric."""
    lm = tiny_model("llama")
    ids = random_ids(6, seed=6)
    corruption = noise_corruption(lm, ids, (1, 3), seed=3)
    measure, sign = measures(lm, ids)[metric]
    approx = causal_trace(
        lm,
        ids,
        corruption,
        ANSWER,
        approx=True,
        metric=metric,
        contrast_id=CONTRAST if metric == "logit-diff" else None,
    )
    clean = clean_states(lm, ids, "resid")
    handle = lm.adapter.embed.register_forward_hook(
        lambda m, a, output: output + torch.nn.functional.pad(corruption.noise, (0, 0, 1, 3))
    )
    try:
        corrupted = clean_states(lm, ids, "resid")
    finally:
        handle.remove()
    base = measure(corrupted_logits(lm, ids, [noise_hook(lm, [1, 2], corruption.noise[0])]))
    assert approx.corrupted["value"] == pytest.approx(base, abs=1e-5)
    eps = 1e-3
    for row, position in [(0, 1), (0, 2), (2, 2), (3, 5), (4, 5), (4, 2)]:
        moved = corrupted[row].clone()
        moved[position] += eps * (clean[row][position] - corrupted[row][position])
        value = measure(restored_logits(lm, ids, [1, 2], corruption.noise[0], "resid", {row: moved}, position))
        assert approx.cells[row][position].indirect_effect == pytest.approx(
            sign * (value - base) / eps, abs=2e-4, rel=2e-2
        )


@pytest.mark.parametrize("metric", ["logit-diff", "kl"])
def test_each_metric_is_its_formula_on_hand_restored_logits(metric):
    """logit-diff = logit(answer) - logit(contrast); kl = KL(clean || restored) in nats; the indirect effect is the
    move toward the clean run (a KL falls)."""
    lm = tiny_model("qwen2")
    ids = random_ids(6, seed=4)
    corruption = noise_corruption(lm, ids, (1, 3), seed=2)
    measure, sign = measures(lm, ids)[metric]
    trace = causal_trace(
        lm, ids, corruption, ANSWER, metric=metric, contrast_id=CONTRAST if metric == "logit-diff" else None
    )
    want = reference_grid(lm, ids, corruption, "resid", measure=measure)
    torch.testing.assert_close(trace.values("value"), want, atol=3e-5, rtol=1e-4)
    corrupted = measure(corrupted_logits(lm, ids, [noise_hook(lm, [1, 2], corruption.noise[0])]))
    assert trace.corrupted["value"] == pytest.approx(corrupted, abs=1e-5)
    torch.testing.assert_close(trace.values(), sign * (want - corrupted), atol=3e-5, rtol=1e-4)
    assert trace.clean["value"] == pytest.approx(measure(clean_logits(lm, ids)), abs=1e-5)
    assert trace.metric == metric and trace.cells[0][0].stderr is None  # one noise sample: no standard error


HEAD_INPUTS = {
    "llama": "self_attn.o_proj",
    "gpt2": "attn.c_proj",
    "gemma2": "self_attn.o_proj",
    "falcon": "self_attention.dense",
    "qwen2": "self_attn.o_proj",
}
"""The output projection of each family's attention, whose input holds the heads' outputs side by side."""


def reference_head_grid(lm, family, ids, corruption):
    """Every (block.head, position) cell by a plain pre-hook on the projection that writes that head's clean slice."""
    projections = [block.get_submodule(HEAD_INPUTS[family]) for block in lm.adapter.blocks]
    inputs = []
    handles = [
        projection.register_forward_pre_hook(lambda m, args: inputs.append(args[0][0].clone()))
        for projection in projections
    ]
    clean_logits(lm, ids)
    for handle in handles:
        handle.remove()
    heads = lm.adapter.n_heads
    noise = corruption.noise[0] if corruption.noise is not None else None
    grid = torch.zeros(len(projections) * heads, ids.shape[1])
    for block, projection in enumerate(projections):
        width = inputs[block].shape[-1] // heads
        for head in range(heads):
            for position in range(ids.shape[1]):

                def write(module, args, head=head, position=position, clean=inputs[block], width=width):
                    hidden = args[0].clone()
                    hidden[0, position, head * width : (head + 1) * width] = clean[
                        position, head * width : (head + 1) * width
                    ]
                    return (hidden, *args[1:])

                handles = [
                    noise_hook(lm, list(corruption.noise_positions), noise),
                    projection.register_forward_pre_hook(write),
                ]
                grid[block * heads + head, position] = p_answer(corrupted_logits(lm, corruption.ids, handles))
    return grid


@pytest.mark.parametrize(
    "family, corrupt",
    [("llama", "noise"), ("gpt2", "noise"), ("gemma2", "noise"), ("falcon", "noise"), ("qwen2", "swap")],
)
def test_head_site_matches_a_hand_hook_on_the_projections_head_slice(family, corrupt):
    """Restoring (noise) or patching (a counterfactual prompt) one head at one position, batched with the others."""
    lm = tiny_model(family)
    ids = random_ids(5, seed=9)
    if corrupt == "noise":
        corruption = noise_corruption(lm, ids, (1, 3), seed=6)
    else:
        corrupt_ids = ids.clone()
        corrupt_ids[0, 2] = (ids[0, 2] + 5) % 128
        corruption = swap_corruption(ids, corrupt_ids)
    trace = causal_trace(lm, ids, corruption, ANSWER, site="head")
    assert trace.layers == [f"{b}.{h}" for b in range(4) for h in range(4)]
    torch.testing.assert_close(
        trace.values("value"), reference_head_grid(lm, family, ids, corruption), atol=2e-5, rtol=1e-4
    )


def test_head_site_approx_is_the_per_head_share_of_the_projection_input():
    """Attribution patching per head: the heads' estimates of a block add up to the estimate of restoring the whole
    projection input (the same gradient, summed over each head's slice)."""
    lm = tiny_model("llama")
    ids = random_ids(6, seed=6)
    corruption = noise_corruption(lm, ids, (1, 3), seed=3)
    heads = causal_trace(lm, ids, corruption, ANSWER, site="head", approx=True).values()
    clean = [state.clone() for state in clean_states_of_heads(lm, ids)]
    handle = lm.adapter.embed.register_forward_hook(
        lambda m, a, output: output + torch.nn.functional.pad(corruption.noise, (0, 0, 1, 3))
    )
    try:
        corrupted = clean_states_of_heads(lm, ids, requires_grad=True)
    finally:
        handle.remove()
    assert heads[:, :1].abs().max() == 0  # before the noise nothing differs
    eps = 1e-3
    for block, head, position in [(0, 1, 2), (2, 3, 5), (3, 0, 4)]:
        projection = lm.adapter.blocks[block].self_attn.o_proj
        width = clean[block].shape[-1] // 4
        part = slice(head * width, (head + 1) * width)
        step = eps * (clean[block][position, part] - corrupted[block][position, part])

        def move(module, args, position=position, part=part, step=step):
            hidden = args[0].clone()
            hidden[0, position, part] += step
            return (hidden, *args[1:])

        handles = [noise_hook(lm, [1, 2], corruption.noise[0]), projection.register_forward_pre_hook(move)]
        p = p_answer(corrupted_logits(lm, ids, handles))
        base = p_answer(corrupted_logits(lm, ids, [noise_hook(lm, [1, 2], corruption.noise[0])]))
        assert heads[block * 4 + head, position] == pytest.approx((p - base) / eps, abs=2e-4, rel=2e-2)


def clean_states_of_heads(lm, ids, requires_grad=False):
    inputs = []
    handles = [
        block.self_attn.o_proj.register_forward_pre_hook(lambda m, args: inputs.append(args[0][0].clone()))
        for block in lm.adapter.blocks
    ]
    clean_logits(lm, ids)
    for handle in handles:
        handle.remove()
    return inputs


def test_a_family_whose_attention_does_not_split_by_head_is_refused_with_one_line():
    lm = tiny_model("llama")
    attention = lm.adapter.blocks[1].self_attn
    attention.o_proj = torch.nn.Sequential(attention.o_proj)  # the heads' outputs no longer reach a Linear
    ids = random_ids(5, seed=1)
    with pytest.raises(LayerscopeError, match="no output projection that splits by head") as refused:
        causal_trace(lm, ids, noise_corruption(lm, ids, (1, 2)), ANSWER, site="head")
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("site, approx", [("resid", False), ("head", False), ("mlp", False), ("attn", True)])
def test_samples_are_the_mean_of_single_sample_runs_with_the_same_noise(site, approx):
    """N samples in one batch: each cell is the mean of N one-sample traces with the same noise tensors, its standard
    error the std of their indirect effects over sqrt(N); every forward carries whole sets of samples."""
    import layerscope.analyses.causal_trace as engine

    lm = tiny_model("llama")
    ids = random_ids(6, seed=8)
    corruption = noise_corruption(lm, ids, (1, 3), seed=3, samples=4)
    assert corruption.noise.shape == (4, 2, 64)
    batches: list[int] = []
    handle = lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        trace = causal_trace(lm, ids, corruption, ANSWER, site=site, window=2, approx=approx)
    finally:
        handle.remove()
    assert {batch % 4 for batch in batches if batch > 1} == {0} and max(batches) >= 4  # 1: the clean run
    singles = [
        causal_trace(
            lm,
            ids,
            dataclasses.replace(corruption, noise=corruption.noise[i : i + 1]),
            ANSWER,
            site=site,
            window=2,
            approx=approx,
        )
        for i in range(4)
    ]
    assert trace.samples == 4 and all(single.samples == 1 for single in singles)
    values = torch.stack([single.values("value") for single in singles])
    effects = torch.stack([single.values() for single in singles])
    torch.testing.assert_close(trace.values("value"), values.mean(0), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(trace.values(), effects.mean(0), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(trace.values("stderr"), effects.std(0) / 2, atol=2e-6, rtol=1e-4)
    corrupted = torch.tensor([single.corrupted["value"] for single in singles])
    assert trace.corrupted["value"] == pytest.approx(float(corrupted.mean()), abs=1e-6)
    assert trace.corrupted["stderr"] == pytest.approx(float(corrupted.std() / 2), abs=1e-6)
    assert engine.NOISE_SAMPLES == 10  # ROME's default, trace_prompt's


def test_one_sample_of_a_batch_is_the_hand_written_loop_with_that_sample():
    lm = tiny_model("gemma2")
    ids = random_ids(5, seed=2)
    corruption = noise_corruption(lm, ids, (2, 4), seed=7, samples=2)
    trace = causal_trace(lm, ids, corruption, ANSWER)
    want = torch.stack([reference_grid(lm, ids, corruption, "resid", sample=s) for s in range(2)]).mean(0)
    torch.testing.assert_close(trace.values("value"), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_subject_noise_std_is_numpys_std_of_the_subjects_token_embeddings(family):
    """ROME's s3 before its factor 3: the std of the subjects' token embeddings (Gemma's scaled ones), and the noise
    drawn with it."""
    lm = tiny_model(family)
    subjects = ["cat", "the dog", "red blue green"]
    tokens = [t for subject in subjects for t in lm.tokenizer(subject, add_special_tokens=False).input_ids]
    weight = lm.adapter.embed.weight.detach().double().numpy()
    want = np.std(weight[tokens] * float(getattr(lm.adapter.embed, "embed_scale", 1.0)), ddof=1)
    assert subject_std(lm, subjects) == pytest.approx(want, rel=1e-6)
    ids = random_ids(6, seed=1)
    corruption = noise_corruption(lm, ids, (1, 3), seed=4, scale=3.0, samples=2, subjects=subjects)
    assert corruption.level.to_dict() == {
        "rule": "subjects",
        "base_std": pytest.approx(want, rel=1e-6),
        "scale": 3.0,
        "std": pytest.approx(3 * want, rel=1e-6),
    }
    drawn = torch.randn((2, 2, 64), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(corruption.noise, drawn * float(3 * want), rtol=1e-5, atol=0)


def test_the_subjects_rule_defaults_to_the_shipped_subjects_and_the_output_names_it():
    from layerscope.locations import sample_file

    lm = tiny_model("llama")
    shipped = [
        json.loads(line)["subject"] for line in sample_file("capitals.jsonl").read_text().splitlines() if line.strip()
    ]
    trace = trace_prompt(lm, "the cat sat on the", subject="cat", noise_std="subjects", samples=2, approx=True)
    assert trace.noise["rule"] == "subjects" and trace.noise["base_std"] == pytest.approx(subject_std(lm, shipped))
    default = trace_prompt(lm, "the cat sat on the", subject="cat", approx=True)
    assert default.samples == 10 and default.noise["rule"] == "embedding"
    weight = lm.adapter.embed.weight.detach().double().numpy()
    assert default.noise["std"] == pytest.approx(3 * np.std(weight, ddof=1), rel=1e-9)
    with pytest.raises(LayerscopeError, match="noise_subjects= is for noise_std='subjects'"):
        trace_prompt(lm, "the cat sat", subject="cat", noise_subjects=["cat"])
    with pytest.raises(LayerscopeError, match="at least two tokens"):
        trace_prompt(lm, "the cat sat", subject="cat", noise_std="subjects", noise_subjects=["cat"])


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
    with pytest.raises(LayerscopeError, match="metric="):
        trace_prompt(lm, "the cat sat", subject="cat", metric="logit")
    with pytest.raises(LayerscopeError, match="needs the second token"):
        trace_prompt(lm, "the cat sat", subject="cat", metric="logit-diff")
    with pytest.raises(LayerscopeError, match="the answer's token"):
        trace_prompt(lm, "the cat sat", subject="cat", answer=" mat", metric="logit-diff", contrast=" mat")
    with pytest.raises(LayerscopeError, match="is for metric='logit-diff'"):
        trace_prompt(lm, "the cat sat", subject="cat", contrast=" mat")
    with pytest.raises(LayerscopeError, match="has none to draw"):
        trace_prompt(lm, "the cat sat", corrupt="swap", corrupt_prompt="the dog sat", samples=2)
    with pytest.raises(ValueError, match="samples=0"):
        trace_prompt(lm, "the cat sat", subject="cat", samples=0)


def test_demo_fact_subject_and_last_position(demo_lm):
    """A fact the demo model knows: noise on the subject destroys it, and restoring states brings it back."""
    trace = trace_prompt(demo_lm, "The capital of France is", subject="France", answer=" Paris", samples=1)
    assert trace.subject_positions == [3, 4] and trace.answer == " Paris"
    assert trace.clean["p_answer"] > 0.3 and trace.corrupted["p_answer"] < trace.clean["p_answer"] / 3
    effects = trace.values()
    assert effects[:, :3].abs().max() == 0  # before the subject both runs are the same
    gap = trace.clean["p_answer"] - trace.corrupted["p_answer"]
    assert effects[-1, -1] == pytest.approx(gap, abs=1e-4)  # the model's output itself
    assert effects[1:10, 3].max() > 0.5 * gap  # the subject token's early states carry the fact


def test_cli_json_and_one_line_errors(cli_demo_lm):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "trace",
            "-p",
            "The capital of France is",
            "--subject",
            "France",
            "--answer",
            " Paris",
            "--site",
            "mlp",
            "--window",
            "5",
            "--approx",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "causal_trace" and data["site"] == "mlp" and data["approx"] is True
    assert data["layers"] == [str(b) for b in range(30)] and len(data["cells"][0]) == len(data["tokens"]) == 5
    assert set(data["cells"][0][0]) == {"value", "indirect_effect", "stderr"}
    assert data["metric"] == "prob" and data["samples"] == 10  # ROME's default
    assert data["noise"]["rule"] == "embedding" and data["noise"]["std"] == pytest.approx(3 * data["noise"]["base_std"])
    assert data["clean"]["p_answer"] > data["corrupted"]["p_answer"] and data["corrupted"]["stderr"] > 0
    bad = runner.invoke(
        app,
        [
            "trace",
            "-p",
            "The capital of France is",
            "--corrupt",
            "swap",
            "--corrupt-prompt",
            "The capital of the United Kingdom is",
        ],
    )
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


def test_cli_head_site_logit_difference_samples_and_subject_noise(cli_demo_lm, tmp_path):
    runner = CliRunner()
    subjects = tmp_path / "subjects.txt"
    subjects.write_text("France\nGermany\nthe Eiffel Tower\n")
    args = [
        "trace",
        "-p",
        "The capital of France is",
        "--subject",
        "France",
        "--answer",
        " Paris",
        "--site",
        "head",
        "--approx",
        "--metric",
        "logit-diff",
        "--contrast",
        " Rome",
        "--samples",
        "3",
        "--noise-std",
        "subjects",
        "--noise-subjects",
        str(subjects),
    ]
    result = runner.invoke(app, [*args, "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layers"][:2] == ["0.0", "0.1"] and len(data["layers"]) == 30 * 9
    assert data["metric"] == "logit-diff" and data["contrast"] == " Rome" and data["samples"] == 3
    assert data["noise"]["base_std"] == pytest.approx(
        subject_std(cli_demo_lm, ["France", "Germany", "the Eiffel Tower"])
    )
    assert data["clean"]["value"] > data["corrupted"]["value"]
    table = runner.invoke(app, [*args, "--site", "mlp", "--window", "30"])
    assert table.exit_code == 0, table.output
    assert "metric logit-diff" in table.stdout and "(rule subjects), mean of 3 samples" in table.stdout
    assert "standard error of each indirect effect over the 3 noise samples" in table.stdout
    csv_rows = runner.invoke(app, [*args, "--site", "mlp", "--window", "30", "-f", "csv"]).stdout.splitlines()
    assert csv_rows[0].split(",")[-4:] == ["value", "indirect_effect", "stderr", "samples"]
    for wrong, fragment in [
        (["--metric", "logit-diff"], "needs --contrast"),
        (["--contrast", " Rome"], "only for it"),
        (["--noise-subjects", str(subjects)], "--noise-subjects is for --noise-std subjects"),
        (
            ["--corrupt", "swap", "--corrupt-prompt", "The capital of Italy is", "--samples", "2"],
            "--samples draws noise",
        ),
        (["--metric", "logit-diff", "--contrast", " Paris"], "--contrast is the answer's token"),
    ]:
        bad = runner.invoke(
            app, ["trace", "-p", "The capital of France is", "--subject", "France", "--answer", " Paris", *wrong]
        )
        assert bad.exit_code == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.output
        assert bad.stderr.startswith("error: ") and fragment in bad.stderr, bad.stderr
    no_subject = tmp_path / "prompts.jsonl"
    no_subject.write_text('{"prompt": "The capital of Spain is"}\n')
    bad = runner.invoke(
        app,
        [
            "trace",
            "-p",
            "The capital of France is",
            "--subject",
            "France",
            "--noise-std",
            "subjects",
            "--noise-subjects",
            str(no_subject),
        ],
    )
    assert bad.exit_code == 1 and 'prompt 1 has no "subject"' in bad.stderr


def test_demo_attribution_patching_underestimates_a_probability_near_zero_but_not_a_logit_difference(demo_lm):
    """docs/trace-options.md's example: France prompt, MLP window 10 of block 3 at ' France', one noise sample. The
    exact effects come from one hand-hooked forward; attribution patching misses the probability's by over 20x (the
    corrupted p is near 0, where the softmax is flat) and gets the logit difference's within a factor 2."""
    prompt, answer, contrast = "The capital of France is", " Paris", " Rome"
    approx = {
        metric: trace_prompt(
            demo_lm,
            prompt,
            "France",
            answer,
            site="mlp",
            samples=1,
            approx=True,
            metric=metric,
            contrast=contrast if metric == "logit-diff" else None,
        )
        for metric in ("prob", "logit-diff")
    }
    ids = demo_lm.encode(prompt)
    corruption = noise_corruption(demo_lm, ids, (3, 4))
    states = clean_states(demo_lm, ids, "mlp")
    logits = restored_logits(
        demo_lm, ids, [3], corruption.noise[0], "mlp", {b: states[b] for b in window_blocks(3, 30, 10)}, 3
    )
    paris, rome = (demo_lm.tokenizer(word, add_special_tokens=False).input_ids[0] for word in (answer, contrast))
    exact = {
        "prob": torch.softmax(logits, -1)[paris].item() - approx["prob"].corrupted["value"],
        "logit-diff": (logits[paris] - logits[rome]).item() - approx["logit-diff"].corrupted["value"],
    }
    estimate = {metric: trace.cells[3][3].indirect_effect for metric, trace in approx.items()}
    assert approx["prob"].corrupted["value"] < 0.01 and exact["prob"] > 0.5
    assert 0 < estimate["prob"] < exact["prob"] / 20
    assert exact["logit-diff"] / 2 < estimate["logit-diff"] < exact["logit-diff"] * 2
