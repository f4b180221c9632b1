"""Compare an intervened run with the baseline, per position."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, overload

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from layerscope.analyses.grid import DecodeGrid, build_grid, distribution_stats, divergence
from layerscope.analyses.lens import batch_lens_logits
from layerscope.analyses.lens_generate import lens_generate
from layerscope.analyses.residual import layer_labels
from layerscope.arguments import check_ids, check_int, check_intervention_list, check_lm, prompt_batch
from layerscope.errors import ArgumentTypeError, ArgumentValueError
from layerscope.interventions import Intervention, intervene
from layerscope.models.loading import LoadedModel, PromptBatch
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass
class PositionComparison:
    position: int
    token: str
    kl: float  # KL(base || intervened), nats
    top1_agree: bool
    entropy_delta: float  # intervened minus base, bits
    loss_delta: float | None  # on the prompt's own next token; None at the last position


@dataclass
class Comparison:
    positions: list[PositionComparison]

    @property
    def mean_kl(self) -> float:
        return sum(p.kl for p in self.positions) / len(self.positions)

    @property
    def top1_agreement(self) -> float:
        return sum(p.top1_agree for p in self.positions) / len(self.positions)

    def to_dict(self) -> dict:
        return {
            "mean_kl": self.mean_kl,
            "top1_agreement": self.top1_agreement,
            "positions": [asdict(p) for p in self.positions],
        }


@dataclass
class ComparisonTensors:
    """Per-position metrics as tensors, for sweeps that aggregate many runs."""

    kl: torch.Tensor
    top1_agree: torch.Tensor
    entropy_delta: torch.Tensor
    loss_delta: torch.Tensor  # one shorter than the prompt


def compare_logits(base_logits: torch.Tensor, other_logits: torch.Tensor, input_ids: torch.Tensor) -> ComparisonTensors:
    """base/other: (tokens, vocab); input_ids: (tokens,)."""
    for name, value in (("base_logits", base_logits), ("other_logits", other_logits), ("input_ids", input_ids)):
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(f"{name}= must be a tensor, not {type(value).__name__}.")
    if base_logits.dim() != 2 or other_logits.shape != base_logits.shape:
        raise ArgumentValueError(
            f"base_logits= and other_logits= must both be shaped (tokens, vocab), not "
            f"{tuple(base_logits.shape)} and {tuple(other_logits.shape)}."
        )
    if input_ids.shape != base_logits.shape[:1] or input_ids.is_floating_point():
        raise ArgumentValueError(
            f"input_ids= must be the {base_logits.shape[0]} integer token ids (tokens,) the "
            f"logits are of, not {input_ids.dtype} {tuple(input_ids.shape)}."
        )
    base = torch.log_softmax(base_logits.float(), dim=-1)
    other = torch.log_softmax(other_logits.float(), dim=-1)
    base_entropy = distribution_stats(base, base)[0]
    other_entropy, kl = distribution_stats(other, base)
    next_ids = input_ids[1:].to(base.device)[:, None]
    loss_base = -base[:-1].gather(-1, next_ids)[:, 0]
    loss_other = -other[:-1].gather(-1, next_ids)[:, 0]
    return ComparisonTensors(
        kl=kl.clamp_min(0),
        top1_agree=base.argmax(-1) == other.argmax(-1),
        entropy_delta=other_entropy - base_entropy,
        loss_delta=loss_other - loss_base,
    )


def comparison_of(tokens: list[str], tensors: ComparisonTensors) -> Comparison:
    losses = tensors.loss_delta.tolist() + [None]
    return Comparison(
        [
            PositionComparison(t, tokens[t], kl, agree, entropy, loss)
            for t, (kl, agree, entropy, loss) in enumerate(
                zip(tensors.kl.tolist(), tensors.top1_agree.tolist(), tensors.entropy_delta.tolist(), losses)
            )
        ]
    )


def intervened_logits(
    lm: LoadedModel, input_ids: torch.Tensor, interventions: Sequence[Intervention] = ()
) -> torch.Tensor:
    """One full forward of ids (1, T) through `intervene` (no interventions: the plain model), (tokens, vocab)."""
    with intervene(lm, interventions, seq_len=input_ids.shape[1]), torch.inference_mode():
        return lm.model(input_ids=input_ids, use_cache=False).logits[0]


@dataclass
class Continuation:
    text: str
    token_ids: list[int]


class _ProgressCriterion(StoppingCriteria):
    """Never stops generation: reports each new token to `progress`, which may raise to cancel it."""

    def __init__(self, prompt_length: int, total: int, progress: ProgressFn) -> None:
        self.prompt_length, self.total, self.progress = prompt_length, total, progress

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        self.progress(input_ids.shape[1] - self.prompt_length, self.total, "continuation")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def greedy_continuation(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    interventions: Sequence[Intervention] = (),
    progress: ProgressFn = no_progress,
) -> Continuation:
    """Greedy decoding of ids (1, T); position edits act on the prompt pass, block and head edits on every step.
    `progress(tokens so far, max_new_tokens, "continuation")` is called after each token (it may raise to stop).
    Zero new tokens is an empty continuation; more than the model's context leaves room for is refused."""
    check_ids(check_lm(lm), input_ids)
    check_int(max_new_tokens, "max_new_tokens", 0)
    lm.check_generation(input_ids.shape[1], max_new_tokens)
    if max_new_tokens == 0:
        return Continuation("", [])
    prompt_length = input_ids.shape[1]
    with intervene(lm, interventions, seq_len=prompt_length), torch.inference_mode():
        output = lm.model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id or lm.tokenizer.eos_token_id,
            stopping_criteria=StoppingCriteriaList([_ProgressCriterion(prompt_length, max_new_tokens, progress)]),
        )
    new_ids = output[0, input_ids.shape[1] :].tolist()
    return Continuation(lm.tokenizer.decode(new_ids, skip_special_tokens=True), new_ids)


@dataclass
class InterventionReport:
    interventions: list[dict]
    baseline: DecodeGrid
    intervened: DecodeGrid
    comparison: Comparison
    continuation: dict[str, Continuation]

    def plot(self, metric: str = "prob") -> Figure:
        """Both lens grids and the per-position KL, the interventions in the title:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.interventions import intervention_figure

        return intervention_figure(self, metric)

    def to_dict(self) -> dict:
        return {
            "model": self.baseline.model,
            "tokens": self.baseline.tokens,
            "layers": self.baseline.layers,
            "interventions": self.interventions,
            "baseline": self.baseline.to_dict(),
            "intervened": self.intervened.to_dict(),
            "comparison": self.comparison.to_dict(),
            "continuation": {name: asdict(c) for name, c in self.continuation.items()},
            **({"diverges_at": self.diverges_at} if self.baseline.prompt_length is not None else {}),
        }

    @property
    def diverges_at(self) -> int | None:
        """With grids over the continuations (`lens_over_continuation`): the first grid position whose token
        differs between them (`divergence`); None where they agree or the grids cover the prompt only."""
        return divergence(self.baseline, self.intervened) if self.baseline.prompt_length is not None else None

    def records(self) -> Records:
        """The comparison, one line per prompt position."""
        return Records.of(
            ("position", "token", "kl", "top1_agree", "entropy_delta", "loss_delta"),
            (
                (p.position, p.token, p.kl, p.top1_agree, p.entropy_delta, p.loss_delta)
                for p in self.comparison.positions
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


@overload
def run_interventions(
    lm: LoadedModel,
    input_ids: PromptBatch,
    interventions: Sequence[Intervention],
    top_k: int = 5,
    max_new_tokens: int = 0,
    lens_over_continuation: bool = False,
) -> list[InterventionReport]: ...


@overload
def run_interventions(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    interventions: Sequence[Intervention],
    top_k: int = 5,
    max_new_tokens: int = 0,
    lens_over_continuation: bool = False,
) -> InterventionReport: ...


def run_interventions(
    lm: LoadedModel,
    input_ids: torch.Tensor | PromptBatch,
    interventions: Sequence[Intervention],
    top_k: int = 5,
    max_new_tokens: int = 0,
    lens_over_continuation: bool = False,
) -> InterventionReport | list[InterventionReport]:
    """Lens grids of the baseline and the intervened run of ids (1, T), their comparison, and both continuations.

    A `PromptBatch` gives one report per prompt, as if it had run alone: the two lens passes carry the whole
    batch, the continuations are decoded prompt by prompt. `lens_over_continuation`: each grid covers its run's
    continuation too (`lens_generate`), the comparison still the prompt's positions."""
    batch = prompt_batch(lm, input_ids)
    check_intervention_list(interventions)
    check_int(top_k, "top_k", 1)
    check_int(max_new_tokens, "max_new_tokens", 0)
    if not isinstance(lens_over_continuation, bool):
        name = type(lens_over_continuation).__name__
        raise ArgumentTypeError(f"lens_over_continuation= must be True or False, not {name}.")
    for length in batch.lengths:  # before the grids, not after them
        lm.check_generation(length, max_new_tokens)
    labels = layer_labels(lm.n_blocks)
    runs = zip(batch_lens_logits(lm, batch), batch_lens_logits(lm, batch, interventions))
    reports = []
    for index, ((base_rows, base_final), (rows, final)) in enumerate(runs):
        ids = batch.prompt(index)
        if lens_over_continuation:
            baseline = lens_generate(lm, ids, max_new_tokens, top_k)
            intervened = lens_generate(lm, ids, max_new_tokens, top_k, interventions)
            continuation = {
                name: _generated(lm, grid) for name, grid in (("baseline", baseline), ("intervened", intervened))
            }
        else:
            baseline = build_grid(lm, "logit_lens", ids, base_rows, base_final, labels, top_k)
            intervened = build_grid(lm, "logit_lens", ids, rows, final, labels, top_k)
            continuation = {
                "baseline": greedy_continuation(lm, ids, max_new_tokens),
                "intervened": greedy_continuation(lm, ids, max_new_tokens, interventions),
            }
        reports.append(
            InterventionReport(
                interventions=[i.to_dict() for i in interventions],
                baseline=baseline,
                intervened=intervened,
                comparison=comparison_of(baseline.tokens, compare_logits(base_final, final, ids[0])),
                continuation=continuation,
            )
        )
    return reports if isinstance(input_ids, PromptBatch) else reports[0]


def _generated(lm: LoadedModel, grid: DecodeGrid) -> Continuation:
    """The continuation a grid over generated text holds, as `greedy_continuation` gives it."""
    new_ids = grid.token_ids[grid.prompt_length :]
    return Continuation(lm.tokenizer.decode(new_ids, skip_special_tokens=True), new_ids)
