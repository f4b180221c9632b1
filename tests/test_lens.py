"""The logit lens against Hugging Face's own hidden states and the formulas by hand."""

import math

import torch

from layerscope.analyses.lens import logit_lens
from layerscope.analyses.residual import capture_residuals
from tests.tiny import random_ids


def test_residual_rows_match_hf_hidden_states(tiny_lm):
    """Rows 0..L-1 equal output_hidden_states; HF's last one is post-norm, ours is pre-norm."""
    ids = random_ids(10)
    captured = capture_residuals(tiny_lm.adapter, ids)
    with torch.no_grad():
        hf = tiny_lm.model(ids, output_hidden_states=True).hidden_states
    assert len(hf) == tiny_lm.n_blocks + 1 == captured.states.shape[0]
    for row in range(tiny_lm.n_blocks):
        torch.testing.assert_close(captured.states[row], hf[row], rtol=0, atol=1e-6)
    normed_last = tiny_lm.adapter.after_norm(tiny_lm.adapter.final_norm(captured.states[-1]))  # OPT's project_out
    torch.testing.assert_close(normed_last, hf[-1], rtol=0, atol=1e-5)


def test_last_row_is_the_model_output(tiny_lm):
    ids = random_ids(9)
    grid = logit_lens(tiny_lm, ids, top_k=3)
    with torch.no_grad():
        logits = tiny_lm.model(ids).logits[0]
    probs = torch.softmax(logits.float(), -1)
    for position, cell in enumerate(grid.cells[-1]):
        assert cell.kl_to_final < 1e-5
        assert cell.top[0].id == int(logits[position].argmax())
        assert math.isclose(cell.top[0].prob, float(probs[position].max()), rel_tol=1e-4)


def test_cell_statistics_by_hand(tiny_lm):
    """Entropy (bits) and KL(final || row) (nats) of one middle cell, computed directly."""
    ids = random_ids(8, seed=3)
    grid = logit_lens(tiny_lm, ids, top_k=4)
    captured = capture_residuals(tiny_lm.adapter, ids)
    row, position = 2, 5
    with torch.no_grad():
        normed = tiny_lm.adapter.final_norm(captured.states[row, 0, position])
        decoder = getattr(getattr(tiny_lm.model, "model", None), "decoder", None)
        project_out = getattr(decoder, "project_out", None)  # OPT
        if project_out is not None:
            normed = normed @ project_out.weight.T
        logits = normed @ tiny_lm.adapter.unembed.weight.T
        if tiny_lm.adapter.unembed.bias is not None:
            logits = logits + tiny_lm.adapter.unembed.bias
        config = tiny_lm.model.config
        # Cohere multiplies by logit_scale, Granite divides by logits_scaling
        logits = logits * (getattr(config, "logit_scale", None) or 1) / getattr(config, "logits_scaling", 1)
        cap = config.get_text_config().final_logit_softcapping if hasattr(config, "final_logit_softcapping") else None
        if cap:
            logits = torch.tanh(logits / cap) * cap
        final = tiny_lm.model(ids).logits[0, position]
    p = torch.softmax(logits.double(), -1)
    q = torch.softmax(final.double(), -1)
    entropy_bits = float(-(p * p.log()).sum() / math.log(2))
    kl = float((q * (q.log() - p.log())).sum())
    cell = grid.cells[row][position]
    assert math.isclose(cell.entropy_bits, entropy_bits, rel_tol=1e-4)
    assert math.isclose(cell.kl_to_final, kl, rel_tol=1e-3, abs_tol=1e-6)
    assert [t.id for t in cell.top] == p.topk(4).indices.tolist()
    assert grid.layers == ["emb", *map(str, range(tiny_lm.n_blocks))]


def test_demo_lens_says_paris(demo_lm):
    grid = logit_lens(demo_lm, demo_lm.encode("The capital of France is"))
    assert grid.tokens == ["The", " capital", " of", " France", " is"]
    assert grid.cells[-1][-1].top[0].token == " Paris"
    assert len(grid.cells) == 31
    # Early rows have not formed the answer yet: the lens is far from the final distribution.
    assert grid.cells[1][-1].kl_to_final > 1.0
