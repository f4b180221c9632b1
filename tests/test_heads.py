"""Head analyses against independent computations: eager attention weights, hand-built rows, manual masking."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

from layerscope.analyses import decoding
from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.decoding import greedy_steps
from layerscope.analyses.head_ablation import ablation_heads, niah_accuracy
from layerscope.analyses.heads import (
    HeadScores,
    NeedleResult,
    build_tests,
    copy_paste,
    induction_scores,
    load_head_scores,
    previous_token_scores,
    repeated_random_tokens,
    retrieval_from_results,
)
from layerscope.analyses.needles import Needle, load_haystack
from layerscope.analyses.retrieval import rouge1_recall, run_test
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from layerscope.interventions import MaskHeads, intervene
from tests.tiny import tiny_model

NEEDLE = Needle(
    "The magic number that opens the railway museum safe is 7319.",
    "What is the magic number that opens the railway museum safe?",
    "7319",
)


def eager_twin(family: str = "llama"):
    """The same tiny model (same seed), on the stock eager attention path, for reference attention weights."""
    lm = tiny_model(family)
    lm.model.set_attn_implementation("eager")
    return lm


def eager_attentions(lm, ids: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return list(lm.model(input_ids=ids, output_attentions=True, use_cache=False).attentions)


# --- retrieval scoring rule -------------------------------------------------------------------------------


def test_copy_paste_rule_on_hand_built_rows():
    ids = torch.tensor([5, 7, 9, 7, 4, 9])
    span = range(1, 4)  # tokens 7, 9, 7
    rows = torch.zeros(2, 3, 6)
    rows[0, 0, 1] = 0.9  # argmax 1: in span, token 7 -> copy
    rows[0, 1, 5] = 0.9  # argmax 5: token 9 but outside span
    rows[0, 2, 2] = 0.9  # argmax 2: in span, token 9 != 7
    rows[1, 0, 3] = 0.6  # argmax 3: in span, token 7 -> copy
    rows[1, 0, 1] = 0.4
    rows[1, 1, 0] = 0.5  # argmax 0: outside span
    rows[1, 1, 3] = 0.3
    rows[1, 2] = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.2, 0.1])  # tie: the first maximum (1) counts -> copy
    expected = torch.tensor([[True, False, False], [True, False, True]])
    assert torch.equal(copy_paste(rows, 7, ids, span), expected)


def test_retrieval_score_is_copies_over_needle_length_averaged_over_answered_tests():
    lm = tiny_model("llama")  # 4 blocks x 4 heads

    def result(copies, needle_tokens, answered):
        return NeedleResult("q", 100, 50, "a", 1.0 if answered else 0.0, answered, needle_tokens, copies)

    zeros = [[0] * 4 for _ in range(4)]
    first = [row[:] for row in zeros]
    first[2][1], first[3][0] = 4, 1
    second = [row[:] for row in zeros]
    second[2][1], second[0][3] = 2, 5
    failed = [[9] * 4 for _ in range(4)]
    scores = retrieval_from_results(lm, [result(first, 8, True), result(second, 10, True), result(failed, 8, False)])
    matrix = scores.matrix()
    assert matrix[2, 1].item() == pytest.approx((4 / 8 + 2 / 10) / 2)
    assert matrix[3, 0].item() == pytest.approx(1 / 8 / 2)
    assert matrix[0, 3].item() == pytest.approx(5 / 10 / 2)
    assert matrix.sum().item() == pytest.approx((4 / 8 + 2 / 10 + 1 / 8 + 5 / 10) / 2)
    assert scores.meta["answered"] == 2 and len(scores.meta["failed"]) == 1
    assert scores.share_above(0.1) == 2 / 16  # 0.35 and 0.25; 0.0625 is below
    assert [(h.layer, h.head) for h in scores.top(2)] == [(2, 1), (0, 3)]
    assert all(h.kv_group == h.head // 2 for h in scores.heads)


def test_rouge1_recall():
    assert rouge1_recall("purple giraffe umbrella", "It is Purple giraffe, umbrella!") == 1.0
    assert rouge1_recall("purple giraffe umbrella", "a purple hat") == pytest.approx(1 / 3)
    assert rouge1_recall("7319", "The number is 7391.") == 0.0


def test_rows_read_while_decoding_equal_eager_attention(monkeypatch):
    monkeypatch.setattr(decoding, "PREFILL_CHUNK", 4)  # the prefill runs in 3 chunks
    lm, reference = tiny_model("llama"), eager_twin("llama")
    ids = torch.randint(2, 100, (1, 10), generator=torch.Generator().manual_seed(3))
    steps = list(itertools.islice(greedy_steps(lm, ids), 4))
    tokens = [token for token, _ in steps]
    full = torch.cat([ids, torch.tensor([tokens[:-1]])], dim=1)
    attentions = eager_attentions(reference, full)
    with torch.inference_mode():
        logits = reference.model(input_ids=full).logits[0]
    for step, (token, rows) in enumerate(steps):
        query = ids.shape[1] - 1 + step
        assert token == int(logits[query].argmax())
        assert rows.shape == (4, 4, query + 1)  # one row per head: O(T), never T x T
        expected = torch.stack([attention[0, :, query, : query + 1] for attention in attentions])
        torch.testing.assert_close(rows, expected, atol=1e-5, rtol=1e-4)


def test_niah_on_demo_scores_with_the_copy_rule(demo_lm):
    haystack = load_haystack()
    test = build_tests(demo_lm, haystack, [NEEDLE], [256], [50])[0]
    assert demo_lm.tokenizer.decode(test.ids[0, test.span]).strip() == NEEDLE.needle
    result = run_test(demo_lm, test, max_new_tokens=20)
    assert result.answered, result.answer
    scores = retrieval_from_results(demo_lm, [result])
    expected = torch.tensor(result.copies, dtype=torch.float32) / len(test.span)
    torch.testing.assert_close(scores.matrix(), expected)
    assert max(h.score for h in scores.heads) > 0.1  # copying the needle back is done by some head


# --- induction and previous-token heads ------------------------------------------------------------------


def test_induction_score_equals_formula_on_eager_weights():
    lm, reference = tiny_model("llama"), eager_twin("llama")
    n, repeats, samples = 5, 3, 2
    scores = induction_scores(lm, seq_len=n, repeats=repeats, samples=samples, seed=4).matrix()
    ids = repeated_random_tokens(lm, n, repeats, samples, seed=4)
    assert ids.shape == (samples, n * repeats)  # the tiny tokenizer has no BOS
    assert torch.equal(ids[:, :n], ids[:, n : 2 * n]) and torch.equal(ids[:, :n], ids[:, 2 * n :])
    attentions = eager_attentions(reference, ids)
    for block, head in itertools.product(range(4), range(4)):
        values = [
            attentions[block][s, head, t, t - n + 1].item() for s in range(samples) for t in range(n, n * repeats)
        ]
        assert scores[block, head].item() == pytest.approx(sum(values) / len(values), abs=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_previous_token_score_equals_formula_on_eager_weights(family):
    lm, reference = tiny_model(family), eager_twin(family)
    texts = ["the cat sat on the mat", "a dog ran to the big red park", "one two"]  # padded batch
    scores = previous_token_scores(lm, texts).matrix()
    values = {(b, h): [] for b in range(4) for h in range(4)}
    for text in texts:
        ids = lm.encode(text)
        attentions = eager_attentions(reference, ids)
        for (block, head), bucket in values.items():
            bucket += [attentions[block][0, head, t, t - 1].item() for t in range(1, ids.shape[1])]
    for (block, head), bucket in values.items():
        assert scores[block, head].item() == pytest.approx(sum(bucket) / len(bucket), abs=1e-5)


def test_demo_has_an_induction_head(demo_lm):
    scores = induction_scores(demo_lm, seq_len=20, repeats=2, samples=2, seed=0)
    assert repeated_random_tokens(demo_lm, 20, 2, 2, 0)[0, 0].item() == demo_lm.tokenizer.bos_token_id
    assert max(h.score for h in scores.heads) > 0.5


# --- masking ---------------------------------------------------------------------------------------------


def test_masking_restores_the_model_bit_for_bit(demo_lm):
    ids = demo_lm.encode("The capital of France is")
    with torch.inference_mode():
        before = demo_lm.model(input_ids=ids).logits
        for mode in ("zero", "uniform"):
            with intervene(demo_lm, [MaskHeads(((3, 1), (17, 3), (18, 6)), mode)]):
                masked = demo_lm.model(input_ids=ids).logits
            assert not torch.equal(masked, before)
            assert torch.equal(demo_lm.model(input_ids=ids).logits, before)


def test_uniform_mask_equals_hand_computation():
    lm, reference = tiny_model("llama"), eager_twin("llama")
    block, head = 1, 2
    head_dim = 64 // 4
    ids = torch.randint(2, 100, (1, 9), generator=torch.Generator().manual_seed(5))
    attention = reference.adapter.attention(block)
    captured = {}

    def keep_input(module, args, kwargs):
        captured["hidden"] = kwargs["hidden_states"]

    def uniform_head(module, args):
        values = attention.v_proj(captured["hidden"])  # (1, T, kv_heads * dim)
        group = head // 2
        v = values[..., group * head_dim : (group + 1) * head_dim]
        counts = torch.arange(1, v.shape[1] + 1).view(1, -1, 1)
        mixed = args[0].clone()
        mixed[..., head * head_dim : (head + 1) * head_dim] = v.cumsum(dim=1) / counts  # mean over keys <= t
        return (mixed,)

    handles = [
        attention.register_forward_pre_hook(keep_input, with_kwargs=True),
        attention.o_proj.register_forward_pre_hook(uniform_head),
    ]
    try:
        with torch.inference_mode():
            expected = reference.model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()
    with intervene(lm, [MaskHeads(((block, head),), "uniform")]), torch.inference_mode():
        got = lm.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_ablation_heads_are_seeded_and_disjoint():
    lm = tiny_model("llama")
    scores = HeadScores.from_matrix(lm, "retrieval", torch.arange(16.0).view(4, 4))
    top, rand = ablation_heads(scores, 3, seed=1)
    assert [(h.layer, h.head) for h in top] == [(3, 3), (3, 2), (3, 1)]
    assert not {(h.layer, h.head) for h in top} & {(h.layer, h.head) for h in rand}
    assert rand == ablation_heads(scores, 3, seed=1)[1] and len(rand) == 3
    with pytest.raises(LayerscopeError, match="^k=9 is not possible"):
        ablation_heads(scores, 9, seed=1)


def test_niah_accuracy_agrees_with_generate_with_and_without_masks(demo_lm):
    tests = build_tests(demo_lm, load_haystack(), [NEEDLE], [128], [50])
    heads = HeadScores.from_matrix(demo_lm, "retrieval", torch.zeros(30, 9)).heads
    strong = [h for h in heads if (h.layer, h.head) in {(17, 3), (18, 6), (18, 7), (23, 2), (17, 4), (20, 6)}]
    masks = [MaskHeads(tuple((h.layer, h.head) for h in strong), "uniform")]
    plain = greedy_continuation(demo_lm, tests[0].ids, 16).text
    masked = greedy_continuation(demo_lm, tests[0].ids, 16, masks).text
    assert "7319" in plain and "7319" not in masked  # the copying heads carry the needle
    assert niah_accuracy(demo_lm, tests, 16) == 1.0
    assert niah_accuracy(demo_lm, tests, 16, strong, "uniform") == float(rouge1_recall("7319", masked) > 0.5)


# --- scores files and bad input --------------------------------------------------------------------------


def test_scores_file_round_trip_and_model_check(tmp_path, demo_lm):
    lm = tiny_model("llama")
    scores = HeadScores.from_matrix(lm, "induction", torch.rand(4, 4), {"seed": 1})
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores.to_dict()))
    loaded = load_head_scores(path, lm)
    assert loaded.to_dict() == scores.to_dict()
    with pytest.raises(LayerscopeError, match=r"4 blocks x 4 heads\), but .* has 30 blocks x 9 heads"):
        load_head_scores(path, demo_lm)
    path.write_text(json.dumps({"model": "m", "kind": "retrieval"}))
    with pytest.raises(LayerscopeError, match="Not a head scores file"):
        load_head_scores(path)


def test_build_tests_rejects_short_haystack_and_long_context():
    lm = tiny_model("llama")  # context 256
    hay = "the cat sat on the mat . " * 50  # 350 tokens
    with pytest.raises(LayerscopeError, match="haystack has 350 tokens"):
        build_tests(lm, hay, [Needle("red", "q", "red")], [400], [50])
    with pytest.raises(LayerscopeError, match="context is 256"):
        build_tests(lm, hay, [Needle("red", "q", "red")], [300], [50])


runner = CliRunner()


@pytest.fixture(scope="module")
def demo_scores_file(tmp_path_factory, demo_lm):
    scores = HeadScores.from_matrix(demo_lm, "retrieval", torch.zeros(30, 9))
    path = tmp_path_factory.mktemp("scores") / "demo.json"
    path.write_text(json.dumps(scores.to_dict()))
    return path


@pytest.fixture(scope="module")
def tiny_scores_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scores") / "tiny.json"
    path.write_text(json.dumps(HeadScores.from_matrix(tiny_model("llama"), "retrieval", torch.zeros(4, 4)).to_dict()))
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["patchscope", "-p", "Paris", "--target-prompt", "The capital city of is"], "does not occur"),
        (["patchscope", "-p", "Paris", "--target-layer", "99"], "out of range"),
        (["heads", "retrieval", "--lengths", "100000"], "haystack has"),
        (["heads", "ablate", "--scores", "DEMO", "--top", "271"], "--top 271"),
        (["heads", "activity", "--scores", "TINY", "-p", "hello"], "4 blocks x 4 heads"),
        (["heads", "ablate", "--scores", "TINY", "--top", "2"], "4 blocks x 4 heads"),
    ],
)
def test_cli_bad_input_is_one_clear_line(args, message, demo_scores_file, tiny_scores_file, cli_demo_lm):
    args = [{"DEMO": str(demo_scores_file), "TINY": str(tiny_scores_file)}.get(a, a) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_cli_context_longer_than_window(tmp_path, cli_demo_lm):
    haystack = tmp_path / "hay.txt"
    haystack.write_text("The bridge has three arches of different sizes. " * 1000)  # about 10k tokens
    result = runner.invoke(app, ["heads", "retrieval", "--haystack", str(haystack), "--lengths", "8190"])
    assert result.exit_code == 1
    assert "context is 8192" in result.stderr


def test_cli_induction_json(tmp_path):
    """Loads the demo model through the real loader, as the installed command does (the other CLI tests here
    reuse the session's copy)."""
    out = tmp_path / "induction.json"
    result = runner.invoke(
        app, ["heads", "induction", "--seq-len", "8", "--samples", "1", "--format", "json", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "induction" and data["previous_token"]["kind"] == "previous_token"
    assert len(data["heads"]) == 30 * 9
    assert set(data["heads"][0]) == {"layer", "head", "kv_group", "score"}
