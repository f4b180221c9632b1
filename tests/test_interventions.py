"""Each intervention against an independent implementation: manual block runs or state-dict surgery."""

import pytest
import torch

from layerscope.errors import InterventionError, LayerscopeError
from layerscope.interventions import (
    DropBlocks,
    FreezeFrom,
    MaskHeads,
    PatchState,
    RandomizeAt,
    SkipAttention,
    SteerVector,
    SwapBlocks,
    intervene,
)
from layerscope.interventions.attention import routes_attention
from layerscope.interventions.core import REGISTRY
from tests.manual import block_kwargs, manual_logits, rebuilt_without, with_blocks_permuted
from tests.tiny import FAMILIES, random_ids, tiny_config, tiny_model
from tests.tolerance import model_delta

ATOL = 1e-5


def logits_under(lm, ids, interventions):
    with intervene(lm, interventions, seq_len=ids.shape[1]), torch.no_grad():
        return lm.model(ids).logits[0]


# Families that choose each layer's mask (and Gemma 3 its rotary table) by depth, from config.layer_types.
DEPTH_TYPED = [
    f for f in FAMILIES if getattr(tiny_config(f), "layer_types", None) and len(set(tiny_config(f).layer_types)) > 1
]


def test_drop_equals_model_rebuilt_without_the_blocks(tiny_lm):
    ids = random_ids(11)
    expected = rebuilt_without(tiny_lm.model, {1, 2})(ids).logits[0]
    torch.testing.assert_close(logits_under(tiny_lm, ids, [DropBlocks((1, 2))]), expected, rtol=0, atol=ATOL)


def test_swap_equals_weights_and_layer_types_swapped_in_a_new_model(tiny_lm):
    ids = random_ids(11)
    for block, order in ((1, [0, 2, 1, 3]), (0, [1, 0, 2, 3])):
        expected = with_blocks_permuted(tiny_lm.model, order)(ids).logits[0]
        torch.testing.assert_close(logits_under(tiny_lm, ids, [SwapBlocks(block)]), expected, rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", DEPTH_TYPED)
def test_swapped_block_keeps_its_own_attention_type(family):
    """By hand: run the blocks in swapped order, each with the mask and rotary table it gets at its own depth."""
    lm = tiny_model(family)
    ids = random_ids(12)  # longer than the sliding window (4), so the two mask types differ
    types = lm.model.config.get_text_config().layer_types
    assert types[1] != types[2]
    embedded, calls = block_kwargs(lm.adapter, ids)
    hidden = embedded
    with torch.no_grad():
        for index in (0, 2, 1, 3):
            args, kwargs = calls[index]
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            hidden = lm.adapter.blocks[index](hidden, *args[1:], **rest)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        expected = lm.adapter.decode(hidden)[0]
    got = logits_under(lm, ids, [SwapBlocks(1)])
    torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
    with_depth_masks = manual_logits(lm.adapter, ids, order=[0, 2, 1, 3])  # the old behaviour
    assert not torch.allclose(got, with_depth_masks, atol=1e-3)
    assert lm.model.config.get_text_config().layer_types == types
    assert [lm.adapter.attention(b).layer_idx for b in range(4)] == [0, 1, 2, 3]


def test_freeze_equals_manual_block_run(tiny_lm):
    ids = random_ids(10)
    k = 1
    frozen = {}

    def before(depth, h):
        if depth == k:
            frozen["prev"] = h[:, :-1].clone()
        return h

    def after(depth, h):
        if depth >= k:
            h = h.clone()
            h[:, :-1] = frozen["prev"]
        return h

    expected = manual_logits(tiny_lm.adapter, ids, before=before, after=after)
    torch.testing.assert_close(logits_under(tiny_lm, ids, [FreezeFrom(k)]), expected, rtol=0, atol=ATOL)


def test_random_equals_manual_norm_matched_noise(tiny_lm):
    ids = random_ids(10)

    def before(depth, h):
        if depth != 2:
            return h
        h = h.clone()
        noise = torch.randn(h[:, :-1].shape, generator=torch.Generator().manual_seed(7))
        for t in range(h.shape[1] - 1):
            h[0, t] = noise[0, t] * (h[0, t].norm() / noise[0, t].norm())
        return h

    expected = manual_logits(tiny_lm.adapter, ids, before=before)
    torch.testing.assert_close(logits_under(tiny_lm, ids, [RandomizeAt(2, seed=7)]), expected, rtol=0, atol=ATOL)
    changed = logits_under(tiny_lm, ids, [RandomizeAt(2, seed=8)])
    assert not torch.allclose(changed, expected), "another seed gives other noise"


def test_patch_equals_manual_write(tiny_lm):
    ids = random_ids(10)
    vector = torch.randn(tiny_lm.model.config.get_text_config().hidden_size, generator=torch.Generator().manual_seed(1))

    def before(depth, h):
        if depth == 2:
            h = h.clone()
            h[0, 4] = vector
        return h

    expected = manual_logits(tiny_lm.adapter, ids, before=before)
    torch.testing.assert_close(logits_under(tiny_lm, ids, [PatchState(2, 4, vector)]), expected, rtol=0, atol=ATOL)


def test_patch_at_the_output_row(tiny_lm):
    ids = random_ids(6)
    vector = torch.randn(tiny_lm.model.config.get_text_config().hidden_size)
    logits = logits_under(tiny_lm, ids, [PatchState(tiny_lm.n_blocks, 5, vector)])
    torch.testing.assert_close(logits[5], tiny_lm.adapter.decode(vector[None])[0], rtol=0, atol=ATOL)


def test_skip_attention_equals_hand_written_llama_block():
    """Residual + MLP only for the last token: the llama block written out by hand."""
    lm = tiny_model("llama")
    ids = random_ids(10)

    def run_block(index, hidden, args, kwargs):
        block = lm.adapter.blocks[index]
        attn, _ = block.self_attn(
            hidden_states=block.input_layernorm(hidden),
            attention_mask=kwargs.get("attention_mask"),
            position_embeddings=kwargs["position_embeddings"],
        )
        if index >= 2:
            attn = attn.clone()
            attn[:, -1] = 0
        mid = hidden + attn
        return mid + block.mlp(block.post_attention_layernorm(mid))

    expected = manual_logits(lm.adapter, ids, run_block=run_block)
    torch.testing.assert_close(logits_under(lm, ids, [SkipAttention.from_block(2, 4)]), expected, rtol=0, atol=ATOL)
    unchanged = logits_under(lm, ids, [SkipAttention.from_block(2, 4)])[:-1]
    torch.testing.assert_close(unchanged, lm.model(ids).logits[0, :-1].detach(), rtol=0, atol=ATOL)


def _output_projection(attention):
    for name in ("o_proj", "dense", "c_proj", "out_proj"):
        if hasattr(attention, name):
            return getattr(attention, name)
    raise AssertionError("no output projection")


OWN_ATTENTION = ["bloom", "mpt"]  # ALiBi in their own kernels (Falcon, GPT-J and CodeGen route since transformers 5.2x)
ROUTED = [f for f in FAMILIES if f not in OWN_ATTENTION]


@pytest.mark.parametrize("family", ROUTED)
def test_zero_head_mask_equals_zeroed_output_projection(family):
    lm = tiny_model(family)
    ids = random_ids(10)
    masked = logits_under(lm, ids, [MaskHeads(((1, 2), (3, 0)), "zero")])
    surgery = tiny_model(family)
    with torch.no_grad():
        for block, head in ((1, 2), (3, 0)):
            projection = _output_projection(surgery.adapter.attention(block))
            conv1d = type(projection).__name__ == "Conv1D"  # GPT-2 stores (in, out)
            head_dim = projection.weight.shape[0 if conv1d else 1] // lm.adapter.n_heads
            columns = slice(head * head_dim, (head + 1) * head_dim)
            if conv1d:
                projection.weight[columns, :] = 0
            else:
                projection.weight[:, columns] = 0
    torch.testing.assert_close(masked, surgery.model(ids).logits[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("family", OWN_ATTENTION)
def test_head_masks_refuse_attention_outside_the_registry(family):
    lm = tiny_model(family)
    with pytest.raises(LayerscopeError, match=f"not available for {family}: its attention does not go through"):
        logits_under(lm, random_ids(6), [MaskHeads(((1, 2),), "zero")])


def test_head_mask_that_never_runs_fails_instead_of_doing_nothing():
    """A layer whose attention bypasses the registered function (eager attention of its own) is caught."""
    lm = tiny_model("llama")
    attention = lm.adapter.attention(1)
    attention.forward = lambda hidden_states, **kwargs: (torch.zeros_like(hidden_states), None)
    with pytest.raises(InterventionError, match="block 1 did not run through layerscope's attention function"):
        logits_under(lm, random_ids(6), [MaskHeads(((1, 2),), "zero")])


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "gemma2", "mixtral", "starcoder2"])
def test_uniform_head_mask_equals_zeroed_query(family):
    """A head whose query is zero scores every key equally: uniform attention over visible keys.
    (Qwen3 normalises q per head, and the norm of zero is zero.)"""
    lm = tiny_model(family)
    ids = random_ids(10)
    masked = logits_under(lm, ids, [MaskHeads(((0, 1), (2, 3)), "uniform")])
    surgery = tiny_model(family)
    with torch.no_grad():
        for block, head in ((0, 1), (2, 3)):
            q_proj = surgery.adapter.attention(block).q_proj
            head_dim = q_proj.weight.shape[0] // lm.adapter.n_heads
            rows = slice(head * head_dim, (head + 1) * head_dim)
            q_proj.weight[rows] = 0
            if q_proj.bias is not None:
                q_proj.bias[rows] = 0
    torch.testing.assert_close(masked, surgery.model(ids).logits[0], rtol=0, atol=ATOL)


def test_model_is_restored_bit_for_bit_even_after_an_error(tiny_lm):
    ids = random_ids(8)
    before = tiny_lm.model(ids).logits.detach().clone()
    blocks = tiny_lm.adapter.blocks
    hooks_before = _hooks(tiny_lm.model)
    everything = [
        DropBlocks((0,)),
        SwapBlocks(1),
        FreezeFrom(2),
        RandomizeAt(3),
        SkipAttention((3,)),
        PatchState(1, 2, torch.zeros(tiny_lm.model.config.get_text_config().hidden_size)),
    ]
    if routes_attention(tiny_lm.model):
        everything += [MaskHeads(((1, 1),), "uniform"), MaskHeads(((2, 0),), "zero")]
    with pytest.raises(RuntimeError, match="boom"):
        with intervene(tiny_lm, everything, seq_len=8):
            assert not torch.equal(tiny_lm.model(ids).logits, before)
            raise RuntimeError("boom")
    assert tiny_lm.adapter.blocks is blocks
    assert torch.equal(tiny_lm.model(ids).logits, before)
    assert _hooks(tiny_lm.model) == hooks_before  # transformers keeps hooks of its own (output capture)


EXAMPLES = {
    "drop": lambda hidden: DropBlocks((0,)),
    "swap": lambda hidden: SwapBlocks(1),
    "freeze": lambda hidden: FreezeFrom(2),
    "random": lambda hidden: RandomizeAt(3),
    "skip-attn": lambda hidden: SkipAttention((3,)),
    "patch": lambda hidden: PatchState(1, 2, torch.zeros(hidden)),
    "mask-heads": lambda hidden: MaskHeads(((1, 1),), "uniform"),
    "steer": lambda hidden: SteerVector(2, torch.ones(hidden), 2.0),
}


def _model_settings(lm) -> tuple:
    config = lm.model.config
    return config.to_dict(), config._attn_implementation, config.get_text_config()._attn_implementation


@pytest.mark.parametrize("fail", [False, True])
def test_every_kind_gives_back_the_config_and_attention_implementation(tiny_lm, fail):
    """Also the attention implementation a head mask switches to layerscope's, with or without an error."""
    assert set(EXAMPLES) == set(REGISTRY)  # a new kind gets an example here
    ids = random_ids(8)
    before = _model_settings(tiny_lm)
    hidden = tiny_lm.model.config.get_text_config().hidden_size
    for kind, example in EXAMPLES.items():
        if kind == "mask-heads" and not routes_attention(tiny_lm.model):
            continue
        try:
            with intervene(tiny_lm, [example(hidden)], seq_len=8), torch.no_grad():
                tiny_lm.model(ids)
                if fail:
                    raise RuntimeError("boom")
        except RuntimeError as error:
            assert fail and str(error) == "boom"
        assert _model_settings(tiny_lm) == before, kind


def test_attention_readers_give_back_the_attention_implementation():
    """Induction scores, retrieval decoding and the stage signatures read attention through layerscope's function
    only while they run."""
    from layerscope.analyses.decoding import greedy_steps
    from layerscope.analyses.induction import diagonal_attention
    from layerscope.analyses.stages import _forward_signatures

    lm = tiny_model("llama")
    ids = random_ids(8)
    before = _model_settings(lm)
    diagonal_attention(lm, ids, torch.ones_like(ids, dtype=torch.bool), 1)
    assert _model_settings(lm) == before
    steps = greedy_steps(lm, ids)
    next(steps)
    assert lm.model.config._attn_implementation.startswith("layerscope_")  # while decoding reads the rows
    steps.close()
    assert _model_settings(lm) == before
    _forward_signatures(lm, ids)
    assert _model_settings(lm) == before


def _hooks(model) -> list:
    return [(name, list(m._forward_hooks), list(m._forward_pre_hooks)) for name, m in model.named_modules()]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_position_edits_act_on_the_prompt_pass_only_when_generating(family):
    """A patch at position 5 and a freeze act on the prompt pass; the one-token decoding steps run unedited from
    the edited cache. Reference: generate with a plain hook that patches only a pass of the prompt's length."""
    from layerscope.analyses.compare import greedy_continuation

    lm = tiny_model(family)
    ids = random_ids(6)
    hidden = lm.model.config.get_text_config().hidden_size
    vector = 50 * torch.randn(hidden, generator=torch.Generator().manual_seed(2))
    got = greedy_continuation(lm, ids, 6, [PatchState(3, 5, vector)]).token_ids
    assert got != greedy_continuation(lm, ids, 6).token_ids  # the patch matters

    def patch(module, args, kwargs):
        states = args[0] if args else kwargs["hidden_states"]
        if states.shape[1] != ids.shape[1]:
            return None
        states = states.clone()
        states[:, 5] = vector
        return ((states, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": states})

    handle = lm.adapter.blocks[3].register_forward_pre_hook(patch, with_kwargs=True)
    try:
        expected = lm.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=1,
            eos_token_id=None,
        )[0, 6:].tolist()
    finally:
        handle.remove()
    assert got[: len(expected)] == expected[: len(got)] and got
    assert greedy_continuation(lm, ids, 6, [FreezeFrom(1)]).token_ids  # decode steps do not trip the freeze


def test_drop_applies_to_every_generation_step():
    """Greedy generation with a KV cache under a drop equals the rebuilt model's generation."""
    lm = tiny_model("llama")
    ids = random_ids(6)
    from layerscope.analyses.compare import greedy_continuation

    got = greedy_continuation(lm, ids, 8, [DropBlocks((2,))]).token_ids
    rebuilt = rebuilt_without(lm.model, {2})
    expected = rebuilt.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=1, eos_token_id=None
    )[0, 6:].tolist()
    assert got[: len(expected)] == expected[: len(got)] and got


@pytest.mark.parametrize(
    "interventions, message",
    [
        ([DropBlocks((99,))], "block 99 is out of range"),
        ([SwapBlocks(3)], "no next block"),
        ([FreezeFrom(-1)], "out of range"),
        ([PatchState(1, 20, torch.zeros(64))], "outside the prompt"),
        ([MaskHeads(((1, 9),))], "head 9 is out of range"),
        ([MaskHeads(((1, 1),), "zero"), MaskHeads(((1, 1),), "uniform")], "two modes"),
        ([SwapBlocks(1), SwapBlocks(2)], "already part of another swap"),
        ([DropBlocks((2,)), SwapBlocks(1)], "also dropped"),
        ([FreezeFrom(1), RandomizeAt(1)], "overwrite each other"),
    ],
)
def test_bad_interventions_fail_before_any_compute(interventions, message):
    lm = tiny_model("llama")
    calls = []
    handle = lm.model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(InterventionError, match=message):
        with intervene(lm, interventions, seq_len=8):
            lm.model(random_ids(8))
    handle.remove()
    assert not calls


def test_demo_dropping_block_0_hurts_far_more_than_a_middle_block(demo_lm):
    ids = demo_lm.encode("The capital of France is")
    from layerscope.analyses.compare import compare_logits

    base = demo_lm.model(ids).logits[0].detach()
    kl_first = compare_logits(base, logits_under(demo_lm, ids, [DropBlocks((0,))]), ids[0]).kl.mean()
    kl_middle = compare_logits(base, logits_under(demo_lm, ids, [DropBlocks((15,))]), ids[0]).kl.mean()
    assert kl_first > 10 * kl_middle
    assert logits_under(demo_lm, ids, [DropBlocks((15,))])[-1].argmax() == base[-1].argmax()


def _right_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(row.shape[1] for row in rows)
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, : row.shape[1]] = row[0]
        mask[index, : row.shape[1]] = 1
    return ids, mask


def _padded_batch_equals_each_prompt_alone(lm, prompts: list[torch.Tensor], interventions, atol=ATOL) -> None:
    ids, mask = _right_padded(prompts, lm.tokenizer.pad_token_id or 0)
    with intervene(lm, interventions, seq_len=ids.shape[1]), torch.no_grad():
        batched = lm.model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(lm.model(ids, mask).logits, batched, rtol=0, atol=0)  # the mask by position too
    for index, alone in enumerate(prompts):
        expected = logits_under(lm, alone, interventions)
        torch.testing.assert_close(batched[index, : alone.shape[1]], expected, rtol=0, atol=atol)
        if any(i.measured_at_last_token for i in interventions):  # acting at the padded end would be far off
            assert not torch.allclose(expected[-1], logits_under(lm, alone, [])[-1], atol=100 * atol)


BATCH_CASES = [
    [DropBlocks((1,))],
    [SwapBlocks(1)],
    [FreezeFrom(1)],
    [RandomizeAt(2, seed=3)],
    [SkipAttention.from_block(1, 4)],
    [MaskHeads(((1, 2),), "uniform")],
    [PatchState(2, 1, torch.ones(64))],
    [FreezeFrom(2), RandomizeAt(1, seed=5), SkipAttention((3,))],
]


@pytest.mark.parametrize("interventions", BATCH_CASES, ids=lambda c: "+".join(i.kind for i in c))
def test_right_padded_batch_equals_each_prompt_alone(interventions):
    """Freeze, random and skip-attn act on each batch element's own last real token and its own previous tokens;
    each element's noise is the noise that prompt gets alone with the same seed."""
    lm = tiny_model("llama")
    prompts = [random_ids(7, seed=1), random_ids(4, seed=2), random_ids(10, seed=3)]
    _padded_batch_equals_each_prompt_alone(lm, prompts, interventions)


@pytest.mark.parametrize(
    "interventions",
    [[FreezeFrom(10)], [RandomizeAt(12, seed=1)], [SkipAttention.from_block(20, 30)]],
    ids=lambda c: c[0].kind,
)
def test_demo_right_padded_batch_equals_each_prompt_alone(demo_lm, interventions):
    """Padding changes kernel shapes, so the logits differ by fp32 reordering noise (tests/tolerance.py)."""
    texts = ["The capital of France is", "Monday, Tuesday,", "One, two, three, four, five, six"]
    prompts = [demo_lm.encode(text) for text in texts]
    with torch.no_grad():
        magnitude = max(float(demo_lm.model(ids).logits.abs().max()) for ids in prompts)
    _padded_batch_equals_each_prompt_alone(demo_lm, prompts, interventions, model_delta(demo_lm, magnitude))


def test_intervene_takes_the_loaded_model_only(tiny_lm):
    with pytest.raises(TypeError, match="loaded model"):
        with intervene(tiny_lm.adapter, [DropBlocks((1,))]):
            pass
