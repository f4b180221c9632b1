"""The lens over generated text against independent computations: HF `generate` for the tokens, the plain lens
over the whole text for the cells, a model rebuilt without a block for a drop."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch

from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.grid import DecodeGrid, divergence
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.lens_generate import lens_generate
from layerscope.analyses.tuned_lens import TunedLens, tuned_lens
from layerscope.errors import LayerscopeError
from layerscope.interventions import DropBlocks, FreezeFrom
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel
from tests.manual import rebuilt_without
from tests.tiny import VOCAB, random_ids, tiny_model
from tests.tolerance import entropy_bits_atol, kl_atol, model_delta, probability_atol


def hf_greedy(model, ids: torch.Tensor, new_tokens: int) -> list[int]:
    with torch.no_grad():
        output = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False, pad_token_id=1
        )
    return output[0].tolist()


def random_lens(lm: LoadedModel, seed: int = 0) -> TunedLens:
    """A tuned lens whose translators move every state (a trained one's would): random weights."""
    lens = TunedLens(lm.adapter.model.config.hidden_size, lm.n_blocks)
    torch.manual_seed(seed)
    for translator in lens.translators:
        torch.nn.init.normal_(translator.weight, std=0.1)
    return lens


def assert_grids_match(got: DecodeGrid, want: DecodeGrid, lm: LoadedModel, rows: list[int] | None = None) -> None:
    """Cell by cell within the tolerances of a reordered sum (tests/tolerance.py), `rows` of `got` against all of
    `want`'s; the top-1 ids equal."""
    ids = torch.tensor([want.token_ids])
    with torch.no_grad():
        magnitude = float(lm.model(ids).logits.abs().max())
    delta = model_delta(lm, magnitude)
    picked = [got.cells[row] for row in rows] if rows is not None else got.cells
    assert len(picked) == len(want.cells)
    for got_row, want_row in zip(picked, want.cells):
        assert len(got_row) == len(want_row)
        for a, b in zip(got_row, want_row):
            assert a.top[0].id == b.top[0].id
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=probability_atol(delta))
            assert math.isclose(a.entropy_bits, b.entropy_bits, abs_tol=entropy_bits_atol(delta, VOCAB))
            assert math.isclose(a.kl_to_final, b.kl_to_final, abs_tol=kl_atol(delta, VOCAB))


@pytest.mark.parametrize("family", ["llama", "qwen2"])  # qwen2: a sliding window shorter than the text
def test_tokens_are_hf_generate_and_cells_the_lens_over_the_whole_text(family):
    lm, ids = tiny_model(family), random_ids(7)
    grid = lens_generate(lm, ids, 6, top_k=3)
    assert grid.token_ids == hf_greedy(lm.model, ids, 6)
    assert grid.prompt_length == 7 and [grid.generated(p) for p in (6, 7)] == [False, True]
    assert grid.tokens == lm.token_texts(grid.token_ids)
    assert_grids_match(grid, logit_lens(lm, torch.tensor([grid.token_ids]), top_k=3), lm)


def test_zero_new_tokens_is_the_plain_lens():
    lm, ids = tiny_model("llama"), random_ids(9, seed=2)
    grid = lens_generate(lm, ids, 0)
    plain = logit_lens(lm, ids)
    assert grid.token_ids == plain.token_ids and grid.prompt_length == 9
    assert_grids_match(grid, plain, lm)
    assert not any(grid.generated(p) for p in range(9))
    assert grid.records().columns == (*plain.records().columns, "generated")


def test_a_drop_generates_and_decodes_as_the_model_rebuilt_without_the_block():
    lm, ids = tiny_model("llama"), random_ids(6, seed=1)
    grid = lens_generate(lm, ids, 8, interventions=[DropBlocks((2,))])
    rebuilt = rebuilt_without(lm.model, {2})
    assert grid.token_ids == hf_greedy(rebuilt, ids, 8)
    assert grid.token_ids != lens_generate(lm, ids, 8).token_ids  # the drop matters here
    reference = LoadedModel(name="rebuilt", model=rebuilt, tokenizer=lm.tokenizer, adapter=ModelAdapter(rebuilt))
    want = logit_lens(reference, torch.tensor([grid.token_ids]))
    assert_grids_match(grid, want, reference, rows=[0, 1, 2, 4])  # row 3, block 2's output, is its input


def test_a_position_edit_acts_on_the_prompt_pass_only():
    """Freezing acts on the prompt, the continuation decodes from the frozen cache: the tokens HF generate
    gives under the same intervention (which is what `greedy_continuation` runs)."""
    lm, ids = tiny_model("llama"), random_ids(8, seed=4)
    freeze = [FreezeFrom(1)]
    grid = lens_generate(lm, ids, 6, interventions=freeze)
    assert grid.token_ids[8:] == greedy_continuation(lm, ids, 6, freeze).token_ids


def test_the_tuned_lens_over_generated_text():
    lm, ids = tiny_model("llama"), random_ids(7, seed=5)
    lens = random_lens(lm)
    grid = lens_generate(lm, ids, 5, lens=lens)
    assert grid.method == "tuned_lens"
    assert_grids_match(grid, tuned_lens(lm, torch.tensor([grid.token_ids]), lens), lm)


def test_divergence_is_the_first_generated_position_that_differs():
    def grid(ids: list[int]) -> DecodeGrid:
        return DecodeGrid("m", "logit_lens", [""] * len(ids), ids, [], [], prompt_length=3)

    assert divergence(grid([5, 6, 7, 8, 9]), grid([5, 6, 7, 8, 2])) == 4
    assert divergence(grid([5, 6, 7, 8]), grid([5, 6, 7, 8])) is None
    assert divergence(grid([5, 6, 7, 8]), grid([5, 6, 7, 8, 1])) == 4  # one ended earlier
    assert divergence(grid([5, 6, 7, 8]), grid([1, 6, 7, 8])) is None  # the prompts' edits are not continuations


def test_bad_arguments_name_the_parameter():
    lm, ids = tiny_model("llama"), random_ids(4)
    with pytest.raises(LayerscopeError, match="max_new_tokens"):
        lens_generate(lm, ids, -1)
    with pytest.raises(LayerscopeError, match="lens="):
        lens_generate(lm, ids, 2, lens="not a lens")  # type: ignore[arg-type]
    with pytest.raises(LayerscopeError, match="context"):
        lens_generate(lm, ids, 10_000)


def test_demo_continues_as_generate_does(demo_lm):
    ids = demo_lm.encode("The capital of France is")
    grid = lens_generate(demo_lm, ids, 4)
    prompt = ids.shape[1]
    assert grid.token_ids[prompt:] == greedy_continuation(demo_lm, ids, 4).token_ids
    last = grid.cells[-1]
    assert [last[p].top[0].id for p in range(prompt - 1, len(grid.token_ids) - 1)] == grid.token_ids[prompt:]
    assert grid.to_dict()["prompt_length"] == prompt and DecodeGrid.from_dict(grid.to_dict()) == grid


def test_cli_outputs_mark_the_generated_tokens(tiny_dir, tmp_path):
    """JSON, CSV, the table and the figure of `lens --generate` all say which tokens were generated."""
    from tests.studies import invoke

    base = ["lens", "--model", str(tiny_dir), "--prompt", "the cat sat", "--generate", "3"]
    data = json.loads(invoke(*base, "--format", "json", "--figure", str(tmp_path / "grid.png")).stdout)
    assert data["prompt_length"] == 3 and len(data["token_ids"]) == 6
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    lines = list(csv.DictReader(io.StringIO(invoke(*base, "--format", "csv").stdout)))
    assert {(int(line["position"]), line["generated"]) for line in lines} == {
        (position, str(position >= 3)) for position in range(6)
    }
    table = invoke(*base).stdout.splitlines()
    assert table[0].count("+") == 3 and table[-1] == "+ marks the 3 generated tokens after the 3-token prompt"
    plain = json.loads(invoke(*base[:-2], "--format", "json").stdout)
    assert "prompt_length" not in plain and plain["cells"] == [row[:3] for row in data["cells"]]


def test_run_interventions_with_grids_over_the_continuations(tiny_dir):
    """Each grid is its run's `lens_generate`, the continuations are HF generate's, the comparison stays the
    prompt's; `run --generate` writes the same, with the divergence."""
    from layerscope.analyses.compare import run_interventions
    from tests.studies import invoke

    lm, ids, drop = tiny_model("llama"), random_ids(6, seed=1), [DropBlocks((2,))]
    report = run_interventions(lm, ids, drop, top_k=3, max_new_tokens=8, lens_over_continuation=True)
    plain = run_interventions(lm, ids, drop, top_k=3, max_new_tokens=8)
    assert report.baseline == lens_generate(lm, ids, 8, top_k=3)
    assert report.intervened == lens_generate(lm, ids, 8, top_k=3, interventions=drop)
    assert report.continuation == plain.continuation and report.comparison == plain.comparison
    assert report.diverges_at == divergence(report.baseline, report.intervened) is not None
    assert report.to_dict()["diverges_at"] == report.diverges_at and "diverges_at" not in plain.to_dict()
    data = json.loads(
        invoke("run", "--model", str(tiny_dir), "-p", "the cat sat", "--drop", "1", "--generate", "-f", "json").stdout
    )
    assert data["baseline"]["prompt_length"] == data["intervened"]["prompt_length"] == 3
    assert data["diverges_at"] == divergence(*(DecodeGrid.from_dict(data[name]) for name in ("baseline", "intervened")))
