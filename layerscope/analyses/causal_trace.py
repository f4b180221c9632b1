"""Causal tracing (activation patching), after Meng et al. 2022 (ROME, arXiv 2202.05262).

The prompt runs clean and corrupted (Gaussian noise on the subject's embeddings, or a
counterfactual prompt of the same length). For every (row, position) the clean state is
restored into the corrupted run, and a metric of the last position's logits says how much
of the answer that one state carries back: the answer's probability (ROME's), the logit
difference answer - contrast, or KL(clean || restored) of the next-token distribution.
Rows are the lens grid's rows (`emb`, 0..L-1 = the input of block 0 and each block's
output) for `resid`; for `attn` and `mlp`, row b restores the outputs of that module in a
window of blocks around b; for `head`, row "b.h" restores head h of block b alone (its
slice of the attention output projection's input).

Noise, as ROME: `samples` draws of noise (ROME's 10), all in the same forward passes (one
batch element each), with the mean and its standard error per cell; the noise's standard
deviation is `scale` times the std of the embedding matrix's entries (rule `embedding`) or
of the token embeddings of a set of subjects (rule `subjects`, ROME's "s3" with scale 3).

Fast: a restoration at position p leaves every position before p as in the corrupted run,
so the cells of one position reuse the corrupted run's KV cache up to p and feed only the
tokens from p on, and every forward carries many cells, one per batch element. `approx` is attribution
patching: (clean - corrupted) . d p / d state, every cell from one backward pass of the corrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from transformers import Cache

from layerscope.analyses.attribution import attention_projection
from layerscope.analyses.prompt_sets import load_prompt_set
from layerscope.analyses.residual import layer_labels
from layerscope.analyses.spans import token_span
from layerscope.arguments import check_ids, check_int, check_lm, check_number, check_text
from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.locations import sample_file
from layerscope.models.cache import cache_bytes, cached_forward, repeated_cache
from layerscope.models.hooks import hook_input, hook_output
from layerscope.models.loading import LoadedModel
from layerscope.models.state_writes import write_at_output, write_at_row
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

Site = Literal["resid", "attn", "mlp", "head"]
SITES = ("resid", "attn", "mlp", "head")
Metric = Literal["prob", "logit-diff", "kl"]
METRICS = ("prob", "logit-diff", "kl")
NoiseRule = Literal["embedding", "subjects"]
NOISE_RULES = ("embedding", "subjects")
NOISE_SCALE = 3.0
"""Noise standard deviation in units of the embeddings' standard deviation (the paper's 3 sigma)."""
NOISE_SAMPLES = 10
"""Noise draws per trace (ROME's `samples`): the cells are their mean."""
NOISE_SUBJECTS = sample_file("capitals.jsonl")
"""The subjects whose token embeddings set the `subjects` noise rule's standard deviation by default."""
TOKENS_PER_FORWARD = 4096
"""Fed tokens (cells x corrupted suffix length) per batched forward."""
PREFILL_TOKENS = 256
"""Tokens per forward piece of a long run (clean, corrupted, restored): a forward's attention scores grow with its
tokens times the keys, so a long prompt runs in pieces through the KV cache."""
CACHE_SHARE = 0.1
"""The KV caches one batched forward of restored cells carries (one per cell, as long as the prompt) take at most
this share of the weights' bytes (one cache at least): on a long prompt the caches set the memory."""


@dataclass(frozen=True)
class NoiseLevel:
    """How strong the noise is: `scale` times `base_std`, the standard deviation of the embedding matrix's entries
    (rule `embedding`) or of the subjects' token embeddings (rule `subjects`, ROME's)."""

    rule: str
    base_std: float
    scale: float

    @property
    def std(self) -> float:
        return self.scale * self.base_std

    def to_dict(self) -> dict:
        return {"rule": self.rule, "base_std": self.base_std, "scale": self.scale, "std": self.std}


@dataclass(frozen=True)
class Corruption:
    """The corrupted run: its ids (1, T), the noise added to the embeddings at `noise_positions`, one draw per
    sample (none for a counterfactual prompt), and the first position where it differs from the clean run."""

    kind: Literal["noise", "swap"]
    ids: torch.Tensor
    noise_positions: tuple[int, ...] = ()
    noise: torch.Tensor | None = None  # (samples, len(noise_positions), hidden)
    first: int = 0
    level: NoiseLevel | None = None

    @property
    def samples(self) -> int:
        return 1 if self.noise is None else self.noise.shape[0]


def entry_std(weight: torch.Tensor, rows: int = 4096) -> float:
    """The standard deviation of every entry of a matrix (unbiased, as torch.std), in float64 over `rows` rows at
    a time: a float32 copy of a 128k-token embedding would cost as much memory as a fifth of a 1B model."""
    count = weight.numel()
    mean = sum(chunk.double().sum().item() for chunk in weight.detach().split(rows)) / count
    squares = sum((chunk.double() - mean).square().sum().item() for chunk in weight.detach().split(rows))
    return math.sqrt(squares / max(count - 1, 1))


def embedding_std(lm: LoadedModel) -> float:
    """The standard deviation of the embedding entries as the blocks see them (Gemma scales its embeddings
    inside the embedding module)."""
    embed = lm.adapter.embed
    return entry_std(embed.weight) * float(getattr(embed, "embed_scale", 1.0))


def subject_std(lm: LoadedModel, subjects: Sequence[str]) -> float:
    """ROME's noise level before its factor 3 (`collect_embedding_std`): the standard deviation (unbiased) of
    every entry of the embedding module's output for the tokens of every subject, each subject tokenized alone
    without special tokens."""
    if isinstance(subjects, str) or not isinstance(subjects, Sequence):
        raise ArgumentTypeError(f"noise_subjects= must be a list of subjects, not {type(subjects).__name__}.")
    ids = [
        token
        for subject in subjects
        for token in lm.tokenizer(check_text(subject, "noise_subjects"), add_special_tokens=False).input_ids
    ]
    if len(ids) < 2:
        raise ArgumentValueError("noise_subjects= must hold at least two tokens of subjects to measure a spread.")
    with torch.inference_mode():
        vectors = lm.adapter.embed(torch.tensor(ids, device=lm.adapter.embed.weight.device))
    return float(vectors.double().std())


def shipped_subjects() -> list[str]:
    """The subjects of sample_prompts/capitals.jsonl, the `subjects` noise rule's default set."""
    return [item.subject for item in load_prompt_set(NOISE_SUBJECTS) if item.subject]


def embedding_noise(
    lm: LoadedModel,
    n_tokens: int,
    seed: int = 0,
    scale: float = NOISE_SCALE,
    samples: int = 1,
    base_std: float | None = None,
) -> torch.Tensor:
    """(samples, n_tokens, hidden) Gaussian noise, `scale` times `base_std` (default: `embedding_std`)."""
    std = embedding_std(lm) if base_std is None else base_std
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((samples, n_tokens, lm.adapter.embed.weight.shape[1]), generator=generator) * (scale * std)


def noise_corruption(
    lm: LoadedModel,
    ids: torch.Tensor,
    span: tuple[int, int],
    seed: int = 0,
    scale: float = NOISE_SCALE,
    samples: int = 1,
    subjects: Sequence[str] | None = None,
) -> Corruption:
    """Noise on the tokens of `span`, `samples` draws; its std is `scale` times the embedding entries' std, or with
    `subjects` times the std of those subjects' token embeddings (ROME's rule)."""
    check_int(samples, "samples", 1)
    level = (
        NoiseLevel("embedding", embedding_std(lm), scale)
        if subjects is None
        else NoiseLevel("subjects", subject_std(lm, subjects), scale)
    )
    positions = tuple(range(*span))
    noise = embedding_noise(lm, len(positions), seed, scale, samples, level.base_std)
    return Corruption("noise", ids, positions, noise, span[0], level)


def swap_corruption(ids: torch.Tensor, corrupt_ids: torch.Tensor) -> Corruption:
    """A counterfactual prompt of the same token length; the prefix the two share is computed once."""
    if corrupt_ids.shape != ids.shape:
        raise LayerscopeError(
            f"The corrupted prompt has {corrupt_ids.shape[1]} tokens and the prompt "
            f"{ids.shape[1]}; they must have the same token length."
        )
    differs = (ids[0] != corrupt_ids[0].to(ids.device)).nonzero()
    if len(differs) == 0:
        raise LayerscopeError("The corrupted prompt is the same as the prompt.")
    return Corruption("swap", corrupt_ids.to(ids.device), first=int(differs[0]))


@contextmanager
def _noised(lm: LoadedModel, corruption: Corruption, offset: int = 0) -> Iterator[None]:
    """Add the corruption's noise to the embeddings of the tokens fed from position `offset` on (the noise of
    positions before `offset` is in the KV cache those tokens attend to). A batch of B elements holds the samples
    in order, B / samples elements each: element e gets sample e // (B / samples)."""
    noise = corruption.noise
    if noise is None:
        yield
        return

    def add_noise(output: torch.Tensor) -> torch.Tensor | None:
        fed = range(offset, offset + output.shape[1])
        kept = [i for i, p in enumerate(corruption.noise_positions) if p in fed]
        if not kept:
            return None
        output = output.clone()
        per_sample = output.shape[0] // noise.shape[0]
        output[:, [corruption.noise_positions[i] - offset for i in kept]] += (
            noise[:, kept].repeat_interleave(per_sample, dim=0).to(output.device, output.dtype)
        )
        return output

    with ExitStack() as stack:
        hook_output(stack, lm.adapter.embed, add_noise)
        yield


def site_modules(lm: LoadedModel, site: Site) -> list[torch.nn.Module]:
    """The modules that hold the site's states, one per state: for `resid` the blocks (state 0 is block 0's
    input, state b+1 block b's output); for `attn` or `mlp` each block's module (its output); for `head` each
    block's attention output projection (its input, the heads' outputs side by side)."""
    adapter = lm.adapter
    if site == "resid":
        return list(adapter.blocks)
    if site == "head":
        try:
            return [attention_projection(adapter, b) for b in range(lm.n_blocks)]
        except LayerscopeError:
            raise LayerscopeError(
                f"The attention of a {adapter.family} model has no output projection that splits "
                "by head, so site='head' cannot restore one head."
            ) from None
    return [adapter.attention(b) if site == "attn" else adapter.mlp(b) for b in range(lm.n_blocks)]


def _hook_state(
    stack: ExitStack, module: torch.nn.Module, site: Site, edit: Callable[[torch.Tensor], torch.Tensor | None]
) -> None:
    """Read or write a site's state at its module: a head's is the projection's input, the others an output."""
    (hook_input if site == "head" else hook_output)(stack, module, edit)


def _capture_piece(
    lm: LoadedModel,
    ids: torch.Tensor,
    site: Site | None,
    corruption: Corruption | None,
    cache: Cache | None,
    offset: int,
    leaf_input: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor, Cache | None]:
    """One forward of `ids` (the tokens from position `offset` on, after `cache`): the site's states of these
    tokens, the last position's logits (batch, vocab) and the grown cache (None with `leaf_input`, a pass without
    cache)."""
    states: list[torch.Tensor] = []

    def keep_input(hidden: torch.Tensor) -> torch.Tensor:
        if leaf_input:
            hidden = hidden.detach().requires_grad_()
        if site == "resid":
            states.append(hidden)
        return hidden

    with ExitStack() as stack, _noised(lm, corruption, offset) if corruption else nullcontext():
        hook_input(stack, lm.adapter.blocks[0], keep_input)
        if site is not None:
            for module in site_modules(lm, site):
                _hook_state(stack, module, site, states.append)
        if leaf_input:
            output = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        else:
            output, cache = cached_forward(lm.model, cache, input_ids=ids, logits_to_keep=1)
    return states, output.logits[:, -1], cache


def capture_sites(
    lm: LoadedModel,
    ids: torch.Tensor,
    site: Site | None,
    corruption: Corruption | None = None,
    leaf_input: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every state of the site ((batch, T, hidden) each; none for `site` None) and the last position's logits
    (batch, vocab), of the clean run (batch 1) or the corrupted one (one batch element per noise sample). The prompt
    runs in pieces of PREFILL_TOKENS through the KV cache, so no forward holds attention scores of the whole prompt;
    `leaf_input` runs it in one pass without cache instead, with block 0's input a leaf that requires grad, so that
    a backward pass reaches every state (not detached) even where the weights do not require grad."""
    run_ids = corruption.ids.expand(corruption.samples, -1) if corruption else ids
    if leaf_input:
        states, logits, _ = _capture_piece(lm, run_ids, site, corruption, None, 0, leaf_input=True)
        return states, logits
    total = run_ids.shape[1]
    kept: list[torch.Tensor] = []
    cache: Cache | None = None
    for start in range(0, total, PREFILL_TOKENS):
        stop = min(start + PREFILL_TOKENS, total)
        states, logits, cache = _capture_piece(lm, run_ids[:, start:stop], site, corruption, cache, start)
        if not kept and states:
            kept = [state.new_empty((state.shape[0], total, *state.shape[2:])) for state in states]
        for whole, piece in zip(kept, states):
            whole[:, start:stop] = piece
    return kept, logits


def window_blocks(block: int, n_blocks: int, window: int) -> range:
    """The blocks restored together for grid row `block` of an attn/mlp trace (the paper's window)."""
    return range(max(0, block - window // 2), min(n_blocks, block - (-window // 2)))


def answer_probability(logits: torch.Tensor, answer_id: int) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)[..., answer_id]


MetricFn = Callable[[torch.Tensor], torch.Tensor]
"""Logits (batch, vocab) -> the metric per batch element (batch,), float32."""


def metric_function(metric: Metric, answer_id: int, contrast_id: int | None, clean_logits: torch.Tensor) -> MetricFn:
    """`prob`: p(answer); `logit-diff`: logit(answer) - logit(contrast), the model's own logits (after any
    soft-cap); `kl`: KL(clean || restored) of the next-token distribution, in nats (the clean run the reference,
    as every KL in layerscope)."""
    if metric == "prob":
        return lambda logits: answer_probability(logits, answer_id)
    if metric == "logit-diff":
        return lambda logits: logits[..., answer_id].float() - logits[..., contrast_id].float()
    clean = torch.log_softmax(clean_logits.float(), dim=-1)

    def kl(logits: torch.Tensor) -> torch.Tensor:
        clean_on = clean.to(logits.device)
        terms = clean_on.exp() * (clean_on - torch.log_softmax(logits.float(), dim=-1))
        return torch.where(clean_on > -math.inf, terms, 0.0).sum(-1)

    return kl


IMPROVEMENT = {"prob": 1.0, "logit-diff": 1.0, "kl": -1.0}
"""The sign that makes an indirect effect positive where restoring moves the metric toward the clean run (a KL
to the clean run falls)."""


@dataclass
class TraceCell:
    value: float  # the metric with this state restored (the mean over noise samples)
    indirect_effect: float  # how far that moves the metric toward the clean run from the corrupted run
    stderr: float | None  # the standard error of the indirect effect's mean over noise samples (None: one sample)


@dataclass
class CausalTrace:
    """A grid like the lens's: `cells[row][position]`, rows `layers`, columns the prompt's tokens."""

    model: str
    method: str
    tokens: list[str]
    token_ids: list[int]
    layers: list[str]
    cells: list[list[TraceCell]]
    site: str
    window: int
    approx: bool
    corrupt: str
    corrupt_tokens: list[str]
    subject: str | None
    subject_positions: list[int]  # [start, end)
    answer: str
    answer_id: int
    metric: str = "prob"
    contrast: str | None = None
    contrast_id: int | None = None
    samples: int = 1
    noise: dict | None = None  # NoiseLevel.to_dict() of a noise corruption
    clean: dict = field(default_factory=dict)  # {"p_answer", "value"}
    corrupted: dict = field(default_factory=dict)  # {"p_answer", "value", "stderr"}

    def plot(self, field: str = "indirect_effect") -> Figure:
        """ROME's heatmap of `field` ('indirect_effect', or 'value': the metric restored), tokens down, rows across:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.trace import causal_trace_figure

        return causal_trace_figure([self], field)

    def to_dict(self) -> dict:
        return asdict(self)

    def column(self, position: int, field: str = "indirect_effect") -> list[float]:
        """One number per row at a position: 'value' or 'indirect_effect'."""
        return [getattr(row[position], field) for row in self.cells]

    def values(self, field: str = "indirect_effect") -> torch.Tensor:
        """(rows, positions) of one field."""
        return torch.tensor([[getattr(cell, field) for cell in row] for row in self.cells])

    def peak(self, position: int) -> tuple[str, float]:
        """The row with the largest indirect effect at a position, and that effect."""
        column = self.column(position)
        best = max(range(len(column)), key=column.__getitem__)
        return self.layers[best], column[best]

    def records(self) -> Records:
        return Records.of(
            (
                "method",
                "site",
                "metric",
                "layer",
                "position",
                "prompt_token",
                "value",
                "indirect_effect",
                "stderr",
                "samples",
            ),
            (
                (
                    self.method,
                    self.site,
                    self.metric,
                    layer,
                    position,
                    self.tokens[position],
                    cell.value,
                    cell.indirect_effect,
                    cell.stderr,
                    self.samples,
                )
                for layer, row in zip(self.layers, self.cells)
                for position, cell in enumerate(row)
            ),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        from layerscope.notebook import trace_html

        return trace_html(self)


def _restored_values(
    lm: LoadedModel,
    corruption: Corruption,
    clean: list[torch.Tensor],
    site: Site,
    window: int,
    score: MetricFn,
    rows: int,
    progress: ProgressFn,
) -> torch.Tensor:
    """(rows, positions from corruption.first on, samples): the metric with each state restored.

    A restoration at position p leaves every position before p as in the corrupted run, so the cells
    of one position share the corrupted run's KV cache up to p and feed only the tokens from p on,
    many rows per forward (the samples of a row side by side, one batch element each), in pieces of
    PREFILL_TOKENS, with as many rows as CACHE_SHARE allows for their caches. The corrupted cache grows
    by one token per position, so no cache is ever cropped (a sliding-window layer cannot give back
    dropped tokens)."""
    model, ids, first, samples = lm.model, corruption.ids, corruption.first, corruption.samples
    n_positions = ids.shape[1]
    modules = site_modules(lm, site)
    grid = torch.empty(rows, n_positions - first, samples)
    budget = CACHE_SHARE * sum(p.numel() * p.element_size() for p in model.parameters())
    corrupted_cache = None  # the corrupted run's KV cache of the positions before `position`, one per sample
    with torch.inference_mode():
        token_bytes = cache_bytes(cached_forward(model, None, input_ids=ids[:, :1])[1])  # one token's keys, values
        for start in range(0, first, PREFILL_TOKENS):  # the prefix both runs share, once
            corrupted_cache = cached_forward(
                model, corrupted_cache, input_ids=ids[:, start : min(start + PREFILL_TOKENS, first)]
            )[1]
        if corrupted_cache is not None and samples > 1:
            corrupted_cache.batch_repeat_interleave(samples)
        for position in range(first, n_positions):
            piece = min(n_positions - position, PREFILL_TOKENS)
            per_forward = max(1, min(TOKENS_PER_FORWARD // piece, int(budget // (token_bytes * n_positions))))
            rows_per_forward = max(1, per_forward // samples)
            for at in range(0, rows, rows_per_forward):
                chunk = range(at, min(rows, at + rows_per_forward))
                cache = repeated_cache(corrupted_cache, len(chunk)) if corrupted_cache is not None else None
                for start in range(position, n_positions, PREFILL_TOKENS):  # the state is restored in the first
                    with ExitStack() as stack:
                        stack.enter_context(_noised(lm, corruption, offset=start))
                        if start == position:
                            _write_clean_states(lm, stack, modules, clean, site, window, chunk, samples, position)
                        fed = ids[:, start : min(start + PREFILL_TOKENS, n_positions)].expand(samples * len(chunk), -1)
                        output, cache = cached_forward(model, cache, input_ids=fed, logits_to_keep=1)
                grid[chunk.start : chunk.stop, position - first] = score(output.logits[:, -1]).view(samples, -1).T.cpu()
                del output, cache  # before the next chunk's copies: two sets of caches are never held at once
                progress((position - first) * rows + chunk.stop, (n_positions - first) * rows, "causal trace")
            if position + 1 < n_positions:  # extend the corrupted cache by this position's token
                with _noised(lm, corruption, offset=position):
                    corrupted_cache = cached_forward(
                        model, corrupted_cache, input_ids=ids[:, position : position + 1].expand(samples, -1)
                    )[1]
    return grid


def _write_clean_states(
    lm: LoadedModel,
    stack: ExitStack,
    modules: list[torch.nn.Module],
    clean: list[torch.Tensor],
    site: Site,
    window: int,
    chunk: range,
    samples: int,
    position: int,
) -> None:
    """Hooks that restore, in the batch elements of row chunk[i] (s * len(chunk) + i for each sample s), the clean
    states of that row at `position` (the first fed token): the row's own state for `resid`, the outputs of its
    window of blocks for attn/mlp, one head's slice of its block's projection input for `head`."""
    heads = lm.adapter.n_heads
    elements_of: dict[int, list[tuple[int, int]]] = {}  # state index -> (batch element, head) that restore it
    for index, row in enumerate(chunk):
        states = (
            [row // heads] if site == "head" else [row] if site == "resid" else window_blocks(row, lm.n_blocks, window)
        )
        for state in states:
            elements_of.setdefault(state, []).extend(
                (sample * len(chunk) + index, row % heads) for sample in range(samples)
            )
    for state, pairs in elements_of.items():
        batch = torch.tensor([element for element, _ in pairs])
        if site == "head":
            _write_heads(
                stack,
                modules[state],
                batch,
                torch.tensor([head for _, head in pairs]),
                clean[state][0, position].view(heads, -1),
            )
            continue
        vectors = clean[state][0, position].expand(len(pairs), -1)
        if site == "resid":
            write_at_row(lm.adapter, stack, state, batch, vectors)
        else:
            write_at_output(modules[state], stack, batch, vectors)


def _write_heads(
    stack: ExitStack, projection: torch.nn.Module, batch: torch.Tensor, heads: torch.Tensor, clean: torch.Tensor
) -> None:
    """In the forwards inside `stack`, batch element batch[i] gets clean head heads[i]'s output ((heads, head_dim)
    `clean`) at the first fed position of the projection's input."""

    def write(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden.clone()
        hidden.view(*hidden.shape[:-1], clean.shape[0], -1)[batch, 0, heads] = clean[heads].to(
            hidden.device, hidden.dtype
        )
        return hidden

    hook_input(stack, projection, write)


def _attribution(
    lm: LoadedModel, corruption: Corruption, clean: list[torch.Tensor], site: Site, score: MetricFn
) -> torch.Tensor:
    """(states, samples, positions) first-order estimate of each single-state restoration's change of the metric,
    per noise sample (and (block x head, samples, positions) for `head`)."""
    with torch.enable_grad():
        corrupted, logits = capture_sites(lm, corruption.ids, site, corruption, leaf_input=True)
        gradients = torch.autograd.grad(score(logits).sum(), corrupted, allow_unused=True)
    effects = []
    for clean_state, corrupted_state, gradient in zip(clean, corrupted, gradients):
        if gradient is None:  # a state the metric does not depend on
            gradient = torch.zeros_like(corrupted_state)
        product = (clean_state - corrupted_state.detach()).float() * gradient.float()  # (samples, T, width)
        if site == "head":  # (samples, T, heads) -> one row per head
            effects.extend(product.view(*product.shape[:2], lm.adapter.n_heads, -1).sum(-1).permute(2, 0, 1))
        else:
            effects.append(product.sum(-1))
    return torch.stack(effects)


def causal_trace(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    corruption: Corruption,
    answer_id: int,
    site: Site = "resid",
    window: int = 10,
    approx: bool = False,
    subject: str | None = None,
    span: tuple[int, int] | None = None,
    progress: ProgressFn = no_progress,
    metric: Metric = "prob",
    contrast_id: int | None = None,
) -> CausalTrace:
    """The causal trace grid of one prompt, in `metric` (`logit-diff` needs `contrast_id`). Cells before
    `corruption.first` restore a state that both runs share, so they equal the corrupted run without being
    computed. Each cell is the mean over the corruption's noise samples, with its standard error."""
    check_ids(check_lm(lm), input_ids)
    if not isinstance(corruption, Corruption):
        raise ArgumentTypeError(
            f"corruption= must be a Corruption (noise_corruption, swap_corruption), not {type(corruption).__name__}."
        )
    check_ids(lm, corruption.ids, "corruption.ids")
    if corruption.ids.shape != input_ids.shape:
        raise LayerscopeError(
            f"corruption= is of {corruption.ids.shape[1]} tokens and input_ids= of "
            f"{input_ids.shape[1]}; they must have the same token length."
        )
    if corruption.noise is not None and tuple(corruption.noise.shape[:2]) != (
        corruption.samples,
        len(corruption.noise_positions),
    ):
        raise LayerscopeError("corruption= noise must be shaped (samples, noised positions, hidden).")
    if site not in SITES:
        raise LayerscopeError(f"site= must be one of {', '.join(SITES)}, not '{site}'.")
    if metric not in METRICS:
        raise LayerscopeError(f"metric= must be one of {', '.join(METRICS)}, not '{metric}'.")
    check_int(window, "window", 1)
    vocab = lm.adapter.embed.weight.shape[0]
    check_int(answer_id, "answer_id", 0, vocab - 1)
    if metric == "logit-diff":
        if contrast_id is None:
            raise LayerscopeError(
                "metric='logit-diff' needs the second token: give contrast_id= (the counterfactual answer)."
            )
        if check_int(contrast_id, "contrast_id", 0, vocab - 1) == answer_id:
            raise LayerscopeError("contrast_id= is the answer's token: the logit difference would be 0 everywhere.")
    elif contrast_id is not None:
        raise LayerscopeError(f"contrast_id= is for metric='logit-diff', not metric='{metric}'.")
    samples = corruption.samples
    with torch.inference_mode():
        clean, clean_logits = capture_sites(lm, input_ids, site)
        corrupted_logits = capture_sites(lm, input_ids, None, corruption)[1]
    score = metric_function(metric, answer_id, contrast_id, clean_logits[0])
    corrupted = score(corrupted_logits).cpu()  # (samples,)
    rows = len(clean) if site == "resid" else lm.n_blocks * (lm.adapter.n_heads if site == "head" else 1)
    n_positions = input_ids.shape[1]
    grid = corrupted.expand(rows, n_positions, samples).clone()  # (rows, positions, samples)
    if approx:
        changes = _attribution(lm, corruption, [state.clone() for state in clean], site, score)
        if site in ("attn", "mlp"):
            changes = torch.stack([changes[list(window_blocks(b, rows, window))].sum(0) for b in range(rows)])
        grid = grid + changes.permute(0, 2, 1).cpu()
    else:
        grid[:, corruption.first :] = _restored_values(lm, corruption, clean, site, window, score, rows, progress)
    effects = IMPROVEMENT[metric] * (grid - corrupted)
    errors = effects.std(-1) / math.sqrt(samples) if samples > 1 else None
    cells = [
        [
            TraceCell(value, effect, None if errors is None else float(errors[row, position]))
            for position, (value, effect) in enumerate(zip(value_row, effect_row))
        ]
        for row, (value_row, effect_row) in enumerate(zip(grid.mean(-1).tolist(), effects.mean(-1).tolist()))
    ]
    ids = input_ids[0].tolist()
    labels = (
        layer_labels(lm.n_blocks)
        if site == "resid"
        else [f"{b}.{h}" for b in range(lm.n_blocks) for h in range(lm.adapter.n_heads)]
        if site == "head"
        else [str(b) for b in range(rows)]
    )
    p_corrupt = answer_probability(corrupted_logits, answer_id).cpu()
    return CausalTrace(
        model=lm.name,
        method="causal_trace",
        tokens=lm.token_texts(ids),
        token_ids=ids,
        layers=labels,
        cells=cells,
        site=site,
        window=window,
        approx=approx,
        corrupt=corruption.kind,
        corrupt_tokens=lm.token_texts(corruption.ids[0].tolist()),
        subject=subject,
        subject_positions=list(span or ()),
        answer=lm.token_texts([answer_id])[0],
        answer_id=answer_id,
        metric=metric,
        contrast=None if contrast_id is None else lm.token_texts([contrast_id])[0],
        contrast_id=contrast_id,
        samples=samples,
        noise=corruption.level.to_dict() if corruption.level is not None else None,
        clean={"p_answer": answer_probability(clean_logits[0], answer_id).item(), "value": score(clean_logits).item()},
        corrupted={
            "p_answer": float(p_corrupt.mean()),
            "value": float(corrupted.mean()),
            "stderr": float(corrupted.std() / math.sqrt(samples)) if samples > 1 else None,
        },
    )


def answer_token(lm: LoadedModel, answer: str, name: str = "answer") -> int:
    """The first token of the answer as it follows the prompt (give ' Paris' with its space)."""
    ids = lm.tokenizer(answer, add_special_tokens=False).input_ids
    if not answer or not ids:
        raise LayerscopeError(f"The {name} is empty.")
    return ids[0]


def trace_prompt(
    lm: LoadedModel,
    prompt: str,
    subject: str | None = None,
    answer: str | None = None,
    corrupt: Literal["noise", "swap"] = "noise",
    corrupt_prompt: str | None = None,
    site: Site = "resid",
    window: int = 10,
    approx: bool = False,
    seed: int = 0,
    noise_scale: float = NOISE_SCALE,
    progress: ProgressFn = no_progress,
    occurrence: int | None = None,
    metric: Metric = "prob",
    contrast: str | None = None,
    samples: int | None = None,
    noise_std: NoiseRule = "embedding",
    noise_subjects: Sequence[str] | None = None,
) -> CausalTrace:
    """Causal trace from text: the answer defaults to the model's own next token; `contrast` is the second token of
    metric `logit-diff` (its first token counts, as the answer's). The subject's tokens are found by `token_span`'s
    rule; `occurrence` (1 = the first) chooses one where the subject occurs more than once. Noise: `samples` draws
    (default NOISE_SAMPLES), std `noise_scale` times the embedding entries' std (`noise_std` 'embedding') or the
    std of the token embeddings of `noise_subjects` ('subjects', ROME's; default: the shipped capitals' subjects)."""
    check_lm(lm)
    check_text(prompt, "prompt")
    for name, value in (
        ("subject", subject),
        ("answer", answer),
        ("corrupt_prompt", corrupt_prompt),
        ("contrast", contrast),
    ):
        if value is not None:
            check_text(value, name)
    check_int(window, "window", 1)
    check_int(seed, "seed")
    check_number(noise_scale, "noise_scale")
    if samples is not None:
        check_int(samples, "samples", 1)
    if noise_std not in NOISE_RULES:
        raise LayerscopeError(f"noise_std= must be one of {', '.join(NOISE_RULES)}, not '{noise_std}'.")
    if noise_subjects is not None and noise_std != "subjects":
        raise LayerscopeError("noise_subjects= is for noise_std='subjects'.")
    ids = lm.encode(prompt)
    found = token_span(lm, prompt, subject, "subject", occurrence) if subject is not None else None
    span = (found.start, found.stop) if found is not None else None
    if corrupt == "noise":
        if span is None:
            raise LayerscopeError("Noise corruption needs the subject: give subject= (a part of the prompt).")
        subjects = (
            (shipped_subjects() if noise_subjects is None else noise_subjects) if noise_std == "subjects" else None
        )
        corruption = noise_corruption(lm, ids, span, seed, noise_scale, samples or NOISE_SAMPLES, subjects)
    elif corrupt == "swap":
        if corrupt_prompt is None:
            raise LayerscopeError("Swap corruption needs the counterfactual prompt: give corrupt_prompt=.")
        if samples not in (None, 1):
            raise LayerscopeError("samples= draws noise; a swap corruption (corrupt_prompt=) has none to draw.")
        corruption = swap_corruption(ids, lm.encode(corrupt_prompt))
    else:
        raise LayerscopeError(f"corrupt= must be 'noise' or 'swap', not '{corrupt}'.")
    if answer is None:
        with torch.inference_mode():
            answer_id = int(lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1].argmax())
    else:
        answer_id = answer_token(lm, answer)
    contrast_id = answer_token(lm, contrast, "contrast") if contrast is not None else None
    return causal_trace(
        lm, ids, corruption, answer_id, site, window, approx, subject, span, progress, metric, contrast_id
    )


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors (ties broken by order)."""
    ranks = [x.flatten().argsort().argsort().float() for x in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))
