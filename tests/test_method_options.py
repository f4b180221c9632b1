"""Method options that published figures depend on: `heads retrieval --span` and `--bos`.

--span answer is checked against the copy-paste rule applied by hand to a recorded attention trace, with
the answer located the way the authors' code locates `real_needle` (its own tokens searched in the prompt).
--bos is checked against a tokenizer that adds the BOS token by itself: the results must be the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from layerscope.analyses.decoding import answer_steps
from layerscope.analyses.needles import Needle, build_tests, load_haystack
from layerscope.analyses.retrieval import retrieval_from_results, run_test
from layerscope.errors import LayerscopeError
from tests.saved import BOS, save_tiny_llama
from tests.studies import invoke
from tests.tiny import tiny_model

NEEDLE = Needle(
    "The magic number that opens the railway museum safe is 7319.",
    "What is the magic number that opens the railway museum safe?",
    "7319",
)
TINY_PROMPT = "the cat sat on the mat a dog ran to the park"


def find_sublist(ids: list[int], part: list[int], start: int = 0) -> int:
    return next(i for i in range(start, len(ids) - len(part) + 1) if ids[i : i + len(part)] == part)


# --- retrieval: --span answer ------------------------------------------------------------------------------


def test_span_answer_equals_copy_rule_by_hand_on_recorded_trace(demo_lm):
    needle_test = build_tests(demo_lm, load_haystack(), [NEEDLE], [256], [50], span="needle")[0]
    answer_test = build_tests(demo_lm, load_haystack(), [NEEDLE], [256], [50], span="answer")[0]
    assert torch.equal(needle_test.ids, answer_test.ids)  # the span changes the scoring only
    ids = needle_test.ids[0].tolist()
    # Where the answer lies, found as the authors' code does: its own tokens searched in the prompt.
    answer_ids = demo_lm.tokenizer("7319", add_special_tokens=False).input_ids
    start = find_sublist(ids, answer_ids, needle_test.span.start)
    assert range(start, start + len(answer_ids)) == answer_test.span
    assert needle_test.span.start < start and start + len(answer_ids) < needle_test.span.stop

    trace = list(answer_steps(demo_lm, needle_test.ids, 20))  # (generated token, attention rows) per step
    copies = torch.zeros(demo_lm.n_blocks, demo_lm.adapter.n_heads)
    for token, rows in trace:
        for block in range(demo_lm.n_blocks):
            for head in range(demo_lm.adapter.n_heads):
                where = int(rows[block, head].argmax())
                copies[block, head] += start <= where < start + len(answer_ids) and ids[where] == token
    assert copies.sum() > 0  # the demo model copies the number from the needle: the check can fail

    result = run_test(demo_lm, answer_test, max_new_tokens=20)
    assert result.answered and result.span_tokens == len(answer_ids) == 4
    assert torch.equal(torch.tensor(result.copies, dtype=torch.float32), copies)
    scores = retrieval_from_results(demo_lm, [result]).matrix()
    torch.testing.assert_close(scores, copies / len(answer_ids), check_dtype=False)
    needle_result = run_test(demo_lm, needle_test, max_new_tokens=20)
    assert needle_result.span_tokens == len(needle_test.span) > 4
    assert not torch.equal(retrieval_from_results(demo_lm, [needle_result]).matrix(), scores)


def test_answer_span_covers_the_answer_words_on_a_tiny_tokenizer():
    lm = tiny_model("llama")
    haystack = " ".join(["one two three four five six seven eight nine ten"] * 4)
    needle = Needle("the cat sat on the red mat", "what is big", "red mat")
    test = build_tests(lm, haystack, [needle], [20], [50], span="answer")[0]
    vocab = lm.tokenizer.get_vocab()
    assert test.ids[0, test.span].tolist() == [vocab["red"], vocab["mat"]]
    whole = build_tests(lm, haystack, [needle], [20], [50])[0]
    assert test.ids[0, whole.span].tolist() == [vocab[w] for w in needle.needle.split()]


def test_span_answer_refuses_an_answer_outside_its_needle():
    lm = tiny_model("llama")
    with pytest.raises(LayerscopeError, match="does not occur in its needle"):
        build_tests(lm, "one two three " * 10, [Needle("the cat sat", "q", "dog")], [10], [50], span="answer")
    with pytest.raises(LayerscopeError, match="Unknown span"):
        build_tests(lm, "one two three " * 10, [Needle("the cat sat", "q", "cat")], [10], [50], span="words")


def test_cli_span_bad_value_is_one_line(tmp_path):
    result = invoke("heads", "retrieval", "--model", str(tmp_path / "missing"), "--span", "words")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: Unknown span 'words': use needle or answer."


# --- --bos ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bos_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bos")
    return {kind: save_tiny_llama(root / kind, kind) for kind in ("none", "token", "added")}


def run_json(*args: str) -> dict:
    result = invoke(*args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_encode_with_bos_starts_with_the_bos_id_once():
    lm = tiny_model("llama")
    lm.tokenizer.add_special_tokens({"bos_token": BOS})
    plain = lm.encode(TINY_PROMPT)
    lm.prepend_bos()
    with_bos = lm.encode(TINY_PROMPT)
    assert with_bos[0, 0].item() == lm.tokenizer.bos_token_id
    assert torch.equal(with_bos[0, 1:], plain[0])
    assert torch.equal(lm.encode(BOS + " " + TINY_PROMPT), with_bos)  # never two BOS tokens


def test_bos_lens_matches_the_model_on_bos_prefixed_ids(bos_dirs):
    plain = run_json("lens", "--model", str(bos_dirs["token"]), "--prompt", TINY_PROMPT)
    data = run_json("lens", "--model", str(bos_dirs["token"]), "--prompt", TINY_PROMPT, "--bos")
    assert data["tokens"] == [BOS] + plain["tokens"]
    # The last row at the last token is the model's own next-token distribution on [BOS] + prompt.
    lm = tiny_model("llama")
    lm.tokenizer.add_special_tokens({"bos_token": BOS})
    vocab = lm.tokenizer.get_vocab()
    ids = torch.tensor([[vocab[BOS]] + [vocab[w] for w in TINY_PROMPT.split()]])
    with torch.inference_mode():
        probs = lm.model(input_ids=ids).logits[0, -1].softmax(-1)
    top = data["cells"][-1][-1]["top"][0]
    assert top["id"] == int(probs.argmax()) and top["prob"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert plain["cells"][-1][-1]["top"][0]["prob"] != pytest.approx(top["prob"], abs=1e-6)


@pytest.mark.parametrize(
    "command",
    [
        ["stages"],
        ["sweep", "--intervention", "drop"],
        ["run", "--prompt", TINY_PROMPT, "--drop", "1", "--max-new-tokens", "2"],
    ],
)
def test_bos_equals_a_tokenizer_that_adds_bos_itself(bos_dirs, tmp_path, command):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(TINY_PROMPT + "\nthe dog ran to the park a cat sat\n", encoding="utf-8")
    extra = [] if command[0] == "run" else ["--prompts", str(prompts)]
    with_option = run_json(*command, *extra, "--model", str(bos_dirs["token"]), "--bos")
    added = run_json(*command, *extra, "--model", str(bos_dirs["added"]))
    plain = run_json(*command, *extra, "--model", str(bos_dirs["token"]))
    assert numbers(with_option) == pytest.approx(numbers(added), abs=1e-6)
    assert numbers(with_option) != pytest.approx(numbers(plain), abs=1e-6)


def numbers(data) -> list[float]:
    """Every number in a JSON result, in order (floats compared with a tolerance)."""
    if isinstance(data, dict):
        return [x for value in data.values() for x in numbers(value)]
    if isinstance(data, list):
        return [x for value in data for x in numbers(value)]
    return [float(data)] if isinstance(data, (int, float)) and not isinstance(data, bool) else []


def test_bos_refused_without_a_bos_token_and_with_swap_token(bos_dirs):
    result = invoke("lens", "--model", str(bos_dirs["none"]), "--prompt", TINY_PROMPT, "--bos")
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("error: --bos: the tokenizer of") and "\n" not in result.stderr.strip()
    swap = invoke("sweep", "--model", str(bos_dirs["token"]), "--intervention", "swap-token", "--bos")
    assert swap.exit_code == 1 and "--bos is not available with swap-token" in swap.stderr


# --- induction: layerscope's diagonal vs TransformerLens's head detector -----------------------------------------


def transformer_lens_mul_score(attention: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """TransformerLens `detect_head(..., "induction_head", error_measure="mul")`, written out for one sequence:
    attention on every key j whose previous token equals the query's token (j - 1 < i), over all attention."""
    size = len(tokens)
    pattern = torch.zeros(size, size)
    for i in range(size):
        for j in range(1, i + 1):
            pattern[i, j] = float(tokens[j - 1] == tokens[i] and j - 1 < i)
    return (attention * pattern).sum(dim=(-2, -1)) / attention.sum(dim=(-2, -1))


def test_induction_score_times_n_over_2n_plus_1_is_the_transformer_lens_detector():
    from layerscope.analyses.induction import induction_scores, repeated_random_tokens

    lm, reference = tiny_model("llama"), tiny_model("llama")
    for model in (lm, reference):
        model.tokenizer.add_special_tokens({"bos_token": BOS})
    reference.model.set_attn_implementation("eager")
    n, samples, seed = 6, 2, 1
    ids = repeated_random_tokens(lm, n, 2, samples, seed)
    assert all(len(set(row[1 : n + 1].tolist())) == n for row in ids)  # no token repeated inside a block
    with torch.inference_mode():
        attentions = reference.model(input_ids=ids, output_attentions=True).attentions
    detector = torch.stack(
        [
            torch.stack([transformer_lens_mul_score(layer[s], ids[s].tolist()) for layer in attentions])
            for s in range(samples)
        ]
    ).mean(0)  # (blocks, heads), the detector's mean over sequences
    ours = induction_scores(lm, n, 2, samples, seed).matrix()
    torch.testing.assert_close(ours.float() * n / (2 * n + 1), detector, atol=1e-5, rtol=1e-4)
