"""Steering (`SteerVector`, `layerscope steer vector`): each against a plain forward hook that adds the vector by
hand, and the vector against numpy's mean difference of hooked states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import layerscope as ls
from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.steering import SavedVector, steering_vector
from layerscope.analyses.sweep import sweep
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from tests.tiny import random_ids, tiny_model

runner = CliRunner()


def hidden_size(lm) -> int:
    return lm.model.get_input_embeddings().weight.shape[-1]


def hand_logits(lm, ids, row, added, last_only=False, at=None, attention_mask=None):
    """A plain forward with a pre-hook on block `row` (or a hook on the last block's output) adding `added`
    (at the last position, or at the token indices `at`, or everywhere); `row` may be a tuple of rows, each
    hooked."""

    def add(hidden):
        if last_only or at is not None:
            hidden = hidden.clone()
            hidden[:, [-1] if last_only else list(at)] += added
            return hidden
        return hidden + added

    def pre_hook(module, args, kwargs):
        if args:
            return (add(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": add(kwargs["hidden_states"])}

    def post_hook(module, args, output):
        return (add(output[0]), *output[1:]) if isinstance(output, tuple) else add(output)

    blocks = lm.adapter.blocks
    handles = [
        blocks[one].register_forward_pre_hook(pre_hook, with_kwargs=True)
        if one < len(blocks)
        else blocks[-1].register_forward_hook(post_hook)
        for one in (row if isinstance(row, tuple) else (row,))
    ]
    try:
        with torch.inference_mode():
            return lm.model(ids, attention_mask=attention_mask).logits
    finally:
        for handle in handles:
            handle.remove()


def steered_logits(lm, ids, steer):
    with ls.intervene(lm, [steer]), torch.inference_mode():
        return lm.model(ids).logits


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steering_equals_a_hand_hook_adding_the_vector_on_tiny_families(family):
    lm = tiny_model(family)
    ids = random_ids()
    vector = torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(1))
    for row in (0, 2, lm.n_blocks):  # a block's input, and the last block's output
        for factor in (3.0, -0.5):
            steer = ls.SteerVector(row, vector, factor)
            assert torch.equal(steered_logits(lm, ids, steer), hand_logits(lm, ids, row, factor * vector))
        last = ls.SteerVector(row, vector, 2.0, positions="last")
        assert torch.equal(steered_logits(lm, ids, last), hand_logits(lm, ids, row, 2.0 * vector, last_only=True))
        with torch.inference_mode():
            baseline = lm.model(ids).logits
        assert torch.equal(steered_logits(lm, ids, ls.SteerVector(row, vector, 0.0)), baseline)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_steering_at_chosen_positions_equals_a_hand_hook_adding_there(family):
    """positions=(1, 3): the vector at those tokens only, as a hand hook adds it; the same places of a
    left-padded batch element are its own real tokens 1 and 3, as a hand hook on that element's indices."""
    lm = tiny_model(family)
    ids = random_ids(7, seed=3)
    vector = torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(8))
    for row in (1, lm.n_blocks):
        steer = ls.SteerVector(row, vector, 2.5, positions=(1, 3))
        assert torch.equal(steered_logits(lm, ids, steer), hand_logits(lm, ids, row, 2.5 * vector, at=(1, 3)))
    padded = torch.cat([torch.zeros(1, 2, dtype=ids.dtype), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with ls.intervene(lm, [ls.SteerVector(1, vector, 2.5, positions=(1, 3))]), torch.inference_mode():
        steered = lm.model(padded, attention_mask=mask).logits
    by_hand = hand_logits(lm, padded, 1, 2.5 * vector, at=(3, 5), attention_mask=mask)
    assert torch.equal(steered[:, 2:], by_hand[:, 2:])


def test_chosen_positions_steer_the_prompt_and_the_continuation_reads_them_from_the_cache():
    """Greedy decoding under positions=(0, 4) equals decoding by hand with full forwards that add the vector at
    prompt tokens 0 and 4 only (the generated tokens are not steered; they attend to the steered prompt)."""
    lm = tiny_model("llama")
    ids = random_ids(6)
    vector = 4.0 * torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(2))
    tokens = ids
    for _ in range(5):
        logits = hand_logits(lm, tokens, 1, vector, at=(0, 4))
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    steer = ls.SteerVector(1, vector, 1.0, positions=(0, 4))
    assert greedy_continuation(lm, ids, 5, [steer]).token_ids == tokens[0, 6:].tolist()
    everywhere = greedy_continuation(lm, ids, 5, [ls.SteerVector(1, vector, 1.0)]).token_ids
    assert everywhere != tokens[0, 6:].tolist()


def test_chosen_positions_outside_the_prompt_are_refused_by_name():
    lm = tiny_model("llama")
    ids = random_ids(5)
    vector = torch.ones(hidden_size(lm))
    with pytest.raises(LayerscopeError, match=r"position 5 is past the prompt \(5 tokens\)"):
        steered_logits(lm, ids, ls.SteerVector(1, vector, positions=(2, 5)))
    with pytest.raises(LayerscopeError, match=r"position 5 is outside the prompt \(0..4\)"):
        ls.intervene(lm, [ls.SteerVector(1, vector, positions=(5,))], seq_len=5).__enter__()
    for bad in ((), (-1,), (True,), "first", [1, 2]):
        with pytest.raises(LayerscopeError, match="positions="):
            ls.intervene(lm, [ls.SteerVector(1, vector, positions=bad)]).__enter__()


def test_steering_at_several_rows_adds_the_vector_at_each():
    """`--steer-at 1,3` (from_cli with a tuple of rows, as the explorer's column gives too): one SteerVector per
    row, equal to hand hooks at both."""
    lm = tiny_model("llama")
    ids = random_ids()
    vector = torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(6))
    saved = SavedVector(vector, lm.name, 0)
    steers = ls.SteerVector.from_cli({"steer": saved, "steer_at": (1, 3), "steer_factor": 1.5}, lm.n_blocks)
    assert [s.row for s in steers] == [1, 3]
    with ls.intervene(lm, steers), torch.inference_mode():
        steered = lm.model(ids).logits
    assert torch.equal(steered, hand_logits(lm, ids, (1, 3), 1.5 * vector))


def test_generated_tokens_are_steered_too():
    """Greedy decoding under the steer (cached steps) equals decoding by hand, each step a full forward with the
    vector added at every position; it differs from the baseline's and from steering the prompt alone."""
    lm = tiny_model("llama")
    ids = random_ids(6)
    vector = 4.0 * torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(2))
    steer = ls.SteerVector(1, vector, 1.0)
    tokens = ids
    for _ in range(5):
        logits = hand_logits(lm, tokens, 1, vector)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert greedy_continuation(lm, ids, 5, [steer]).token_ids == tokens[0, 6:].tolist()
    assert greedy_continuation(lm, ids, 5).token_ids != tokens[0, 6:].tolist()


def test_steering_the_demo_equals_a_hand_hook_and_factor_zero_is_the_baseline(demo_lm):
    ids = demo_lm.encode("I think that you are")
    vector = torch.randn(hidden_size(demo_lm), generator=torch.Generator().manual_seed(3))
    steer = ls.SteerVector(6, vector, 4.0, model=demo_lm.name)
    assert torch.equal(steered_logits(demo_lm, ids, steer), hand_logits(demo_lm, ids, 6, 4.0 * vector))
    with torch.inference_mode():
        baseline = demo_lm.model(ids).logits
    assert torch.equal(steered_logits(demo_lm, ids, ls.SteerVector(6, vector, 0.0)), baseline)


def test_the_vector_is_numpys_mean_difference_of_hooked_last_token_states(tmp_path):
    lm = tiny_model("gpt2")
    positive, negative = ["alpha beta gamma", "beta beta"], ["gamma alpha", "alpha alpha alpha alpha"]
    row = 2
    states = []
    handle = lm.adapter.blocks[row].register_forward_pre_hook(
        lambda module, args, kwargs: states.append(
            (args[0] if args else kwargs["hidden_states"])[0, -1].numpy().copy()
        ),
        with_kwargs=True,
    )
    try:
        with torch.inference_mode():
            for text in positive + negative:
                lm.model(lm.encode(text))
    finally:
        handle.remove()
    expected = np.mean(states[:2], axis=0) - np.mean(states[2:], axis=0)
    saved = steering_vector(lm, positive, negative, row)
    np.testing.assert_allclose(
        saved.vector.numpy(), expected, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(states).max()
    )
    saved.save(tmp_path / "v.safetensors")
    loaded = SavedVector.load(tmp_path / "v.safetensors")
    assert torch.equal(loaded.vector, saved.vector) and (loaded.model, loaded.row) == (lm.name, row)


def test_a_vector_for_another_model_or_hidden_size_is_one_clear_error(tmp_path):
    lm = tiny_model("llama")
    other = SavedVector(torch.ones(hidden_size(lm)), "another-model", 1)
    with pytest.raises(LayerscopeError, match="computed on 'another-model'"):
        other.check_model(lm)
    with (
        pytest.raises(LayerscopeError, match="not on 'tiny-llama'"),
        ls.intervene(lm, [ls.SteerVector(1, other.vector, model="x")]),
    ):
        pass
    short = ls.SteerVector(1, torch.ones(3))
    with pytest.raises(LayerscopeError, match="vector= has 3 entries"):
        steered_logits(lm, random_ids(), short)
    (tmp_path / "bad.safetensors").write_text("not a tensor file")
    with pytest.raises(LayerscopeError, match="cannot be read"):
        SavedVector.load(tmp_path / "bad.safetensors")
    for bad in (float("nan"), "2"):
        with pytest.raises(LayerscopeError, match="factor"):
            ls.intervene(lm, [ls.SteerVector(1, other.vector, bad)]).__enter__()


def test_the_sweep_steers_each_layer_and_factor_as_a_hand_hook_does():
    """Layers × factors: every point against a hand hook adding factor × vector; factor 0 is the baseline (KL 0)."""
    lm = tiny_model("llama")
    vector = torch.randn(hidden_size(lm), generator=torch.Generator().manual_seed(4))
    settings = {"steer": SavedVector(vector, lm.name, 0), "steer_factor": [2.0, 0.0, -3.0]}
    points = [
        p
        for p in sweep(lm, [PromptItem("alpha beta gamma beta")], "steer", batch_size=5, settings=settings)
        if p.prompt_index == 0
    ]
    ids = lm.encode("alpha beta gamma beta")
    with torch.inference_mode():
        base = torch.log_softmax(lm.model(ids).logits[0].double(), -1)
    for point in points:
        steered = torch.log_softmax(hand_logits(lm, ids, point.layer, point.factor * vector)[0].double(), -1)
        kl = (base.exp() * (base - steered)).sum(-1).mean().item()
        assert point.kl == pytest.approx(kl, abs=1e-5)
        if point.factor == 0:
            assert point.kl == 0 and point.top1_agree == 1 and point.entropy_delta == 0
    assert [(p.layer, p.factor) for p in points] == [
        (layer, factor) for layer in range(lm.n_blocks) for factor in (2.0, 0.0, -3.0)
    ]
    assert min(p.kl for p in points if p.factor != 0) > 0
    at_two = {**settings, "steer_factor": 2.0, "steer_positions": (1, 2)}
    for point in sweep(lm, [PromptItem("alpha beta gamma beta")], "steer", layers=[1, 3], settings=at_two):
        steered = torch.log_softmax(hand_logits(lm, ids, point.layer, 2.0 * vector, at=(1, 2))[0].double(), -1)
        assert point.kl == pytest.approx((base.exp() * (base - steered)).sum(-1).mean().item(), abs=1e-5)
    for bad in ([], [1.0, float("nan")], "2"):
        with pytest.raises(LayerscopeError, match="steer_factor="):
            list(sweep(lm, [PromptItem("alpha")], "steer", settings={**settings, "steer_factor": bad}))


def test_the_cli_makes_a_vector_and_steers_with_it(tmp_path, cli_demo_lm):
    (tmp_path / "pos.txt").write_text("I love this\nWhat a great day\n")
    (tmp_path / "neg.txt").write_text("I hate this\nWhat a terrible day\n")
    out = tmp_path / "v.safetensors"
    made = runner.invoke(
        app,
        [*"steer vector --model demo --positive".split(), str(tmp_path / "pos.txt"), "--negative"]
        + [str(tmp_path / "neg.txt"), "--row", "6", "--out", str(out)],
    )
    assert made.exit_code == 0, made.output
    ran = runner.invoke(
        app,
        ["run", "--model", "demo", "-p", "I think", "--steer", str(out)]
        + "--steer-factor 0 --max-new-tokens 3 -f json".split(),
    )
    assert ran.exit_code == 0, ran.output
    assert '"kind": "steer"' in ran.stdout and '"row": 6' in ran.stdout
    chosen = runner.invoke(
        app,
        ["run", "--model", "demo", "-p", "I think", "--steer", str(out), "--steer-positions", "0,1"]
        + "--max-new-tokens 3 -f json".split(),
    )
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["interventions"][0]["positions"] == [0, 1]
    for args, fragment in [
        (["run", "-p", "x", "--steer-at", "3"], "--steer FILE"),
        (["run", "-p", "x", "--steer", str(tmp_path / "pos.txt")], "cannot be read"),
        (["run", "-p", "x", "--steer", str(out), "--steer-positions", "first"], "--steer-positions"),
        (["run", "-p", "x", "--steer", str(out), "--out", str(out)], "--out"),
        (["sweep", "-i", "steer"], "--steer FILE"),
        (["sweep", "-i", "drop", "--steer-factor", "2"], "--steer-positions go with -i steer"),
        (["sweep", "-i", "drop", "--steer-positions", "2"], "--steer-positions go with -i steer"),
        (["sweep", "-i", "steer", "--steer", str(out), "--steer-positions", "x"], "--steer-positions: use all, last"),
        (["run", "-p", "x", "--steer", str(out), "--steer-positions", "-1"], "prompt positions such as 0,4-6"),
        (["run", "-p", "I think", "--steer", str(out), "--steer-positions", "9"], "position 9 is outside the prompt"),
        (["sweep", "-i", "steer", "--steer", str(out), "--steer-factor", "2,x"], "--steer-factor '2,x'"),
        (["steer", "vector", "--positive", str(out), "--negative", str(out), "--row", "1", "--out", str(out)], "--out"),
    ]:
        result = runner.invoke(app, [*args, "--model", "demo"])
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr


def test_the_explorer_steers_from_its_column_with_the_factor_key(demo_lm, tmp_path):
    """`layerscope tui --steer FILE`: the layer pane's steer column at block 6, `t` to factor 2; the intervened
    lens is the lens under SteerVector(6, vector, 2.0), and the session keeps the factor."""
    import asyncio

    from textual.widgets import Input

    from layerscope.analyses.lens_generate import lens_generate
    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.state import block_kinds
    from layerscope.tui.themes import SHIPPED_THEMES
    from tests.tui_synthetic import settle

    vector = torch.randn(hidden_size(demo_lm), generator=torch.Generator().manual_seed(5))
    path = tmp_path / "v.safetensors"
    SavedVector(vector, demo_lm.name, 6).save(path)
    prompt = "I think that you are"
    app = LayerscopeApp(
        lm=demo_lm,
        prompt=prompt,
        keymap_path=tmp_path / "keymap.toml",
        theme_folders=[SHIPPED_THEMES],
        continuation_tokens=2,
        steer_file=path,
    )

    async def drive():
        async with app.run_test(size=(160, 50)) as pilot:
            await settle(pilot)
            column = 1 + list(block_kinds()).index("steer")
            await pilot.press("2", *["down"] * 6, *["right"] * (column - 1), "space")
            await settle(pilot)
            await pilot.press("t")
            await settle(pilot)
            grown = app.runs.results.intervened
            await pilot.press("w")
            app.screen.query_one(Input).value = "first"
            await pilot.press("enter")
            await pilot.pause(0.1)
            assert app.toggles.steer_positions == "all" and "Steer positions: --steer-positions" in said[-1]
            await pilot.press("w")
            app.screen.query_one(Input).value = "1,3"
            await pilot.press("enter")
            await settle(pilot)
            return grown

    said: list[str] = []
    shown = app.notify
    app.notify = lambda message, **kw: (said.append(message), shown(message, **kw))[1]  # type: ignore[method-assign]
    grown = asyncio.run(drive())
    assert app.toggles.steer == {6} and app.toggles.steer_factor == 2.0
    ids = demo_lm.encode(prompt)
    expected = lens_generate(demo_lm, ids, 2, interventions=[ls.SteerVector(6, vector, 2.0)])
    assert [[c.top[0].id for c in row] for row in grown.cells] == [[c.top[0].id for c in row] for row in expected.cells]
    at_two = lens_generate(demo_lm, ids, 2, interventions=[ls.SteerVector(6, vector, 2.0, positions=(1, 3))])
    assert [[c.top[0].id for c in row] for row in app.runs.results.intervened.cells] == [
        [c.top[0].id for c in row] for row in at_two.cells
    ]
    assert app.toggles.to_dict()["steer_factor"] == 2.0 and app.toggles.to_dict()["steer_positions"] == [1, 3]
    assert app.toggles.describe() == "steer row 6 ×2 (positions 1,3)"


def test_the_explorer_without_a_vector_says_how_to_give_one(tmp_path):
    """No --steer FILE: the steer column, `t` and `w` give a notice and change nothing; a session that steers is
    refused with one notice, and a session's factor and positions must be a finite number and 'all', 'last' or a
    list of prompt positions."""
    import asyncio

    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.state import Results, Session, Toggles, block_kinds
    from layerscope.tui.themes import SHIPPED_THEMES
    from tests.tui_synthetic import settle

    lm = tiny_model("llama")
    app = LayerscopeApp(lm=lm, prompt="the city is", keymap_path=tmp_path / "k.toml", theme_folders=[SHIPPED_THEMES])
    notices: list[str] = []
    shown = app.notify
    app.notify = lambda message, **kw: (notices.append(message), shown(message, **kw))[1]  # type: ignore[method-assign]
    session = tmp_path / "s.json"
    Session(lm.name, "x", "logit_lens", Toggles(steer=frozenset({1}), steer_factor=2.0), Results()).save(session)

    async def drive():
        async with app.run_test(size=(160, 50)) as pilot:
            await settle(pilot)
            column = 1 + list(block_kinds()).index("steer")
            await pilot.press("2", "down", *["right"] * (column - 1), "space", "t", "w")
            await settle(pilot)

    asyncio.run(drive())
    assert app.toggles == Toggles() and len(notices) == 3 and all("--steer FILE" in n for n in notices)
    with pytest.raises(LayerscopeError, match="steers at row 1: start the explorer with --steer FILE"):
        app.load_session(tmp_path / "s.json")
    saved = session.read_text()
    for bad in ("NaN", "1e999", '"2"', "true"):
        session.write_text(saved.replace('"steer_factor": 2.0', f'"steer_factor": {bad}'))
        with pytest.raises(LayerscopeError, match="steer factor .* is not a finite number"):
            Session.load(session)
    for bad in ('"first"', "[]", "[-1]", "[true]", "3"):
        session.write_text(saved.replace('"steer_positions": "all"', f'"steer_positions": {bad}'))
        with pytest.raises(LayerscopeError, match="steer positions .* neither"):
            Session.load(session)
    session.write_text(saved.replace('"steer_positions": "all"', '"steer_positions": [0, 2]'))
    assert Session.load(session).toggles.steer_positions == (0, 2)
