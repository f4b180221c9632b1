"""Jacobian lens: the fitted matrices are the definition computed by hand with torch.autograd.functional.jacobian;
the identity lens is the logit lens; saved lenses load back exactly and a lens of another shape or kind is refused."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from typer.testing import CliRunner

from layerscope.analyses.jacobian_lens import (
    FitSettings,
    JacobianLens,
    fit_jacobian_lens,
    jacobian_lens,
    load_jacobian_lens,
    read_lens,
)
from layerscope.analyses.lens import logit_lens
from layerscope.analyses.tuned_lens import (
    LensMismatchWarning,
    TunedLens,
    calibration_chunks,
    compare_lenses,
    load_tuned_lens,
)
from layerscope.cli.app import app
from layerscope.errors import ArgumentValueError, LayerscopeError
from tests.test_tuned_lens import word_text
from tests.tiny import random_ids, tiny_model
from tests.tolerance import kl_atol, model_delta

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


SETTINGS = FitSettings(max_prompts=2, context=10, skip_first=2, dim_batch=5)  # 64 dims: 12 passes of 5, one of 4


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama")


def final_row_of(lm, row: int, ids: torch.Tensor):
    """x (1, tokens, hidden) -> the last block's output (1, tokens, hidden) with grid row `row` set to x: plain
    torch hooks (row 0 is block 0's input, row r block r-1's output)."""
    blocks = lm.adapter.blocks

    def final(x: torch.Tensor) -> torch.Tensor:
        kept = []

        def keep_last(module, args, output):
            kept.append(output[0] if isinstance(output, tuple) else output)

        def set_output(module, args, output):
            return (x, *output[1:]) if isinstance(output, tuple) else x

        if row == 0:
            handle = blocks[0].register_forward_pre_hook(lambda module, args: (x, *args[1:]) if args else None)
            assert handle is not None
        else:
            handle = blocks[row - 1].register_forward_hook(set_output)
        last = blocks[-1].register_forward_hook(keep_last)
        try:
            lm.model(input_ids=ids, use_cache=False)
        finally:
            handle.remove()
            last.remove()
        return kept[0]

    return final


def row_state(lm, row: int, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        states = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return states[row].detach()  # rows 0..L-1 are HF's hidden states before the last (which is post-norm)


def hand_lens(lm, prompts: list[torch.Tensor], skip_first: int) -> tuple[torch.Tensor, float]:
    """J_r by the definition, per row r in 0..L-1, averaged over the prompts (token ids (tokens,) each); and the
    largest sum of |terms| of one entry."""
    total, magnitude = 0, 0.0
    for ids in prompts:
        valid = range(skip_first, len(ids) - 1)
        rows = []
        for row in range(lm.n_blocks):
            full = torch.autograd.functional.jacobian(final_row_of(lm, row, ids[None]), row_state(lm, row, ids[None]))
            per_position = full[0][:, :, 0][list(valid)][:, :, list(valid)]  # (t', out, t, in)
            magnitude = max(magnitude, per_position.abs().sum(0).max().item())
            rows.append(per_position.sum(0).mean(1))  # sum over targets t', mean over sources t
        total = total + torch.stack(rows)
    return total / len(prompts), magnitude


def test_fit_is_the_definition_by_hand(lm):
    text = word_text(60, 3)
    lens = fit_jacobian_lens(lm, text, SETTINGS)
    want, magnitude = hand_lens(lm, list(calibration_chunks(lm, text, 10)[:2]), SETTINGS.skip_first)
    assert lens.n_prompts == 2 and lens.matrices.shape == (lm.n_blocks, 64, 64)
    # the same float32 Jacobian: another batch shape and another order of the backward sums
    delta = model_delta(lm, magnitude)
    assert (lens.matrices - want).abs().max().item() <= delta
    assert (want - torch.eye(64)).abs().max().item() > 100 * delta  # far from the logit lens: the test can fail


def test_a_list_of_texts_is_one_prompt_each_cut_to_the_context(lm):
    texts = [word_text(20, 5), word_text(7, 6), word_text(30, 7)]
    settings = FitSettings(max_prompts=2, context=12, skip_first=1, dim_batch=16)
    lens = fit_jacobian_lens(lm, texts, settings)
    prompts = [lm.encode(text)[0, :12] for text in texts[:2]]
    assert [len(ids) for ids in prompts] == [12, 7] and lens.n_prompts == 2
    want, magnitude = hand_lens(lm, prompts, 1)
    assert (lens.matrices - want).abs().max().item() <= model_delta(lm, magnitude)
    with pytest.raises(LayerscopeError, match="Prompt 2 has 7 tokens; with skip_first=6 a prompt needs at least 8"):
        fit_jacobian_lens(lm, texts, FitSettings(context=12, skip_first=6))


def test_identity_lens_is_the_logit_lens(lm):
    ids = random_ids(8, seed=1)
    lens = JacobianLens(torch.eye(64).repeat(lm.n_blocks, 1, 1), 1)
    jacobian, logit = jacobian_lens(lm, ids, lens), logit_lens(lm, ids)
    assert jacobian.method == "jacobian_lens" and jacobian.layers == logit.layers
    for jacobian_row, logit_row in zip(jacobian.cells, logit.cells, strict=True):
        for a, b in zip(jacobian_row, logit_row, strict=True):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=1e-6)


def test_grid_decodes_the_moved_states(lm):
    """Row r of the grid is the final norm and unembedding of J_r h_r; the last row is the model's output."""
    ids = random_ids(8, seed=2)
    generator = torch.Generator().manual_seed(0)
    lens = JacobianLens(torch.randn(lm.n_blocks, 64, 64, generator=generator) / 8, 1)
    grid = jacobian_lens(lm, ids, lens, top_k=3)
    with torch.no_grad():
        output = lm.model(input_ids=ids, output_hidden_states=True)
        for row in range(lm.n_blocks):
            moved = output.hidden_states[row][0] @ lens.matrices[row].T
            probs = torch.softmax(lm.adapter.unembed(lm.adapter.final_norm(moved)).float(), -1)
            assert [c.top[0].id for c in grid.cells[row]] == probs.argmax(-1).tolist()
            assert [c.top[0].prob for c in grid.cells[row]] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)
        assert [c.top[0].id for c in grid.cells[-1]] == output.logits[0].argmax(-1).tolist()


def test_save_load_round_trip_and_refusals(lm, tmp_path):
    lens = fit_jacobian_lens(lm, word_text(40, 4), FitSettings(max_prompts=1, context=8, skip_first=1, dim_batch=64))
    lens.save(tmp_path / "lens")
    loaded = load_jacobian_lens(lm, tmp_path / "lens")
    assert torch.equal(loaded.matrices, lens.matrices) and loaded.n_prompts == 1
    assert loaded.fitting == lens.fitting and loaded.fitting["skip_first"] == 1
    assert loaded.unembed_hash == lens.unembed_hash and isinstance(read_lens(lm, tmp_path / "lens")[0], JacobianLens)
    JacobianLens(lens.matrices[:3], 1).save(tmp_path / "short")
    with pytest.raises(LayerscopeError, match="hidden size 64 and 3 blocks; tiny-llama has hidden size 64 and 4"):
        load_jacobian_lens(lm, tmp_path / "short")
    with pytest.raises(LayerscopeError, match="lens= is for a model with hidden size 64 and 3 blocks"):
        jacobian_lens(lm, random_ids(4), JacobianLens(lens.matrices[:3], 1))
    TunedLens(64, lm.n_blocks).save(tmp_path / "tuned")
    with pytest.raises(LayerscopeError, match="not a Jacobian lens config: its format is 'layerscope-tuned-lens'"):
        load_jacobian_lens(lm, tmp_path / "tuned")
    with pytest.raises(LayerscopeError, match="not a tuned lens config: its format is 'layerscope-jacobian-lens'"):
        load_tuned_lens(lm, tmp_path / "lens")
    assert isinstance(read_lens(lm, tmp_path / "tuned")[0], TunedLens)
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert read_lens(lm, tmp_path / "lens")[1] is None
    broken = lens.matrices.clone()
    broken[2, 3, 4] = float("nan")
    with pytest.raises(LayerscopeError, match=r"has weights that are not finite \(J\): the model overflowed"):
        JacobianLens(broken, 1).save(tmp_path / "nan")
    assert not (tmp_path / "nan").exists()
    JacobianLens(lens.matrices, 1).save(tmp_path / "short")  # config of the right shape, then weights with a NaN
    safetensors.torch.save_file({"J": broken}, tmp_path / "short" / "lens.safetensors")
    with pytest.raises(LayerscopeError, match="not finite \\(J\\): the file is damaged"):
        load_jacobian_lens(lm, tmp_path / "short")
    safetensors.torch.save_file({"J": lens.matrices[:, :8].contiguous()}, tmp_path / "short" / "lens.safetensors")
    with pytest.raises(LayerscopeError, match=r"J must be floats shaped \(4, 64, 64\), not \(4, 8, 64\)"):
        load_jacobian_lens(lm, tmp_path / "short")
    (tmp_path / "lens" / "config.json").write_text(json.dumps({**config, "unembed_hash": "0" * 64}))
    with pytest.warns(LensMismatchWarning, match="was fitted for a model with another unembedding"):
        load_jacobian_lens(lm, tmp_path / "lens")


def test_bad_settings_are_refused(lm):
    with pytest.raises(ArgumentValueError, match="context=5 leaves no position to average over after skip_first=4"):
        fit_jacobian_lens(lm, "the cat", FitSettings(context=5, skip_first=4))
    with pytest.raises(LayerscopeError, match="it needs at least 10"):
        fit_jacobian_lens(lm, "the cat sat", SETTINGS)


def test_cli_fits_and_reads_the_lens_as_the_engine_does(lm, tmp_path):
    model, text = tmp_path / "model", tmp_path / "text.txt"
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    text.write_text(word_text(60, 3))
    fitted = invoke(
        "jacobianlens", "fit", "--model", model, "--text", text, "--max-prompts", "2", "--context", "10",
        "--skip-first", "2", "--dim-batch", "5", "--out", tmp_path / "lens",
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    assert "Jacobian lens (2 prompts) saved in" in fitted.stdout
    assert sorted(p.name for p in (tmp_path / "lens").iterdir()) == ["config.json", "lens.safetensors"]
    lens = load_jacobian_lens(lm, tmp_path / "lens")
    assert torch.equal(lens.matrices, fit_jacobian_lens(lm, text.read_text(), SETTINGS).matrices)
    prompt = "the cat sat on the mat"
    read = invoke(
        "lens", "--model", model, "-p", prompt, "--method", "jacobian", "--lens", tmp_path / "lens", "-f", "json"
    )
    assert read.exit_code == 0, read.output
    shown = json.loads(read.stdout)
    want = jacobian_lens(lm, lm.encode(prompt), lens).to_dict()
    assert shown["method"] == "jacobian_lens" and shown["layers"] == want["layers"]
    assert [[c["top"][0]["id"] for c in row] for row in shown["cells"]] == [
        [c["top"][0]["id"] for c in row] for row in want["cells"]
    ]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# two prompts\n{word_text(12, 8)}\n\n{word_text(9, 9)}\n")
    fitted = invoke(
        "jacobianlens", "fit", "--model", model, "--prompts", prompts, "--context", "10", "--skip-first", "1",
        "--out", tmp_path / "from-prompts",
    )  # fmt: skip
    assert fitted.exit_code == 0, fitted.output
    settings = FitSettings(context=10, skip_first=1)
    want_matrices = fit_jacobian_lens(lm, [word_text(12, 8), word_text(9, 9)], settings).matrices
    assert torch.equal(load_jacobian_lens(lm, tmp_path / "from-prompts").matrices, want_matrices)


def test_cli_refuses_a_lens_of_the_other_kind_or_none(lm, tmp_path):
    model = tmp_path / "model"
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    TunedLens(64, lm.n_blocks).save(tmp_path / "tuned")
    base = ["lens", "--model", model, "-p", "the cat"]
    config = model / "config.json"
    both = invoke("jacobianlens", "fit", "-m", model, "--text", config, "--prompts", config, "--out", tmp_path / "o")
    assert both.exit_code == 1 and both.stderr.startswith("error: Give --text (a text cut into prompts) or --prompts")
    for args, message in [
        (["--method", "jacobian", "--lens", tmp_path / "tuned"], "not a Jacobian lens config: its format is"),
        (["--method", "jacobian"], "--method tuned and --method jacobian need --lens DIR"),
        (["--lens", tmp_path / "tuned"], "--lens goes with one of them"),
    ]:
        result = invoke(*base, *args)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.output
        assert result.stderr.startswith("error: ") and message in result.stderr


def test_progress_counts_backward_passes_and_can_stop_the_fit(lm):
    """13 passes of 5 dims per prompt for 64 dims, told as they finish; a raise from progress stops the fit there
    and leaves the model's weights as they were (trainable)."""
    seen = []

    def progress(done, total, what):
        seen.append((done, total, what))
        if done == 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_jacobian_lens(lm, word_text(60, 3), SETTINGS, progress)
    assert seen == [(done, 26, "Jacobian lens") for done in range(16)]
    assert all(parameter.requires_grad for parameter in lm.model.parameters())


# Held-out KL against the logit lens (`compare_lenses`, `jacobianlens eval`).


def random_lens(lm, seed: int) -> JacobianLens:
    generator = torch.Generator().manual_seed(seed)
    return JacobianLens(torch.randn(lm.n_blocks, 64, 64, generator=generator) / 8, 1)


def test_comparison_is_the_mean_kl_of_the_moved_states_by_hand(lm):
    lens, heldout = random_lens(lm, 3), word_text(40, 6)
    comparison = compare_lenses(lm, lens, heldout)
    ids = lm.encode(heldout)
    with torch.no_grad():
        output = lm.model(input_ids=ids, output_hidden_states=True)
        final = torch.log_softmax(output.logits[0].float(), -1)
        rows = [
            lm.adapter.unembed(lm.adapter.final_norm(output.hidden_states[row][0] @ lens.matrices[row].T)).float()
            for row in range(lm.n_blocks)
        ]
    want = [(final.exp() * (final - torch.log_softmax(logits, -1))).sum(-1).mean().item() for logits in rows]
    magnitude = max(logits.abs().max().item() for logits in [*rows, output.logits[0].float()])
    atol = kl_atol(model_delta(lm, magnitude), final.shape[-1])
    assert comparison.kind == "jacobian" and comparison.tokens == ids.shape[1]
    assert comparison.lens_kl[:-1] == pytest.approx(want, abs=atol, rel=0)
    assert comparison.lens_kl[-1] == 0 and comparison.logit_lens_kl[-1] == 0
    assert min(want) > 10 * atol  # the check compares numbers well above its tolerance
    assert list(comparison.to_dict()) == ["layers", "logit_lens_kl", "jacobian_lens_kl", "tokens"]
    assert comparison.records().columns == ("layer", "logit_lens_kl", "jacobian_lens_kl")


def test_cli_eval_writes_the_comparison_and_refuses_the_other_kind(lm, tmp_path):
    model, heldout = tmp_path / "model", tmp_path / "heldout.txt"
    lm.model.save_pretrained(model)
    lm.tokenizer.save_pretrained(model)
    heldout.write_text(word_text(30, 7))
    lens = random_lens(lm, 4)
    lens.save(tmp_path / "jacobian")
    TunedLens(64, lm.n_blocks).save(tmp_path / "tuned")
    want = compare_lenses(lm, lens, heldout.read_text(), 16)
    base = ["--model", model, "--text", heldout, "--tokens", "16"]
    csv = invoke("jacobianlens", "eval", *base, "--lens", tmp_path / "jacobian", "-f", "csv")
    assert csv.exit_code == 0, csv.output
    lines = csv.stdout.splitlines()
    assert lines[0] == "layer,logit_lens_kl,jacobian_lens_kl" and len(lines) == lm.n_blocks + 2
    shown = invoke("jacobianlens", "eval", *base, "--lens", tmp_path / "jacobian", "-f", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == want.to_dict()  # the same model weights and lens, read back exactly
    table = invoke("jacobianlens", "eval", *base, "--lens", tmp_path / "jacobian")
    assert table.exit_code == 0 and "Jacobian lens" in table.stdout.splitlines()[1], table.output
    for command, folder, other in [("jacobianlens", "tuned", "tunedlens"), ("tunedlens", "jacobian", "jacobianlens")]:
        wrong = invoke(command, "eval", *base, "--lens", tmp_path / folder)
        assert wrong.exit_code == 1 and wrong.stderr.count("\n") == 1, wrong.output
        assert wrong.stderr.startswith("error: ") and str(tmp_path / folder) in wrong.stderr
        assert f"layerscope {other} eval" in wrong.stderr
    missing = invoke("jacobianlens", "eval", *base, "--lens", tmp_path / "none")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: No Jacobian lens in"), missing.output
