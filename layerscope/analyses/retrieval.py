"""Retrieval heads (arXiv 2404.15574): needle-in-a-haystack tests (`needles`), decoded greedily while reading
the attention (`decoding`), scored with the copy-paste rule.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from layerscope.analyses.decoding import answer_steps
from layerscope.analyses.head_scores import HeadScores
from layerscope.analyses.needles import Needle, NeedleTest, Span, build_tests, load_haystack, load_needles
from layerscope.distributed import mapped
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress

ANSWERED_RECALL = 0.5
"""A test counts as answered when the ROUGE-1 recall of the expected answer is above this (as the authors)."""


def rouge1_recall(reference: str, candidate: str) -> float:
    """Share of the reference's words (lower-cased, with multiplicity) that the candidate contains."""
    ref = Counter(re.findall(r"\w+", reference.lower()))
    got = Counter(re.findall(r"\w+", candidate.lower()))
    return sum(min(n, got[w]) for w, n in ref.items()) / max(1, sum(ref.values()))


def copy_paste(attention: torch.Tensor, token: int, ids: torch.Tensor, span: range) -> torch.Tensor:
    """(blocks, heads) bool: the head's attention argmax lies in `span` and the token there is `token`.

    attention: (blocks, heads, keys), one query's attention per head; ids: (keys,) or longer, the tokens at those
    keys.
    """
    where = attention.argmax(dim=-1)
    inside = (where >= span.start) & (where < span.stop)
    return inside & (ids[where.clamp(max=len(ids) - 1)] == token)


@dataclass
class NeedleResult:
    question: str
    length: int
    depth: float
    answer: str
    recall: float
    answered: bool
    span_tokens: int  # tokens of the scored span (needle or answer)
    copies: list[list[int]]  # copy-paste steps per (block, head)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "copies"}


def run_test(lm: LoadedModel, test: NeedleTest, max_new_tokens: int = 50) -> NeedleResult:
    copies = torch.zeros(lm.n_blocks, lm.adapter.n_heads, dtype=torch.long)
    context = test.ids[0]
    tokens = []
    for token, attention in answer_steps(lm, test.ids, max_new_tokens):
        copies += copy_paste(attention, token, context, test.span)
        tokens.append(token)
    answer = lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    recall = rouge1_recall(test.needle.answer, answer)
    return NeedleResult(
        test.needle.question,
        test.length,
        test.depth,
        answer,
        recall,
        recall > ANSWERED_RECALL,
        len(test.span),
        copies.tolist(),
    )


def needle_results(
    lm: LoadedModel, tests: Sequence[NeedleTest], max_new_tokens: int = 50, progress: ProgressFn = no_progress
) -> Iterator[NeedleResult]:
    """One result per test; stop iterating to cancel and keep what was computed."""
    progress(0, len(tests), "needle tests")
    for index, result in enumerate(mapped(tests, lambda test: run_test(lm, test, max_new_tokens))):  # over ranks
        yield result
        progress(index + 1, len(tests), "needle tests")


def retrieval_from_results(
    lm: LoadedModel, results: Sequence[NeedleResult], settings: dict | None = None
) -> HeadScores:
    """Score = copy-paste steps / span tokens, averaged over the answered tests (zeros if none was)."""
    answered = [r for r in results if r.answered]
    scores = torch.zeros(lm.n_blocks, lm.adapter.n_heads, dtype=torch.float64)
    for result in answered:
        scores += torch.tensor(result.copies, dtype=torch.float64) / result.span_tokens
    if answered:
        scores /= len(answered)
    meta = {
        **(settings or {}),
        "tests": len(results),
        "answered": len(answered),
        "failed": [r.summary() for r in results if not r.answered],
        "results": [r.summary() for r in results],
    }
    return HeadScores.from_matrix(lm, "retrieval", scores, meta)


def retrieval_scores(
    lm: LoadedModel,
    haystack: str | None = None,
    needles: Sequence[Needle] | None = None,
    lengths: Sequence[int] = (512, 1024, 2048),
    depths: Sequence[float] = (0, 25, 50, 75, 100),
    max_new_tokens: int = 50,
    span: Span = "needle",
    progress: ProgressFn = no_progress,
) -> HeadScores:
    """Retrieval score per query head over needle tests built from the shipped (or given) data."""
    tests = build_tests(
        lm,
        load_haystack() if haystack is None else haystack,
        load_needles() if needles is None else needles,
        lengths,
        depths,
        span,
    )
    results = list(needle_results(lm, tests, max_new_tokens, progress))
    settings = {"lengths": list(lengths), "depths": list(depths), "max_new_tokens": max_new_tokens, "span": span}
    return retrieval_from_results(lm, results, settings)
