"""Tuned lens: the identity lens is the logit lens; training lowers held-out KL; saving, resuming and the
tuned-lens project's files load back exactly."""

from __future__ import annotations

import json
import random
import re

import pytest
import safetensors.torch
import torch
from safetensors import safe_open
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
            kls.append(
                torch.nn.functional.kl_div(
                    torch.log_softmax(logits.float(), -1), final, log_target=True, reduction="batchmean"
                ).item()
            )
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
    assert comparison.lens_kl[:-1] == pytest.approx(reference_kl(lm, lens, ids), abs=1e-4, rel=1e-4)
    assert comparison.lens_kl[-1] == pytest.approx(0, abs=1e-6)
    # a random tiny model is close to uniform everywhere: small KLs, but every row lower on unseen text
    assert sum(comparison.lens_kl) < 0.8 * sum(comparison.logit_lens_kl)
    assert all(tuned < logit for tuned, logit in zip(comparison.lens_kl[:-1], comparison.logit_lens_kl[:-1]))


def interrupted_at(train, out) -> int:
    """Run `train(progress)` with a Ctrl-C after step 4; the step its checkpoint in `out` says it reached."""

    def interrupt(done, total, description):
        if done == 4:
            raise KeyboardInterrupt

    try:  # not pytest.raises: pytest ends the session on a KeyboardInterrupt
        train(interrupt)
    except KeyboardInterrupt:
        return checkpoint_step(out)
    raise AssertionError("the training was not interrupted")


def checkpoint_step(out) -> int:
    """The step a checkpoint says it reached (its metadata), read with safetensors itself."""
    with safe_open(str(out / "checkpoint.safetensors"), "pt") as file:
        return json.loads(file.metadata()["layerscope_checkpoint"])["step"]


def test_save_load_and_resume_after_interruption(tmp_path):
    lm = tiny_model("gpt2")
    text = word_text(300, 3)
    settings = TrainSettings(steps=6, context=16, lr=1e-2)
    straight = train_tuned_lens(lm, text, tmp_path / "straight", settings)

    assert (
        interrupted_at(
            lambda progress: train_tuned_lens(lm, text, tmp_path / "resumed", settings, progress, save_every=3),
            tmp_path / "resumed",
        )
        == 4
    )
    with pytest.raises(LayerscopeError, match="different training"):
        train_tuned_lens(lm, text, tmp_path / "resumed", TrainSettings(steps=7, context=16, lr=1e-2))
    resumed = train_tuned_lens(lm, text, tmp_path / "resumed", settings)
    assert not (tmp_path / "resumed" / "checkpoint.safetensors").is_file()
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    loaded = load_tuned_lens(lm, tmp_path / "straight")
    for a, b in zip(straight.parameters(), loaded.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_published_lens_files_load_without_unpickling(tmp_path):
    lm = tiny_model("llama")
    translators = torch.nn.ModuleList(torch.nn.Linear(64, 64) for _ in range(lm.n_blocks))
    torch.save(translators.state_dict(), tmp_path / "params.pt")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "base_model_name_or_path": "tiny-llama",
                "d_model": 64,
                "num_hidden_layers": lm.n_blocks,
                "bias": True,
                "lens_type": "linear_tuned_lens",
            }
        )
    )
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
    trained = runner.invoke(
        app,
        ["tunedlens", "train", "--text", str(calibration), "--steps", "3", "--context", "16", "--out", str(lens_dir)],
    )
    assert trained.exit_code == 0, trained.output
    assert (lens_dir / "lens.safetensors").is_file()
    assert json.loads((lens_dir / "config.json").read_text())["num_hidden_layers"] == lm.n_blocks
    grid = runner.invoke(
        app, ["lens", "-p", "the cat sat on", "--method", "tuned", "--lens", str(lens_dir), "-f", "json"]
    )
    assert grid.exit_code == 0, grid.output
    data = json.loads(grid.stdout)
    assert data["method"] == "tuned_lens" and len(data["cells"]) == lm.n_blocks + 1
    compared = runner.invoke(app, ["tunedlens", "eval", "--lens", str(lens_dir), "--text", str(heldout), "-f", "csv"])
    assert compared.exit_code == 0, compared.output
    assert compared.stdout.splitlines()[0] == "layer,logit_lens_kl,tuned_lens_kl"
    for args in (
        ["lens", "-p", "the cat", "--method", "tuned"],
        ["lens", "-p", "the cat", "--method", "tuned", "--lens", str(tmp_path / "none")],
    ):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1


# Files that are not whole or not a lens, and trainings that diverge.


def _saved_lens(directory):
    lm = tiny_model("llama")
    lens = TunedLens(64, lm.n_blocks, lm.name)
    with torch.no_grad():
        for parameter in lens.parameters():
            parameter.normal_(std=0.01)
    lens.save(directory)
    return lm, lens


@pytest.mark.parametrize(
    "config, message",
    [
        ("{not json", "cannot be read as a tuned lens config"),
        ("[1, 2]", "not a tuned lens config (a JSON object)"),
        ('{"d_model": "64", "num_hidden_layers": 4}', "must be positive whole numbers, not '64' and 4"),
        ('{"d_model": true, "num_hidden_layers": 4}', "not True and 4"),
        ('{"d_model": 64, "num_hidden_layers": 0}', "not 64 and 0"),
        ('{"d_model": 99999999999, "num_hidden_layers": 4}', "hidden size 99999999999"),  # checked before it is built
        ('{"d_model": 32, "num_hidden_layers": 4}', "hidden size 32 and 4 blocks; "),
    ],
)
def test_a_lens_config_that_is_not_one_is_named(tmp_path, config, message):
    lm, _ = _saved_lens(tmp_path)
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(LayerscopeError, match=re.escape(message)) as error:
        load_tuned_lens(lm, tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_truncated_or_non_finite_lens_is_one_line_naming_the_file(tmp_path):
    lm, lens = _saved_lens(tmp_path)
    weights = tmp_path / "lens.safetensors"
    whole = weights.read_bytes()
    for length in (0, 7, len(whole) // 2, len(whole) - 1):
        weights.write_bytes(whole[:length])
        with pytest.raises(LayerscopeError, match=f"The tuned lens weights '{weights}' cannot be read"):
            load_tuned_lens(lm, tmp_path)
    state = {k: v.clone() for k, v in lens.translators.state_dict().items()}
    state["2.bias"][5] = float("nan")
    safetensors.torch.save_file(state, weights)
    with pytest.raises(LayerscopeError, match=r"not finite \(2.bias\)"):
        load_tuned_lens(lm, tmp_path)
    with pytest.raises(LayerscopeError, match="not finite"):  # nor is one saved
        broken = TunedLens(64, lm.n_blocks)
        with torch.no_grad():
            broken.translators[1].weight[0, 0] = float("inf")
        broken.save(tmp_path / "broken")
    assert not (tmp_path / "broken" / "lens.safetensors").exists()


def test_a_cut_lens_through_the_cli_is_one_error_line(tmp_path, monkeypatch):
    lm, _ = _saved_lens(tmp_path)
    monkeypatch.setattr("layerscope.cli.common.ModelOptions.load", lambda options: lm)
    weights = tmp_path / "lens.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    for args in (
        ["lens", "-p", "the cat", "--method", "tuned", "--lens", str(tmp_path)],
        ["tunedlens", "eval", "--lens", str(tmp_path)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: The tuned lens weights") and str(weights) in lines[0]


def test_a_kill_while_saving_a_checkpoint_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """The save is cut after half the bytes (as a kill would): the checkpoint of step 3 still loads, and the
    training resumed from it ends where an uninterrupted one does."""
    import layerscope.analyses.tuned_lens as module

    lm = tiny_model("gpt2")
    text = word_text(300, 3)
    settings = TrainSettings(steps=6, context=16, lr=1e-2)
    straight = train_tuned_lens(lm, text, tmp_path / "straight", settings)
    out = tmp_path / "resumed"
    real_save = module.save_file

    def cut_at_step_4(tensors, path, metadata=None):
        real_save(tensors, path, metadata)
        if json.loads(metadata["layerscope_checkpoint"])["step"] == 4:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt

    monkeypatch.setattr(module, "save_file", cut_at_step_4)

    def interrupt(done, total, description):
        if done == 4:
            raise KeyboardInterrupt  # the interrupt's own save is cut in turn

    try:
        train_tuned_lens(lm, text, out, settings, interrupt, save_every=3)
        raise AssertionError("the training was not interrupted")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(module, "save_file", real_save)
    assert checkpoint_step(out) == 3 and sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors"]
    resumed = train_tuned_lens(lm, text, out, settings)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda out: (out / "checkpoint.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{"),
            "The checkpoint .* cannot be read",
        ),
        (lambda out: _rewrite_checkpoint(out, metadata="{not json"), "cannot be read"),
        (lambda out: _rewrite_checkpoint(out, metadata='{"step": "3", "recipe": {}}'), "does not hold a checkpoint"),
        (lambda out: _rewrite_checkpoint(out, metadata=None, legacy="{not json"), "checkpoint.json.*cannot be read"),
        (lambda out: _rewrite_checkpoint(out, shape=(3, 3)), "does not fit this lens"),
        (lambda out: _rewrite_checkpoint(out, optimizer_shape=(2,)), "optimizer state .* does not fit"),
        (lambda out: _rewrite_checkpoint(out, nan=True), "not finite"),
    ],
)
def test_a_damaged_checkpoint_is_one_error_naming_it(tmp_path, damage, message):
    lm = tiny_model("gpt2")
    text = word_text(300, 3)
    settings = TrainSettings(steps=6, context=16, lr=1e-2)
    out = tmp_path / "lens"
    assert interrupted_at(lambda progress: train_tuned_lens(lm, text, out, settings, progress, save_every=3), out) == 4
    damage(out)
    with pytest.raises(LayerscopeError, match=message):
        train_tuned_lens(lm, text, out, settings)


def _rewrite_checkpoint(
    out, metadata: str | None = "", legacy: str | None = None, shape=None, optimizer_shape=None, nan=False
):
    """The checkpoint in `out` written again with one thing changed ("" keeps its metadata)."""
    path = out / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as file:
        tensors = {key: file.get_tensor(key) for key in file.keys()}
        kept = file.metadata()
    weight = next(key for key in tensors if key.startswith("lens.") and key.endswith("weight"))
    if shape is not None:
        tensors[weight] = torch.zeros(shape)
    if optimizer_shape is not None:
        key = next(key for key in tensors if key.endswith("exp_avg"))
        tensors[key] = torch.zeros(optimizer_shape)
    if nan:
        tensors[weight][0, 0] = float("nan")
    new = kept if metadata == "" else None if metadata is None else {"layerscope_checkpoint": metadata}
    safetensors.torch.save_file(tensors, path, new)
    if legacy is not None:
        (out / "checkpoint.json").write_text(legacy)


def test_a_diverging_training_is_refused_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """The loss of step 3 turns NaN (the real loss times NaN, so its gradients are NaN too): the training stops
    there, the checkpoint of step 2 is kept, and no lens is saved."""
    import layerscope.analyses.tuned_lens as module

    lm = tiny_model("llama")
    real_losses = module._row_losses
    steps = []

    def nan_at_step_3(*args):
        steps.append(None)
        for loss in real_losses(*args):
            yield loss * float("nan") if len(steps) == 3 else loss

    monkeypatch.setattr(module, "_row_losses", nan_at_step_3)
    out = tmp_path / "lens"
    with pytest.raises(LayerscopeError, match="diverged at step 3"):
        train_tuned_lens(lm, word_text(300, 3), out, TrainSettings(steps=5, context=16, lr=1e-2), save_every=1)
    assert checkpoint_step(out) == 2 and not (out / "lens.safetensors").exists()


@pytest.mark.parametrize("lr", [0.0, -1.0, 1.5, float("inf"), float("nan"), 1e39])
def test_learning_rates_past_what_adam_takes_are_refused(lr):
    with pytest.raises(LayerscopeError, match="learning rate must be positive and at most 1"):
        TrainSettings(lr=lr).check()
