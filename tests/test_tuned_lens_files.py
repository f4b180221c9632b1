"""Tuned lens files and training dtype: the tuned-lens package's format on save (read back by its own loader), a
warning when a lens records another model, and the unembedding's dtype chosen from the device."""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from layerscope.analyses.tuned_lens import (
    LensMismatchWarning,
    TrainSettings,
    TunedLens,
    fast_bf16,
    load_tuned_lens,
    train_tuned_lens,
    unembed_hash,
)
from layerscope.cli.app import app
from tests.test_tuned_lens import word_text
from tests.tiny import tiny_model

runner = CliRunner()
PACKAGE_CONFIG_KEYS = {
    "base_model_name_or_path",
    "d_model",
    "num_hidden_layers",
    "bias",
    "base_model_revision",
    "unembed_hash",
    "lens_type",
}
"""The fields of the tuned-lens package's TunedLensConfig (0.2.0); it warns about any other key."""


def random_lens(lm, seed: int = 0) -> TunedLens:
    lens = TunedLens(64, lm.n_blocks, lm.name, unembed_hash(lm))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lens.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.01)
    return lens


def package_hash(weight: torch.Tensor) -> str:
    """tuned_lens.utils.tensor_hash of Unembed.unembedding_hash, written out: SHA-256 of numpy's summary."""
    return hashlib.sha256(str.encode(np.array_str(weight.detach().cpu().float().numpy(), precision=1))).hexdigest()


def test_tuned_lens_format_is_what_the_package_loader_expects(tmp_path):
    """The package's loader: config.json into TunedLensConfig (these keys only), `torch.load(params.pt)` into a
    ModuleList of num_hidden_layers Linear(d_model, d_model, bias) with a strict load_state_dict; layerscope reads
    the folder back bit for bit. Saving in one format removes the other's weights."""
    lm = tiny_model("llama")
    lens = random_lens(lm)
    lens.save(tmp_path, {"training": {"steps": 1}})
    lens.save(tmp_path, lens_format="tuned-lens")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "params.pt"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert set(config) == PACKAGE_CONFIG_KEYS
    assert (config["d_model"], config["num_hidden_layers"], config["bias"]) == (64, lm.n_blocks, True)
    assert config["unembed_hash"] == package_hash(lm.model.get_output_embeddings().weight)
    with np.printoptions(threshold=10**9, linewidth=200):  # the user's print options do not change the hash
        assert unembed_hash(lm) == config["unembed_hash"]
    state = torch.load(tmp_path / "params.pt", weights_only=True)
    translators = torch.nn.ModuleList(
        torch.nn.Linear(64, 64, bias=config["bias"]) for _ in range(config["num_hidden_layers"])
    )
    translators.load_state_dict(state, strict=True)
    for ours, theirs in zip(lens.translators.parameters(), translators.parameters()):
        assert torch.equal(ours, theirs)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LensMismatchWarning)
        loaded = load_tuned_lens(lm, tmp_path)
    for ours, read in zip(lens.parameters(), loaded.parameters()):
        assert torch.equal(ours, read)
    lens.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "lens.safetensors"]


def test_the_tuned_lens_package_loads_the_folder(tmp_path, caplog):
    """The package's own loader (the README's test command installs tuned-lens 0.2.0 with --no-deps) on a folder
    layerscope wrote: the same translators, and no warning (its unembed_hash check passes, every config key is
    known)."""
    import tuned_lens

    lm = tiny_model("llama")
    lens = random_lens(lm)
    lens.save(tmp_path, lens_format="tuned-lens")
    with caplog.at_level(logging.WARNING, logger="root"):  # the package warns through the root logger
        theirs = tuned_lens.TunedLens.from_model_and_pretrained(lm.model, str(tmp_path))
        assert [r.getMessage() for r in caplog.records if r.name == "root"] == []
        tuned_lens.TunedLens.from_model_and_pretrained(tiny_model("llama", seed=1).model, str(tmp_path))
        assert ["hash does not match" in r.getMessage() for r in caplog.records if r.name == "root"] == [True]
    assert theirs.config.unembed_hash == lens.unembed_hash
    for ours, loaded in zip(lens.translators.parameters(), theirs.layer_translators.parameters()):
        assert torch.equal(ours, loaded)


def test_a_lens_of_another_model_warns_once_and_still_loads(tmp_path):
    lm, other = tiny_model("llama"), tiny_model("llama", seed=1)  # same shape, other weights
    random_lens(lm).save(tmp_path / "ours")
    random_lens(lm).save(tmp_path / "theirs", lens_format="tuned-lens")
    for folder in ("ours", "theirs"):
        with pytest.warns(LensMismatchWarning, match="another unembedding") as caught:
            load_tuned_lens(other, tmp_path / folder)
        assert len(caught) == 1
    named = tmp_path / "named"
    named.mkdir()
    for recorded, warns in (("gpt2", True), ("org/tiny-llama", False), ("", False)):
        TunedLens(64, lm.n_blocks, recorded).save(named)  # no unembed_hash: the name decides
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_tuned_lens(lm, named)
        assert [str(w.message) for w in caught if w.category is LensMismatchWarning] == (
            [
                (
                    f"The lens in '{named}' was trained for 'gpt2', not tiny-llama: its readings may mean nothing for "
                    "this model."
                )
            ]
            if warns
            else []
        )


def test_cli_shows_the_mismatch_as_one_warning_line(tmp_path, monkeypatch):
    other = tiny_model("llama", seed=1)
    random_lens(tiny_model("llama")).save(tmp_path / "lens", lens_format="tuned-lens")
    monkeypatch.setattr("layerscope.cli.common.ModelOptions.load", lambda options: other)
    result = runner.invoke(
        app, ["lens", "-p", "the cat sat", "--method", "tuned", "--lens", str(tmp_path / "lens"), "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "tuned_lens"
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[layerscope] ")]
    assert len(lines) == 1 and lines[0].startswith("warning: The lens in ") and "unembed_hash" in lines[0]


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo), independent of torch."""
    text = Path("/proc/cpuinfo").read_text()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def test_fast_bf16_follows_the_cpu_flags_and_refuses_emulation():
    assert fast_bf16(torch.device("cpu")) == bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert fast_bf16(torch.device("meta")) is False and fast_bf16(torch.device("mps")) is False


def test_training_records_the_chosen_dtype_and_the_flag_forces_it(tmp_path, monkeypatch):
    """auto: the device's choice; --unembed-dtype float32 / bfloat16: as asked. The recipe in config.json says
    which ran; --lens-format tuned-lens writes params.pt."""
    lm = tiny_model("llama")
    text = word_text(100, 2)
    train_tuned_lens(lm, text, tmp_path / "auto", TrainSettings(steps=1, context=16))
    recipe = json.loads((tmp_path / "auto" / "config.json").read_text())["training"]
    assert recipe["bf16_unembed"] is fast_bf16(torch.device("cpu"))
    monkeypatch.setattr("layerscope.cli.common.ModelOptions.load", lambda options: lm)
    (tmp_path / "cal.txt").write_text(text)
    for dtype, bf16 in (("float32", False), ("bfloat16", True)):
        result = runner.invoke(
            app,
            [
                "tunedlens",
                "train",
                "--text",
                str(tmp_path / "cal.txt"),
                "--steps",
                "1",
                "--context",
                "16",
                "--unembed-dtype",
                dtype,
                "--out",
                str(tmp_path / dtype),
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / dtype / "config.json").read_text())["training"]["bf16_unembed"] is bf16
    result = runner.invoke(
        app,
        [
            "tunedlens",
            "train",
            "--text",
            str(tmp_path / "cal.txt"),
            "--steps",
            "1",
            "--context",
            "16",
            "--lens-format",
            "tuned-lens",
            "--out",
            str(tmp_path / "package"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "package").iterdir()) == ["config.json", "params.pt"]
