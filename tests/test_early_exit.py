"""Early-exit estimate: a hand computation over a small grid, the lens grids of a tiny model, the command."""

from __future__ import annotations

import json

import pytest

from layerscope.analyses.early_exit import early_exit, stays_top1_from
from layerscope.analyses.grid import DecodeGrid, GridCell, TopToken
from layerscope.analyses.lens import logit_lens
from tests.studies import invoke
from tests.tiny import tiny_model

# rows emb, 0, 1, 2 (3 blocks) x 3 positions: (top-1 id, its probability)
CELLS = [
    [(7, 1.0), (8, 0.2), (5, 0.3)],
    [(1, 0.4), (2, 0.6), (5, 0.3)],
    [(2, 0.5), (2, 0.7), (6, 0.9)],
    [(2, 0.8), (2, 0.95), (5, 0.6)],
]


def hand_grid() -> DecodeGrid:
    cells = [[GridCell([TopToken(str(i), i, p)], 0.0, 0.0) for i, p in row] for row in CELLS]
    return DecodeGrid("hand", "logit_lens", ["a", "b", "c"], [0, 1, 2], ["emb", "0", "1", "2"], cells)


def test_the_oracle_and_the_thresholds_by_hand():
    grid = hand_grid()
    # position 0: final 2, rows 2 and 3 have it -> 2; position 1: rows 1-3 -> 1; position 2: row 2 breaks it -> 3
    assert stays_top1_from(grid) == [2, 1, 3]
    result = early_exit([grid, grid], thresholds=[0.5, 0.9])
    assert result.stays_from == [[2, 1, 3]] * 2
    assert result.oracle_mean_blocks_skipped == pytest.approx(((3 - 2) + (3 - 1) + (3 - 3)) / 3)
    # 0.5: exits at rows 0 (id 7, wrong), 1 (id 2, right), 2 (id 6, wrong) -> skips 3, 2, 1; agreement 1/3
    # 0.9: rows 0 (wrong), 3 (none reaches it before: last row, right), 2 (wrong) -> skips 3, 0, 1; 1/3
    half, high = result.thresholds
    assert (half.mean_blocks_skipped, half.agreement) == pytest.approx((2.0, 1 / 3))
    assert (high.mean_blocks_skipped, high.agreement) == pytest.approx((4 / 3, 1 / 3))
    rows = list(result.records().dicts())
    assert rows[2] == {"prompt": 0, "position": 2, "token": "c", "stays_top1_from": 3, "blocks_skipped": 0}


def test_on_lens_grids_the_oracle_never_changes_the_token():
    lm = tiny_model("llama")
    grids = logit_lens(lm, lm.encode(["the cat sat on the mat", "one two three four"]), top_k=1)
    result = early_exit(grids, [1.0])
    for grid, rows in zip(grids, result.stays_from):
        for position, row in enumerate(rows):
            assert all(
                grid.top1(r, position).id == grid.top1(lm.n_blocks, position).id for r in range(row, lm.n_blocks + 1)
            )
            assert row == 0 or grid.top1(row - 1, position).id != grid.top1(lm.n_blocks, position).id
    skipped = [lm.n_blocks - row for rows in result.stays_from for row in rows]
    assert result.oracle_mean_blocks_skipped == pytest.approx(sum(skipped) / len(skipped))


def test_the_command(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat on the\none two three four\n")
    result = invoke(
        "exit", "--model", str(tiny_dir), "--prompts", str(prompts), "--thresholds", "0.5,0.9", "-f", "json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [t["threshold"] for t in data["thresholds"]] == [0.5, 0.9] and data["positions"] == 9
    bad = invoke("exit", "--model", str(tiny_dir), "--prompts", str(prompts), "--thresholds", "0.5,1.5")
    assert bad.exit_code == 1 and "--thresholds '0.5,1.5'" in bad.stderr
