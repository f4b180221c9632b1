"""Load a causal LM from a hub id, a local directory, a .gguf file, or `demo`."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, overload
from urllib.parse import urlsplit

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import utils as transformers_utils

from layerscope.errors import ArgumentTypeError, LayerscopeError, require_utf8
from layerscope.locations import DEMO_NAME
from layerscope.models.adapter import ModelAdapter, is_supported, unsupported
from layerscope.models.demo import prepare_demo
from layerscope.models.gguf import check_gguf_header, load_gguf
from layerscope.progress import ProgressFn, no_progress

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # accelerate's placement strategies
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """The devices this machine can run on, as --device names them."""
    gpus = [f"cuda:{index}" for index in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu"] + (["cuda"] + gpus if gpus else []) + (["mps"] if _mps_available() else [])


def pick_device(device: str = "auto") -> torch.device:
    """cuda > mps > cpu unless the user names one; a device this machine lacks is refused before any work."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    available = available_devices()
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise LayerscopeError(
            f"Unknown device '{device}': use auto or one of this machine's devices: {', '.join(available)}."
        ) from None
    if chosen.type != "cpu" and str(chosen) not in available:
        raise LayerscopeError(
            f"Device '{device}' is not available here; this machine has: auto, {', '.join(available)}."
        )
    return torch.device("cpu") if chosen.type == "cpu" else chosen


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 on a GPU, fp32 on the CPU, unless the user names one."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise LayerscopeError(f"Unknown dtype '{dtype}': use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


@dataclass(frozen=True)
class PromptBatch:
    """Several prompts as one right-padded batch: `ids` (B, T) and `attention_mask` (B, T), 1 on real tokens.

    Prompt b's real tokens are `ids[b, :lengths[b]]`; what follows them is padding that the analyses
    never read.
    """

    ids: torch.Tensor
    attention_mask: torch.Tensor

    @classmethod
    def of(cls, prompts: Sequence[torch.Tensor], tokenizer: PreTrainedTokenizerBase | None = None) -> PromptBatch:
        """Right-pad 1-D id tensors (with the tokenizer's pad token where it has one; the value never matters)."""
        if not prompts:
            raise LayerscopeError("The list of prompts is empty.")
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = pad if pad is not None else getattr(tokenizer, "eos_token_id", None) or 0
        ids = torch.nn.utils.rnn.pad_sequence(list(prompts), batch_first=True, padding_value=pad)
        mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(p) for p in prompts], batch_first=True)
        return cls(ids, mask)

    @classmethod
    def from_ids(cls, input_ids: torch.Tensor) -> PromptBatch:
        """Unpadded ids (B, T): every position is real."""
        return cls(input_ids, torch.ones_like(input_ids))

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> list[int]:
        """The number of real tokens of each prompt."""
        return self.attention_mask.sum(dim=1).tolist()

    def prompt(self, index: int) -> torch.Tensor:
        """The ids (1, T_b) of prompt `index` without its padding, as `encode` gives them for it alone."""
        return self.ids[index : index + 1, : self.lengths[index]]


@dataclass
class LoadedModel:
    """A model ready for analysis: weights, tokenizer, and the architecture adapter."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    adapter: ModelAdapter
    add_bos: bool = False  # encode() starts every prompt with the BOS token; set by prepend_bos()

    @property
    def n_blocks(self) -> int:
        return self.adapter.n_blocks

    @overload
    def encode(self, prompt: str) -> torch.Tensor: ...

    @overload
    def encode(self, prompt: Sequence[str]) -> PromptBatch: ...

    def encode(self, prompt: str | Sequence[str]) -> torch.Tensor | PromptBatch:
        """One prompt: token ids (1, T) on the input device. A list of prompts: a `PromptBatch`, right-padded
        to the longest (with causal attention the real tokens then compute as they do alone, at the same
        positions). Prompts the model cannot take are refused."""
        if isinstance(prompt, str):
            return self._encode_one(prompt)
        if not isinstance(prompt, (list, tuple)):
            raise ArgumentTypeError(f"prompt= must be a str or a list of str, not {type(prompt).__name__}.")
        if not prompt:
            raise LayerscopeError("The list of prompts is empty.")
        return PromptBatch.of([self._encode_one(text)[0] for text in prompt], self.tokenizer)

    def _encode_one(self, prompt: str) -> torch.Tensor:
        if not isinstance(prompt, str):
            raise ArgumentTypeError(f"prompt= must be a str or a list of str, not one holding {type(prompt).__name__}.")
        if not prompt or not prompt.strip():
            raise LayerscopeError("The prompt is empty.")
        require_utf8(prompt, "The prompt")
        ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        if self.add_bos and ids[0, 0] != self.tokenizer.bos_token_id:
            ids = torch.cat([torch.tensor([[self.tokenizer.bos_token_id]]), ids], dim=1)
        limit = self.adapter.max_context
        if limit is not None and ids.shape[1] > limit:
            raise LayerscopeError(f"The prompt has {ids.shape[1]} tokens; this model's context is {limit}.")
        return ids.to(self.adapter.input_device)

    def prepend_bos(self) -> None:
        """Start every encoded prompt with the tokenizer's BOS token, as the Stages of Inference scripts do
        (SmolLM2's tokenizer adds none by itself). A tokenizer without one is refused."""
        if self.tokenizer.bos_token_id is None:
            raise LayerscopeError(f"prepend_bos(): the tokenizer of '{self.name}' has no BOS token.")
        self.add_bos = True

    def check_generation(self, prompt_tokens: int, new_tokens: int) -> None:
        """Greedy decoding must end inside the model's context: the prompt and the new tokens together fit."""
        if new_tokens < 0:
            raise LayerscopeError(f"The number of new tokens must be 0 or more, not {new_tokens}.")
        limit = self.adapter.max_context
        if limit is not None and prompt_tokens + new_tokens > limit:
            raise LayerscopeError(
                f"{new_tokens} new tokens after a {prompt_tokens}-token prompt exceed this model's "
                f"context of {limit} tokens: ask for at most {max(limit - prompt_tokens, 0)}."
            )

    def token_texts(self, ids: Iterable[int] | torch.Tensor) -> list[str]:
        """Readable text of each token id (' Paris', not 'ĠParis')."""
        return [_token_text(self.tokenizer, int(i)) for i in ids]


def _token_text(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    return _token_text_cache(id(tokenizer), tokenizer, token_id)


@lru_cache(maxsize=200_000)
def _token_text_cache(tokenizer_key: int, tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    return tokenizer.decode([token_id])


def load_model(
    source: str | os.PathLike[str] = "demo",
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | None = None,
    trust_remote_code: bool = False,
    progress: ProgressFn = no_progress,
) -> LoadedModel:
    """Load `demo`, a hub id, a local directory (safetensors only) or a .gguf file (a str or a path)."""
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentTypeError(
            f"source= must be a str or os.PathLike ('demo', a hub id, a directory or a .gguf "
            f"file), not {type(source).__name__}."
        )
    source = os.fspath(source)
    for name, value in (("device", device), ("dtype", dtype)):
        if not isinstance(value, str):
            raise ArgumentTypeError(f"{name}= must be a str, not {type(value).__name__}.")
    if not isinstance(trust_remote_code, bool):
        raise ArgumentTypeError(f"trust_remote_code= must be a bool, not {type(trust_remote_code).__name__}.")
    transformers_utils.logging.disable_progress_bar()
    if device_map is not None and device_map not in DEVICE_MAPS:
        raise LayerscopeError(f"Unknown device map '{device_map}': use {', '.join(DEVICE_MAPS)}.")
    chosen_device = pick_device(device)
    chosen_dtype = pick_dtype(dtype, chosen_device)
    name, mapped = source, False
    if source == "demo":
        directory = prepare_demo(progress)
        model, tokenizer = _load_pretrained(str(directory), chosen_dtype, None, False, source)
        name = DEMO_NAME
    elif source.endswith(".gguf"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise LayerscopeError(f"No GGUF file at '{source}'.")
        check_gguf_header(path)
        progress(0, 1, "dequantising GGUF")
        model, tokenizer = load_gguf(path, chosen_dtype)
        progress(1, 1, "loaded")
    else:
        model, tokenizer = _load_pretrained(source, chosen_dtype, device_map, trust_remote_code, source)
        mapped = device_map is not None
    if not mapped:  # the demo and GGUF files load whole, onto one device
        model.to(chosen_device)
    model.eval()
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, adapter=ModelAdapter(model))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "tekken.json")
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def check_model_dir(directory: Path) -> None:
    """Name everything a local model directory lacks (config, weights, tokenizer) before transformers fails on
    the first of them with a message of its own."""
    if not directory.is_dir():
        raise LayerscopeError(f"'{directory}' is a file, not a model directory or a .gguf file.")
    missing = [] if (directory / "config.json").is_file() else ["config.json"]
    if not any(directory.glob("*.safetensors")):
        pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLED_SUFFIXES)
        gguf = sorted(p.name for p in directory.glob("*.gguf"))
        note = (
            f" (it has pickled weights, {pickled[0]}, which layerscope never loads)"
            if pickled
            else f" (it has {gguf[0]}: pass that file as source=)"
            if gguf
            else ""
        )
        missing.append(f"weights (*.safetensors){note}")
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if missing:
        raise LayerscopeError(f"'{directory}' is not a complete model directory: no {'; no '.join(missing)}.")


def check_family(source: str, local_only: bool) -> None:
    """Read the family from config.json before building the model: an unsupported family can crash inside
    transformers (a falcon model_type on a llama config does) before the adapter could refuse it."""
    loaded, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_only)
    if not isinstance(loaded, dict):
        raise LayerscopeError(f"The config.json of '{source}' is not a JSON object.")
    config: Any = loaded  # its values are whatever the file holds
    model_type = config.get("model_type")
    families = {model_type, (config.get("text_config") or {}).get("model_type")} - {None}
    if not any(is_supported(family) for family in families):
        raise unsupported(model_type)


def read_config(source: str, trust_remote_code: bool, local_only: bool, label: str) -> PretrainedConfig:
    """The model's config, built before the weights: a config.json whose keys do not fit its model_type
    (a falcon model_type on a llama config) fails inside transformers' config class with any error."""
    verbosity = transformers_utils.logging.get_verbosity()
    transformers_utils.logging.set_verbosity(transformers_utils.logging.CRITICAL)  # it logs the whole config too
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_only)
    except (AttributeError, KeyError, TypeError, ValueError, StrictDataclassError) as error:  # the last: mistyped
        raise LayerscopeError(
            f"The config.json of '{label}' does not describe a valid model of its model_type: {first_line(error)}"
        ) from error
    finally:
        transformers_utils.logging.set_verbosity(verbosity)


def first_line(error: BaseException) -> str:
    """An error's first line (transformers' messages run to many), or its type's name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def read_tokenizer(source: str, trust_remote_code: bool, local_only: bool, label: str) -> PreTrainedTokenizerBase:
    """The model's tokenizer; tokenizer files of the wrong shape (a tokenizer_config.json holding a list) fail
    inside transformers with any error."""
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local_only)
    except (AttributeError, KeyError, TypeError) as error:
        raise LayerscopeError(f"The tokenizer files of '{label}' cannot be read: {first_line(error)}") from error


def hub_reachable(timeout: float = 3.0) -> bool:
    """One short connection to the hub, so that no network is found out now, not after a minute of retries.
    Behind a proxy the direct connection says nothing, so the hub client is left to try."""
    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def hub_local_only(repo_id: str) -> bool:
    """True when a hub model must come from the local cache (offline, or the hub out of reach); fails at once,
    saying how to fetch it, when it is not cached there."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError as error:  # not a valid repo id either
        raise LayerscopeError(
            f"No model directory or file at '{repo_id}', and it is not a hub id: {str(error).splitlines()[0]}"
        ) from None
    offline = constants.is_offline_mode()
    if not offline and hub_reachable():
        return False
    if cached:
        return True
    why = "the hub is offline (HF_HUB_OFFLINE is set)" if offline else f"{constants.ENDPOINT} cannot be reached"
    raise LayerscopeError(
        f"Model '{repo_id}' is not in the local Hugging Face cache and {why}: fetch it where "
        f"there is network with 'hf download {repo_id}' (older: 'huggingface-cli download "
        f"{repo_id}'), or give source= a local directory."
    )


def _load_pretrained(
    source: str, dtype: torch.dtype, device_map: str | None, trust_remote_code: bool, label: str
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1 or path.exists()
    if looks_local and not path.exists():
        raise LayerscopeError(f"No model directory at '{source}'.")
    if looks_local:
        check_model_dir(path)
        source, local_only = str(path), True
    else:
        local_only = hub_local_only(source)
    try:
        check_family(source, local_only)
        config = read_config(source, trust_remote_code, local_only, label)
        tokenizer = read_tokenizer(source, trust_remote_code, local_only, label)
        model = AutoModelForCausalLM.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            device_map=device_map,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            local_files_only=local_only,
        )
    except SafetensorError as error:
        raise LayerscopeError(
            f"Could not load model '{label}': its safetensors weights cannot be read ({error}); "
            "a file may have been cut short."
        ) from None
    except (OSError, ValueError) as error:
        raise LayerscopeError(f"Could not load model '{label}': {first_line(error)}") from error
    return model, tokenizer
