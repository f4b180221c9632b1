"""Neuron census: the moments against a numpy float64 computation from each family's own weights, planted
prediction and suppression neurons, the thresholds, mixtures of experts refused, the command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from layerscope.analyses.neurons import neuron_census
from layerscope.errors import LayerscopeError
from tests.studies import invoke
from tests.tiny import tiny_model


def family_weights(lm, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(W_out (neurons, hidden), unembedding (vocab, hidden), final norm gain (hidden,), centres), float64, read
    by hand from each family's own module names and conventions."""
    model, family = lm.model, lm.adapter.family

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().numpy()

    if family == "gpt2":  # Conv1D: (in, out)
        layer = model.transformer.h[block]
        return f64(layer.mlp.c_proj.weight), f64(model.lm_head.weight), f64(model.transformer.ln_f.weight), True
    if family == "gpt_neox":
        layer = model.gpt_neox.layers[block]
        return (
            f64(layer.mlp.dense_4h_to_h.weight.T),
            f64(model.lm_head.weight),
            f64(model.gpt_neox.final_layer_norm.weight),
            True,
        )
    if family == "bloom":
        layer = model.transformer.h[block]
        return (
            f64(layer.mlp.dense_4h_to_h.weight.T),
            f64(model.lm_head.weight),
            f64(model.transformer.ln_f.weight),
            True,
        )
    if family == "opt":  # the unembedding reads the final norm through project_out
        decoder = model.model.decoder
        unembed = f64(model.lm_head.weight) @ f64(decoder.project_out.weight)
        return f64(decoder.layers[block].fc2.weight.T), unembed, f64(decoder.final_layer_norm.weight), True
    layer = model.model.layers[block]
    gain = f64(model.model.norm.weight)
    if family.startswith("gemma"):
        gain = 1 + gain  # Gemma's RMSNorm scales by 1 + weight
    return f64(layer.mlp.down_proj.weight.T), f64(model.lm_head.weight), gain, family == "cohere"


def numpy_moments(w_out: np.ndarray, unembed: np.ndarray, gain: np.ndarray, centres: bool) -> np.ndarray:
    """(neurons, 4): mean, variance, skew, Pearson kurtosis over the vocabulary of cos(w_n, u_v)."""
    u = unembed * gain
    if centres:
        u = u - u.mean(axis=1, keepdims=True)
    u = u - u.mean(axis=0, keepdims=True)
    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    w = w_out / np.linalg.norm(w_out, axis=1, keepdims=True)
    cosines = w @ u.T
    mean = cosines.mean(axis=1, keepdims=True)
    z = cosines - mean
    variance = (z**2).mean(axis=1, keepdims=True)
    z = z / np.sqrt(variance)
    return np.hstack([mean, variance, (z**3).mean(axis=1, keepdims=True), (z**4).mean(axis=1, keepdims=True)])


def randomise_norm(lm, seed: int = 1) -> None:
    """Random final norm weights (and bias), so that folding them in is tested: random init leaves them 1 and 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in lm.adapter.final_norm.parameters():
            parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)


@pytest.mark.parametrize(
    "family", ["llama", "gpt2", "gpt_neox", "gemma2", "cohere", "opt", "bloom", "qwen2", "granite", "phi3"]
)
def test_moments_equal_a_float64_numpy_computation(family):
    lm = tiny_model(family)
    randomise_norm(lm)
    census = neuron_census(lm, min_kurtosis=0.0)
    for b in census.blocks:
        expected = numpy_moments(*family_weights(lm, b.block))
        got = np.array([b.mean, b.variance, b.skew, b.kurtosis]).T
        np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-6)
        assert b.prediction + b.suppression == sum(1 for s in b.skew if s != 0)  # kurtosis > 0 always


def plant(lm, block: int, neuron: int, token: int, sign: float) -> None:
    """Set the output weight of one neuron to sign x the token's unembedding row (GPT-2: a Conv1D row)."""
    with torch.no_grad():
        row = sign * lm.model.get_output_embeddings().weight[token]
        if lm.adapter.family == "gpt2":
            lm.model.transformer.h[block].mlp.c_proj.weight[neuron] = row
        else:
            lm.model.model.layers[block].mlp.down_proj.weight[:, neuron] = row


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_planted_neuron_is_a_prediction_neuron_and_its_negative_a_suppression_neuron(family):
    lm = tiny_model(family)
    before = neuron_census(lm)
    token = lm.tokenizer.convert_tokens_to_ids("paris")
    plant(lm, 1, 7, token, 1.0)
    plant(lm, 2, 9, token, -1.0)
    after = neuron_census(lm)
    predicting, suppressing = after.block(1), after.block(2)
    assert after.kind(predicting, 7) == "prediction" and predicting.extreme_tokens[7] == token
    assert after.kind(suppressing, 9) == "suppression" and suppressing.extreme_tokens[9] == token
    assert predicting.prediction == before.block(1).prediction + 1
    assert suppressing.suppression == before.block(2).suppression + 1
    assert (1, 7) in after.top("prediction", 3) and (2, 9) in after.top("suppression", 3)
    assert after.token_texts[token] == "paris"


def test_thresholds_decide_the_kinds():
    lm = tiny_model("llama")
    plant(lm, 0, 3, 5, 1.0)
    census = neuron_census(lm, blocks=[0])
    kurtosis, skew = census.blocks[0].kurtosis[3], census.blocks[0].skew[3]
    assert neuron_census(lm, min_kurtosis=kurtosis + 1, blocks=[0]).blocks[0].prediction == 0
    assert neuron_census(lm, min_skew=skew + 0.1, blocks=[0]).kind(census.blocks[0], 3) == ""
    everything = neuron_census(lm, min_kurtosis=0.0, blocks=[0]).blocks[0]
    assert everything.prediction == sum(s > 0 for s in everything.skew)
    assert everything.suppression == sum(s < 0 for s in everything.skew)


def test_mixtures_of_experts_and_bad_arguments_are_refused():
    with pytest.raises(LayerscopeError, match="Block 0's MLP .* dense MLPs only"):
        neuron_census(tiny_model("mixtral"))
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="min_kurtosis=-1"):
        neuron_census(lm, min_kurtosis=-1)
    with pytest.raises(TypeError, match="min_skew="):
        neuron_census(lm, min_skew="big")
    with pytest.raises(ValueError, match="blocks=4 is out of range"):
        neuron_census(lm, blocks=[4])


def test_the_command_writes_the_census(tiny_dir):
    from layerscope.models.loading import load_model

    expected = neuron_census(load_model(str(tiny_dir), device="cpu"), blocks=[1, 3])
    result = invoke("neurons", "--model", str(tiny_dir), "--blocks", "1,3", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [b["block"] for b in data["blocks"]] == [1, 3]
    assert data["blocks"][0]["kurtosis"] == pytest.approx(expected.blocks[0].kurtosis)
    table = invoke("neurons", "--model", str(tiny_dir), "--min-kurtosis", "0", "--top", "2")
    assert table.exit_code == 0 and "top prediction neurons by kurtosis" in table.stdout
    csv = invoke("neurons", "--model", str(tiny_dir), "--blocks", "0", "-f", "csv")
    assert csv.stdout.splitlines()[0] == "block,neuron,mean,variance,skew,kurtosis,kind,token_id,token"
    assert len(csv.stdout.splitlines()) == 1 + 128


def test_the_demo_models_last_block_equals_numpy_and_suppresses_more_than_it_predicts(demo_lm):
    """On SmolLM2's last block the moments equal the float64 computation, and, as Stages of Inference reports for
    the last stage, suppression neurons outnumber prediction neurons. (A neuron planted to write one token is not
    found here, unlike in the tiny models: with 49,152 tokens one outlying cosine barely moves the kurtosis.)"""
    census = neuron_census(demo_lm, blocks=[29])
    block = census.blocks[0]
    expected = numpy_moments(*family_weights(demo_lm, 29))
    np.testing.assert_allclose(
        np.array([block.mean, block.variance, block.skew, block.kurtosis]).T, expected, rtol=2e-3, atol=1e-5
    )
    kinds = [census.kind(block, n) for n in range(len(block.kurtosis))]
    assert kinds.count("prediction") == block.prediction > 0
    assert kinds.count("suppression") == block.suppression > block.prediction


def test_a_neuron_that_writes_nothing_has_flat_moments_not_nan():
    lm = tiny_model("llama")
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight[:, 4] = 0
    block = neuron_census(lm, blocks=[0]).blocks[0]
    assert (block.mean[4], block.variance[4], block.skew[4], block.kurtosis[4]) == (0.0, 0.0, 0.0, 0.0)
    assert all(np.isfinite([block.mean, block.variance, block.skew, block.kurtosis]).ravel())
