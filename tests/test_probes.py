"""Linear probes per grid row: a feature planted in a tiny model's residual stream is found at the row where it
is planted and not before; the report's numbers equal scikit-learn run by hand on states taken with a plain
hook; the demo model reads a prompt set's label; bad input is refused by parameter."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from layerscope.analyses.probes import last_token_states, probe_rows
from layerscope.errors import ArgumentValueError
from tests.tiny import WORDS, tiny_model

PLANTED_ROW = 2  # the output of block 1: grid row 2, labelled "1"


def parity_texts(n: int = 120, words: int = 6, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def parity(lm, text: str) -> str:
    """The planted label: the parity of the sum of the prompt's token ids (not linear in any one state)."""
    return "odd" if int(lm.encode(text).sum()) % 2 else "even"


@pytest.fixture(scope="module")
def planted():
    """Block 1's output gets +-20 times a fixed unit vector, by the parity of the sum of the ids, at every
    position: a plain forward hook, outside layerscope."""
    lm = tiny_model("llama")
    direction = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(5)), dim=0)
    seen: dict[str, torch.Tensor] = {}

    def keep_ids(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def plant(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        sign = (seen["ids"].sum(dim=1) % 2 * 2 - 1).to(hidden.dtype)  # odd +1, even -1
        planted_hidden = hidden + 20 * sign[:, None, None] * direction
        return (planted_hidden, *output[1:]) if isinstance(output, tuple) else planted_hidden

    handles = [
        lm.model.register_forward_pre_hook(keep_ids, with_kwargs=True),
        lm.adapter.blocks[PLANTED_ROW - 1].register_forward_hook(plant),
    ]
    yield lm
    for handle in handles:
        handle.remove()


def test_a_planted_feature_is_found_at_its_row(planted):
    texts = parity_texts()
    labels = [parity(planted, text) for text in texts]
    assert 40 < labels.count("odd") < 80  # both classes, roughly balanced
    report = probe_rows(planted, texts, labels, label="parity", folds=5, seed=0)
    accuracy = [row.accuracy for row in report.rows]
    # chance is 0.5 with a standard deviation of about 0.046 over 120 held-out answers: 0.75 is over 5 of them
    assert max(accuracy[:PLANTED_ROW]) < 0.75, accuracy
    assert min(accuracy[PLANTED_ROW:]) > 0.95, accuracy
    assert all(row.control < 0.75 for row in report.rows)
    assert report.first_row_above(0.2) == report.rows[PLANTED_ROW].row == "1"


def test_the_numbers_are_scikit_learns_on_hooked_states():
    """The same folds and probe, run by hand on states read with plain forward hooks, one prompt at a time."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    lm = tiny_model("llama")
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) for _ in range(40)]  # padded batches
    labels = ["long" if len(text.split()) > 5 else "short" for text in texts]
    report = probe_rows(lm, texts, labels, folds=4, seed=1, batch_size=7)

    by_hand = []
    for text in texts:
        rows: list[torch.Tensor] = []
        handles = [
            lm.adapter.blocks[0].register_forward_pre_hook(
                lambda m, a, k, rows=rows: rows.append((a[0] if a else k["hidden_states"])[0, -1].clone()),
                with_kwargs=True,
            )
        ]
        handles += [
            block.register_forward_hook(
                lambda m, a, o, rows=rows: rows.append((o[0] if isinstance(o, tuple) else o)[0, -1].clone())
            )
            for block in lm.adapter.blocks
        ]
        with torch.no_grad():
            lm.model(input_ids=lm.encode(text))
        for handle in handles:
            handle.remove()
        by_hand.append(torch.stack(rows))
    states = torch.stack(by_hand, dim=1).numpy()  # (rows, prompts, hidden)
    # batched and padded against one prompt at a time: fp32 reordering only
    assert np.allclose(last_token_states(lm, texts, batch_size=7).numpy(), states, atol=1e-4)
    target = np.array([sorted(set(labels)).index(one) for one in labels])
    shuffled = np.random.default_rng(1).permutation(target)
    splits = list(StratifiedKFold(n_splits=4, shuffle=True, random_state=1).split(states[0], target))
    for row, features in zip(report.rows, states):
        for answers, mean in ((target, row.accuracy), (shuffled, row.control)):
            scores = cross_val_score(
                make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), features, answers, cv=splits
            )
            assert mean == pytest.approx(scores.mean(), abs=1 / 40)  # at most one answer of 40 flips
    assert report.majority == max(labels.count("long"), labels.count("short")) / 40
    assert [row.row for row in report.rows] == ["emb", "0", "1", "2", "3"]
    assert list(report.records().columns) == ["row", "accuracy", "accuracy_se", "control", "control_se", "majority"]


@pytest.mark.parametrize(
    ("texts", "labels", "folds", "message"),
    [
        (["a", "b"], ["x"], 2, "labels= has 1 entries for 2 texts="),
        (["a", "b", "c"], ["x", "x", "x"], 2, "one class"),
        (["a", "b", "c"], ["x", "y", "y"], 2, "1 prompt(s) of class 'x'"),
        (["a", "b", "c", "d"], ["x", "y", "x", "y"], 1, "folds=1 must be a whole number of at least 2"),
    ],
)
def test_bad_input_is_named_by_parameter(texts, labels, folds, message):
    with pytest.raises(ArgumentValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe_rows(tiny_model("llama"), texts, labels, folds=folds)


def test_the_command_writes_the_engines_report_and_refuses_bad_files(tiny_dir, tmp_path):
    """`layerscope probe` on a saved tiny model: its JSON is the engine's report on the same file; a label field
    that is not a class field, and a class with fewer prompts than folds, are one error line each, before any
    model work."""
    import json

    from layerscope.models.loading import load_model
    from tests.studies import invoke

    data = tmp_path / "set.jsonl"
    texts = parity_texts(24, seed=2)
    data.write_text(
        "".join(json.dumps({"prompt": t, "kind": "a" if i % 2 else "b"}) + "\n" for i, t in enumerate(texts))
    )
    result = invoke(
        "probe", "--model", str(tiny_dir), "--data", str(data), "--label", "kind", "--folds", "3", "-f", "json"
    )
    assert result.exit_code == 0, result.output
    lm = load_model(str(tiny_dir), device="cpu")
    expected = probe_rows(lm, texts, ["a" if i % 2 else "b" for i in range(24)], label="kind", folds=3)
    assert json.loads(result.stdout)["rows"] == json.loads(json.dumps(expected.to_dict()["rows"]))
    for args, message in (
        (["--label", "prompt"], "--label 'prompt': name the class field"),
        (["--label", "kind", "--folds", "13"], 'field "kind" has 12 prompt(s) of class'),
        (["--label", "colour"], 'no "colour"'),
    ):
        result = invoke("probe", "--model", str(tmp_path / "no-model"), "--data", str(data), *args)
        assert result.exit_code == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.output
