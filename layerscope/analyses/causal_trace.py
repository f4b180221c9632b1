"""Causal tracing (activation patching), after Meng et al. 2022 (ROME, arXiv 2202.05262).

The prompt runs clean and corrupted (Gaussian noise on the subject's embeddings, or a
counterfactual prompt of the same length). For every (row, position) the clean state is
restored into the corrupted run, and the answer's probability at the last position says
how much of the answer that one state carries back. Rows are the lens grid's rows
(`emb`, 0..L-1 = the input of block 0 and each block's output) for `resid`; for `attn`
and `mlp`, row b restores the outputs of that module in a window of blocks around b.

Fast: a restoration at position p leaves every position before p as in the corrupted run,
so the cells of one position reuse the corrupted run's KV cache up to p and feed only the
tokens from p on, and every forward carries many cells, one per batch element. `approx` is attribution
patching: (clean - corrupted) . d p / d state, every cell from one backward pass of the corrupted run.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from transformers import Cache

from layerscope.analyses.residual import layer_labels
from layerscope.analyses.spans import token_span
from layerscope.arguments import check_ids, check_int, check_lm, check_number, check_text
from layerscope.errors import ArgumentTypeError, LayerscopeError
from layerscope.models.cache import cache_bytes, cached_forward, repeated_cache
from layerscope.models.hooks import hook_input, hook_output
from layerscope.models.loading import LoadedModel
from layerscope.models.state_writes import write_at_output, write_at_row
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Site = Literal["resid", "attn", "mlp"]
SITES = ("resid", "attn", "mlp")
NOISE_SCALE = 3.0
"""Noise standard deviation in units of the embeddings' standard deviation (the paper's 3 sigma)."""
TOKENS_PER_FORWARD = 4096
"""Fed tokens (cells x corrupted suffix length) per batched forward."""
PREFILL_TOKENS = 256
"""Tokens per forward piece of a long run (clean, corrupted, restored): a forward's attention scores grow with its
tokens times the keys, so a long prompt runs in pieces through the KV cache."""
CACHE_SHARE = 0.1
"""The KV caches one batched forward of restored cells carries (one per cell, as long as the prompt) take at most
this share of the weights' bytes (one cache at least): on a long prompt the caches set the memory."""


@dataclass(frozen=True)
class Corruption:
    """The corrupted run: its ids (1, T), the noise added to the embeddings at `noise_positions`
    (none for a counterfactual prompt), and the first position where it differs from the clean run."""

    kind: Literal["noise", "swap"]
    ids: torch.Tensor
    noise_positions: tuple[int, ...] = ()
    noise: torch.Tensor | None = None  # (len(noise_positions), hidden)
    first: int = 0


def entry_std(weight: torch.Tensor, rows: int = 4096) -> float:
    """The standard deviation of every entry of a matrix (unbiased, as torch.std), in float64 over `rows` rows at
    a time: a float32 copy of a 128k-token embedding would cost as much memory as a fifth of a 1B model."""
    count = weight.numel()
    mean = sum(chunk.double().sum().item() for chunk in weight.detach().split(rows)) / count
    squares = sum((chunk.double() - mean).square().sum().item() for chunk in weight.detach().split(rows))
    return math.sqrt(squares / max(count - 1, 1))


def embedding_noise(lm: LoadedModel, n_tokens: int, seed: int = 0, scale: float = NOISE_SCALE) -> torch.Tensor:
    """(n_tokens, hidden) Gaussian noise, `scale` times the standard deviation of the embedding entries
    as the blocks see them (Gemma scales its embeddings inside the embedding module)."""
    embed = lm.adapter.embed
    std = entry_std(embed.weight) * float(getattr(embed, "embed_scale", 1.0))
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((n_tokens, embed.weight.shape[1]), generator=generator) * (scale * std)


def noise_corruption(lm: LoadedModel, ids: torch.Tensor, span: tuple[int, int], seed: int = 0,
                     scale: float = NOISE_SCALE) -> Corruption:
    positions = tuple(range(*span))
    return Corruption("noise", ids, positions, embedding_noise(lm, len(positions), seed, scale), span[0])


def swap_corruption(ids: torch.Tensor, corrupt_ids: torch.Tensor) -> Corruption:
    """A counterfactual prompt of the same token length; the prefix the two share is computed once."""
    if corrupt_ids.shape != ids.shape:
        raise LayerscopeError(f"The corrupted prompt has {corrupt_ids.shape[1]} tokens and the prompt "
                              f"{ids.shape[1]}; they must have the same token length.")
    differs = (ids[0] != corrupt_ids[0].to(ids.device)).nonzero()
    if len(differs) == 0:
        raise LayerscopeError("The corrupted prompt is the same as the prompt.")
    return Corruption("swap", corrupt_ids.to(ids.device), first=int(differs[0]))


@contextmanager
def _noised(lm: LoadedModel, corruption: Corruption, offset: int = 0) -> Iterator[None]:
    """Add the corruption's noise to the embeddings of the tokens fed from position `offset` on
    (the noise of positions before `offset` is in the KV cache those tokens attend to)."""
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
        output[:, [corruption.noise_positions[i] - offset for i in kept]] += \
            noise[kept].to(output.device, output.dtype)
        return output

    with ExitStack() as stack:
        hook_output(stack, lm.adapter.embed, add_noise)
        yield


def site_modules(lm: LoadedModel, site: Site) -> list[torch.nn.Module]:
    """The modules whose outputs are the site's states, one per state: for `resid` the blocks
    (state 0 is block 0's input, state b+1 block b's output); else each block's attention or MLP."""
    adapter = lm.adapter
    if site == "resid":
        return list(adapter.blocks)
    return [adapter.attention(b) if site == "attn" else adapter.mlp(b) for b in range(lm.n_blocks)]


def _capture_piece(lm: LoadedModel, ids: torch.Tensor, site: Site | None, corruption: Corruption | None,
                   cache: Cache | None, offset: int, leaf_input: bool = False
                   ) -> tuple[list[torch.Tensor], torch.Tensor, Cache | None]:
    """One forward of `ids` (the tokens from position `offset` on, after `cache`): the site's states of these
    tokens, the last position's logits and the grown cache (None with `leaf_input`, a pass without cache)."""
    states: list[torch.Tensor] = []

    def keep_input(hidden: torch.Tensor) -> torch.Tensor:
        if leaf_input:
            hidden = hidden.detach().requires_grad_()
        if site == "resid":
            states.append(hidden)
        return hidden

    with ExitStack() as stack, _noised(lm, corruption, offset) if corruption else nullcontext():
        hook_input(stack, lm.adapter.blocks[0], keep_input)
        for module in site_modules(lm, site) if site else []:
            hook_output(stack, module, states.append)
        if leaf_input:
            output = lm.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        else:
            output, cache = cached_forward(lm.model, cache, input_ids=ids, logits_to_keep=1)
    return states, output.logits[0, -1], cache


def capture_sites(lm: LoadedModel, ids: torch.Tensor, site: Site | None, corruption: Corruption | None = None,
                  leaf_input: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every state of the site ((1, T, hidden) each; none for `site` None) and the last position's logits, of the
    clean run or the corrupted one. The prompt runs in pieces of PREFILL_TOKENS through the KV cache, so no forward
    holds attention scores of the whole prompt; `leaf_input` runs it in one pass without cache instead, with block
    0's input a leaf that requires grad, so that a backward pass reaches every state (not detached) even where
    the weights do not require grad."""
    run_ids = corruption.ids if corruption else ids
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


@dataclass
class TraceCell:
    p_answer: float  # the answer's probability with this state restored
    indirect_effect: float  # p_answer minus the corrupted run's


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
    clean: dict = field(default_factory=dict)  # {"p_answer": ...}
    corrupted: dict = field(default_factory=dict)

    def plot(self, field: str = "indirect_effect") -> Figure:
        """ROME's heatmap of `field` ('indirect_effect' or 'p_answer'), tokens down, rows across:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.trace import causal_trace_figure

        return causal_trace_figure([self], field)

    def to_dict(self) -> dict:
        return asdict(self)

    def column(self, position: int, field: str = "indirect_effect") -> list[float]:
        """One number per row at a position: 'p_answer' or 'indirect_effect'."""
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
        return Records.of(("method", "site", "layer", "position", "prompt_token", "p_answer", "indirect_effect"),
                          ((self.method, self.site, layer, position, self.tokens[position], cell.p_answer,
                            cell.indirect_effect)
                           for layer, row in zip(self.layers, self.cells) for position, cell in enumerate(row)))

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        from layerscope.notebook import trace_html

        return trace_html(self)


def _restored_probabilities(lm: LoadedModel, corruption: Corruption, clean: list[torch.Tensor], site: Site,
                            window: int, answer_id: int, rows: int, progress: ProgressFn) -> torch.Tensor:
    """(rows, positions from corruption.first on): the answer's probability with each state restored.

    A restoration at position p leaves every position before p as in the corrupted run, so the cells
    of one position share the corrupted run's KV cache up to p and feed only the tokens from p on,
    many rows per forward (one batch element each), in pieces of PREFILL_TOKENS, with as many rows as
    CACHE_SHARE allows for their caches. The corrupted cache grows by one token per position, so no cache
    is ever cropped (a sliding-window layer cannot give back dropped tokens)."""
    model, ids, first = lm.model, corruption.ids, corruption.first
    n_positions = ids.shape[1]
    modules = site_modules(lm, site)
    grid = torch.empty(rows, n_positions - first)
    budget = CACHE_SHARE * sum(p.numel() * p.element_size() for p in model.parameters())
    corrupted_cache = None  # the corrupted run's KV cache of the positions before `position`
    with torch.inference_mode():
        token_bytes = cache_bytes(cached_forward(model, None, input_ids=ids[:, :1])[1])  # one token's keys, values
        for start in range(0, first, PREFILL_TOKENS):
            corrupted_cache = cached_forward(model, corrupted_cache,
                                             input_ids=ids[:, start:min(start + PREFILL_TOKENS, first)])[1]
        for position in range(first, n_positions):
            piece = min(n_positions - position, PREFILL_TOKENS)
            per_forward = max(1, min(TOKENS_PER_FORWARD // piece, int(budget // (token_bytes * n_positions))))
            for at in range(0, rows, per_forward):
                chunk = range(at, min(rows, at + per_forward))
                cache = repeated_cache(corrupted_cache, len(chunk)) if corrupted_cache is not None else None
                for start in range(position, n_positions, PREFILL_TOKENS):  # the state is restored in the first
                    with ExitStack() as stack:
                        stack.enter_context(_noised(lm, corruption, offset=start))
                        if start == position:
                            _write_clean_states(lm, stack, modules, clean, site, window, chunk, position)
                        fed = ids[:, start:min(start + PREFILL_TOKENS, n_positions)].expand(len(chunk), -1)
                        output, cache = cached_forward(model, cache, input_ids=fed, logits_to_keep=1)
                grid[chunk.start:chunk.stop, position - first] = answer_probability(output.logits[:, -1],
                                                                                    answer_id).cpu()
                del output, cache  # before the next chunk's copies: two sets of caches are never held at once
                progress((position - first) * rows + chunk.stop, (n_positions - first) * rows, "causal trace")
            if position + 1 < n_positions:  # extend the corrupted cache by this position's token
                with _noised(lm, corruption, offset=position):
                    corrupted_cache = cached_forward(model, corrupted_cache, input_ids=ids[:, position:position + 1])[1]
    return grid


def _write_clean_states(lm: LoadedModel, stack: ExitStack, modules: list[torch.nn.Module], clean: list[torch.Tensor],
                        site: Site, window: int, chunk: range, position: int) -> None:
    """Hooks that restore, in batch element i, the clean states of row chunk[i] at `position` (the first
    fed token): the row's own state for `resid`, the outputs of its window of blocks for attn/mlp."""
    elements_of: dict[int, list[int]] = {}  # state index -> batch elements that restore it
    for element, row in enumerate(chunk):
        for state in [row] if site == "resid" else window_blocks(row, lm.n_blocks, window):
            elements_of.setdefault(state, []).append(element)
    for state, elements in elements_of.items():
        vectors = clean[state][0, position].expand(len(elements), -1)
        batch = torch.tensor(elements)
        if site == "resid":
            write_at_row(lm.adapter, stack, state, batch, vectors)
        else:
            write_at_output(modules[state], stack, batch, vectors)


def _attribution(lm: LoadedModel, corruption: Corruption, clean: list[torch.Tensor], site: Site,
                 answer_id: int) -> torch.Tensor:
    """(states, positions) first-order estimate of each single-state restoration's effect."""
    with torch.enable_grad():
        corrupted, logits = capture_sites(lm, corruption.ids, site, corruption, leaf_input=True)
        gradients = torch.autograd.grad(answer_probability(logits, answer_id), corrupted, allow_unused=True)
    effects = []
    for clean_state, corrupted_state, gradient in zip(clean, corrupted, gradients):
        if gradient is None:  # a state the answer does not depend on
            gradient = torch.zeros_like(corrupted_state)
        effects.append(((clean_state - corrupted_state.detach()).float() * gradient.float()).sum(-1)[0])
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
) -> CausalTrace:
    """The causal trace grid of one prompt. Cells before `corruption.first` restore a state that both
    runs share, so they equal the corrupted run's probability without being computed."""
    check_ids(check_lm(lm), input_ids)
    if not isinstance(corruption, Corruption):
        raise ArgumentTypeError(f"corruption= must be a Corruption (noise_corruption, swap_corruption), not "
                                f"{type(corruption).__name__}.")
    check_ids(lm, corruption.ids, "corruption.ids")
    if corruption.ids.shape != input_ids.shape:
        raise LayerscopeError(f"corruption= is of {corruption.ids.shape[1]} tokens and input_ids= of "
                              f"{input_ids.shape[1]}; they must have the same token length.")
    if site not in SITES:
        raise LayerscopeError(f"site= must be one of {', '.join(SITES)}, not '{site}'.")
    check_int(window, "window", 1)
    check_int(answer_id, "answer_id", 0, lm.adapter.embed.weight.shape[0] - 1)
    with torch.inference_mode():
        clean, clean_logits = capture_sites(lm, input_ids, site)
        p_clean = answer_probability(clean_logits, answer_id).item()
        p_corrupt = answer_probability(capture_sites(lm, input_ids, None, corruption)[1], answer_id).item()
    rows = len(clean) if site == "resid" else lm.n_blocks
    n_positions = input_ids.shape[1]
    grid = torch.full((rows, n_positions), p_corrupt)
    if approx:
        effects = _attribution(lm, corruption, [state.clone() for state in clean], site, answer_id)
        if site != "resid":
            effects = torch.stack([effects[list(window_blocks(b, rows, window))].sum(0) for b in range(rows)])
        grid = grid + effects
    else:
        grid[:, corruption.first:] = _restored_probabilities(lm, corruption, clean, site, window, answer_id,
                                                             rows, progress)
    ids = input_ids[0].tolist()
    labels = layer_labels(lm.n_blocks) if site == "resid" else [str(b) for b in range(rows)]
    return CausalTrace(
        model=lm.name, method="causal_trace", tokens=lm.token_texts(ids), token_ids=ids, layers=labels,
        cells=[[TraceCell(p, p - p_corrupt) for p in row] for row in grid.tolist()],
        site=site, window=window, approx=approx, corrupt=corruption.kind,
        corrupt_tokens=lm.token_texts(corruption.ids[0].tolist()), subject=subject,
        subject_positions=list(span or ()), answer=lm.token_texts([answer_id])[0], answer_id=answer_id,
        clean={"p_answer": p_clean}, corrupted={"p_answer": p_corrupt},
    )


def answer_token(lm: LoadedModel, answer: str) -> int:
    """The first token of the answer as it follows the prompt (give ' Paris' with its space)."""
    ids = lm.tokenizer(answer, add_special_tokens=False).input_ids
    if not answer or not ids:
        raise LayerscopeError("The answer is empty.")
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
) -> CausalTrace:
    """Causal trace from text: the answer defaults to the model's own next token. The subject's tokens are
    found by `token_span`'s rule; `occurrence` (1 = the first) chooses one where the subject occurs more than once."""
    check_lm(lm)
    check_text(prompt, "prompt")
    for name, value in (("subject", subject), ("answer", answer), ("corrupt_prompt", corrupt_prompt)):
        if value is not None:
            check_text(value, name)
    check_int(window, "window", 1)
    check_int(seed, "seed")
    check_number(noise_scale, "noise_scale")
    ids = lm.encode(prompt)
    found = token_span(lm, prompt, subject, "subject", occurrence) if subject is not None else None
    span = (found.start, found.stop) if found is not None else None
    if corrupt == "noise":
        if span is None:
            raise LayerscopeError("Noise corruption needs the subject: give subject= (a part of the prompt).")
        corruption = noise_corruption(lm, ids, span, seed, noise_scale)
    elif corrupt == "swap":
        if corrupt_prompt is None:
            raise LayerscopeError("Swap corruption needs the counterfactual prompt: give corrupt_prompt=.")
        corruption = swap_corruption(ids, lm.encode(corrupt_prompt))
    else:
        raise LayerscopeError(f"corrupt= must be 'noise' or 'swap', not '{corrupt}'.")
    if answer is None:
        with torch.inference_mode():
            answer_id = int(lm.model(input_ids=ids, logits_to_keep=1).logits[0, -1].argmax())
    else:
        answer_id = answer_token(lm, answer)
    return causal_trace(lm, ids, corruption, answer_id, site, window, approx, subject, span, progress)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two equally shaped tensors (ties broken by order)."""
    ranks = [x.flatten().argsort().argsort().float() for x in (a, b)]
    centred = [r - r.mean() for r in ranks]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))
