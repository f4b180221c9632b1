"""Engine errors name the Python API's parameters (`subject=`); a command shows them with its own flags
(`--subject`), mapped by `flag_message` from the command's options. Each case: the engine's message to an API
caller, then the same message as that command prints it."""

from __future__ import annotations

import inspect

import pytest
import torch

from layerscope.analyses.causal_trace import trace_prompt
from layerscope.analyses.head_ablation import ablation_heads
from layerscope.analyses.head_scores import HeadScores
from layerscope.analyses.induction import repeated_random_tokens
from layerscope.analyses.influence import check_prune
from layerscope.cli.common import flag_message, option_flags
from layerscope.cli.heads import ablate, induction, patchscope
from layerscope.cli.studies import influence
from layerscope.cli.trace import trace
from layerscope.errors import LayerscopeError
from layerscope.models.loading import check_model_dir
from tests.tiny import tiny_model

LM = tiny_model("llama")


def _gguf_only(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    check_model_dir(tmp_path)


CASES = [
    (
        lambda tmp: trace_prompt(LM, "the cat sat"),
        trace,
        "Noise corruption needs the subject: give subject= (a part of the prompt).",
        "Noise corruption needs the subject: give --subject (a part of the prompt).",
    ),
    (
        lambda tmp: trace_prompt(LM, "the cat sat on the cat", subject="cat"),
        trace,
        "subject='cat' occurs 2 times in the prompt (tokens 1-1, 5-5); choose one with occurrence=1..2.",
        "--subject 'cat' occurs 2 times in the prompt (tokens 1-1, 5-5); choose one with --occurrence 1..2.",
    ),
    (
        lambda tmp: trace_prompt(LM, "the cat sat", corrupt="swap"),
        trace,
        "Swap corruption needs the counterfactual prompt: give corrupt_prompt=.",
        "Swap corruption needs the counterfactual prompt: give --corrupt-prompt.",
    ),
    (
        lambda tmp: repeated_random_tokens(LM, seq_len=1),
        induction,
        "Induction needs seq_len=2 or more, repeats=2 or more and samples=1 or more.",
        "Induction needs --seq-len 2 or more, --repeats 2 or more and --samples 1 or more.",
    ),
    (
        lambda tmp: check_prune(4, 4),
        influence,
        "n_prune= must be between 1 and 3 for this 4-block model.",
        "--prune must be between 1 and 3 for this 4-block model.",
    ),
    (
        lambda tmp: ablation_heads(HeadScores.from_matrix(LM, "retrieval", torch.zeros(4, 4)), 0, 0),
        ablate,
        "k= must be at least 1 (one head or more to mask), not 0.",
        "--top must be at least 1 (one head or more to mask), not 0.",
    ),
    (_gguf_only, patchscope, "pass that file as source=)", "pass that file as --model)"),
]


@pytest.mark.parametrize("raise_it, command, api, cli", CASES)
def test_the_api_names_parameters_and_the_cli_its_flags(tmp_path, raise_it, command, api, cli):
    with pytest.raises(LayerscopeError) as raised:
        raise_it(tmp_path)
    message = str(raised.value)
    assert api in message and "--" not in message
    assert cli in flag_message(message, option_flags(inspect.signature(command)))


def test_a_name_that_is_not_a_parameter_of_the_command_is_left_alone():
    flags = option_flags(inspect.signature(trace))
    assert flag_message("top_k=0 and placeholder='x'; subject=", flags) == "top_k=0 and placeholder='x'; --subject"
