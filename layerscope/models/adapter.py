"""Find the parts of a causal LM that the analyses need, for each supported family.

Families in the table have known paths and are tested on a tiny model each; any other
decoder-only family is discovered structurally. Either way the adapter checks on a probe
input that decoding the last block's output reproduces the model's own logits, and refuses
otherwise: a wrong guess would give a silently wrong lens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import torch
from torch import nn
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from layerscope.errors import UnsupportedArchitecture
from layerscope.models.hooks import hook_output


@dataclass(frozen=True)
class ModulePaths:
    """Dotted paths from the CausalLM root, and paths inside a block.

    `attention` and `mlp` name the module whose output is what the block adds to the residual
    stream (Bloom adds the residual inside its attention and MLP, so there they are the output
    projections). `final_norm` is None for post-LN models, which have none; `after_norm` is a
    projection some models apply between the final norm and the unembedding (OPT-350m).
    """

    blocks: str
    final_norm: str | None
    unembed: str
    embed: str
    attention: str
    mlp: str
    after_norm: str | None = None


_LLAMA_LIKE = ModulePaths(
    blocks="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    embed="model.embed_tokens",
    attention="self_attn",
    mlp="mlp",
)
_GPTJ_LIKE = ModulePaths(
    blocks="transformer.h",
    final_norm="transformer.ln_f",
    unembed="lm_head",
    embed="transformer.wte",
    attention="attn",
    mlp="mlp",
)
_BLOOM_LIKE = replace(_GPTJ_LIKE, embed="transformer.word_embeddings", attention="self_attention")

_LLAMA_LIKE_TYPES = (
    "llama mistral qwen2 qwen2_moe qwen3 qwen3_moe mixtral gemma gemma2 gemma3_text phi3 phimoe "
    "deepseek_v3 olmo olmo2 olmo3 olmoe granite cohere cohere2 starcoder2 stablelm helium glm glm4 smollm3 seed_oss "
    "exaone4 ernie4_5 ernie4_5_moe gpt_oss nemotron arcee apertus hunyuan_v1_dense vaultgemma nanochat"
).split()

FAMILIES: dict[str, ModulePaths] = {
    **{model_type: _LLAMA_LIKE for model_type in _LLAMA_LIKE_TYPES},
    "granitemoe": replace(_LLAMA_LIKE, mlp="block_sparse_moe"),
    "granitemoeshared": replace(_LLAMA_LIKE, mlp="block_sparse_moe"),
    "phi": replace(_LLAMA_LIKE, final_norm="model.final_layernorm"),
    "persimmon": replace(_LLAMA_LIKE, final_norm="model.final_layernorm"),
    "gpt2": _GPTJ_LIKE,
    "gpt_bigcode": _GPTJ_LIKE,
    "gptj": _GPTJ_LIKE,
    "codegen": _GPTJ_LIKE,
    "gpt_neox": ModulePaths(
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        embed="gpt_neox.embed_in",
        attention="attention",
        mlp="mlp",
    ),
    "falcon": _BLOOM_LIKE,
    "bloom": replace(_BLOOM_LIKE, attention="self_attention.dense", mlp="mlp.dense_4h_to_h"),
    "opt": ModulePaths(
        blocks="model.decoder.layers",
        final_norm="model.decoder.final_layer_norm",
        unembed="lm_head",
        embed="model.decoder.embed_tokens",
        attention="self_attn",
        mlp="fc2",
        after_norm="model.decoder.project_out",
    ),
    "mpt": replace(_GPTJ_LIKE, blocks="transformer.blocks", final_norm="transformer.norm_f", mlp="ffn"),
}
SUPPORTED_MODEL_TYPES: frozenset[str] = frozenset(FAMILIES)
"""Model types with a tested tiny model each (tests/tiny.py)."""

NOT_SUPPORTED: dict[str, str] = {
    **dict.fromkeys(
        "bart bert bert-generation big_bird bigbird_pegasus blenderbot blenderbot-small camembert data2vec-text "
        "electra ernie marian mbart megatron-bert mvp pegasus plbart prophetnet rembert roberta "
        "roberta-prelayernorm roc_bert roformer trocr whisper xlm xlm-roberta xlm-roberta-xl xmod".split(),
        "an encoder or encoder-decoder model, not a decoder-only LM",
    ),
    **dict.fromkeys(
        "bamba falcon_h1 falcon_mamba granitemoehybrid jamba lfm2 lfm2_moe mamba mamba2 minimax nemotron_h "
        "olmo_hybrid qwen3_5_text qwen3_5_moe_text qwen3_next recurrent_gemma rwkv xlstm zamba zamba2 "
        "kimi_linear bailing_hybrid".split(),
        "state-space, recurrent or linear-attention blocks: no attention heads to describe in every block",
    ),
}
"""Decoder families in transformers' causal-LM list that layerscope refuses, with the reason."""

FamilySupport = Literal["verified", "discoverable", "unsupported"]


def family_support(model_type: str) -> FamilySupport:
    """Whether a config's model_type can be analysed, before loading any weights.

    `verified`: in the family table and tested; `discoverable`: a causal LM transformers knows,
    whose block list is found structurally and checked on a probe input after loading.
    """
    if model_type in SUPPORTED_MODEL_TYPES:
        return "verified"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in NOT_SUPPORTED:
        return "discoverable"
    return "unsupported"


def is_supported(model_type: str) -> bool:
    return family_support(model_type) != "unsupported"


def unsupported(model_type: str) -> UnsupportedArchitecture:
    """The one message for a family layerscope refuses, with the reason and the tested families."""
    reason = NOT_SUPPORTED.get(model_type, "not a causal LM that transformers knows")
    return UnsupportedArchitecture(
        f"Architecture '{model_type}' is not supported ({reason}). Tested: {', '.join(sorted(SUPPORTED_MODEL_TYPES))}."
    )


_ATTENTION_NAMES = ("self_attn", "self_attention", "attn", "attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "fc2")  # fc2: OPT-style blocks


def _path_of(root: nn.Module, target: nn.Module | None) -> str | None:
    return next((name for name, module in root.named_modules() if module is target), None) if target else None


def _has_paths(model: nn.Module, paths: ModulePaths) -> bool:
    required = (paths.blocks, paths.unembed, paths.embed)
    return all(_path_exists(model, path) for path in required)


def _path_exists(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def discover_paths(model: nn.Module) -> ModulePaths:
    """The block list, final norm, embedding and unembedding found from the module tree alone."""
    family = model.config.get_text_config().model_type
    n_layers = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    lists = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n_layers and len({type(b) for b in module}) == 1
    ]
    if len(lists) != 1:
        raise UnsupportedArchitecture(
            f"Architecture '{family}' is not in layerscope's table and has {len(lists)} lists of "
            f"{n_layers} identical blocks (need exactly one)."
        )
    blocks_path, blocks = lists[0]
    parent_path, _, blocks_name = blocks_path.rpartition(".")
    parent = model.get_submodule(parent_path)
    names = [name for name, _ in parent.named_children()]
    after_blocks = names[names.index(blocks_name) + 1 :]
    norms = [name for name in after_blocks if "norm" in type(getattr(parent, name)).__name__.lower()]
    attention = next((name for name in _ATTENTION_NAMES if hasattr(blocks[0], name)), None)
    mlp = next((name for name in _MLP_NAMES if hasattr(blocks[0], name)), None)
    unembed = _path_of(model, model.get_output_embeddings())
    embed = _path_of(model, model.get_input_embeddings())
    found = f"blocks '{blocks_path}', final norm {norms}, unembedding '{unembed}', attention '{attention}', MLP '{mlp}'"
    if len(norms) != 1 or attention is None or mlp is None or unembed is None or embed is None:
        raise UnsupportedArchitecture(f"Architecture '{family}' is not in layerscope's table; found {found}.")
    prefix = f"{parent_path}." if parent_path else ""
    return ModulePaths(blocks_path, prefix + norms[0], unembed, embed, attention, mlp)


class ModelAdapter:
    """Architecture-neutral access to blocks, norms, heads and the unembedding."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config.get_text_config()
        self.family = self.config.model_type
        if family_support(self.family) == "unsupported":
            raise unsupported(self.family)
        known = FAMILIES.get(self.family)
        # A multimodal wrapper can carry a table family's text config around other paths (Fuyu: persimmon).
        self.paths = known if known and _has_paths(model, known) else discover_paths(model)
        self.verify_lens()

    def _get(self, path: str, root: nn.Module | None = None) -> nn.Module:
        """The submodule at `path` (of the model, or of `root`), or one clear refusal naming what is missing."""
        root = self.model if root is None else root
        try:
            return root.get_submodule(path)
        except AttributeError as error:
            raise UnsupportedArchitecture(
                f"A {self.family} model was expected to have '{path}', but {type(root).__name__} does not."
            ) from error

    @property
    def blocks(self) -> nn.ModuleList:
        """The live block list; `arranged_blocks` replaces it for a while (swaps, pruning)."""
        return self._get(self.paths.blocks)

    def _set_blocks(self, blocks: nn.ModuleList) -> None:
        parent_path, _, name = self.paths.blocks.rpartition(".")
        setattr(self._get(parent_path), name, blocks)

    @property
    def n_blocks(self) -> int:
        """Counted each time: pruning (`arranged_blocks` with fewer blocks) shortens the block list for a while."""
        return len(self.blocks)

    @contextmanager
    def arranged_blocks(self, order: Sequence[int]) -> Iterator[None]:
        """Run the blocks `order` names (indices into the live block list), in that order, inside the `with`
        block: a permutation moves blocks (a swap), a shorter list removes them (pruning). What each layer's
        place decides moves with its block: `config.layer_types` (families that pick a layer's mask and rotary
        table by depth: Gemma 2/3, Qwen2 sliding windows, ...), so a moved block keeps the attention type its
        weights were trained with; every module's `layer_idx` (its KV cache slot) becomes its new place; and
        `config.num_hidden_layers` the new count, so `generate` with a KV cache runs. Restored exactly on exit,
        also after an exception."""
        original, config = self.blocks, self.config
        indexed = [
            (module, module.layer_idx)
            for block in original
            for module in block.modules()
            if isinstance(getattr(module, "layer_idx", None), int)
        ]
        n_layers, layer_types = config.num_hidden_layers, getattr(config, "layer_types", None)
        try:
            self._set_blocks(nn.ModuleList([original[index] for index in order]))
            for place, index in enumerate(order):
                for module in original[index].modules():
                    if isinstance(getattr(module, "layer_idx", None), int):
                        module.layer_idx = place
            config.num_hidden_layers = len(order)
            if layer_types:
                config.layer_types = [layer_types[index] for index in order]
            yield
        finally:
            self._set_blocks(original)
            for module, layer_index in indexed:
                module.layer_idx = layer_index
            config.num_hidden_layers = n_layers
            if layer_types:
                config.layer_types = layer_types

    @cached_property
    def final_norm(self) -> nn.Module:
        """The final norm, or the identity where the model has none (post-LN OPT)."""
        return self._optional(self.paths.final_norm)

    @cached_property
    def after_norm(self) -> nn.Module:
        return self._optional(self.paths.after_norm)

    def _optional(self, path: str | None) -> nn.Module:
        parent_path, _, name = (path or "").rpartition(".")
        module = getattr(self._get(parent_path), name, None) if path else None
        return module if module is not None else nn.Identity()

    @cached_property
    def unembed(self) -> nn.Module:
        return self._get(self.paths.unembed)

    @cached_property
    def embed(self) -> nn.Module:
        return self._get(self.paths.embed)

    def attention(self, block: int) -> nn.Module:
        return self._get(self.paths.attention, self.blocks[block])

    def mlp(self, block: int) -> nn.Module:
        return self._get(self.paths.mlp, self.blocks[block])

    @cached_property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @cached_property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    def kv_group(self, head: int) -> int:
        """The KV head that query head `head` reads (grouped-query attention)."""
        return head // (self.n_heads // self.n_kv_heads)

    @cached_property
    def block_calls_batch(self) -> bool:
        """Whether a block call captured for one prompt can run several rows at once; Bloom's ALiBi tensor
        is shaped (batch x heads, 1, keys), so its rows run one at a time."""
        return self.family != "bloom"

    @cached_property
    def logit_softcap(self) -> float | None:
        return getattr(self.config, "final_logit_softcapping", None)

    @cached_property
    def logit_scale(self) -> float:
        """Cohere multiplies the logits by `logit_scale`; Granite divides them by `logits_scaling`.
        (MPT configs also carry a `logit_scale`, which transformers does not apply.)"""
        multiplier = getattr(self.config, "logit_scale", None) if self.family.startswith("cohere") else None
        return float(multiplier or 1.0) / float(getattr(self.config, "logits_scaling", None) or 1.0)

    @cached_property
    def max_context(self) -> int | None:
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(self.config, name, None)
            if value:
                return int(value)
        return None

    def execution_device(self, path: str) -> torch.device:
        """Where the module at `path` computes. With a device map, accelerate's hooks say so (the deepest hook
        on the path wins): the weights of a block offloaded to the CPU or disk wait on the meta device."""
        module, device = self.model, None
        for name in ("", *path.split(".")):
            module = getattr(module, name) if name else module
            hook = getattr(module, "_hf_hook", None)
            for part in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
                if getattr(part, "execution_device", None) is not None:
                    device = part.execution_device
        if device is None:
            return next(module.parameters()).device
        return torch.device(f"cuda:{device}" if isinstance(device, int) else device)

    @property
    def output_device(self) -> torch.device:
        """Where logits are computed; with a device map this can differ from the input device."""
        return self.execution_device(self.paths.unembed)

    @property
    def input_device(self) -> torch.device:
        return self.execution_device(self.paths.embed)

    def decode(self, residual: torch.Tensor, unembed_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from a pre-final-norm residual state, doing exactly what the model does.
        `unembed_weight` replaces the unembedding's weight (a low-precision copy for speed)."""
        residual = residual.to(self.output_device)
        normed = self.after_norm(self.final_norm(residual))
        if unembed_weight is None:
            logits = self.unembed(normed)
        else:
            logits = nn.functional.linear(normed.to(unembed_weight.dtype), unembed_weight, self.unembed.bias)
        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def verify_lens(self) -> None:
        """Refuse, in one line, a model whose last block output does not decode to its own logits."""
        probe = (torch.arange(8) % int(self.config.vocab_size))[None].to(self.input_device)
        outputs: list[torch.Tensor] = []
        with ExitStack() as stack, torch.inference_mode():
            hook_output(stack, self.blocks[-1], outputs.append)
            logits = self.model(input_ids=probe, use_cache=False).logits.float()
            decoded = self.decode(outputs[-1]).float() if outputs else None
        tolerance = 1e-4 if self.unembed.weight.dtype == torch.float32 else 2e-2
        difference = float((decoded - logits).abs().max()) if decoded is not None else float("inf")
        if not difference <= tolerance * (1 + float(logits.abs().max())):
            raise UnsupportedArchitecture(
                f"Architecture '{self.family}': decoding the output of '{self.paths.blocks}' with final norm "
                f"'{self.paths.final_norm}' and unembedding '{self.paths.unembed}' does not reproduce the model's "
                f"logits (max difference {difference:.3g}); refusing to show a wrong lens."
            )
