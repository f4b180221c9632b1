"""Tiny random models of every supported family, built from configs: no downloads."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel

WORDS = (
    "the cat sat on mat a dog ran to park red blue green one two three four five six seven eight "
    "nine ten capital of france is paris italy rome city country big small"
).split()
VOCAB = 128

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    pad_token_id=1,
    eos_token_id=1,
    bos_token_id=1,
    vocab_size=VOCAB,
    max_position_embeddings=256,
)
GQA = dict(num_key_value_heads=2)
MOE = dict(num_key_value_heads=2, num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
SLIDING = dict(sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)

CONFIGS: dict[str, dict] = {
    "llama": GQA,
    "mistral": dict(num_key_value_heads=2, sliding_window=None),
    "qwen2": dict(num_key_value_heads=2, use_sliding_window=True, max_window_layers=2, sliding_window=4),
    "qwen2_moe": dict(MOE, shared_expert_intermediate_size=64, qk_norm=False),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "qwen3_moe": dict(MOE, head_dim=16),
    "mixtral": MOE,
    "deepseek_v3": dict(
        MOE,
        num_key_value_heads=4,
        n_routed_experts=4,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        first_k_dense_replace=0,
        n_group=1,
        topk_group=1,
    ),
    "phimoe": MOE,
    "gemma": dict(num_key_value_heads=1, head_dim=16),
    "gemma2": dict(
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        query_pre_attn_scalar=16,
        sliding_window=4,
    ),
    "gemma3_text": dict(
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=30.0,
        sliding_window=4,
        query_pre_attn_scalar=16,
        sliding_window_pattern=2,
    ),
    "vaultgemma": dict(
        num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0, query_pre_attn_scalar=16, sliding_window=4
    ),
    "phi": dict(),
    "phi3": GQA,
    "olmo": dict(clip_qkv=8.0),
    "olmo2": GQA,
    "olmo3": dict(num_key_value_heads=2, **SLIDING),
    "olmoe": dict(MOE, num_experts=4),
    "granite": dict(
        num_key_value_heads=2,
        logits_scaling=4.0,
        residual_multiplier=0.5,
        embedding_multiplier=2.0,
        attention_multiplier=0.25,
    ),
    "granitemoe": dict(MOE, logits_scaling=4.0),
    "granitemoeshared": dict(MOE, logits_scaling=4.0, shared_intermediate_size=64),
    "cohere": dict(num_key_value_heads=2, logit_scale=0.5, use_qk_norm=True),
    "cohere2": dict(num_key_value_heads=2, logit_scale=0.5, sliding_window=4, sliding_window_pattern=2),
    "starcoder2": dict(num_key_value_heads=2, sliding_window=4),
    "stablelm": dict(num_key_value_heads=2, use_parallel_residual=True, qk_layernorm=True),
    "helium": dict(num_key_value_heads=2, head_dim=16),
    "glm": dict(num_key_value_heads=2, head_dim=16),
    "glm4": dict(num_key_value_heads=2, head_dim=16),
    "smollm3": dict(num_key_value_heads=2, no_rope_layer_interval=2),
    "seed_oss": dict(num_key_value_heads=2, head_dim=16),
    "exaone4": dict(num_key_value_heads=2, **SLIDING),
    "ernie4_5": dict(num_key_value_heads=2, head_dim=16),
    "ernie4_5_moe": dict(MOE, moe_num_experts=4, moe_k=2, moe_intermediate_size=32, moe_layer_start_index=0),
    "gpt_oss": dict(
        MOE,
        head_dim=16,
        num_local_experts=4,
        experts_per_token=2,
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"] * 2,
    ),
    "nemotron": GQA,
    "persimmon": dict(),
    "arcee": GQA,
    "apertus": GQA,
    "hunyuan_v1_dense": dict(num_key_value_heads=2, head_dim=16),
    "nanochat": dict(num_key_value_heads=2),
    "gpt2": dict(n_embd=64, n_layer=4, n_head=4, n_positions=256),
    "gpt_bigcode": dict(n_embd=64, n_layer=4, n_head=4, n_positions=256, multi_query=True),
    "gptj": dict(n_embd=64, n_layer=4, n_head=4, n_positions=256, rotary_dim=8),
    "codegen": dict(n_embd=64, n_layer=4, n_head=4, n_positions=256, n_ctx=256, rotary_dim=8),
    "gpt_neox": dict(rotary_pct=0.5),
    "falcon": dict(new_decoder_architecture=True, num_kv_heads=2),
    "bloom": dict(n_layer=4, n_head=4),
    "opt": dict(ffn_dim=128, word_embed_proj_dim=32),
    "mpt": dict(d_model=64, n_heads=4, n_layers=4, expansion_ratio=2, max_seq_len=256),
}
FAMILIES = tuple(CONFIGS)
_RENAMED = {"gpt2", "gpt_bigcode", "gptj", "codegen", "mpt"}  # size names of their own; `hidden_size` is an alias


def tiny_config(family: str):
    options = {**COMMON, **CONFIGS[family]}
    if family in _RENAMED:
        options = {
            k: v
            for k, v in options.items()
            if k
            not in (
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
                "max_position_embeddings",
            )
        }
    return AutoConfig.for_model(family, **options)


def tiny_model(family: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    return LoadedModel(name=f"tiny-{family}", model=model, tokenizer=tiny_tokenizer(), adapter=ModelAdapter(model))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")


def random_ids(length: int = 12, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(2, VOCAB, (1, length), generator=generator)
