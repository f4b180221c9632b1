"""Retrieval heads (arXiv 2404.15574): needle-in-a-haystack tests scored with the copy-paste rule.

Decoding is greedy. The prompt is prefilled on the model's normal attention
path except its last token; from then on every forward pass has one query, and
the attention reader keeps that single row per head: memory grows linearly
with the context, never T x T.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Generator, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from layerscope.analyses.head_scores import RETRIEVAL_THRESHOLD, HeadScore, HeadScores
from layerscope.analyses.spans import token_span
from layerscope.distributed import mapped
from layerscope.errors import LayerscopeError
from layerscope.textfiles import read_records, read_text_file
from layerscope.interventions import MaskHeads, intervene
from layerscope.interventions.kinds import HEAD_MASK_MODES, HeadMaskMode
from layerscope.interventions.attention import read_attention
from layerscope.locations import DEFAULT_HAYSTACK, DEFAULT_NEEDLES
from layerscope.models.cache import cached_forward
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTRUCTION = "Read the text below, then answer the question after it.\n\n"
PREFILL_CHUNK = 256
ANSWERED_RECALL = 0.5
"""A test counts as answered when the ROUGE-1 recall of the expected answer is above this (as the authors)."""
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
            raise LayerscopeError(f"Needles file '{path}' line {number}: the answer '{needle.answer}' is not part of "
                                  "its needle, so no model can copy it from the haystack.")
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
    framed = lm.tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                              add_generation_prompt=True)
    before, _, after = framed.partition(marker)
    return before, after


def check_span(span: str) -> Span:
    """The span a user named, or one error that names the choices."""
    for known in SPANS:
        if span == known:
            return known
    raise LayerscopeError(f"Unknown span '{span}': use needle or answer.")


def build_tests(
    lm: LoadedModel, haystack: str, needles: Sequence[Needle], lengths: Sequence[int], depths: Sequence[float],
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
        scored = (token_span(lm, body_text, needle.answer, "answer", where=f"its needle {needle.needle.strip()!r}",
                             special_tokens=False, chooser=None) if span == "answer" else range(len(body)))
        tail = tokenizer(f"\n\nQuestion: {needle.question}{after}", add_special_tokens=False).input_ids
        for length in lengths:
            total = len(head) + length + len(body) + len(tail)
            limit = lm.adapter.max_context
            if limit is not None and total > limit:
                raise LayerscopeError(f"A test of length {length} needs {total} tokens; this model's context is {limit}.")
            for depth in depths:
                cut = max([0, *(end for end in ends if end <= round(depth / 100 * length))])
                ids = head + hay[:cut] + body + hay[cut:length] + tail
                start = len(head) + cut
                tests.append(NeedleTest(needle, length, depth, torch.tensor([ids]),
                                        range(start + scored.start, start + scored.stop)))
    return tests


def rouge1_recall(reference: str, candidate: str) -> float:
    """Share of the reference's words (lower-cased, with multiplicity) that the candidate contains."""
    ref = Counter(re.findall(r"\w+", reference.lower()))
    got = Counter(re.findall(r"\w+", candidate.lower()))
    return sum(min(n, got[w]) for w, n in ref.items()) / max(1, sum(ref.values()))


def greedy_steps(lm: LoadedModel, ids: torch.Tensor, read_rows: bool = True
                 ) -> Generator[tuple[int, torch.Tensor | None], None, None]:
    """Greedy decoding without end: yields (token id, attention rows (blocks, heads, keys) of the query that
    produced it, or None). The caller stops iterating."""
    model, adapter = lm.model, lm.adapter
    ids = ids.to(adapter.input_device)
    rows: list[torch.Tensor | None] = [None] * adapter.n_blocks

    def reader(block: int, probs: torch.Tensor) -> None:
        rows[block] = probs[0, :, -1].cpu()

    cache = None
    if read_rows:
        # The fast path for everything but the last token, no attention read, in chunks so that no
        # pass holds more than PREFILL_CHUNK x T of anything.
        for start in range(0, ids.shape[1] - 1, PREFILL_CHUNK):
            chunk = ids[:, start:min(start + PREFILL_CHUNK, ids.shape[1] - 1)]
            with torch.inference_mode():
                cache = cached_forward(model, cache, input_ids=chunk, logits_to_keep=1)[1]
        ids = ids[:, -1:]
        modules = {block: adapter.attention(block) for block in range(adapter.n_blocks)}
    else:
        modules = {}
    with read_attention(model, modules, reader):  # readers stay attached until the caller stops iterating
        while True:
            with torch.inference_mode():
                output, cache = cached_forward(model, cache, input_ids=ids, logits_to_keep=1)
            token = int(output.logits[0, -1].argmax())
            yield token, torch.stack(rows) if read_rows else None
            ids = torch.tensor([[token]], device=adapter.input_device)


def _stop_ids(lm: LoadedModel) -> set[int]:
    configured = lm.model.generation_config.eos_token_id
    ids = {lm.tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    return ids - {None}


def answer_steps(lm: LoadedModel, ids: torch.Tensor, max_new_tokens: int, read_rows: bool = True
                 ) -> Iterator[tuple[int, torch.Tensor | None]]:
    """Greedy steps until max_new_tokens, the end-of-sequence token, or a newline after the answer began."""
    lm.check_generation(ids.shape[1], max_new_tokens)
    text = ""
    stops = _stop_ids(lm)
    steps = greedy_steps(lm, ids, read_rows)
    for _ in range(max_new_tokens):
        token, rows = next(steps)
        if token in stops:
            break
        text += lm.tokenizer.decode([token])
        yield token, rows
        if "\n" in text.lstrip():
            break
    steps.close()


def copy_paste(rows: torch.Tensor, token: int, ids: torch.Tensor, span: range) -> torch.Tensor:
    """(blocks, heads) bool: the head's attention argmax lies in `span` and the token there is `token`.

    rows: (blocks, heads, keys), one attention row per head; ids: (keys,) or longer, the tokens at those keys.
    """
    where = rows.argmax(dim=-1)
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
    for token, rows in answer_steps(lm, test.ids, max_new_tokens):
        copies += copy_paste(rows, token, context, test.span)
        tokens.append(token)
    answer = lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    recall = rouge1_recall(test.needle.answer, answer)
    return NeedleResult(test.needle.question, test.length, test.depth, answer, recall, recall > ANSWERED_RECALL,
                        len(test.span), copies.tolist())


def needle_results(lm: LoadedModel, tests: Sequence[NeedleTest], max_new_tokens: int = 50,
                   progress: ProgressFn = no_progress) -> Iterator[NeedleResult]:
    """One result per test; stop iterating to cancel and keep what was computed."""
    progress(0, len(tests), "needle tests")
    for index, result in enumerate(mapped(tests, lambda test: run_test(lm, test, max_new_tokens))):  # over ranks
        yield result
        progress(index + 1, len(tests), "needle tests")


def retrieval_from_results(lm: LoadedModel, results: Sequence[NeedleResult], settings: dict | None = None
                           ) -> HeadScores:
    """Score = copy-paste steps / span tokens, averaged over the answered tests (zeros if none was)."""
    answered = [r for r in results if r.answered]
    scores = torch.zeros(lm.n_blocks, lm.adapter.n_heads, dtype=torch.float64)
    for result in answered:
        scores += torch.tensor(result.copies, dtype=torch.float64) / result.span_tokens
    if answered:
        scores /= len(answered)
    meta = {**(settings or {}), "tests": len(results), "answered": len(answered),
            "failed": [r.summary() for r in results if not r.answered],
            "results": [r.summary() for r in results]}
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
    tests = build_tests(lm, load_haystack() if haystack is None else haystack,
                        load_needles() if needles is None else needles, lengths, depths, span)
    results = list(needle_results(lm, tests, max_new_tokens, progress))
    settings = {"lengths": list(lengths), "depths": list(depths), "max_new_tokens": max_new_tokens, "span": span}
    return retrieval_from_results(lm, results, settings)


@dataclass
class ActivityStep:
    token: str
    id: int
    active: int  # retrieval heads that copy-pasted this token from the prompt
    heads: list[tuple[int, int]]


@dataclass
class ActivityTrace:
    model: str
    heads: list[HeadScore]  # the known retrieval heads
    steps: list[ActivityStep]

    def plot(self) -> Figure:
        """Retrieval heads active per generated token: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import activity_figure

        return activity_figure(self)

    def to_dict(self) -> dict:
        return asdict(self)


def activity_trace(lm: LoadedModel, ids: torch.Tensor, scores: HeadScores, max_new_tokens: int = 30,
                   threshold: float = RETRIEVAL_THRESHOLD) -> ActivityTrace:
    """Per generated token, how many known retrieval heads copy-pasted it from the prompt."""
    scores.check_model(lm)
    known = scores.above(threshold)
    mask = torch.zeros(lm.n_blocks, lm.adapter.n_heads, dtype=torch.bool)
    for head in known:
        mask[head.layer, head.head] = True
    context = ids[0].cpu()
    steps = []
    for token, rows in answer_steps(lm, ids, max_new_tokens):
        copied = copy_paste(rows, token, context, range(len(context))) & mask
        heads = [(int(b), int(h)) for b, h in copied.nonzero().tolist()]
        steps.append(ActivityStep(lm.tokenizer.decode([token]), token, len(heads), heads))
    return ActivityTrace(lm.name, known, steps)


@dataclass
class AblationReport:
    model: str
    k: int
    seed: int
    heads: list[HeadScore]  # the top K
    random_heads: list[HeadScore]
    tests: int
    accuracy: dict[str, float]  # "baseline", "top-K zero", "top-K uniform", "random-K zero", "random-K uniform"

    def plot(self) -> Figure:
        """NIAH accuracy per masking: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import ablation_figure

        return ablation_figure(self)

    def to_dict(self) -> dict:
        return asdict(self)


def ablation_heads(scores: HeadScores, k: int, seed: int) -> tuple[list[HeadScore], list[HeadScore]]:
    """The top-k heads, and k random heads (seeded) drawn from the rest."""
    total = len(scores.heads)
    if k < 1:
        raise LayerscopeError(f"k= must be at least 1 (one head or more to mask), not {k}.")
    if k > total // 2:
        raise LayerscopeError(
            f"k={k} is not possible: the model has {total} heads, and K random heads must be drawn "
            f"from the heads outside the top K (K at most {total // 2})."
        )
    top = scores.top(k)
    rest = [h for h in scores.heads if h not in top]
    chosen = random.Random(seed).sample(rest, k)
    return top, sorted(chosen, key=lambda h: (h.layer, h.head))


def niah_accuracy(lm: LoadedModel, tests: Sequence[NeedleTest], max_new_tokens: int,
                  heads: Sequence[HeadScore] = (), mode: HeadMaskMode = "zero") -> float:
    """Share of tests answered (ROUGE-1 recall > 0.5) with the heads masked."""
    masks = [MaskHeads(tuple((h.layer, h.head) for h in heads), mode)] if heads else []

    def answered(test: NeedleTest) -> bool:
        tokens = [token for token, _ in answer_steps(lm, test.ids, max_new_tokens, read_rows=False)]
        answer = lm.tokenizer.decode(tokens, skip_special_tokens=True)
        return rouge1_recall(test.needle.answer, answer) > ANSWERED_RECALL

    with intervene(lm, masks):
        return sum(mapped(tests, answered)) / len(tests)  # tests shared out over torchrun ranks


def ablation_experiment(lm: LoadedModel, scores: HeadScores, k: int, tests: Sequence[NeedleTest], seed: int = 0,
                        max_new_tokens: int = 50, progress: ProgressFn = no_progress) -> AblationReport:
    """NIAH accuracy for the baseline, then top-K and random-K heads masked in both modes."""
    scores.check_model(lm)
    top, rand = ablation_heads(scores, k, seed)
    runs: dict[str, tuple[Sequence[HeadScore], HeadMaskMode]] = {"baseline": ((), "zero")}
    for name, chosen in (("top", top), ("random", rand)):
        for mode in HEAD_MASK_MODES:
            runs[f"{name}-{k} {mode}"] = (chosen, mode)
    accuracy = {}
    for index, (name, (heads, mode)) in enumerate(runs.items()):
        progress(index, len(runs), f"ablation: {name}")
        accuracy[name] = niah_accuracy(lm, tests, max_new_tokens, heads, mode)
    progress(len(runs), len(runs), "ablation")
    return AblationReport(lm.name, k, seed, top, rand, len(tests), accuracy)
