"""Needle-in-a-haystack tests: the needles and haystack files, and the prompts built from them (a needle at a
depth of a haystack cut to a length, then its question, in the model's chat frame where it has one)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from layerscope.analyses.spans import token_span
from layerscope.errors import LayerscopeError
from layerscope.locations import DEFAULT_HAYSTACK, DEFAULT_NEEDLES
from layerscope.models.loading import LoadedModel
from layerscope.textfiles import read_records, read_text_file

INSTRUCTION = "Read the text below, then answer the question after it.\n\n"
Span = Literal["needle", "answer"]
SPANS: tuple[Span, ...] = ("needle", "answer")
"""Which needle tokens the copy-paste rule scores: the whole needle sentence (the paper's formula),
or only its answer words (the authors' code, `real_needle`, which produced the published figures)."""


@dataclass(frozen=True)
class Needle:
    needle: str
    question: str
    answer: str


def load_needles(path: Path = DEFAULT_NEEDLES) -> list[Needle]:
    """JSON lines with `needle`, `question` and `answer` (`read_records`), the answer a part of its needle (else
    no model can copy it from the haystack); blank and `#` lines are skipped."""
    needles = []
    for number, data in read_records(path, "needles file", ("needle", "question", "answer")):
        needle = Needle(data["needle"], data["question"], data["answer"])
        if needle.answer.strip().lower() not in needle.needle.lower():
            raise LayerscopeError(
                f"Needles file '{path}' line {number}: the answer '{needle.answer}' is not part of "
                "its needle, so no model can copy it from the haystack."
            )
        needles.append(needle)
    if not needles:
        raise LayerscopeError(f"Needles file '{path}' holds no needles.")
    return needles


def load_haystack(path: Path = DEFAULT_HAYSTACK) -> str:
    return read_text_file(path, "haystack file")


@dataclass
class NeedleTest:
    """One prompt: `length` haystack tokens with the needle at `depth` percent, then the question."""

    needle: Needle
    length: int
    depth: float
    ids: torch.Tensor  # (1, T)
    span: range  # token positions scored: the needle, or the answer inside it


def _chat_frame(lm: LoadedModel) -> tuple[str, str]:
    """Text before and after the user's message in the model's chat template, if it has one."""
    if not getattr(lm.tokenizer, "chat_template", None):
        return "", "\nAnswer:"
    marker = "\u2063MESSAGE\u2063"
    framed = lm.tokenizer.apply_chat_template(
        [{"role": "user", "content": marker}], tokenize=False, add_generation_prompt=True
    )
    before, _, after = framed.partition(marker)
    return before, after


def check_span(span: str) -> Span:
    """The span a user named, or one error that names the choices."""
    for known in SPANS:
        if span == known:
            return known
    raise LayerscopeError(f"Unknown span '{span}': use needle or answer.")


def build_tests(
    lm: LoadedModel,
    haystack: str,
    needles: Sequence[Needle],
    lengths: Sequence[int],
    depths: Sequence[float],
    span: Span = "needle",
) -> list[NeedleTest]:
    """Every (needle, length, depth) prompt, checked against the haystack and the model's window first."""
    if not lengths or not depths:
        raise LayerscopeError("Give at least one length and one depth.")
    check_span(span)
    for depth in depths:
        if not 0 <= depth <= 100:
            raise LayerscopeError(f"Depth {depth} is not a percentage between 0 and 100.")
    tokenizer = lm.tokenizer
    hay = tokenizer(haystack, add_special_tokens=False).input_ids
    if max(lengths) > len(hay) or min(lengths) < 1:
        raise LayerscopeError(
            f"The haystack has {len(hay)} tokens; lengths must be between 1 and that (asked {max(lengths)})."
        )
    before, after = _chat_frame(lm)
    head = tokenizer(before + INSTRUCTION).input_ids
    ends = [i + 1 for i, token in enumerate(lm.token_texts(hay)) if token.rstrip(" ").endswith((".", "\n"))]
    tests = []
    for needle in needles:
        body_text = " " + needle.needle.strip() + " "
        body = tokenizer(body_text, add_special_tokens=False).input_ids
        scored = (
            token_span(
                lm,
                body_text,
                needle.answer,
                "answer",
                where=f"its needle {needle.needle.strip()!r}",
                special_tokens=False,
                chooser=None,
            )
            if span == "answer"
            else range(len(body))
        )
        tail = tokenizer(f"\n\nQuestion: {needle.question}{after}", add_special_tokens=False).input_ids
        for length in lengths:
            total = len(head) + length + len(body) + len(tail)
            limit = lm.adapter.max_context
            if limit is not None and total > limit:
                raise LayerscopeError(
                    f"A test of length {length} needs {total} tokens; this model's context is {limit}."
                )
            for depth in depths:
                cut = max([0, *(end for end in ends if end <= round(depth / 100 * length))])
                ids = head + hay[:cut] + body + hay[cut:length] + tail
                start = len(head) + cut
                tests.append(
                    NeedleTest(
                        needle, length, depth, torch.tensor([ids]), range(start + scored.start, start + scored.stop)
                    )
                )
    return tests
