"""One span finder for the engine (`token_span`): whole tokens, refused ambiguity, a chosen occurrence, and every
analysis that names a word of its prompt finds it that way. Expected positions come from the tokens' own texts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from layerscope.analyses.causal_trace import trace_prompt
from layerscope.analyses.needles import Needle, build_tests
from layerscope.analyses.patchscope import parse_target
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.spans import token_span
from layerscope.analyses.token_swap import Donor, token_swap_sweep
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from tests.tiny import tiny_model

TEXT = "the cat sat on the catalog and the cat ran"


@pytest.fixture(scope="module", params=["demo", "tiny"])
def lm(request):
    return request.getfixturevalue("demo_lm") if request.param == "demo" else tiny_model("llama")


def positions_of(lm, text: str, word: str) -> list[int]:
    """Positions of the tokens whose own text, spaces aside, is `word`: an independent way to find a one-token word."""
    return [i for i, token in enumerate(lm.token_texts(lm.encode(text)[0])) if token.strip() == word]


def test_repeated_word_is_refused_with_every_occurrence_named(lm):
    first, second = positions_of(lm, TEXT, "cat")
    with pytest.raises(LayerscopeError) as refused:
        token_span(lm, TEXT, "cat", "subject")
    assert str(refused.value) == (
        f"subject='cat' occurs 2 times in the prompt (tokens {first}-{first}, "
        f"{second}-{second}); choose one with occurrence=1..2."
    )


def test_occurrence_chooses_and_out_of_range_names_the_parameter(lm):
    first, second = positions_of(lm, TEXT, "cat")
    assert token_span(lm, TEXT, "cat", "subject", occurrence=1) == range(first, first + 1)
    assert token_span(lm, TEXT, "cat", "subject", occurrence=2) == range(second, second + 1)
    with pytest.raises(ValueError, match=r"^occurrence=3 is out of range: subject='cat' occurs 2 times"):
        token_span(lm, TEXT, "cat", "subject", occurrence=3)
    with pytest.raises(TypeError, match="^occurrence= must be an int"):
        token_span(lm, TEXT, "cat", "subject", occurrence="2")  # type: ignore[arg-type]


def test_a_part_inside_a_longer_word_is_not_a_match(lm):
    text = "the catalog and the cat"
    assert token_span(lm, text, "cat", "subject") == range(*(lambda p: (p, p + 1))(positions_of(lm, text, "cat")[0]))
    with pytest.raises(LayerscopeError, match=r"^subject='cat' occurs in the prompt only inside longer tokens"):
        token_span(lm, "the catalog is big", "cat", "subject")
    with pytest.raises(LayerscopeError, match="does not occur"):
        token_span(lm, TEXT, "dog", "subject")


def test_with_and_without_the_leading_space_name_the_same_tokens(lm):
    text = "the dog ran to park"
    expected = positions_of(lm, text, "park")
    assert len(expected) == 1
    for part in ("park", " park", "park ", " to park"):
        span = token_span(lm, text, part, "subject")
        assert span.stop - 1 == expected[0]
    assert len(token_span(lm, text, " to park", "subject")) == 2


def test_a_word_of_several_tokens_covers_all_of_them(demo_lm):
    text = "The capital of Kyrgyzstan is"
    tokens = demo_lm.token_texts(demo_lm.encode(text)[0])
    span = token_span(demo_lm, text, "Kyrgyzstan", "subject")
    assert len(span) > 1 and "".join(tokens[i] for i in span).strip() == "Kyrgyzstan"
    with pytest.raises(LayerscopeError, match="only inside longer tokens"):
        token_span(demo_lm, text, "Kyrgyzst", "subject")  # a token boundary at the start, none at the end


def test_positions_follow_the_bos_that_encode_prepends(demo_lm):
    with_bos = dataclasses.replace(demo_lm, add_bos=True)
    ids = with_bos.encode(TEXT)[0]
    span = token_span(with_bos, TEXT, "cat", "subject", occurrence=2)
    assert span == range(positions_of(demo_lm, TEXT, "cat")[1] + 1, positions_of(demo_lm, TEXT, "cat")[1] + 2)
    assert with_bos.token_texts(ids[span.start : span.stop]) == [" cat"]


# --- every caller ----------------------------------------------------------------------------------------------


def test_causal_trace_noises_the_chosen_subject():
    lm = tiny_model("llama")
    with pytest.raises(LayerscopeError, match=r"^subject='cat' occurs 2 times .*occurrence=1\.\.2"):
        trace_prompt(lm, TEXT, subject="cat", approx=True)
    with pytest.raises(LayerscopeError, match="only inside longer tokens"):
        trace_prompt(lm, "the catalog is big", subject="cat", approx=True)
    second = positions_of(lm, TEXT, "cat")[1]
    trace = trace_prompt(lm, TEXT, subject="cat", occurrence=2, approx=True)
    assert trace.subject_positions == [second, second + 1]
    values = trace.values()
    assert values[:, :second].abs().max() == 0  # the first "cat" is not noised: nothing before the second differs


def test_patchscope_placeholder_uses_the_same_rule():
    lm = tiny_model("llama")
    text = "the cat sat on the cat mat"
    with pytest.raises(LayerscopeError, match=r"^placeholder='cat' occurs 2 times in the target prompt"):
        parse_target(lm, text, "cat")
    assert parse_target(lm, text, "cat", occurrence=2).placeholder == positions_of(lm, text, "cat")[1]
    with pytest.raises(LayerscopeError, match="spans 2 tokens"):
        parse_target(lm, text, "sat on")


def test_retrieval_answer_uses_the_same_rule():
    lm = tiny_model("llama")
    haystack = "one two three four five six seven eight nine ten " * 4
    for answer, error in (("cat", "occurs 2 times in its needle"), ("ca", "only inside longer tokens")):
        with pytest.raises(LayerscopeError, match=error):
            build_tests(lm, haystack, [Needle("the cat sat on the cat mat", "q", answer)], [20], [50], span="answer")


def test_token_swap_words_use_the_same_rule():
    lm = tiny_model("llama")
    prompts = [PromptItem("the capital of italy is", "rome", "ital")]
    with pytest.raises(LayerscopeError, match=r"^subject='ital' occurs in prompt 1 only inside longer tokens"):
        list(token_swap_sweep(lm, prompts, Donor("the city paris", "paris", "paris"), rows=[0]))
    with pytest.raises(LayerscopeError, match=r"^donor.word='paris' occurs 2 times in the donor prompt"):
        list(token_swap_sweep(lm, prompts, Donor("paris is paris", "paris", "paris"), rows=[0]))


def test_cli_names_the_flags_and_takes_the_occurrence(cli_demo_lm):
    runner = CliRunner()
    prompt = "The cat saw the cat and the"
    refused = runner.invoke(app, ["trace", "-p", prompt, "--subject", "cat", "--approx"])
    assert refused.exit_code == 1
    first, second = positions_of(cli_demo_lm, prompt, "cat")
    assert refused.stderr.strip() == (
        f"error: --subject 'cat' occurs 2 times in the prompt (tokens {first}-{first}, "
        f"{second}-{second}); choose one with --occurrence 1..2."
    )
    chosen = runner.invoke(
        app, ["trace", "-p", prompt, "--subject", "cat", "--occurrence", "2", "--approx", "-f", "json"]
    )
    assert chosen.exit_code == 0, chosen.output
    assert json.loads(chosen.stdout)["subject_positions"] == [second, second + 1]
    patch = runner.invoke(app, ["patchscope", "-p", "cat", "--target-prompt", "cat is cat", "--placeholder", "cat"])
    assert patch.exit_code == 1 and "--placeholder 'cat' occurs 2 times" in patch.stderr
    assert "choose one with --occurrence 1..2." in patch.stderr
