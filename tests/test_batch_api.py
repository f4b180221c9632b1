"""Batches: every prompt of a right-padded batch gets the result it gets when it runs alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import layerscope as ls
from layerscope.analyses.compare import run_interventions
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.patchscope import parse_target, patchscope_grid, run_patchscope
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.sweep import sweep
from layerscope.errors import LayerscopeError
from layerscope.interventions import (
    DropBlocks,
    FreezeFrom,
    MaskHeads,
    PatchState,
    RandomizeAt,
    SkipAttention,
    SwapBlocks,
)
from layerscope.interventions.attention import routes_attention
from layerscope.models.loading import PromptBatch
from tests.tiny import tiny_model
from tests.tolerance import entropy_bits_atol, kl_atol, model_delta, probability_atol

TINY_TEXTS = ["the cat sat on the mat", "a dog", "one two three four five six seven eight nine"]
DEMO_TEXTS = ["The capital of France is", "Hi", "One, two, three, four, five, six"]
FAMILIES = ("llama", "qwen2", "gemma2", "gpt2", "bloom", "opt", "falcon", "mpt")


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """fp32 reordering noise between a batch and a prompt alone, for one model (see tests/tolerance.py)."""

    probability: float
    entropy_bits: float
    kl: float

    @classmethod
    def of(cls, lm, texts) -> Tolerance:
        with torch.no_grad():
            magnitude = max(float(lm.model(input_ids=lm.encode(text)).logits.abs().max()) for text in texts)
        delta, vocab = model_delta(lm, magnitude), lm.model.config.get_text_config().vocab_size
        return cls(probability_atol(delta), entropy_bits_atol(delta, vocab), kl_atol(delta, vocab))


TINY = Tolerance(1e-5, 1e-5, 1e-5)
"""For the tiny models (4 blocks of width 128, |logits| < 2): `reordered` gives 1e-5, and entropy and KL of their
128-token vocabulary stay within it (log 128 < 5 but the tiny models' sums reorder far less than the bound)."""


def assert_same_grid(batched: ls.DecodeGrid, alone: ls.DecodeGrid, tol: Tolerance = TINY) -> None:
    """Same tokens and rows; per cell the same top-k (a swap only between probabilities within noise), entropy, KL."""
    assert (batched.tokens, batched.token_ids, batched.layers) == (alone.tokens, alone.token_ids, alone.layers)
    for batched_row, alone_row in zip(batched.cells, alone.cells, strict=True):
        for a, b in zip(batched_row, alone_row, strict=True):
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=tol.probability)
            for x, y in zip(a.top, b.top):
                assert x.id == y.id or abs(x.prob - y.prob) < 2 * tol.probability
            assert a.entropy_bits == pytest.approx(b.entropy_bits, abs=tol.entropy_bits)
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=tol.kl)


def assert_same_report(batched: ls.InterventionReport, alone: ls.InterventionReport, tol: Tolerance = TINY) -> None:
    assert_same_grid(batched.baseline, alone.baseline, tol)
    assert_same_grid(batched.intervened, alone.intervened, tol)
    assert batched.interventions == alone.interventions
    assert batched.continuation == alone.continuation
    for a, b in zip(batched.comparison.positions, alone.comparison.positions, strict=True):
        assert (a.position, a.token, a.top1_agree) == (b.position, b.token, b.top1_agree)
        assert a.kl == pytest.approx(b.kl, abs=tol.kl)
        assert a.entropy_delta == pytest.approx(b.entropy_delta, abs=2 * tol.entropy_bits)  # two entropies
        assert (a.loss_delta is None) == (b.loss_delta is None)
        assert a.loss_delta is None or a.loss_delta == pytest.approx(b.loss_delta, abs=tol.kl)


def test_encode_pads_right_and_keeps_one_prompt_a_tensor(demo_lm):
    batch = demo_lm.encode(DEMO_TEXTS)
    alone = [demo_lm.encode(text) for text in DEMO_TEXTS]
    assert isinstance(batch, ls.PromptBatch) and len(batch) == 3
    assert batch.lengths == [ids.shape[1] for ids in alone]
    assert batch.ids.shape == batch.attention_mask.shape == (3, max(batch.lengths))
    for index, ids in enumerate(alone):
        assert ids.shape[0] == 1 and torch.equal(batch.prompt(index), ids)
        length = ids.shape[1]
        assert batch.attention_mask[index, :length].all() and not batch.attention_mask[index, length:].any()
    with pytest.raises(LayerscopeError, match="empty"):
        demo_lm.encode([])
    with pytest.raises(LayerscopeError, match="empty"):
        demo_lm.encode(["fine", " "])


def test_a_batch_of_ids_without_its_mask_is_refused():
    lm = tiny_model("llama")
    with pytest.raises(LayerscopeError, match=r"lm.encode\(\[...\]\)"):
        logit_lens(lm, torch.ones(2, 4, dtype=torch.long))


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_lens_and_interventions_batch_equal_each_prompt_alone(family):
    lm = tiny_model(family)
    batch = lm.encode(TINY_TEXTS)
    for batched, text in zip(logit_lens(lm, batch, top_k=3), TINY_TEXTS, strict=True):
        assert_same_grid(batched, logit_lens(lm, lm.encode(text), top_k=3))
    interventions = [DropBlocks((1,)), SwapBlocks(2)]
    if routes_attention(lm.model):  # Bloom's attention cannot be masked
        interventions.append(MaskHeads(((0, 1),), mode="uniform"))
    reports = run_interventions(lm, batch, interventions, top_k=3, max_new_tokens=2)
    for batched, text in zip(reports, TINY_TEXTS, strict=True):
        assert_same_report(batched, run_interventions(lm, lm.encode(text), interventions, top_k=3, max_new_tokens=2))


def test_demo_lens_interventions_and_patchscopes_batch_equal_each_prompt_alone(demo_lm):
    batch, tol = demo_lm.encode(DEMO_TEXTS), Tolerance.of(demo_lm, DEMO_TEXTS)
    for batched, text in zip(ls.logit_lens(demo_lm, batch), DEMO_TEXTS, strict=True):
        assert_same_grid(batched, ls.logit_lens(demo_lm, demo_lm.encode(text)), tol)
    interventions = [DropBlocks((3, 5)), MaskHeads(((4, 2),), mode="zero")]
    for batched, text in zip(
        ls.run_interventions(demo_lm, batch, interventions, max_new_tokens=3), DEMO_TEXTS, strict=True
    ):
        assert_same_report(
            batched, ls.run_interventions(demo_lm, demo_lm.encode(text), interventions, max_new_tokens=3), tol
        )
    target = parse_target(demo_lm)
    reports = run_patchscope(demo_lm, batch, target, top_k=3, max_new_tokens=2)
    for batched, text in zip(reports, DEMO_TEXTS, strict=True):
        alone = run_patchscope(demo_lm, demo_lm.encode(text), target, top_k=3, max_new_tokens=2)
        assert_same_grid(batched.grid, alone.grid, tol)
        assert batched.descriptions == alone.descriptions
        assert batched.precision == alone.precision
        assert dataclasses.replace(batched, grid=alone.grid, precision=alone.precision) == alone


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_tiny_patchscope_batch_equals_each_prompt_alone(family):
    lm = tiny_model(family)
    batch = lm.encode(TINY_TEXTS)
    for target_layer in (None, 2):
        grids = patchscope_grid(
            lm, batch, top_k=3, target_prompt="the cat sat on mat the dog", target_layer=target_layer
        )
        for batched, text in zip(grids, TINY_TEXTS, strict=True):
            alone = patchscope_grid(
                lm, lm.encode(text), top_k=3, target_prompt="the cat sat on mat the dog", target_layer=target_layer
            )
            assert_same_grid(batched, alone)


def test_patch_state_in_a_batch_acts_on_every_prompt():
    """A patch at a position inside every prompt writes the same state into each, as it does alone."""
    lm = tiny_model("llama")
    vector = torch.randn(lm.model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    patch = [PatchState(row=2, position=1, vector=vector)]
    batch = lm.encode(TINY_TEXTS)
    for batched, text in zip(logit_lens(lm, batch, top_k=3, interventions=patch), TINY_TEXTS, strict=True):
        assert_same_grid(batched, logit_lens(lm, lm.encode(text), top_k=3, interventions=patch))


def test_sweep_never_mixes_prompts():
    """Each prompt's rows of a sweep over a set are the rows of a sweep over that prompt alone."""
    lm = tiny_model("llama")
    prompts = [PromptItem(text) for text in TINY_TEXTS]
    together = [row for row in sweep(lm, prompts, "drop") if row.prompt_index is not None]
    for index, prompt in enumerate(prompts):
        alone = [row for row in sweep(lm, [prompt], "drop") if row.prompt_index is not None]
        mine = [row for row in together if row.prompt_index == index]
        assert len(mine) == len(alone) == lm.n_blocks
        for a, b in zip(mine, alone):
            assert (a.layer, a.intervention) == (b.layer, b.intervention)
            assert a.kl == pytest.approx(b.kl, abs=1e-6) and a.top1_agree == b.top1_agree


def test_prompt_batch_from_ids_and_of():
    batch = PromptBatch.of([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert batch.ids.tolist() == [[5, 6, 7], [8, 0, 0]] and batch.lengths == [3, 1]
    assert PromptBatch.from_ids(torch.ones(2, 3, dtype=torch.long)).lengths == [3, 3]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "falcon", "bloom"])
def test_position_interventions_act_on_each_prompts_own_last_token(family):
    """Freeze, random and skip-attention edit each prompt's last real token, not the padded end."""
    lm = tiny_model(family)
    batch = lm.encode(TINY_TEXTS)
    for interventions in ([FreezeFrom(1)], [RandomizeAt(2, seed=3)], [SkipAttention((1, 2))]):
        reports = run_interventions(lm, batch, interventions, top_k=3, max_new_tokens=2)
        for batched, text in zip(reports, TINY_TEXTS, strict=True):
            alone = run_interventions(lm, lm.encode(text), interventions, top_k=3, max_new_tokens=2)
            assert_same_report(batched, alone)


def test_demo_position_interventions_in_a_batch(demo_lm):
    batch, tol = demo_lm.encode(DEMO_TEXTS), Tolerance.of(demo_lm, DEMO_TEXTS)
    interventions = [FreezeFrom(20), SkipAttention((25,))]
    for batched, text in zip(
        ls.run_interventions(demo_lm, batch, interventions, max_new_tokens=2), DEMO_TEXTS, strict=True
    ):
        assert_same_report(
            batched, ls.run_interventions(demo_lm, demo_lm.encode(text), interventions, max_new_tokens=2), tol
        )


def test_capture_runs_under_interventions():
    """`capture` inside `intervene` reads the intervened pass: a dropped block's output is its input."""
    lm = tiny_model("llama")
    with ls.intervene(lm, [DropBlocks((1,))]):
        captured = ls.capture(lm, TINY_TEXTS, ["resid.1", "resid.2"])
    torch.testing.assert_close(captured["resid.2"], captured["resid.1"], rtol=0, atol=0)
    plain = ls.capture(lm, TINY_TEXTS, ["resid.1", "resid.2"])
    assert not torch.allclose(plain["resid.2"], plain["resid.1"])


def test_docs_custom_intervention(demo_lm):
    """The Python guide's own intervention (docs/python-api.md) runs as written (after the first example), steers
    each prompt at its own last token (as it does alone) and is range-checked like a shipped kind."""
    from layerscope.errors import InterventionError
    from layerscope.interventions import REGISTRY
    from tests.examples import blocks

    (example,) = blocks("docs/python-api.md", "## Your own intervention", "python")
    batch = demo_lm.encode(["The capital of France is", "The capital of Italy is"])
    namespace = {"ls": ls, "lm": demo_lm, "batch": batch}
    try:
        exec(compile(example, "docs/python-api.md", "exec"), namespace)
        nudge, reports = namespace["nudge"], namespace["reports"]
        base, steered = reports[0].baseline.top1(-1, -1), reports[0].intervened.top1(-1, -1)
        assert base.token == steered.token == " Paris" and steered.prob < base.prob - 0.1
        alone = ls.run_interventions(demo_lm, demo_lm.encode("The capital of France is"), [nudge])
        assert_same_report(reports[0], alone, Tolerance.of(demo_lm, ["The capital of France is"]))
        with pytest.raises(InterventionError, match="out of range"):
            ls.run_interventions(demo_lm, demo_lm.encode("Hi"), [namespace["Nudge"](99, nudge.vector)])
    finally:
        REGISTRY.pop("nudge", None)  # other tests see the shipped kinds only
