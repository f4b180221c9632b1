"""Helpers shared by the layer-study tests: the CLI runner wired to the session's demo model,
a tiny model saved to disk (loaded by the real loader), and metrics computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from layerscope.cli.app import app
from tests.tiny import tiny_model

runner = CliRunner()
TINY_TEXT = "the cat sat on the mat and a dog ran to the park one two three four"


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def cli_demo(cli_demo_lm):
    """`layerscope ... --model demo` gets the session's model; any other id goes through the real loader."""
    return cli_demo_lm


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny 4-block llama with its tokenizer, saved as safetensors."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    return directory


def hand_metrics(base_logits: torch.Tensor, other_logits: torch.Tensor, ids: torch.Tensor, last_only: bool):
    """KL(base || other), top-1 agreement, entropy change (bits), loss change, by the formulas, in float64."""
    p = torch.log_softmax(base_logits.double(), -1)
    q = torch.log_softmax(other_logits.double(), -1)
    kl = (p.exp() * (p - q)).sum(-1)
    agree = (p.argmax(-1) == q.argmax(-1)).double()

    def entropy(lp: torch.Tensor) -> torch.Tensor:
        return -(lp.exp() * lp).sum(-1) / math.log(2)

    dh = entropy(q) - entropy(p)
    if last_only:
        return kl[-1].item(), agree[-1].item(), dh[-1].item(), None
    nxt = ids[1:]
    loss = (-q[:-1].gather(-1, nxt[:, None]) + p[:-1].gather(-1, nxt[:, None])).mean().item()
    return kl.mean().item(), agree.mean().item(), dh.mean().item(), loss
