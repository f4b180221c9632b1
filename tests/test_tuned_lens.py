"""Tuned lens: the identity lens is the logit lens; training lowers held-out KL; saving, resuming and the
tuned-lens project's files load back exactly."""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

from layerscope.analyses.lens import logit_lens
from layerscope.analyses.tuned_lens import (
    TrainSettings,
    TunedLens,
    compare_lenses,
    load_tuned_lens,
    train_tuned_lens,
    tuned_lens,
)
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from tests.tiny import WORDS, random_ids, tiny_model


def word_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def reference_kl(lm, lens: TunedLens | None, ids) -> list[float]:
    """Per row, mean KL(final || lens) with HF's hidden states and the model's own norm and head."""
    with torch.no_grad():
        output = lm.model(input_ids=ids, output_hidden_states=True)
        final = torch.log_softmax(output.logits[0].float(), -1)
        states = list(output.hidden_states[:-1])
        kls = []
        for row, state in enumerate(states):
            hidden = state[0] if lens is None else state[0] + lens.translators[row](state[0])
            logits = lm.adapter.unembed(lm.adapter.final_norm(hidden))
            kls.append(torch.nn.functional.kl_div(torch.log_softmax(logits.float(), -1), final, log_target=True,
                                                  reduction="batchmean").item())
    return kls


def test_identity_lens_is_the_logit_lens():
    lm = tiny_model("llama")
    ids = random_ids(8, seed=1)
    lens = TunedLens(64, lm.n_blocks)
    tuned, logit = tuned_lens(lm, ids, lens), logit_lens(lm, ids)
    assert tuned.method == "tuned_lens" and tuned.layers == logit.layers
    for tuned_row, logit_row in zip(tuned.cells, logit.cells):
        for a, b in zip(tuned_row, logit_row):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=1e-6)


def test_training_lowers_heldout_kl_and_matches_hand_computation(tmp_path):
    lm = tiny_model("llama")
    lens = train_tuned_lens(lm, word_text(600, 1), tmp_path, TrainSettings(steps=30, context=32, lr=1e-2))
    heldout = word_text(120, 2)
    comparison = compare_lenses(lm, lens, heldout)
    ids = lm.encode(heldout)
    # rows 0..L-1 against HF's hidden states (the last hidden state is post-norm there, so it is left out)
    assert comparison.logit_lens_kl[:-1] == pytest.approx(reference_kl(lm, None, ids), abs=1e-4, rel=1e-4)
    assert comparison.tuned_lens_kl[:-1] == pytest.approx(reference_kl(lm, lens, ids), abs=1e-4, rel=1e-4)
    assert comparison.tuned_lens_kl[-1] == pytest.approx(0, abs=1e-6)
    # a random tiny model is close to uniform everywhere: small KLs, but every row lower on unseen text
    assert sum(comparison.tuned_lens_kl) < 0.8 * sum(comparison.logit_lens_kl)
    assert all(t < l for t, l in zip(comparison.tuned_lens_kl[:-1], comparison.logit_lens_kl[:-1]))


def interrupted_at(train, out) -> int:
    """Run `train(progress)` with a Ctrl-C after step 4; the step its checkpoint in `out` says it reached."""
    def interrupt(done, total, description):
        if done == 4:
            raise KeyboardInterrupt

    try:  # not pytest.raises: pytest ends the session on a KeyboardInterrupt
        train(interrupt)
    except KeyboardInterrupt:
        return json.loads((out / "checkpoint.json").read_text())["step"]
    raise AssertionError("the training was not interrupted")


def test_save_load_and_resume_after_interruption(tmp_path):
    lm = tiny_model("gpt2")
    text = word_text(300, 3)
    settings = TrainSettings(steps=6, context=16, lr=1e-2)
    straight = train_tuned_lens(lm, text, tmp_path / "straight", settings)

    assert interrupted_at(lambda progress: train_tuned_lens(lm, text, tmp_path / "resumed", settings, progress,
                                                            save_every=3), tmp_path / "resumed") == 4
    with pytest.raises(LayerscopeError, match="different training"):
        train_tuned_lens(lm, text, tmp_path / "resumed", TrainSettings(steps=7, context=16, lr=1e-2))
    resumed = train_tuned_lens(lm, text, tmp_path / "resumed", settings)
    assert not (tmp_path / "resumed" / "checkpoint.json").is_file()
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    loaded = load_tuned_lens(lm, tmp_path / "straight")
    for a, b in zip(straight.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_published_lens_files_load_without_unpickling(tmp_path):
    lm = tiny_model("llama")
    translators = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(lm.n_blocks))
    torch.save(translators.state_dict(), tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(json.dumps(
        {"base_model_name_or_path": "x", "d_model": 64, "num_hidden_layers": lm.n_blocks, "bias": True,
         "lens_type": "linear_tuned_lens"}))
    lens = load_tuned_lens(lm, tmp_path)
    state = torch.randn(3, 64)
    torch.testing.assert_close(lens.translate(2, state), state + translators[2](state).detach())

    torch.save({"0.weight": torch.nn.Linear(2, 2)}, tmp_path / "params.pt")  # a pickled module, not tensors
    with pytest.raises(LayerscopeError, match="plain tensors"):
        load_tuned_lens(lm, tmp_path)


def test_lens_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    lm = tiny_model("llama")
    TunedLens(64, lm.n_blocks + 2).save(tmp_path / "deeper")
    with pytest.raises(LayerscopeError, match="6 blocks"):
        load_tuned_lens(lm, tmp_path / "deeper")
    with pytest.raises(LayerscopeError, match="config.json is missing"):
        load_tuned_lens(lm, tmp_path / "nowhere")


def test_cli_train_lens_and_eval(tmp_path, monkeypatch):
    lm = tiny_model("llama")
    monkeypatch.setattr("layerscope.cli.common.ModelOptions.load", lambda options: lm)
    calibration, heldout = tmp_path / "cal.txt", tmp_path / "held.txt"
    calibration.write_text(word_text(300, 4))
    heldout.write_text(word_text(100, 5))
    runner = CliRunner()
    lens_dir = tmp_path / "lens"
    trained = runner.invoke(app, ["tunedlens", "train", "--text", str(calibration), "--steps", "3", "--context", "16",
                                  "--out", str(lens_dir)])
    assert trained.exit_code == 0, trained.output
    assert (lens_dir / "lens.safetensors").is_file()
    assert json.loads((lens_dir / "config.json").read_text())["num_hidden_layers"] == lm.n_blocks
    grid = runner.invoke(app, ["lens", "-p", "the cat sat on", "--method", "tuned", "--lens", str(lens_dir),
                               "-f", "json"])
    assert grid.exit_code == 0, grid.output
    data = json.loads(grid.stdout)
    assert data["method"] == "tuned_lens" and len(data["cells"]) == lm.n_blocks + 1
    compared = runner.invoke(app, ["tunedlens", "eval", "--lens", str(lens_dir), "--text", str(heldout),
                                   "-f", "csv"])
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.splitlines()[0] == "layer,logit_lens_kl,tuned_lens_kl"
    for args in (["lens", "-p", "the cat", "--method", "tuned"],
                 ["lens", "-p", "the cat", "--method", "tuned", "--lens", str(tmp_path / "none")]):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
