"""Tiny random models of every supported family, built from configs: no downloads."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel

WORDS = ("the cat sat on mat a dog ran to park red blue green one two three four five six seven eight "
         "nine ten capital of france is paris italy rome city country big small").split()
VOCAB = 128

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              pad_token_id=1, eos_token_id=1, bos_token_id=1,
              vocab_size=VOCAB, max_position_embeddings=256)

CONFIGS: dict[str, dict] = {
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(num_key_value_heads=2),
    "gemma": dict(num_key_value_heads=1, head_dim=16),
    "gemma2": dict(num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=16, sliding_window=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0, sliding_window=8,
                        query_pre_attn_scalar=16),
    "phi": dict(),
    "phi3": dict(num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_layer=4, n_head=4, n_positions=256),
    "gpt_neox": dict(rotary_pct=0.5),
}
FAMILIES = tuple(CONFIGS)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def tiny_model(family: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    options = {**COMMON, **CONFIGS[family]}
    if family == "gpt2":
        options = {k: v for k, v in options.items() if k not in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                                 "intermediate_size", "max_position_embeddings")}
    config = AutoConfig.for_model(family, **options)
    model = AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(name=f"tiny-{family}", model=model, tokenizer=tiny_tokenizer(), adapter=ModelAdapter(model))


def random_ids(length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (1, length), generator=generator)
