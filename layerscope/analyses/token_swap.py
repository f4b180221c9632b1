"""Cross-prompt token swap (Attend First, Consolidate Later, arXiv 2409.03621).

The residual state of a donor word ("Italy" in "The country Italy") is written
over the subject word of each target prompt ("France" in "The capital of France
is") at one grid row, and the greedy answer is checked: does it follow the
donor (Rome) or the original (Paris)? Row l is the input of block l (row 0 the
embeddings, row L the last block's output), as in the engine's PatchState.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

from layerscope.analyses.compare import compare_logits, greedy_continuation, intervened_logits
from layerscope.analyses.prompt_sets import PromptItem, answer_matches
from layerscope.analyses.residual import capture_residuals
from layerscope.analyses.resumable import finished_points, mean, mean_of, missing_points
from layerscope.analyses.spans import token_span
from layerscope.errors import LayerscopeError
from layerscope.interventions import PatchState
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress


@dataclass(frozen=True)
class Donor:
    prompt: str = "The country Italy"
    word: str = "Italy"
    answer: str = "Rome"


@dataclass
class TokenSwapPoint:
    """Per prompt follows_* are 0 or 1; in the set average (prompt_index None) they are shares."""

    intervention: str
    row: int  # grid row: the state is written at the input of block `row` (row L: the last block's output)
    prompt_index: int | None
    kl: float  # at the last position, KL(base || patched), nats
    top1_agree: float
    entropy_delta: float
    loss_delta: float | None  # always None: no next token is known at the last position
    accuracy: float | None  # = follows_original
    follows_donor: float
    follows_original: float
    continuation: str | None = None
    word_tokens: int | None = None  # how many tokens the subject word spans (the last one is patched)

    @property
    def key(self) -> tuple[int | None, int]:
        return self.prompt_index, self.row

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TokenSwapPoint:
        """Also points written before the grid row had its own name (`layer`)."""
        data = dict(data)
        old = data.pop("layer", None)
        data.setdefault("row", old)
        return cls(**data)


def _average(row: int, points: list[TokenSwapPoint]) -> TokenSwapPoint:
    return TokenSwapPoint(
        "swap-token",
        row,
        None,
        mean([p.kl for p in points]),
        mean([p.top1_agree for p in points]),
        mean([p.entropy_delta for p in points]),
        None,
        mean_of([p.accuracy for p in points]),
        mean([p.follows_donor for p in points]),
        mean([p.follows_original for p in points]),
    )


def check_rows(rows: Iterable[int] | None, n_blocks: int) -> list[int]:
    """Grid rows 0..L (all of them by default), sorted."""
    rows = sorted(set(range(n_blocks + 1) if rows is None else rows))
    bad = [row for row in rows if not 0 <= row <= n_blocks]
    if bad:
        raise LayerscopeError(f"swap-token: row {bad[0]} is out of range 0..{n_blocks} for this model.")
    return rows


def usable_targets(prompts: list[PromptItem], donor: Donor) -> list[int]:
    """Indices of prompts with a subject and an answer that differs from the donor's."""
    usable = []
    for index, item in enumerate(prompts):
        if item.subject is None or item.answer is None:
            raise LayerscopeError(
                f'swap-token: prompt {index + 1} needs both "subject" and "answer" (see sample_prompts/capitals.jsonl).'
            )
        if item.answer.strip().lower() != donor.answer.strip().lower():
            usable.append(index)
    if not usable:
        raise LayerscopeError("swap-token: every prompt has the donor's answer, so none can tell them apart.")
    return usable


def token_swap_sweep(
    lm: LoadedModel,
    prompts: list[PromptItem],
    donor: Donor = Donor(),
    rows: Iterable[int] | None = None,
    max_new_tokens: int = 4,
    done: Iterable[TokenSwapPoint] = (),
    progress: ProgressFn = no_progress,
) -> Iterator[TokenSwapPoint]:
    """Yield a point per (target prompt, grid row), prompt by prompt, then the average per grid row.

    Prompts whose answer is the donor's answer are left out: they cannot tell the two apart.
    """
    grid_rows = check_rows(rows, lm.n_blocks)
    targets = usable_targets(prompts, donor)
    donor_ids = lm.encode(donor.prompt)
    donor_word = token_span(lm, donor.prompt, donor.word, "donor.word", where="the donor prompt", chooser=None)
    donor_states = capture_residuals(lm.adapter, donor_ids).states[:, 0, donor_word[-1]]
    finished = finished_points(done)

    def prompt_points(index: int) -> Iterator[TokenSwapPoint]:
        item = prompts[index]
        input_ids = lm.encode(item.text)
        word = token_span(lm, item.text, item.subject or "", "subject", where=f"prompt {index + 1}", chooser=None)
        base_logits = intervened_logits(lm, input_ids)
        for row in grid_rows:
            if (index, row) in finished:
                continue
            patch = PatchState(row, word[-1], donor_states[row])
            tensors = compare_logits(base_logits, intervened_logits(lm, input_ids, [patch]), input_ids[0])
            text = greedy_continuation(lm, input_ids, max_new_tokens, [patch]).text
            follows_original = float(answer_matches(text, item.answer or ""))
            yield TokenSwapPoint(
                "swap-token",
                row,
                index,
                tensors.kl[-1].item(),
                tensors.top1_agree[-1].float().item(),
                tensors.entropy_delta[-1].item(),
                None,
                follows_original,
                float(answer_matches(text, donor.answer)),
                follows_original,
                text,
                len(word),
            )

    yield from missing_points(targets, grid_rows, finished, prompt_points, progress, "swap-token")
    for row in grid_rows:
        yield _average(row, [finished[(index, row)] for index in targets])
