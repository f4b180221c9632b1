"""The Python API checks its arguments at the edge: every function `layerscope` exports, called with bad values,
raises TypeError or ValueError (also LayerscopeErrors) or a LayerscopeError whose message names the parameter,
not an error from deep inside torch, and never returns a result."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import layerscope as ls
from layerscope.analyses.causal_trace import noise_corruption
from layerscope.analyses.jacobian_lens import FitSettings
from layerscope.analyses.tuned_lens import TrainSettings
from layerscope.errors import LayerscopeError
from tests.tiny import VOCAB, random_ids, tiny_model

LM = tiny_model("llama")
IDS = random_ids(6)
NAN, INF = float("nan"), float("inf")


def _within(function):
    """Run a context manager's entry, where `intervene` checks its arguments."""

    def enter(*args, **kwargs):
        with function(*args, **kwargs):
            pass

    return enter


# (exported name, call, exception type, the start of the message: the parameter it names)
CASES = [
    ("load_model", lambda tmp: ls.load_model(42), TypeError, "source="),
    ("load_model", lambda tmp: ls.load_model("demo", device=0), TypeError, "device="),
    ("load_model", lambda tmp: ls.load_model(tmp / "missing"), LayerscopeError, "No model directory at"),  # a Path
    ("logit_lens", lambda tmp: ls.logit_lens("model", IDS), TypeError, "lm="),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, "the cat sat"), TypeError, "input_ids="),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, IDS.float()), TypeError, "input_ids="),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, IDS[0]), ValueError, "input_ids="),
    (
        "logit_lens",
        lambda tmp: ls.logit_lens(LM, torch.tensor([[3, VOCAB]])),
        ValueError,
        f"input_ids= holds token id {VOCAB}",
    ),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, torch.tensor([[3, -1]])), ValueError, "input_ids= holds token id -1"),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, IDS, top_k=0), ValueError, "top_k=0"),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, IDS, top_k=2.5), TypeError, "top_k="),
    ("logit_lens", lambda tmp: ls.logit_lens(LM, IDS, interventions="drop 1"), TypeError, "interventions="),
    ("lens_generate", lambda tmp: ls.lens_generate("model", IDS, 2), TypeError, "lm="),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, "the cat sat", 2), TypeError, "input_ids="),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, IDS, -1), ValueError, "max_new_tokens=-1"),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, IDS, 2.0), TypeError, "max_new_tokens="),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, IDS, 2, top_k=0), ValueError, "top_k=0"),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, IDS, 2, interventions="drop 1"), TypeError, "interventions="),
    ("lens_generate", lambda tmp: ls.lens_generate(LM, IDS, 2, lens="lens"), TypeError, "lens="),
    ("divergence", lambda tmp: ls.divergence("grid", "grid"), TypeError, "baseline="),
    ("divergence", lambda tmp: ls.divergence(ls.logit_lens(LM, IDS), "grid"), TypeError, "intervened="),
    ("logit_attribution", lambda tmp: ls.logit_attribution(LM, "the cat"), TypeError, "input_ids="),
    ("logit_attribution", lambda tmp: ls.logit_attribution(LM, IDS, answer=-1), ValueError, "answer=-1"),
    ("logit_attribution", lambda tmp: ls.logit_attribution(LM, IDS, contrast=2.0), TypeError, "contrast="),
    ("attention_pattern", lambda tmp: ls.attention_pattern(LM, IDS, [(4, 0)]), ValueError, "heads= holds head 4.0"),
    ("attention_pattern", lambda tmp: ls.attention_pattern(LM, IDS, "1.2"), TypeError, "heads="),
    ("attention_pattern", lambda tmp: ls.attention_pattern(LM, IDS, []), TypeError, "heads="),
    ("attention_pattern", lambda tmp: ls.attention_pattern(LM, "the cat", [(1, 2)]), TypeError, "input_ids="),
    ("attention_pattern", lambda tmp: ls.attention_pattern(LM, IDS, [(1, 2)], "drop 1"), TypeError, "interventions="),
    ("early_exit", lambda tmp: ls.early_exit([]), TypeError, "grids="),
    ("early_exit", lambda tmp: ls.early_exit([ls.logit_lens(LM, IDS)], thresholds=[0.0]), ValueError, "thresholds="),
    ("neuron_census", lambda tmp: ls.neuron_census("model"), TypeError, "lm="),
    ("steering_vector", lambda tmp: ls.steering_vector("model", ["a"], ["b"], 1), TypeError, "lm="),
    ("steering_vector", lambda tmp: ls.steering_vector(LM, "a b", ["b"], 1), TypeError, "positive="),
    ("steering_vector", lambda tmp: ls.steering_vector(LM, ["a"], [], 1), TypeError, "negative="),
    ("steering_vector", lambda tmp: ls.steering_vector(LM, ["a"], ["b"], LM.n_blocks + 1), ValueError, "row="),
    ("probe_rows", lambda tmp: ls.probe_rows("model", ["a"], ["x"]), TypeError, "lm="),
    ("probe_rows", lambda tmp: ls.probe_rows(LM, "a b", ["x"]), TypeError, "texts="),
    ("probe_rows", lambda tmp: ls.probe_rows(LM, ["a", "b"], ["x", "y"], folds=1), ValueError, "folds=1"),
    ("probe_rows", lambda tmp: ls.probe_rows(LM, ["a", "b"], ["x", "y"], batch_size=0), ValueError, "batch_size=0"),
    ("neuron_census", lambda tmp: ls.neuron_census(LM, min_kurtosis=NAN), ValueError, "min_kurtosis=nan"),
    ("neuron_census", lambda tmp: ls.neuron_census(LM, min_skew=-0.5), ValueError, "min_skew=-0.5"),
    ("neuron_census", lambda tmp: ls.neuron_census(LM, blocks=[0, 4]), ValueError, "blocks=4"),
    ("neuron_census", lambda tmp: ls.neuron_census(LM, blocks=3), TypeError, "blocks="),
    ("capture", lambda tmp: ls.capture(LM, 42), TypeError, "prompts="),
    ("capture", lambda tmp: ls.capture(LM, torch.tensor([[1, 2], [VOCAB, 2]])), ValueError, "prompts="),
    ("trace_prompt", lambda tmp: ls.trace_prompt(LM, 42, subject="cat"), TypeError, "prompt="),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", noise_scale=NAN),
        ValueError,
        "noise_scale=nan",
    ),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", noise_scale=INF),
        ValueError,
        "noise_scale=inf",
    ),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", noise_scale=-1.0),
        ValueError,
        "noise_scale=-1.0",
    ),
    ("trace_prompt", lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", window=0), ValueError, "window=0"),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", occurrence=0),
        ValueError,
        "occurrence=0",
    ),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat"),
        LayerscopeError,
        "Noise corruption needs the subject: give subject=",
    ),
    ("trace_prompt", lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", samples=0), ValueError, "samples=0"),
    ("trace_prompt", lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", samples=2.0), TypeError, "samples="),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", metric="p"),
        LayerscopeError,
        "metric= must be one of prob, logit-diff, kl",
    ),
    ("trace_prompt", lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", contrast=7), TypeError, "contrast="),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", noise_std="s3"),
        LayerscopeError,
        "noise_std= must be one of embedding, subjects",
    ),
    (
        "trace_prompt",
        lambda tmp: ls.trace_prompt(LM, "the cat sat", subject="cat", noise_std="subjects", noise_subjects="cat"),
        TypeError,
        "noise_subjects=",
    ),
    (
        "causal_trace",
        lambda tmp: ls.causal_trace(
            LM, IDS, noise_corruption(LM, IDS, (1, 2)), 3, metric="logit-diff", contrast_id=VOCAB
        ),
        ValueError,
        f"contrast_id={VOCAB}",
    ),
    ("causal_trace", lambda tmp: ls.causal_trace(LM, IDS, "noise", 3), TypeError, "corruption="),
    (
        "causal_trace",
        lambda tmp: ls.causal_trace(LM, IDS, noise_corruption(LM, IDS, (1, 2)), VOCAB),
        ValueError,
        f"answer_id={VOCAB}",
    ),
    (
        "causal_trace",
        lambda tmp: ls.causal_trace(LM, "the cat", noise_corruption(LM, IDS, (1, 2)), 3),
        TypeError,
        "input_ids=",
    ),
    (
        "compare_logits",
        lambda tmp: ls.compare_logits(torch.zeros(3, 5), torch.zeros(4, 5), torch.zeros(3).long()),
        ValueError,
        "base_logits=",
    ),
    (
        "compare_logits",
        lambda tmp: ls.compare_logits(torch.zeros(3, 5), torch.zeros(3, 5), [1, 2, 3]),
        TypeError,
        "input_ids=",
    ),
    ("greedy_continuation", lambda tmp: ls.greedy_continuation(LM, "the cat", 3), TypeError, "input_ids="),
    ("greedy_continuation", lambda tmp: ls.greedy_continuation(LM, IDS, -1), ValueError, "max_new_tokens=-1"),
    ("run_interventions", lambda tmp: ls.run_interventions(LM, IDS, "drop 1"), TypeError, "interventions="),
    (
        "run_interventions",
        lambda tmp: ls.run_interventions(LM, IDS, [ls.DropBlocks((1,))], lens_over_continuation="yes"),
        TypeError,
        "lens_over_continuation=",
    ),
    (
        "run_interventions",
        lambda tmp: ls.run_interventions(LM, IDS, [ls.DropBlocks((1,))], top_k=0),
        ValueError,
        "top_k=0",
    ),
    ("parse_target", lambda tmp: ls.parse_target(LM, 42), TypeError, "text="),
    ("parse_target", lambda tmp: ls.parse_target(LM, "the cat sat", 5), TypeError, "placeholder="),
    ("patchscope_grid", lambda tmp: ls.patchscope_grid(LM, IDS, top_k=0), ValueError, "top_k=0"),
    ("patchscope_grid", lambda tmp: ls.patchscope_grid(LM, IDS, target_layer=99), LayerscopeError, "target_layer=99"),
    ("patchscope_grid", lambda tmp: ls.patchscope_grid(LM, [1, 2]), TypeError, "input_ids="),
    ("run_patchscope", lambda tmp: ls.run_patchscope(LM, IDS, "the cat is x"), TypeError, "target="),
    (
        "tuned_lens",
        lambda tmp: ls.tuned_lens(LM, IDS, ls.TunedLens(32, 4)),
        LayerscopeError,
        "lens= is for a model with hidden size 32",
    ),
    ("tuned_lens", lambda tmp: ls.tuned_lens(LM, IDS, "lens"), TypeError, "lens="),
    ("tuned_lens", lambda tmp: ls.tuned_lens(LM, IDS, ls.TunedLens(64, 4), top_k=-2), ValueError, "top_k=-2"),
    (
        "compare_lenses",
        lambda tmp: ls.compare_lenses(LM, ls.TunedLens(64, 3), "the cat sat"),
        LayerscopeError,
        "lens= is for a model",
    ),
    (
        "compare_lenses",
        lambda tmp: ls.compare_lenses(LM, ls.TunedLens(64, 4), "the cat sat", max_tokens=1),
        ValueError,
        "max_tokens=1",
    ),
    (
        "compare_lenses",
        lambda tmp: ls.compare_lenses(LM, "lens", "the cat sat"),
        TypeError,
        "lens= must be a TunedLens",
    ),
    (
        "compare_lenses",
        lambda tmp: ls.compare_lenses(LM, ls.JacobianLens(torch.zeros(3, 64, 64), 1), "the cat sat"),
        LayerscopeError,
        "lens= is for a model",
    ),
    ("load_tuned_lens", lambda tmp: ls.load_tuned_lens(LM, 42), TypeError, "directory="),
    (
        "jacobian_lens",
        lambda tmp: ls.jacobian_lens(LM, IDS, ls.JacobianLens(torch.zeros(4, 32, 32), 1)),
        LayerscopeError,
        "lens= is for a model with hidden size 32",
    ),
    ("jacobian_lens", lambda tmp: ls.jacobian_lens(LM, IDS, ls.TunedLens(64, 4)), TypeError, "lens="),
    (
        "jacobian_lens",
        lambda tmp: ls.jacobian_lens(LM, IDS, ls.JacobianLens(torch.zeros(64, 64), 1)),
        ValueError,
        "matrices=",
    ),
    (
        "jacobian_lens",
        lambda tmp: ls.jacobian_lens(LM, IDS, ls.JacobianLens(torch.zeros(4, 64, 64), -1)),
        ValueError,
        "n_prompts=-1",
    ),
    ("fit_jacobian_lens", lambda tmp: ls.fit_jacobian_lens(LM, b"the cat sat"), TypeError, "text="),
    (
        "fit_jacobian_lens",
        lambda tmp: ls.fit_jacobian_lens(LM, "the cat", FitSettings(dim_batch=0)),
        ValueError,
        "dim_batch=0",
    ),
    (
        "fit_jacobian_lens",
        lambda tmp: ls.fit_jacobian_lens(LM, "the cat", FitSettings(context=9, skip_first=8)),
        ValueError,
        "context=9",
    ),
    ("fit_jacobian_lens", lambda tmp: ls.fit_jacobian_lens(LM, "the cat", "fast"), TypeError, "settings="),
    (
        "fit_jacobian_lens",
        lambda tmp: ls.fit_jacobian_lens(LM, "the cat", FitSettings(context=8, skip_first=0)),
        LayerscopeError,
        "The text has 2 tokens",
    ),
    ("load_jacobian_lens", lambda tmp: ls.load_jacobian_lens(LM, 42), TypeError, "directory="),
    ("load_jacobian_lens", lambda tmp: ls.load_jacobian_lens(LM, tmp), LayerscopeError, "No Jacobian lens in"),
    ("load_tuned_lens", lambda tmp: ls.load_tuned_lens(LM, tmp), LayerscopeError, "No tuned lens in"),  # a Path
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, TrainSettings(lr=INF)),
        ValueError,
        "lr=inf",
    ),
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, TrainSettings(lr=NAN)),
        ValueError,
        "lr=nan",
    ),
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, TrainSettings(steps=0)),
        ValueError,
        "steps=0",
    ),
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, save_every=0),
        ValueError,
        "save_every=0",
    ),
    ("train_tuned_lens", lambda tmp: ls.train_tuned_lens(LM, b"the cat sat", tmp), TypeError, "text="),
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, lens_format="pt"),
        ValueError,
        "lens_format='pt'",
    ),
    (
        "train_tuned_lens",
        lambda tmp: ls.train_tuned_lens(LM, "the cat sat", tmp, TrainSettings(bf16_unembed=1)),
        TypeError,
        "bf16_unembed=",
    ),
    ("intervene", lambda tmp: _within(ls.intervene)(LM, ["drop"]), TypeError, "interventions="),
    ("intervene", lambda tmp: _within(ls.intervene)(LM, [ls.DropBlocks((1,))], seq_len=0), ValueError, "seq_len=0"),
    ("intervene", lambda tmp: _within(ls.intervene)(None, []), TypeError, "lm="),
    ("intervene", lambda tmp: _within(ls.intervene)(LM, [ls.DropBlocks("3")]), TypeError, "DropBlocks: blocks="),
    ("intervene", lambda tmp: _within(ls.intervene)(LM, [ls.FreezeFrom(1.5)]), TypeError, "FreezeFrom: block="),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.RandomizeAt(1, seed="x")]),
        TypeError,
        "RandomizeAt: seed=",
    ),
    ("intervene", lambda tmp: _within(ls.intervene)(LM, [ls.MaskHeads((1, 1))]), TypeError, "MaskHeads: heads="),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.PatchState(1, 2, torch.full((64,), NAN))]),
        ValueError,
        "PatchState: vector=",
    ),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.SteerVector(1, torch.full((64,), NAN))]),
        ValueError,
        "SteerVector: vector=",
    ),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.SteerVector("1", torch.ones(64))]),
        TypeError,
        "SteerVector: row=",
    ),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.SteerVector(1, torch.ones(64), INF)]),
        LayerscopeError,
        "steer: factor=",
    ),
    (
        "intervene",
        lambda tmp: _within(ls.intervene)(LM, [ls.SteerVector(1, torch.ones(64), positions="first")]),
        LayerscopeError,
        "steer: positions",
    ),
    (
        "intervene",
        lambda tmp: ls.greedy_continuation(LM, IDS, 2, [ls.PatchState(1, 2, torch.zeros(5))]),
        LayerscopeError,
        "patch: vector= has 5 entries",
    ),
]


@pytest.mark.parametrize("name, call, error, start", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_bad_arguments_are_refused_naming_the_parameter(tmp_path: Path, name, call, error, start):
    with pytest.raises(error) as raised:
        call(tmp_path)
    assert isinstance(raised.value, LayerscopeError)  # the faces show it as one line
    assert str(raised.value).startswith(start), str(raised.value)


def test_every_exported_function_is_walked():
    functions = {name for name in ls.__all__ if inspect.isfunction(getattr(ls, name))}
    assert functions == {name for name, *_ in CASES}


def test_load_model_takes_a_path_like_a_str(tmp_path: Path):
    """The same refusal for a str and a Path: the Path is read as the path it names."""
    messages = []
    for source in (str(tmp_path), tmp_path):
        with pytest.raises(LayerscopeError) as raised:
            ls.load_model(source)
        messages.append(str(raised.value))
    assert messages[0] == messages[1] and re.search("not a complete model directory", messages[0])
