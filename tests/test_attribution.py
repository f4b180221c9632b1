"""Direct logit attribution: the parts add up to the model's own logit before the soft-cap, the heads to their
block's attention part, and single parts equal a hand computation from each family's weights and hooks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from layerscope.analyses.attribution import logit_attribution
from layerscope.errors import LayerscopeError
from tests.studies import invoke
from tests.tiny import random_ids, tiny_model

FAMILIES = ["llama", "gpt2", "gemma2", "qwen2", "cohere", "granite", "gpt_neox"]
CENTRES = {"gpt2", "cohere", "gpt_neox"}  # final LayerNorms
IDS = random_ids(9, seed=3)


def randomised(family: str):
    """A tiny model whose norms' weights and every bias are random (initialisation leaves them 1 and 0), so that
    the gain, the norm bias and the projections' biases all matter."""
    lm = tiny_model(family)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, parameter in lm.model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                parameter.copy_(
                    torch.rand(parameter.shape, generator=generator) * 0.5 + (0.75 if "weight" in name else -0.25)
                )
    return lm


def model_logits(lm) -> torch.Tensor:
    """The model's last-position logits, before the soft-cap where it has one."""
    with torch.no_grad():
        logits = lm.model(input_ids=IDS).logits[0, -1].double()
    cap = lm.adapter.logit_softcap
    return cap * torch.atanh(logits / cap) if cap else logits


def hand_readout(lm, token: int, state: torch.Tensor, final: torch.Tensor) -> float:
    """A state's direct contribution to a token's logit, from the family's own final norm weight, epsilon and
    logit scale: logit_scale * (gain * W_U[token]) . P(state) / sqrt(mean(P(final)^2) + eps)."""
    family, config = lm.adapter.family, lm.model.config
    norm = lm.model.get_submodule(
        {"gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm"}.get(family, "model.norm")
    )
    gain = norm.weight.double() + (1 if family == "gemma2" else 0)
    eps = next(
        getattr(config, name)
        for name in ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
        if hasattr(config, name)
    )

    def centre(x: torch.Tensor) -> torch.Tensor:
        return x - x.mean() if family in CENTRES else x

    scale = config.logit_scale if family == "cohere" else 1 / config.logits_scaling if family == "granite" else 1.0
    direction = (gain * lm.model.get_output_embeddings().weight[token].double()).detach()
    return float(scale * direction @ centre(state.double()) / math.sqrt(centre(final.double()).pow(2).mean() + eps))


def hidden_states(lm) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return lm.model(input_ids=IDS, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("family", FAMILIES)
def test_the_parts_add_up_to_the_models_logit_before_the_softcap(family):
    lm = randomised(family)
    logits = model_logits(lm)
    own = logit_attribution(lm, IDS)
    assert own.answer_id == int(logits.argmax())
    contrast = logit_attribution(lm, IDS, answer=5, contrast=9)
    for result, expected in ((own, logits[own.answer_id]), (contrast, logits[5] - logits[9])):
        assert result.logit == pytest.approx(float(expected), abs=1e-4)
        total = result.embedding + sum(result.attention) + sum(result.mlp) + result.bias
        assert total == pytest.approx(result.logit, abs=1e-4 * (1 + abs(result.logit)))
        for block, heads in enumerate(result.heads):
            assert sum(heads) + result.head_bias[block] == pytest.approx(result.attention[block], abs=1e-5)
    if family in ("gpt2", "gpt_neox"):  # a final LayerNorm with a bias: it reaches the logit, outside the parts
        unembed = lm.model.get_output_embeddings().weight
        assert contrast.bias == pytest.approx(
            float((unembed[5] - unembed[9]).detach() @ lm.adapter.final_norm.bias.detach()), abs=1e-6
        )
        assert contrast.bias != 0


@pytest.mark.parametrize("family", FAMILIES)
def test_the_embedding_part_equals_a_hand_readout(family):
    lm = randomised(family)
    states = hidden_states(lm)
    result = logit_attribution(lm, IDS, answer=11)
    # hidden_states[0] is the embedding; the last entry has the final norm applied, so the final residual is
    # the sum of the parts: the embedding part and the final one are read by hand from the same formula
    assert result.embedding == pytest.approx(hand_readout(lm, 11, states[0][0, -1], _final_residual(lm)), abs=1e-4)


def _final_residual(lm) -> torch.Tensor:
    captured = []
    handle = lm.adapter.blocks[-1].register_forward_hook(
        lambda m, a, out: captured.append((out[0] if isinstance(out, tuple) else out)[0, -1].detach())
    )
    try:
        with torch.no_grad():
            lm.model(input_ids=IDS)
    finally:
        handle.remove()
    return captured[0]


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "cohere", "granite", "gpt_neox"])
def test_a_head_equals_the_change_when_its_slice_of_the_output_projection_input_is_zeroed(family):
    """The model's own output projection, run with one head's input slice zeroed at the last position: the
    attention output changes by exactly that head's part (times Granite's residual multiplier)."""
    from layerscope.analyses.attribution import attention_projection

    lm = randomised(family)
    block, head = 1, 2
    projection = attention_projection(lm.adapter, block)
    size = (projection.weight.shape[0] if family == "gpt2" else projection.in_features) // lm.adapter.n_heads
    outputs = []

    def zero(module, args):
        edited = args[0].clone()
        edited[0, -1, head * size : (head + 1) * size] = 0
        return (edited, *args[1:])

    hook = lm.adapter.attention(block).register_forward_hook(
        lambda m, a, out: outputs.append((out[0] if isinstance(out, tuple) else out)[0, -1].detach())
    )
    try:
        with torch.no_grad():
            lm.model(input_ids=IDS)
            edit = projection.register_forward_pre_hook(zero)
            try:
                lm.model(input_ids=IDS)
            finally:
                edit.remove()
    finally:
        hook.remove()
    multiplier = getattr(lm.model.config, "residual_multiplier", 1.0)
    by_hand = hand_readout(lm, 11, (outputs[0] - outputs[1]) * multiplier, _final_residual(lm))
    assert logit_attribution(lm, IDS, answer=11).heads[block][head] == pytest.approx(by_hand, abs=1e-4)


def test_refusals_name_the_parameter_or_the_family():
    with pytest.raises(LayerscopeError, match="do not add their attention and MLP outputs"):
        logit_attribution(tiny_model("mpt"), IDS)
    lm = tiny_model("llama")
    with pytest.raises(ValueError, match="answer=128 is out of range"):
        logit_attribution(lm, IDS, answer=128)
    with pytest.raises(TypeError, match="contrast="):
        logit_attribution(lm, IDS, contrast="cat")


def test_the_command_attributes_the_answer(tiny_dir):
    result = invoke(
        "attribute",
        "--model",
        str(tiny_dir),
        "-p",
        "the cat sat on the",
        "--answer",
        "mat",
        "--contrast",
        "dog",
        "--format",
        "json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["answer"] == "mat" and data["contrast"] == "dog"
    total = data["embedding"] + sum(data["attention"]) + sum(data["mlp"]) + data["bias"]
    assert total == pytest.approx(data["logit"], abs=1e-4)
    table = invoke("attribute", "--model", str(tiny_dir), "-p", "the cat sat on the", "--top", "3")
    assert table.exit_code == 0 and "heads by |contribution|" in table.stdout
    refused = invoke("attribute", "--model", str(tiny_dir), "-p", "the cat", "--answer", "cat sat")
    assert refused.exit_code == 1 and "--answer 'cat sat' is 2 tokens" in refused.stderr


def test_on_the_demo_model_paris_is_written_late(demo_lm):
    """'The capital of France is' -> ' Paris': the parts add up to the model's logit difference against ' the',
    and the last blocks write most of it."""
    ids = demo_lm.encode("The capital of France is")
    paris, the = demo_lm.encode(" Paris")[0, 0].item(), demo_lm.encode(" the")[0, 0].item()
    result = logit_attribution(demo_lm, ids, answer=paris, contrast=the)
    with torch.no_grad():
        logits = demo_lm.model(input_ids=ids).logits[0, -1]
    assert result.logit == pytest.approx(float(logits[paris] - logits[the]), abs=1e-3)
    total = result.embedding + sum(result.attention) + sum(result.mlp) + result.bias
    assert total == pytest.approx(result.logit, abs=1e-3)
    late = sum(result.attention[20:]) + sum(result.mlp[20:])
    assert late > result.logit / 2
