"""Stage map (Stages of Inference, arXiv 2406.19384): per-block signatures and a heuristic segmentation.

Signatures per block, each averaged over the prompts (every prompt counts once):
- drop_kl, swap_kl: set-average KL(base || intervened) of the drop sweep and the
  swap sweep (swap of b and b+1; none for the last block);
- lens_kl, lens_entropy: logit lens of the block's OUTPUT, KL to the model's
  final distribution (nats) and entropy (bits), mean over positions;
- attn_norm, mlp_norm, attn_mlp_ratio: mean L2 norm per token of the attention
  and MLP outputs, and their ratio (none where the MLP output is zero);
- prev5_attention: attention mass a query puts on the previous five tokens
  (keys t-5..t-1), mean over heads and over queries t >= 1;
- prediction_neurons, suppression_neurons: the block's MLP neurons of each kind
  (`neurons.neuron_census`, Gurnee et al.'s thresholds; weights only, no prompt;
  none for a mixture of experts). The paper (Fig. 6): suppression neurons
  outnumber prediction neurons in the last stage.
- probe_accuracy, probe_gain, probe_rise (only with a `probe=` report, `probes.probe_rows`): the held-out
  accuracy of the linear probe at the block's output row, its gain over the shuffled-label control, and whether
  it is a significant increase over the row before (PROBE_RULE). The paper names "a significant increase in
  probing accuracy" as the signature of the feature-engineering stage.

The segmentation (RULE below) is a HEURISTIC: a simple documented rule over
those numbers, shown with its evidence per block, not a finding.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import torch

from layerscope.analyses.grid import distribution_stats
from layerscope.analyses.neurons import neuron_census
from layerscope.analyses.probes import ProbeReport
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.residual import capture_residuals, layer_labels
from layerscope.analyses.sweep import sweep
from layerscope.distributed import mapped
from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.interventions.attention import read_attention
from layerscope.models.hooks import hook_output
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STAGES = ("detokenisation", "feature engineering", "prediction ensembling", "residual sharpening")
DETOK_FACTOR = 2.0
SHARPEN_FACTOR = 2.0
ENSEMBLE_FACTOR = 0.75
PREVIOUS = 5
RULE = (
    "Heuristic. 1 detokenisation: block 0, then each next block while its drop-KL >= 2 x the median drop-KL, "
    "within the first quarter of the blocks. 4 residual sharpening: the last block, then each earlier block while "
    "its MLP output norm >= 2 x the median MLP norm or its suppression neurons outnumber its prediction neurons, "
    "within the last quarter. 3 prediction ensembling: between "
    "those, from the first block after the logit-lens-KL peak whose lens KL to final is <= 0.75 x the peak. "
    "2 feature engineering: the blocks between detokenisation and ensembling."
)
PROBE_SIGNIFICANCE = 2.0
PROBE_RULE = (
    "With a probe: a block's probe accuracy rises significantly when it exceeds the previous row's (emb before "
    "block 0) by more than 2 standard errors of the difference, 2 x sqrt(se^2 + se_prev^2) (the standard errors "
    "over the folds), and beats both its shuffled control and the majority share. Detokenisation stops before "
    "the first block after block 0 that rises; prediction ensembling starts no earlier than the block after the "
    "last one that rises before residual sharpening; so each significant increase between them is feature "
    "engineering."
)


@dataclass
class BlockSignature:
    block: int
    drop_kl: float
    swap_kl: float | None
    lens_kl: float
    lens_entropy: float
    attn_norm: float
    mlp_norm: float
    attn_mlp_ratio: float | None  # None where the MLP adds nothing
    prev5_attention: float
    prediction_neurons: int | None = None  # None: not counted (a mixture of experts)
    suppression_neurons: int | None = None
    probe_accuracy: float | None = None  # None: no probe given
    probe_gain: float | None = None  # the accuracy minus the shuffled control's
    probe_rise: bool | None = None  # a significant increase over the row before (PROBE_RULE)
    stage: str = ""
    reason: str = ""


@dataclass
class StageMap:
    model: str
    n_prompts: int
    blocks: list[BlockSignature]
    rule: str = RULE
    probe: dict | None = None  # the probe's settings (ProbeReport.to_dict without its rows), when one was given

    def plot(self) -> Figure:
        """The signatures per block over the stage bands: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.studies import stage_figure

        return stage_figure(self)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "n_prompts": self.n_prompts,
            "heuristic": True,
            "rule": self.rule,
            "probe": self.probe,
            "stages": {name: [b.block for b in self.blocks if b.stage == name] for name in STAGES},
            "blocks": [asdict(b) for b in self.blocks],
        }

    def records(self) -> Records:
        """Every signature of every block, with its stage and the evidence."""
        names = [f.name for f in fields(BlockSignature)]
        return Records.of(names, ([getattr(b, name) for name in names] for b in self.blocks))

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def previous_tokens_share(probs: torch.Tensor, previous: int = PREVIOUS) -> torch.Tensor:
    """(batch, heads, queries, keys) -> per head, the mean over queries t >= 1 of the mass on keys t-5..t-1."""
    queries, keys = probs.shape[-2], probs.shape[-1]
    query_pos = torch.arange(queries, device=probs.device)[:, None] + (keys - queries)
    key_pos = torch.arange(keys, device=probs.device)[None, :]
    window = (key_pos < query_pos) & (key_pos >= query_pos - previous)
    share = (probs * window).sum(-1)  # (batch, heads, queries)
    has_previous = query_pos[:, 0] >= 1
    return share[..., has_previous].mean(dim=(0, 2))


def _add_norms(store: list[float], count: list[int]) -> Callable[[torch.Tensor], None]:
    def add(hidden: torch.Tensor) -> None:
        store[0] += hidden.float().norm(dim=-1).sum().item()
        count[0] += hidden.shape[0] * hidden.shape[1]

    return add


def _forward_signatures(lm: LoadedModel, input_ids: torch.Tensor) -> dict[str, list[float]]:
    """One forward: lens KL and entropy of each block's output, output norms, previous-token attention."""
    adapter, n = lm.adapter, lm.n_blocks
    attn = [[0.0] for _ in range(n)]
    mlp = [[0.0] for _ in range(n)]
    tokens = [[0] for _ in range(2 * n)]
    prev5 = [0.0] * n

    def read(block: int, probs: torch.Tensor) -> None:
        prev5[block] = previous_tokens_share(probs).mean().item()

    with ExitStack() as stack:
        for b in range(n):
            hook_output(stack, adapter.attention(b), _add_norms(attn[b], tokens[b]))
            hook_output(stack, adapter.mlp(b), _add_norms(mlp[b], tokens[n + b]))
        stack.enter_context(read_attention(lm.model, {b: adapter.attention(b) for b in range(n)}, read))
        captured = capture_residuals(adapter, input_ids)
    final = torch.log_softmax(captured.logits[0].float(), dim=-1)
    lens_kl, lens_entropy = [], []
    with torch.inference_mode():
        for state in captured.states[1:]:
            entropy, kl = distribution_stats(torch.log_softmax(adapter.decode(state[0]).float(), dim=-1), final)
            lens_kl.append(kl.clamp_min(0).mean().item())
            lens_entropy.append(entropy.mean().item())
    attn_norm = [attn[b][0] / tokens[b][0] for b in range(n)]
    mlp_norm = [mlp[b][0] / tokens[n + b][0] for b in range(n)]
    return {
        "lens_kl": lens_kl,
        "lens_entropy": lens_entropy,
        "attn_norm": attn_norm,
        "mlp_norm": mlp_norm,
        "prev5_attention": prev5,
    }


def _leading_run(passes: list[bool], limit: int) -> int:
    """How many blocks from the start (at least one, at most `limit`) pass."""
    count = 1
    while count < limit and passes[count]:
        count += 1
    return count


def suppressing(b: BlockSignature) -> bool:
    """The block's suppression neurons outnumber its prediction neurons (False where they were not counted)."""
    return b.suppression_neurons is not None and b.suppression_neurons > (b.prediction_neurons or 0)


def neuron_counts(lm: LoadedModel, progress: ProgressFn = no_progress) -> list[tuple[int | None, int | None]]:
    """Per block, (prediction neurons, suppression neurons) by the census's default thresholds; (None, None) for
    every block of a model whose MLPs have no dense output projection (a mixture of experts)."""
    try:
        census = neuron_census(lm, progress=progress)  # refuses a mixture of experts before any work
    except LayerscopeError:
        return [(None, None)] * lm.n_blocks
    return [(b.prediction, b.suppression) for b in census.blocks]


def _ensemble_start(middle: list[BlockSignature], default: int) -> tuple[int, float]:
    """The first block after the lens-KL peak whose lens KL is <= ENSEMBLE_FACTOR x the peak; and that limit."""
    if not middle:
        return default, 0.0
    peak = max(middle, key=lambda b: b.lens_kl)
    limit = ENSEMBLE_FACTOR * peak.lens_kl
    return next((b.block for b in middle if b.block > peak.block and b.lens_kl <= limit), default), limit


def segment(blocks: list[BlockSignature]) -> None:
    """Assign each block its stage and the evidence, by RULE, and by PROBE_RULE where the blocks have probe
    signatures (`probe_rise` None counts as no rise)."""
    n = len(blocks)
    quarter = max(1, math.ceil(n / 4))
    drop_threshold = DETOK_FACTOR * statistics.median(b.drop_kl for b in blocks)
    mlp_threshold = SHARPEN_FACTOR * statistics.median(b.mlp_norm for b in blocks)
    detok = _leading_run([b.drop_kl >= drop_threshold and not b.probe_rise for b in blocks], min(quarter, n - 1))
    sharpen = _leading_run(
        [b.mlp_norm >= mlp_threshold or suppressing(b) for b in reversed(blocks)], min(quarter, n - detok)
    )
    ensemble_from, limit = _ensemble_start(blocks[detok : n - sharpen], n - sharpen)
    rises = [b.block for b in blocks[detok : n - sharpen] if b.probe_rise]
    last_rise = rises[-1] if rises and rises[-1] + 1 > ensemble_from else None  # it moves the ensembling start
    ensemble_from = ensemble_from if last_rise is None else last_rise + 1
    for b in blocks:
        if b.block < detok:
            b.stage = STAGES[0]
            b.reason = f"drop-KL {b.drop_kl:.3g} >= {drop_threshold:.3g}" if b.block else "block 0"
        elif b.block >= n - sharpen:
            b.stage = STAGES[3]
            b.reason = (
                "last block"
                if b.block == n - 1
                else f"MLP norm {b.mlp_norm:.3g} >= {mlp_threshold:.3g}"
                if b.mlp_norm >= mlp_threshold
                else f"suppression neurons {b.suppression_neurons} > prediction neurons {b.prediction_neurons}"
            )
        elif b.block >= ensemble_from:
            b.stage = STAGES[2]
            b.reason = (
                f"lens KL {b.lens_kl:.3g}; from block {ensemble_from}, past the peak, it fell <= {limit:.3g}"
                if last_rise is None
                else f"lens KL {b.lens_kl:.3g}; after the last significant probe rise (block {last_rise})"
            )
        else:
            b.stage = STAGES[1]
            if b.probe_rise:
                b.reason = f"probe accuracy {b.probe_accuracy:.1%}: a significant rise"
            elif last_rise is not None:
                b.reason = f"lens KL {b.lens_kl:.3g}; up to the last significant probe rise (block {last_rise})"
            else:
                b.reason = f"lens KL {b.lens_kl:.3g}; before block {ensemble_from}, where it first fell <= {limit:.3g}"


def probe_signatures(probe: ProbeReport, n_blocks: int) -> list[tuple[float, float, bool]]:
    """Per block, from the probe at its output row: (accuracy, gain over the control, significant rise over the
    row before), by PROBE_RULE."""
    rows = probe.rows
    signatures = []
    for before, row in zip(rows, rows[1:]):
        margin = PROBE_SIGNIFICANCE * math.hypot(row.accuracy_se, before.accuracy_se)
        meaningful = row.accuracy > max(row.control, probe.majority)
        signatures.append(
            (row.accuracy, row.accuracy - row.control, row.accuracy - before.accuracy > margin and meaningful)
        )
    return signatures


def check_probe(probe: object, lm: LoadedModel) -> ProbeReport:
    """A ProbeReport of this model, one row per grid row (emb, then each block's output)."""
    if not isinstance(probe, ProbeReport):
        raise ArgumentTypeError(f"probe= must be a ProbeReport (ls.probe_rows), not {type(probe).__name__}.")
    if probe.model != lm.name:
        raise ArgumentValueError(f"probe= was computed on '{probe.model}'; this model is '{lm.name}'.")
    if [row.row for row in probe.rows] != layer_labels(lm.n_blocks):
        raise ArgumentValueError(f"probe= has rows {[row.row for row in probe.rows]}, not this model's grid rows.")
    return probe


def stage_map(
    lm: LoadedModel,
    prompts: list[PromptItem],
    seed: int = 0,
    batch_size: int = 8,
    progress: ProgressFn = no_progress,
    probe: ProbeReport | None = None,
) -> StageMap:
    """All signatures over the prompt set, then the heuristic segmentation; with `probe` (`probe_rows` on this
    model), its accuracy per block as a signature, which the segmentation uses as PROBE_RULE says."""
    n = lm.n_blocks
    probe = None if probe is None else check_probe(probe, lm)
    drop = [
        r.kl
        for r in sweep(lm, prompts, "drop", seed=seed, batch_size=batch_size, progress=progress)
        if r.prompt_index is None
    ]
    swap = (
        [
            r.kl
            for r in sweep(lm, prompts, "swap", seed=seed, batch_size=batch_size, progress=progress)
            if r.prompt_index is None
        ]
        if n > 1
        else []
    )
    sums: dict[str, list[float]] = {}
    progress(0, len(prompts), "stage signatures")
    signatures = mapped(prompts, lambda item: _forward_signatures(lm, lm.encode(item.text)))  # shared out over ranks
    for done, values_by_name in enumerate(signatures, start=1):
        for name, values in values_by_name.items():
            sums[name] = [a + v for a, v in zip(sums.get(name, [0.0] * n), values)]
        progress(done, len(prompts), "stage signatures")
    mean = {name: [v / len(prompts) for v in values] for name, values in sums.items()}
    counts = neuron_counts(lm, progress)
    probed = probe_signatures(probe, n) if probe is not None else [(None, None, None)] * n
    blocks = [
        BlockSignature(
            b,
            drop[b],
            swap[b] if b < n - 1 else None,
            mean["lens_kl"][b],
            mean["lens_entropy"][b],
            mean["attn_norm"][b],
            mean["mlp_norm"][b],
            mean["attn_norm"][b] / mean["mlp_norm"][b] if mean["mlp_norm"][b] else None,
            mean["prev5_attention"][b],
            *counts[b],
            *probed[b],
        )
        for b in range(n)
    ]
    segment(blocks)
    if probe is None:
        return StageMap(lm.name, len(prompts), blocks)
    settings = {key: value for key, value in probe.to_dict().items() if key != "rows"}
    return StageMap(lm.name, len(prompts), blocks, f"{RULE} {PROBE_RULE}", settings)
