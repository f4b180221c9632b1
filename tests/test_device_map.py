"""A model split by a device map (`--device-map`): blocks on the CPU and offloaded to disk by accelerate,
whose weights wait on the meta device between calls. Every analysis must give what the unsplit model gives.

On a machine with several GPUs the same code paths move states between GPUs; here the split is CPU + disk,
which is what CI can run.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.influence import influence
from layerscope.analyses.lens import lens_logits
from layerscope.analyses.needles import Needle, build_tests
from layerscope.analyses.patchscope import parse_target, run_patchscope
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.retrieval import run_test
from layerscope.analyses.stages import stage_map
from layerscope.analyses.sweep import sweep, sweep_kinds
from layerscope.interventions import DropBlocks, FreezeFrom, MaskHeads, RandomizeAt, SkipAttention, SwapBlocks
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel, load_model
from tests.test_sweep import kind_settings
from tests.tiny import tiny_model

SPLIT = {
    "model.embed_tokens": "disk",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "disk",
    "model.layers.2": "cpu",
    "model.layers.3": "disk",
    "model.norm": "disk",
    "lm_head": "disk",
}
PROMPTS = [PromptItem("the cat sat on the mat and the dog ran"), PromptItem("the capital of france is paris")]
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(unsplit, split): the same weights, the split one loaded through accelerate with offloading."""
    folder = tmp_path_factory.mktemp("device_map")
    plain = tiny_model("llama")
    plain.model.save_pretrained(folder / "model")
    plain.tokenizer.save_pretrained(folder / "model")
    model = AutoModelForCausalLM.from_pretrained(
        folder / "model", device_map=SPLIT, offload_folder=folder / "offload", dtype=torch.float32
    ).eval()
    assert model.model.layers[1].mlp.up_proj.weight.device.type == "meta"  # really offloaded
    return plain, LoadedModel("split", model, plain.tokenizer, ModelAdapter(model))


def test_the_adapter_finds_where_offloaded_modules_compute(models):
    _, split = models
    assert split.adapter.input_device == torch.device("cpu")
    assert split.adapter.output_device == torch.device("cpu")


def test_lens_rows_match_the_unsplit_model(models):
    plain, split = models
    ids = plain.encode(PROMPTS[0].text)
    rows, final = lens_logits(plain, ids)
    split_rows, split_final = lens_logits(split, split.encode(PROMPTS[0].text))
    torch.testing.assert_close(split_final, final, **TOLERANCE)
    torch.testing.assert_close(torch.stack(list(split_rows)), torch.stack(list(rows)), **TOLERANCE)


INTERVENTIONS = {
    "drop": [DropBlocks((1,))],
    "swap": [SwapBlocks(1)],
    "freeze": [FreezeFrom(2)],
    "random": [RandomizeAt(1, seed=3)],
    "skip": [SkipAttention.from_block(1, 4)],
    "mask": [MaskHeads(((1, 0), (3, 2)), "uniform")],
}


@pytest.mark.parametrize("name", INTERVENTIONS)
def test_interventions_match_the_unsplit_model(models, name):
    plain, split = models
    ids = plain.encode(PROMPTS[0].text)
    _, final = lens_logits(plain, ids, INTERVENTIONS[name])
    _, split_final = lens_logits(split, ids, INTERVENTIONS[name])
    _, untouched = lens_logits(plain, ids)
    assert not torch.allclose(final, untouched)  # the intervention does something here
    torch.testing.assert_close(split_final, final, **TOLERANCE)
    assert (
        greedy_continuation(split, ids, 4, INTERVENTIONS[name]).token_ids
        == greedy_continuation(plain, ids, 4, INTERVENTIONS[name]).token_ids
    )


def _close_rows(rows, expected) -> None:
    assert len(rows) == len(expected)
    for row, want in zip(rows, expected):
        assert (row.intervention, row.layer, row.prompt_index) == (want.intervention, want.layer, want.prompt_index)
        for field in ("kl", "top1_agree", "entropy_delta", "loss_delta"):
            assert getattr(row, field) == pytest.approx(getattr(want, field), rel=1e-3, abs=1e-5), field


@pytest.mark.parametrize("kind", sweep_kinds())
def test_sweeps_match_the_unsplit_model(models, kind):
    plain, split = models
    settings = kind_settings(plain, kind)
    _close_rows(
        list(sweep(split, PROMPTS, kind, seed=1, batch_size=3, settings=settings)),
        list(sweep(plain, PROMPTS, kind, seed=1, batch_size=3, settings=settings)),
    )


def test_influence_stages_patchscope_and_retrieval_match_the_unsplit_model(models):
    plain, split = models
    text = " ".join(p.text for p in PROMPTS * 3)
    expected, got = influence(plain, text, 8, 1, text), influence(split, text, 8, 1, text)
    assert got.bi == pytest.approx(expected.bi, rel=1e-4)
    assert got.prune.perplexity == pytest.approx(expected.prune.perplexity, rel=1e-4)
    stages, split_stages = stage_map(plain, PROMPTS), stage_map(split, PROMPTS)
    for block, split_block in zip(stages.blocks, split_stages.blocks):
        assert vars(split_block) == pytest.approx(vars(block), rel=1e-3, abs=1e-5)
    ids = plain.encode(PROMPTS[1].text)
    report = run_patchscope(plain, ids, parse_target(plain), None, 3, 2)
    split_report = run_patchscope(split, ids, parse_target(split), None, 3, 2)
    assert split_report.precision.patchscope == report.precision.patchscope
    assert [[c.top[0].id for c in row] for row in split_report.grid.cells] == [
        [c.top[0].id for c in row] for row in report.grid.cells
    ]
    needle = Needle("the red cat is in paris", "where is the red cat", "paris")
    test = build_tests(plain, " ".join(p.text for p in PROMPTS * 4), [needle], [20], [50])[0]
    assert run_test(split, test, 4) == run_test(plain, test, 4)


def test_device_map_auto_from_the_command_line_loader(models, tmp_path):
    """`--device-map auto` loads through accelerate; on a CPU-only machine every block lands on the CPU."""
    plain, _ = models
    plain.model.save_pretrained(tmp_path)
    plain.tokenizer.save_pretrained(tmp_path)
    auto = load_model(str(tmp_path), device="cpu", device_map="auto")
    ids = plain.encode(PROMPTS[0].text)
    torch.testing.assert_close(lens_logits(auto, ids)[1], lens_logits(plain, ids)[1], **TOLERANCE)
