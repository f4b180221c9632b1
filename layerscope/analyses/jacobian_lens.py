"""Jacobian lens, after Gurnee et al. 2026 ("Verbalizable Representations Form a Global Workspace in Language
Models"; Anthropic's reference anthropics/jacobian-lens, which TransformerLens 4.3 follows).

One matrix per grid row but the last, the average Jacobian of the final row's states with respect to that row's:

    J_l = E_prompt[ (1/|V|) sum_{t in V} sum_{t' in V, t' >= t} d h_final,t' / d h_l,t ]

V: the prompt's positions after the first `skip_first` (attention sinks) and before the last. Reading the lens
decodes J_l h_l with the model's own final norm and unembedding; J_l = I is the logit lens, and the final row is
read as it is. The estimator is the reference's: one forward pass of the prompt repeated `dim_batch` times, then
one backward pass per `dim_batch` output dimensions, copy b of the prompt carrying a one-hot cotangent on
dimension b at every position of V (causal attention makes the sum run over t' >= t by itself); the gradient at
a source position is then a row of the summed Jacobian, averaged over the positions of V and over prompts.

Departure from the reference: the `emb` row is fitted too (the reference fits block outputs only), so every grid
row has a reading. Lenses are saved as safetensors plus a JSON config only; the reference's `.pt` files are not
read (they would need unpickling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from layerscope.analyses.activations import last_logits_only
from layerscope.analyses.grid import DecodeGrid
from layerscope.analyses.lens import translated_grid
from layerscope.analyses.tuned_lens import (
    CONFIG,
    WEIGHTS,
    TunedLens,
    calibration_chunks,
    check_finite_weights,
    check_fits,
    check_lens,
    config_object,
    frozen_weights,
    layerscope_config,
    lens_config,
    mismatch_note,
    read_tuned_lens,
    unembed_hash,
    warn_mismatch,
    write_config,
)
from layerscope.arguments import check_ids, check_int, check_lm, check_path, check_text
from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.models.hooks import hook_input, hook_output
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.tensorfiles import read_safetensors, replace_file

FORMAT = "layerscope-jacobian-lens"
MATRICES = "J"  # the tensor in lens.safetensors: (rows, hidden, hidden), grid rows 0..L-1


class JacobianLens:
    """A fitted Jacobian lens: `matrices[row]` (hidden x hidden, float32) maps the states of grid rows 0..L-1
    (`emb` and blocks 0..L-2's outputs) to the final row's; row L is read as it is. `n_prompts` prompts were
    averaged; `fitting` records how (settings, model, text hash)."""

    kind = "jacobian"
    made_by = "load_jacobian_lens, fit_jacobian_lens"

    def __init__(
        self, matrices: torch.Tensor, n_prompts: int, model: str = "", unembed: str = "", fitting: dict | None = None
    ):
        if not isinstance(matrices, torch.Tensor) or not matrices.is_floating_point():
            raise ArgumentTypeError(f"matrices= must be a float tensor, not {type(matrices).__name__}.")
        if matrices.dim() != 3 or matrices.shape[1] != matrices.shape[2] or len(matrices) < 1:
            raise ArgumentValueError(
                f"matrices= must be shaped (rows, hidden, hidden), one matrix per row, not {tuple(matrices.shape)}."
            )
        check_int(n_prompts, "n_prompts", 0)
        self.matrices = matrices.float()
        self.n_prompts = n_prompts
        self.model_name = model
        self.unembed_hash = unembed  # `unembed_hash` of the model, where known
        self.fitting = fitting or {}

    @property
    def hidden_size(self) -> int:
        return self.matrices.shape[1]

    @property
    def n_blocks(self) -> int:
        """The rows with a matrix: one per block, as for the tuned lens's translators."""
        return len(self.matrices)

    def to(self, device: torch.device | str) -> JacobianLens:
        self.matrices = self.matrices.to(device)
        return self

    def translate(self, row: int, states: torch.Tensor) -> torch.Tensor:
        """J_row h for states (..., hidden) of grid row `row` (float32 math); the final row as it is."""
        if row >= self.n_blocks:
            return states
        matrix = self.matrices[row]
        return (states.to(matrix.device, torch.float32) @ matrix.T).to(states.device, states.dtype)

    def translate_rows(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, ..., hidden) -> the same, every row moved to the final row's basis."""
        return torch.stack([self.translate(row, state) for row, state in enumerate(states)])

    def save(self, directory: Path | str) -> None:
        """lens.safetensors (the matrices) then config.json, each written whole or not at all."""
        directory = check_path(directory, "directory")
        state = {MATRICES: self.matrices.detach().contiguous().cpu()}
        check_finite_weights(state, "The Jacobian lens", "the model overflowed while fitting; fit it in float32")
        directory.mkdir(parents=True, exist_ok=True)
        replace_file(directory / WEIGHTS, lambda temp: save_file(state, temp))
        write_config(directory, layerscope_config(FORMAT, self, {"n_prompts": self.n_prompts, "fitting": self.fitting}))


FittedLens = TunedLens | JacobianLens
"""A lens folder's lens: both move each row's states (`translate_rows`) before the logit lens decodes them."""


def read_lens(lm: LoadedModel, directory: Path | str) -> tuple[FittedLens, str | None]:
    """The lens in a folder, of either kind as its config.json says (`read_tuned_lens`, `read_jacobian_lens`)."""
    directory = check_path(directory, "directory")
    config_path = directory / CONFIG
    if config_path.is_file() and config_object(config_path, "lens").get("format") == FORMAT:
        return read_jacobian_lens(lm, directory)
    return read_tuned_lens(lm, directory)


def load_jacobian_lens(lm: LoadedModel, directory: Path | str) -> JacobianLens:
    """A lens saved by `JacobianLens.save`, checked against the model's shape; a `LensMismatchWarning` where it
    records another model."""
    return warn_mismatch(*read_jacobian_lens(lm, directory))


def read_jacobian_lens(lm: LoadedModel, directory: Path | str) -> tuple[JacobianLens, str | None]:
    """`load_jacobian_lens`, with the mismatch returned as its one-line message (None where the lens records
    this model or nothing) for the CLI and the explorer to show their way."""
    check_lm(lm)
    directory = check_path(directory, "directory")
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise LayerscopeError(f"No Jacobian lens in '{directory}': {CONFIG} is missing.")
    hidden, n_blocks, name, fingerprint = lens_config(config_path, "Jacobian lens", (FORMAT,))
    check_fits(lm, hidden, n_blocks, f"The lens in '{directory}'")
    if not (directory / WEIGHTS).is_file():
        raise LayerscopeError(f"No Jacobian lens weights in '{directory}' ({WEIGHTS}).")
    state, _ = read_safetensors(directory / WEIGHTS, "The Jacobian lens weights")
    matrices = state.get(MATRICES)
    if matrices is None or tuple(matrices.shape) != (n_blocks, hidden, hidden) or not matrices.is_floating_point():
        found = None if matrices is None else f"{tuple(matrices.shape)} {matrices.dtype}"
        raise LayerscopeError(
            f"The weights in '{directory}' do not fit the lens config: {MATRICES} must be floats shaped "
            f"{(n_blocks, hidden, hidden)}, not {found}."
        )
    check_finite_weights(state, f"The Jacobian lens in '{directory}'", "the file is damaged")
    config = config_object(config_path, "Jacobian lens")
    n_prompts, fitting = config.get("n_prompts"), config.get("fitting")
    lens = JacobianLens(
        matrices,
        n_prompts if type(n_prompts) is int else 0,
        name,
        fingerprint,
        fitting if isinstance(fitting, dict) else {},
    )
    return lens.to(lm.adapter.output_device), mismatch_note(lm, directory, name, fingerprint, "fitted")


def jacobian_lens(lm: LoadedModel, input_ids: torch.Tensor, lens: JacobianLens, top_k: int = 5) -> DecodeGrid:
    """The decode grid of the Jacobian lens: the logit lens's rows and positions, each state moved by J_row first."""
    check_ids(check_lm(lm), input_ids)
    check_lens(lm, lens, JacobianLens)
    check_int(top_k, "top_k", 1)
    return translated_grid(lm, "jacobian_lens", input_ids, lens.translate_rows, top_k)


@dataclass(frozen=True)
class FitSettings:
    max_prompts: int | None = None  # the first prompts only; None: all of them
    context: int = 128  # tokens per prompt (the reference's max_seq_len): a text's chunks, each prompt's first
    skip_first: int = 16  # leading positions left out of V (attention sinks)
    dim_batch: int = 8  # output dimensions per backward pass: copies of the prompt in the forward batch

    def check(self) -> None:
        if self.max_prompts is not None:
            check_int(self.max_prompts, "max_prompts", 1)
        check_int(self.skip_first, "skip_first", 0)
        check_int(self.context, "context", 2)
        check_int(self.dim_batch, "dim_batch", 1)
        if self.context < self.skip_first + 2:
            raise ArgumentValueError(
                f"context={self.context} leaves no position to average over after skip_first={self.skip_first}: "
                "a prompt needs the skipped positions, one source and its last position."
            )


def fit_jacobian_lens(
    lm: LoadedModel,
    text: str | Sequence[str],
    settings: FitSettings = FitSettings(),
    progress: ProgressFn = no_progress,
) -> JacobianLens:
    """Fit the lens on `text`: one str is cut into prompts of `settings.context` tokens; a list of str is one
    prompt each (encoded as `lm.encode` does, its first `settings.context` tokens). `progress` is told after
    every backward pass (prompts x ceil(hidden / dim_batch) of them) and may raise to stop the fit."""
    check_lm(lm)
    if not isinstance(settings, FitSettings):
        raise ArgumentTypeError(f"settings= must be a FitSettings, not {type(settings).__name__}.")
    settings.check()
    chunks = _fitting_prompts(lm, text, settings)
    hidden = lm.adapter.config.hidden_size
    passes = -(-hidden // settings.dim_batch)
    total = torch.zeros(lm.n_blocks, hidden, hidden, device=lm.adapter.output_device)
    progress(0, len(chunks) * passes, "Jacobian lens")
    with frozen_weights(lm.model), torch.enable_grad():  # also when called under no_grad
        for index, ids in enumerate(chunks):
            for done, rows in _prompt_jacobian_rows(lm, ids, settings):
                total[:, done - rows.shape[1] : done] += rows
                progress(index * passes + -(-done // settings.dim_batch), len(chunks) * passes, "Jacobian lens")
    joined = text if isinstance(text, str) else "\n".join(text)
    recipe = {**asdict(settings), "model": lm.name, "text_sha256": hashlib.sha256(joined.encode()).hexdigest()}
    return JacobianLens(total / len(chunks), len(chunks), lm.name, unembed_hash(lm), recipe)


def _fitting_prompts(lm: LoadedModel, text: str | Sequence[str], settings: FitSettings) -> list[torch.Tensor]:
    """The prompts' token ids (tokens,): the text's chunks, or each text's first `settings.context` tokens."""
    if isinstance(text, str):
        return list(calibration_chunks(lm, text, settings.context)[: settings.max_prompts])
    if not isinstance(text, (list, tuple)) or not text:
        raise ArgumentTypeError(f"text= must be a str or a non-empty list of str, not {type(text).__name__}.")
    prompts = []
    for index, one in enumerate(text[: settings.max_prompts]):
        ids = lm.encode(check_text(one, "text"))[0, : settings.context]
        if len(ids) < settings.skip_first + 2:
            raise LayerscopeError(
                f"Prompt {index + 1} has {len(ids)} tokens; with skip_first={settings.skip_first} a prompt needs "
                f"at least {settings.skip_first + 2} (the skipped positions, one source and its last position)."
            )
        prompts.append(ids)
    return prompts


def _prompt_jacobian_rows(
    lm: LoadedModel, ids: torch.Tensor, settings: FitSettings
) -> Iterator[tuple[int, torch.Tensor]]:
    """For one prompt (tokens,): (dimensions done, rows (grid rows 0..L-1, dims, hidden)) after each backward pass;
    rows[r, i] is output dimension i's row of J_r for this prompt."""
    batch = ids[None].expand(settings.dim_batch, -1)
    states = _states_with_graph(lm, batch)
    target, sources = states[-1], states[:-1]
    positions = torch.arange(settings.skip_first, len(ids) - 1, device=target.device)
    copies = torch.arange(settings.dim_batch, device=target.device)
    hidden = target.shape[-1]
    cotangent = torch.zeros_like(target)
    for start in range(0, hidden, settings.dim_batch):
        n_dims = min(settings.dim_batch, hidden - start)
        cotangent.zero_()
        cotangent[copies[:n_dims, None], positions[None, :], start + copies[:n_dims, None]] = 1
        grads = torch.autograd.grad(target, sources, cotangent, retain_graph=start + n_dims < hidden)
        rows = [grad[:n_dims, positions.to(grad.device)].float().mean(1).to(lm.adapter.output_device) for grad in grads]
        yield start + n_dims, torch.stack(rows)


def _states_with_graph(lm: LoadedModel, input_ids: torch.Tensor) -> list[torch.Tensor]:
    """The grid rows' states (batch, tokens, hidden) of one forward pass, rows 1.. differentiable in row 0 (the
    input of block 0, made a leaf that requires grad)."""
    rows: list[torch.Tensor] = []

    def root(hidden: torch.Tensor) -> torch.Tensor:
        rows.append(hidden.detach().requires_grad_(True))
        return rows[0]

    with ExitStack() as stack:
        hook_input(stack, lm.adapter.blocks[0], root)
        for block in range(lm.n_blocks):
            hook_output(stack, lm.adapter.blocks[block], rows.append)
        lm.adapter.model(input_ids=input_ids, use_cache=False, **last_logits_only(lm))
    return rows
