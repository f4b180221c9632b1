"""Tuned lens, after Belrose et al. 2023 (arXiv 2303.08112).

One affine translator per grid row but the last, h -> h + A h + b with A and b zero at the
start (the logit lens), trained so that decoding the translated state matches the model's
final distribution: KL(final || lens), averaged over positions, one loss per row. The last
row is the model's own output and needs no translator. Departure from the paper: Adam (lr
1e-3, linear decay) instead of SGD with Nesterov momentum at lr 1.0, which diverged on the
demo model with our small CPU-sized batches (held-out KL rose from ~15 to ~250 nats).

Our lenses are safetensors plus a JSON config; the tuned-lens project's lenses (`params.pt` +
`config.json`) load with `torch.load(weights_only=True)`, never unpickling code, and a lens can be saved in
that format too (`lens_format="tuned-lens"`). A lens records the model it was trained for (its name and the
tuned-lens package's `unembed_hash`); loading it into another model warns (`LensMismatchWarning`).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from layerscope.analyses.grid import DecodeGrid, distribution_stats
from layerscope.analyses.lens import lens_logits, translated_grid
from layerscope.analyses.residual import capture_residuals, layer_labels
from layerscope.arguments import check_choice, check_ids, check_int, check_lm, check_path, check_text
from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.models.loading import LoadedModel
from layerscope.progress import ProgressFn, no_progress
from layerscope.records import Records
from layerscope.tensorfiles import read_safetensors, replace_file

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

    from layerscope.analyses.jacobian_lens import JacobianLens

WEIGHTS, CONFIG = "lens.safetensors", "config.json"
CHECKPOINT = "checkpoint.safetensors"  # the step and recipe in its metadata, under CHECKPOINT_KEY
CHECKPOINT_KEY = "layerscope_checkpoint"
CHECKPOINT_STATE = "checkpoint.json"  # where checkpoints written before kept the step and recipe
PUBLISHED_WEIGHTS = "params.pt"
FORMAT = "layerscope-tuned-lens"
LENS_FORMATS = ("layerscope", "tuned-lens")
"""How a lens is saved: lens.safetensors (ours), or params.pt as the tuned-lens package writes and reads it;
config.json either way."""


Lens = TypeVar("Lens", bound="TunedLens | JacobianLens")


class LensMismatchWarning(UserWarning):
    """A lens loaded into a model other than the one it records."""


NUMPY_PRINT_DEFAULTS = {
    "threshold": 1000,
    "edgeitems": 3,
    "linewidth": 75,
    "suppress": False,
    "sign": "-",
    "floatmode": "maxprec",
    "legacy": False,
}
"""numpy's default print options, which the tuned-lens package's hash depends on (whatever the user set)."""


def unembed_hash(lm: LoadedModel) -> str:
    """The tuned-lens package's fingerprint of the model's unembedding (`Unembed.unembedding_hash`: SHA-256 of
    numpy's one-decimal summary of the float32 matrix, a copy on the CPU as the package makes it), which its
    lenses record as `unembed_hash`."""
    weight = lm.adapter.unembed.weight.detach().cpu().float().numpy()
    with np.printoptions(**NUMPY_PRINT_DEFAULTS):  # type: ignore[arg-type]  # numpy's stubs type them one by one
        return hashlib.sha256(np.array_str(weight, precision=1).encode()).hexdigest()


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports bf16 (Ampere on), or a
    CPU with AVX-512 BF16 or AMX. Elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        with torch.cuda.device(device):  # this GPU, not the current one
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


class TunedLens(nn.Module):
    """Translators for rows 0..L-1 (`emb` and blocks 0..L-2's outputs); row L is left as it is."""

    kind = "tuned"
    made_by = "load_tuned_lens, train_tuned_lens"

    def __init__(self, hidden_size: int, n_blocks: int, model: str = "", unembed: str = ""):
        super().__init__()
        self.model_name = model
        self.unembed_hash = unembed  # `unembed_hash` of the model, where known
        self.translators = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(n_blocks))
        for translator in self.translators:
            nn.init.zeros_(translator.weight)
            nn.init.zeros_(translator.bias)

    @property
    def hidden_size(self) -> int:
        return self.translators[0].in_features

    @property
    def n_blocks(self) -> int:
        return len(self.translators)

    def translate(self, row: int, states: torch.Tensor) -> torch.Tensor:
        """The state of grid row `row` moved to where the final row's states live (float32 math)."""
        if row >= self.n_blocks:
            return states
        translator = self.translators[row]
        weight = translator.weight
        hidden = states.to(weight.device, torch.float32)
        return (hidden + translator(hidden)).to(states.device, states.dtype)

    def translate_rows(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, ..., hidden) -> the same, every row translated."""
        return torch.stack([self.translate(row, state) for row, state in enumerate(states)])

    def save(self, directory: Path, extra: dict | None = None, lens_format: str = "layerscope") -> None:
        """The weights, then config.json, each written whole or not at all; weights that are not finite are
        refused (the training diverged). `lens_format` "layerscope": lens.safetensors and a config with `extra`;
        "tuned-lens": params.pt (a plain tensor state dict, `torch.save`) and the tuned-lens package's config keys
        only (it warns about any other). The other format's weights file is removed first."""
        check_choice(lens_format, "lens_format", LENS_FORMATS)
        state = {k: v.detach().contiguous().cpu() for k, v in self.translators.state_dict().items()}
        check_finite_weights(state, "The tuned lens")
        directory.mkdir(parents=True, exist_ok=True)
        weights = PUBLISHED_WEIGHTS if lens_format == "tuned-lens" else WEIGHTS
        (directory / (WEIGHTS if weights == PUBLISHED_WEIGHTS else PUBLISHED_WEIGHTS)).unlink(missing_ok=True)
        if lens_format == "tuned-lens":
            replace_file(directory / weights, lambda temp: torch.save(state, temp))
            config = {
                "base_model_name_or_path": self.model_name,
                "d_model": self.hidden_size,
                "num_hidden_layers": self.n_blocks,
                "bias": True,
                "base_model_revision": None,
                "unembed_hash": self.unembed_hash or None,
                "lens_type": "linear_tuned_lens",
            }
        else:
            replace_file(directory / weights, lambda temp: save_file(state, temp))
            config = layerscope_config(FORMAT, self, extra or {})
        write_config(directory, config)


def layerscope_config(lens_format: str, lens: TunedLens | JacobianLens, extra: dict) -> dict:
    """The config.json of one of our lenses: its format, the model it is for (name, unembed_hash), its size (the
    keys the tuned-lens package uses), then `extra`."""
    return {
        "format": lens_format,
        "base_model_name_or_path": lens.model_name,
        "d_model": lens.hidden_size,
        "num_hidden_layers": lens.n_blocks,
        "unembed_hash": lens.unembed_hash or None,
        **extra,
    }


def write_config(directory: Path, config: dict) -> None:
    """config.json, written whole or not at all."""
    text = json.dumps(config, indent=1) + "\n"
    replace_file(directory / CONFIG, lambda temp: temp.write_text(text, encoding="utf-8"))


def check_fits(lm: LoadedModel, hidden_size: int, n_blocks: int, source: str) -> None:
    """A lens of `hidden_size` and `n_blocks` translators fits `lm`; checked before the lens is built."""
    hidden = lm.adapter.config.hidden_size
    if (hidden_size, n_blocks) != (hidden, lm.n_blocks):
        raise LayerscopeError(
            f"{source} is for a model with hidden size {hidden_size} and {n_blocks} "
            f"blocks; {lm.name} has hidden size {hidden} and {lm.n_blocks} blocks."
        )


def check_finite_weights(
    tensors: dict[str, torch.Tensor],
    what: str,
    why: str = "the training diverged; train again with a lower learning rate",
) -> None:
    """Every float tensor finite, or an error naming the first that is not and `why` it happened."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise LayerscopeError(f"{what} has weights that are not finite ({name}): {why}.")


def config_object(path: Path, kind: str) -> dict:
    """A lens's config.json as its JSON object; `kind` names the lens in the errors."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerscopeError(f"'{path}' cannot be read as a {kind} config ({error}).") from None
    if not isinstance(config, dict):
        raise LayerscopeError(f"'{path}' is not a {kind} config (a JSON object).")
    return config


def lens_config(
    path: Path, kind: str = "tuned lens", formats: tuple[str | None, ...] = (FORMAT, None)
) -> tuple[int, int, str, str]:
    """(hidden size, translators or matrices, model name, unembed_hash or '') from a lens's config.json, whose
    `format` must be one of `formats` (None: no format, as the tuned-lens project writes); `kind` names the lens
    in the errors."""
    config = config_object(path, kind)
    if config.get("format") not in formats:
        raise LayerscopeError(f"'{path}' is not a {kind} config: its format is {config.get('format')!r}.")
    hidden, n_blocks = config.get("d_model"), config.get("num_hidden_layers")
    if type(hidden) is not int or type(n_blocks) is not int or min(hidden, n_blocks) < 1:  # bool is not a size
        raise LayerscopeError(
            f"'{path}' is not a {kind} config: d_model and num_hidden_layers must be positive "
            f"whole numbers, not {hidden!r} and {n_blocks!r}."
        )
    name, fingerprint = config.get("base_model_name_or_path", ""), config.get("unembed_hash", "")
    return hidden, n_blocks, name if isinstance(name, str) else "", fingerprint if isinstance(fingerprint, str) else ""


def lens_mismatch(lm: LoadedModel, name: str, fingerprint: str) -> str | None:
    """What a lens records that `lm` is not, or None: its unembedding fingerprint where it has one (the weights
    themselves), else its model name (compared by the last part of a path or hub id)."""
    if fingerprint:
        return None if fingerprint == unembed_hash(lm) else "a model with another unembedding (unembed_hash)"
    if name and Path(name).name not in (Path(lm.name).name, Path(lm.model.config.name_or_path).name):
        return f"'{name}'"
    return None


def check_lens(lm: LoadedModel, lens: object, kind: type[Lens]) -> Lens:
    """A lens of class `kind` (TunedLens, JacobianLens) and this model's shape, named `lens=` where it is not."""
    if not isinstance(lens, kind):
        raise ArgumentTypeError(f"lens= must be a {kind.__name__} ({kind.made_by}), not {type(lens).__name__}.")
    check_fits(lm, lens.hidden_size, lens.n_blocks, "lens=")
    return lens


def warn_mismatch(lens: Lens, mismatch: str | None) -> Lens:
    """A lens as read with its mismatch note (`read_tuned_lens`, `read_jacobian_lens`), the note raised as a
    `LensMismatchWarning` at the caller of the load function."""
    if mismatch is not None:
        warnings.warn(mismatch, LensMismatchWarning, stacklevel=3)
    return lens


def mismatch_note(lm: LoadedModel, directory: Path, name: str, fingerprint: str, made: str) -> str | None:
    """The one-line note for a lens that records another model (`lens_mismatch`; `made`: how the lens was made,
    'trained', 'fitted'), or None."""
    mismatch = lens_mismatch(lm, name, fingerprint)
    if mismatch is None:
        return None
    return (
        f"The lens in '{directory}' was {made} for {mismatch}, not {lm.name}: its readings may mean nothing for "
        "this model."
    )


def load_tuned_lens(lm: LoadedModel, directory: Path | str) -> TunedLens:
    """Our lens (lens.safetensors) or the tuned-lens project's (params.pt), checked against the model's shape;
    a `LensMismatchWarning` where it records another model (`lens_mismatch`)."""
    return warn_mismatch(*read_tuned_lens(lm, directory))


def read_tuned_lens(lm: LoadedModel, directory: Path | str) -> tuple[TunedLens, str | None]:
    """`load_tuned_lens`, with the mismatch returned as its one-line message (None where the lens records this
    model or nothing) for the CLI and the explorer to show their way."""
    check_lm(lm)
    directory = check_path(directory, "directory")
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise LayerscopeError(f"No tuned lens in '{directory}': {CONFIG} is missing.")
    hidden, n_blocks, name, fingerprint = lens_config(config_path)
    check_fits(lm, hidden, n_blocks, f"The lens in '{directory}'")
    if (directory / WEIGHTS).is_file():
        state, _ = read_safetensors(directory / WEIGHTS, "The tuned lens weights")
    elif (directory / PUBLISHED_WEIGHTS).is_file():
        state = _published_state(directory / PUBLISHED_WEIGHTS)
    else:
        raise LayerscopeError(f"No tuned lens weights in '{directory}' ({WEIGHTS} or {PUBLISHED_WEIGHTS}).")
    check_finite_weights(state, f"The tuned lens in '{directory}'")
    lens = TunedLens(hidden, n_blocks, name, fingerprint)
    try:
        lens.translators.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0:2]
        raise LayerscopeError(f"The weights in '{directory}' do not fit the lens config: {' '.join(first)}") from None
    return lens.to(lm.adapter.output_device), mismatch_note(lm, directory, name, fingerprint, "trained")


def _published_state(path: Path) -> dict[str, torch.Tensor]:
    """The tuned-lens project's translator state dict ('0.weight', '0.bias', ...), read without unpickling code.
    Translators saved without bias get a zero one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses anything but plain tensors and containers
        raise LayerscopeError(f"'{path}' cannot be read as plain tensors ({type(error).__name__}).") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise LayerscopeError(f"'{path}' does not hold a state dict of translators.")
    state = {key.removeprefix("layer_translators."): value.float() for key, value in state.items()}
    for key in [k for k in state if k.endswith(".weight")]:
        state.setdefault(key.removesuffix("weight") + "bias", torch.zeros(state[key].shape[0]))
    return state


def tuned_lens(lm: LoadedModel, input_ids: torch.Tensor, lens: TunedLens, top_k: int = 5) -> DecodeGrid:
    """The decode grid of the tuned lens: the logit lens's rows and positions, each state translated first."""
    check_ids(check_lm(lm), input_ids)
    check_lens(lm, lens, TunedLens)
    check_int(top_k, "top_k", 1)
    return translated_grid(lm, "tuned_lens", input_ids, lens.translate_rows, top_k)


def calibration_chunks(lm: LoadedModel, text: str, context: int) -> torch.Tensor:
    """(chunks, context) token ids of the text, cut into whole chunks."""
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[0]
    if len(ids) < context:
        raise LayerscopeError(f"The text has {len(ids)} tokens; it needs at least {context} (one chunk).")
    n_chunks = len(ids) // context
    return ids[: n_chunks * context].view(n_chunks, context).to(lm.adapter.input_device)


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 40
    context: int = 64  # tokens per step (one chunk of the text)
    lr: float = 1e-3
    bf16_unembed: bool | None = None  # the unembedding matmul in bfloat16 while training (5x faster on AVX-512
    # BF16, many times slower where bf16 is emulated); None: where the device has fast bf16 (`fast_bf16`)

    def check(self) -> None:
        check_int(self.steps, "steps", 1)
        check_int(self.context, "context", 2)
        if self.bf16_unembed is not None and not isinstance(self.bf16_unembed, bool):
            raise ArgumentTypeError(f"bf16_unembed= must be a bool or None, not {type(self.bf16_unembed).__name__}.")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)):
            raise ArgumentTypeError(f"lr= must be a number, not {type(self.lr).__name__}.")
        if not 0 < self.lr <= 1:  # Adam's steps are about lr: past 1 the lens runs off, past float32 torch fails
            raise ArgumentValueError(f"lr={self.lr} is not allowed: the learning rate must be positive and at most 1.")


def _row_losses(
    lm: LoadedModel, lens: TunedLens, ids: torch.Tensor, unembed_weight: torch.Tensor | None
) -> Iterator[torch.Tensor]:
    """KL(final || tuned lens) at each row with a translator, mean over positions, with its graph."""
    captured = capture_residuals(lm.adapter, ids)
    final_log_probs = torch.log_softmax(captured.logits[0].float(), dim=-1)
    final_probs = final_log_probs.exp()
    for row in range(lens.n_blocks):
        hidden = captured.states[row, 0].float().clone()
        logits = lm.adapter.decode(hidden + lens.translators[row](hidden), unembed_weight)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        yield torch.linalg.vecdot(final_probs, final_log_probs - log_probs).mean()


def train_tuned_lens(
    lm: LoadedModel,
    text: str,
    out: Path | str,
    settings: TrainSettings = TrainSettings(),
    progress: ProgressFn = no_progress,
    save_every: int = 10,
    lens_format: str = "layerscope",
) -> TunedLens:
    """Train (or resume from `out`'s checkpoint) and save the lens in `out` (in `lens_format`, `LENS_FORMATS`).
    Step s trains on chunk s mod chunks, so a resumed run takes the same steps as an uninterrupted one. The
    unembedding's dtype (`settings.bf16_unembed`, chosen from the device where None) is kept in the recipe."""
    check_lm(lm)
    check_text(text, "text")
    out = check_path(out, "out")
    if not isinstance(settings, TrainSettings):
        raise ArgumentTypeError(f"settings= must be a TrainSettings, not {type(settings).__name__}.")
    settings.check()
    check_int(save_every, "save_every", 1)
    check_choice(lens_format, "lens_format", LENS_FORMATS)
    if settings.bf16_unembed is None:
        settings = replace(settings, bf16_unembed=fast_bf16(lm.adapter.unembed.weight.device))
    chunks = calibration_chunks(lm, text, settings.context)
    recipe = {**asdict(settings), "model": lm.name, "text_sha256": hashlib.sha256(text.encode()).hexdigest()}
    lens = TunedLens(lm.adapter.config.hidden_size, lm.n_blocks, lm.name, unembed_hash(lm))
    lens = lens.to(lm.adapter.output_device)
    optimizer = torch.optim.Adam(lens.parameters(), lr=settings.lr)
    start = _resume(out, recipe, lens, optimizer)
    progress(start, settings.steps, "tuned lens")
    with frozen_weights(lm.model), torch.enable_grad():  # also when called under no_grad
        _train_steps(lm, lens, chunks, settings, optimizer, start, out, recipe, progress, save_every)
    lens.save(out, {"training": recipe}, lens_format)
    for path in (out / CHECKPOINT, out / CHECKPOINT_STATE):
        path.unlink(missing_ok=True)
    return lens


@contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """No gradients for the model's own weights while the lens trains (the unembedding's would cost a matmul)."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        for parameter, _ in flags:
            parameter.requires_grad_(False)
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _train_steps(
    lm: LoadedModel,
    lens: TunedLens,
    chunks: torch.Tensor,
    settings: TrainSettings,
    optimizer: torch.optim.Optimizer,
    start: int,
    out: Path,
    recipe: dict,
    progress: ProgressFn,
    save_every: int,
) -> None:
    """Steps `start`.. of the training, on `chunks` (chunks, context); an interrupt saves the last finished step
    before it propagates."""
    unembed_weight = lm.adapter.unembed.weight.detach().to(torch.bfloat16) if settings.bf16_unembed else None
    done = start
    try:
        for step in range(start, settings.steps):
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * (1 - step / settings.steps)  # linear decay, a function of the step
            optimizer.zero_grad()
            total = 0.0
            for loss in _row_losses(lm, lens, chunks[step % len(chunks)][None], unembed_weight):
                loss.backward()  # row by row: one row's logits in memory at a time
                total += loss.item()
            if not math.isfinite(total):
                raise LayerscopeError(
                    f"The training diverged at step {step + 1} (the loss is {total}); the last "
                    "checkpoint is kept: train again with a lower learning rate."
                )
            optimizer.step()
            done = step + 1
            progress(done, settings.steps, "tuned lens")
            if done % save_every == 0 and done < settings.steps:
                _save_checkpoint(out, recipe, lens, optimizer, done)
    except KeyboardInterrupt:
        _save_checkpoint(out, recipe, lens, optimizer, done)
        raise


def _save_checkpoint(out: Path, recipe: dict, lens: TunedLens, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The translators and the optimizer's per-parameter state, with the step and recipe in the metadata: one file,
    replaced whole, so a kill while saving leaves the previous checkpoint."""
    tensors = {f"lens.{k}": v.detach().contiguous().cpu() for k, v in lens.translators.state_dict().items()}
    for name, parameter in lens.translators.named_parameters():
        for key, value in optimizer.state.get(parameter, {}).items():
            tensors[f"optimizer.{name}.{key}"] = torch.as_tensor(value).contiguous().cpu()
    check_finite_weights(tensors, f"The checkpoint of step {step}")
    out.mkdir(parents=True, exist_ok=True)
    metadata = {CHECKPOINT_KEY: json.dumps({"step": step, "recipe": recipe})}
    replace_file(out / CHECKPOINT, lambda temp: save_file(tensors, temp, metadata))
    (out / CHECKPOINT_STATE).unlink(missing_ok=True)  # an older layerscope's, for the checkpoint just replaced


def _checkpoint_state(out: Path, metadata: dict[str, str]) -> tuple[int, object]:
    """The step and recipe of the checkpoint in `out`: from its metadata, or from the checkpoint.json that
    layerscope wrote beside it before."""
    source = out / CHECKPOINT if CHECKPOINT_KEY in metadata else out / CHECKPOINT_STATE
    try:
        text = metadata.get(CHECKPOINT_KEY) or source.read_text(encoding="utf-8")
        state = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LayerscopeError(
            f"The checkpoint's step and recipe ('{source}') cannot be read ({error}); delete the "
            "checkpoint files to start over."
        ) from None
    step = state.get("step") if isinstance(state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0 or "recipe" not in state:
        raise LayerscopeError(
            f"'{source}' does not hold a checkpoint's step and recipe; delete the checkpoint files to start over."
        )
    return step, state["recipe"]


def _resume(out: Path, recipe: dict, lens: TunedLens, optimizer: torch.optim.Optimizer) -> int:
    """The step to start from: 0, or where a checkpoint in `out` with the same recipe stopped."""
    path = out / CHECKPOINT
    if not path.is_file():
        return 0
    tensors, metadata = read_safetensors(path, "The checkpoint")
    step, written = _checkpoint_state(out, metadata)
    if written != recipe:
        raise LayerscopeError(
            f"'{out}' holds a checkpoint of a different training (model, text or settings); "
            "use another out= or delete its checkpoint files."
        )
    if step > recipe["steps"]:
        raise LayerscopeError(f"The checkpoint '{path}' is at step {step}, past the training's {recipe['steps']}.")
    check_finite_weights(tensors, f"The checkpoint '{path}'")
    try:
        lens.translators.load_state_dict(
            {k.removeprefix("lens."): v for k, v in tensors.items() if k.startswith("lens.")}
        )
    except RuntimeError as error:
        raise LayerscopeError(
            f"The checkpoint '{path}' does not fit this lens: {' '.join(str(error).strip().splitlines()[:2])}"
        ) from None
    device = lens.translators[0].weight.device
    for name, parameter in lens.translators.named_parameters():
        prefix = f"optimizer.{name}."
        found = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
        for key, value in found.items():
            if value.shape != (() if key == "step" else parameter.shape):
                raise LayerscopeError(
                    f"The checkpoint '{path}' holds optimizer state {name}.{key} of shape "
                    f"{tuple(value.shape)}, which does not fit the lens."
                )
        if found:
            optimizer.state[parameter] = {k: v if k == "step" else v.to(device) for k, v in found.items()}
    return step


LENS_NAMES = {"tuned": "tuned lens", "jacobian": "Jacobian lens"}
"""A fitted lens's `kind` as the tables and figures name it."""


@dataclass
class LensComparison:
    """Per row, the mean KL(final || lens) in nats on held-out text, logit lens vs a fitted lens (`kind`: tuned,
    jacobian). `to_dict` and the CSV name the fitted lens's column after it (`tuned_lens_kl`, `jacobian_lens_kl`)."""

    layers: list[str]
    logit_lens_kl: list[float]
    lens_kl: list[float]
    tokens: int
    kind: str

    @property
    def lens_name(self) -> str:
        """The fitted lens as tables and legends name it: 'tuned lens', 'Jacobian lens'."""
        return LENS_NAMES[self.kind]

    def plot(self, model: str = "") -> Figure:
        """KL to the final distribution per row, both lenses, `model` in the title:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.lenses import lens_comparison_figure

        return lens_comparison_figure(self, model)

    def to_dict(self) -> dict:
        return {
            "layers": self.layers,
            "logit_lens_kl": self.logit_lens_kl,
            f"{self.kind}_lens_kl": self.lens_kl,
            "tokens": self.tokens,
        }

    def records(self) -> Records:
        return Records.of(
            ("layer", "logit_lens_kl", f"{self.kind}_lens_kl"), zip(self.layers, self.logit_lens_kl, self.lens_kl)
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def compare_lenses(
    lm: LoadedModel,
    lens: TunedLens | JacobianLens,
    text: str,
    max_tokens: int = 256,
    progress: ProgressFn = no_progress,
) -> LensComparison:
    """The paper's first figure as a table: the logit lens and a fitted lens (tuned or Jacobian) on the same
    held-out tokens, in the model's dtype."""
    from layerscope.analyses.jacobian_lens import JacobianLens  # here: jacobian_lens imports this module

    if not isinstance(lens, TunedLens | JacobianLens):
        raise ArgumentTypeError(
            f"lens= must be a TunedLens ({TunedLens.made_by}) or a JacobianLens ({JacobianLens.made_by}), "
            f"not {type(lens).__name__}."
        )
    check_lens(check_lm(lm), lens, type(lens))
    check_text(text, "text")
    check_int(max_tokens, "max_tokens", 2)
    ids = lm.tokenizer(text, return_tensors="pt").input_ids[:, :max_tokens].to(lm.adapter.input_device)
    if ids.shape[1] < 2:
        raise LayerscopeError("The held-out text is too short (fewer than 2 tokens).")
    kls: dict[str, list[float]] = {"logit": [], lens.kind: []}
    translations: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
        "logit": None,
        lens.kind: lens.translate_rows,
    }
    for index, (name, translate) in enumerate(translations.items()):
        rows, final = lens_logits(lm, ids, translate=translate)
        final_log_probs = torch.log_softmax(final.float(), dim=-1)
        final_probs = final_log_probs.exp()
        for logits in rows:
            _, kl = distribution_stats(torch.log_softmax(logits.float(), dim=-1), final_log_probs, final_probs)
            kls[name].append(kl.clamp_min(0).mean().item())
        progress(index + 1, 2, "comparing lenses")
    return LensComparison(layer_labels(lm.n_blocks), kls["logit"], kls[lens.kind], ids.shape[1], lens.kind)
