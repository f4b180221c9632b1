"""Prompt sets for the layer studies: plain text (one prompt a line) or JSONL with answers.

A bad file is reported by line number before any model work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layerscope.errors import LayerscopeError
from layerscope.textfiles import read_records, read_text_file


@dataclass(frozen=True)
class PromptItem:
    text: str
    answer: str | None = None  # expected start of the greedy continuation
    subject: str | None = None  # the word a token swap overwrites (e.g. "France")


def load_prompt_set(path: Path) -> list[PromptItem]:
    """`.jsonl`: one {"prompt", "answer"?, "subject"?} object a line (`read_records`). Otherwise one prompt a
    line. Blank lines and lines starting with '#' are skipped in both."""
    if path.suffix == ".jsonl":
        items = [
            PromptItem(data["prompt"], data.get("answer"), data.get("subject"))
            for _, data in read_records(path, "prompt file", ("prompt",), ("answer", "subject"))
        ]
    else:
        items = [
            PromptItem(line)
            for line in read_text_file(path, "prompt file").splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    if not items:
        raise LayerscopeError(f"{path}: no prompts in the file.")
    return items


def require_answers(items: list[PromptItem], path: Path | str) -> None:
    """Accuracy needs an answer on every prompt; name the first one without."""
    for index, item in enumerate(items):
        if item.answer is None:
            raise LayerscopeError(
                f'{path}: prompt {index + 1} has no "answer", so accuracy cannot be measured '
                "(use a .jsonl set with answers, e.g. sample_prompts/capitals.jsonl)."
            )


def answer_matches(continuation: str, answer: str) -> bool:
    """The accuracy rule: the greedy continuation, leading whitespace removed, starts with the
    answer, case-insensitively (' Paris, the city' counts for 'Paris'; 'the city of Paris' does not)."""
    return continuation.lstrip().lower().startswith(answer.strip().lower())
