"""Prompt sets for the layer studies: plain text (one prompt a line) or JSONL with answers.

A bad file is reported by line number before any model work starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from layerscope.errors import LayerscopeError


@dataclass(frozen=True)
class PromptItem:
    text: str
    answer: str | None = None  # expected start of the greedy continuation
    subject: str | None = None  # the word a token swap overwrites (e.g. "France")


def _json_item(path: Path, number: int, line: str) -> PromptItem:
    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise LayerscopeError(f"{path} line {number}: not valid JSON ({error.msg}).") from None
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise LayerscopeError(f"{path} line {number}: expected an object with a non-empty \"prompt\" string.")
    for key in ("answer", "subject"):
        if key in data and (not isinstance(data[key], str) or not data[key].strip()):
            raise LayerscopeError(f"{path} line {number}: \"{key}\" must be a non-empty string.")
    return PromptItem(data["prompt"], data.get("answer"), data.get("subject"))


def load_prompt_set(path: Path) -> list[PromptItem]:
    """`.jsonl`: one {"prompt", "answer"?, "subject"?} object a line. Otherwise one prompt a line.
    Blank lines and lines starting with '#' are skipped in both."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise LayerscopeError(f"Cannot read prompt file '{path}': {error}") from error
    items = []
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        items.append(_json_item(path, number, line) if path.suffix == ".jsonl" else PromptItem(line))
    if not items:
        raise LayerscopeError(f"{path}: no prompts in the file.")
    return items


def require_answers(items: list[PromptItem], path: Path | str) -> None:
    """Accuracy needs an answer on every prompt; name the first one without."""
    for index, item in enumerate(items):
        if item.answer is None:
            raise LayerscopeError(
                f"{path}: prompt {index + 1} has no \"answer\", so accuracy cannot be measured "
                "(use a .jsonl set with answers, e.g. sample_prompts/capitals.jsonl)."
            )


def answer_matches(continuation: str, answer: str) -> bool:
    """The accuracy rule: the greedy continuation, leading whitespace removed, starts with the
    answer, case-insensitively (' Paris, the city' counts for 'Paris'; 'the city of Paris' does not)."""
    return continuation.lstrip().lower().startswith(answer.strip().lower())
