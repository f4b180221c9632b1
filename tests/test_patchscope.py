"""Patchscopes: every batched, KV-cached cell equals a plain per-cell forward hook on the full target prompt."""

from __future__ import annotations

import pytest
import torch

from layerscope.analyses.lens import logit_lens
from layerscope.analyses.patchscope import (
    compare_precision,
    parse_target,
    patched_rows,
    patchscope_grid,
    run_patchscope,
)
from layerscope.analyses.residual import capture_residuals
from layerscope.errors import LayerscopeError
from tests.tiny import random_ids, tiny_model


def reference_logits(lm, state: torch.Tensor, target_ids: torch.Tensor, placeholder: int, row: int) -> torch.Tensor:
    """One cell the obvious way: a plain hook writes the state at the placeholder, full target prompt, no cache."""
    blocks = lm.adapter.blocks

    def overwrite(hidden):
        hidden = hidden.clone()
        hidden[:, placeholder] = state
        return hidden

    if row < len(blocks):
        handle = blocks[row].register_forward_pre_hook(lambda module, args: (overwrite(args[0]), *args[1:]))
    else:
        handle = blocks[row - 1].register_forward_hook(
            lambda module, args, output: (
                (overwrite(output[0]), *output[1:]) if isinstance(output, tuple) else overwrite(output)
            )
        )
    try:
        with torch.inference_mode():
            return lm.model(input_ids=target_ids, use_cache=False, logits_to_keep=1).logits[0, -1]
    finally:
        handle.remove()


def check_cells(lm, ids, rows, target, target_layer=None, cells_per_forward=256):
    states = capture_residuals(lm.adapter, ids).states[:, 0]
    checked = 0
    for patched in patched_rows(
        lm, states, target, target_layer, cells_per_forward=cells_per_forward, only_rows=sorted(rows)
    ):
        for position in range(ids.shape[1]):
            row = patched.row if target_layer is None else target_layer
            expected = reference_logits(lm, states[patched.row, position], target.ids, target.placeholder, row)
            torch.testing.assert_close(patched.logits[position], expected, atol=2e-4, rtol=1e-4)
            checked += 1
    assert checked == len(rows) * ids.shape[1]


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_every_cell_matches_per_cell_hook_on_tiny_models(family):
    lm = tiny_model(family)
    ids = random_ids(6, seed=1)
    target = parse_target(lm, "the cat sat on mat the dog")
    # 2 rows per forward: several forwards, rows split across batches
    check_cells(lm, ids, set(range(lm.n_blocks + 1)), target, cells_per_forward=12)


def test_custom_placeholder_and_fixed_target_layer_on_tiny_model():
    lm = tiny_model("llama")
    ids = random_ids(5, seed=2)
    target = parse_target(lm, "the capital of x is", placeholder="x")
    assert target.placeholder == 3
    check_cells(lm, ids, set(range(lm.n_blocks + 1)), target, target_layer=2)


def test_demo_cells_match_per_cell_hook(demo_lm):
    ids = demo_lm.encode("Paris is in")
    target = parse_target(demo_lm)
    check_cells(demo_lm, ids, {0, 14, 30}, target)


def test_demo_report_grid_precision_and_descriptions(demo_lm):
    ids = demo_lm.encode("one two three four")
    report = run_patchscope(demo_lm, ids, parse_target(demo_lm), top_k=3, max_new_tokens=2)
    grid = report.grid
    lens = logit_lens(demo_lm, ids, top_k=3)
    assert grid.method == "patchscope"
    assert (grid.layers, grid.tokens, grid.token_ids) == (lens.layers, lens.tokens, lens.token_ids)
    assert [len(row) for row in grid.cells] == [len(row) for row in lens.cells]
    assert set(grid.to_dict()) == set(lens.to_dict())
    # Row L written over the last token of the target prompt is decoded exactly as the model decodes it.
    assert [c.top[0].id for c in grid.cells[-1]] == [c.top[0].id for c in lens.cells[-1]]
    assert report.precision == compare_precision(grid, lens)
    assert report.precision.patchscope[-1] == report.precision.logit_lens[-1] == 1.0
    reference = [cell.top[0].id for cell in report.grid.cells[-1]]
    for row in (0, 15, 30):
        hits = [report.grid.cells[row][t].top[0].id == reference[t] for t in range(ids.shape[1])]
        assert report.precision.patchscope[row] == sum(hits) / len(hits)
        lens_hits = [lens.cells[row][t].top[0].id == reference[t] for t in range(ids.shape[1])]
        assert report.precision.logit_lens[row] == sum(lens_hits) / len(lens_hits)
    assert len(report.descriptions) == demo_lm.n_blocks + 1
    assert all(len(row) == ids.shape[1] for row in report.descriptions)
    # the first described token is the grid's top-1
    first = demo_lm.tokenizer.decode([report.grid.cells[12][1].top[0].id])
    assert report.descriptions[12][1].startswith(first)
    assert report.to_dict()["target_layer"] == "same"


@pytest.mark.parametrize(
    ("prompt", "placeholder", "message"),
    [
        ("The capital city of is", "x", "does not occur"),
        ("x is a letter", "x", "first token"),
        ("x and x", "x", "occurs 2 times"),
        ("   ", None, "empty"),
    ],
)
def test_bad_target_prompts(demo_lm, prompt, placeholder, message):
    with pytest.raises(LayerscopeError, match=message):
        parse_target(demo_lm, prompt, placeholder)


def test_bad_target_layer(demo_lm):
    with pytest.raises(LayerscopeError, match="out of range"):
        patchscope_grid(demo_lm, demo_lm.encode("hi there"), target_layer=31)
