"""A tiny llama saved to a folder (safetensors + tokenizer) that `--model DIR` loads: no downloads."""

from __future__ import annotations

from pathlib import Path

from tokenizers import processors

from tests.tiny import tiny_model

BOS = "<s>"


def save_tiny_llama(directory: Path, bos: str = "none") -> Path:
    """bos: 'none' (no BOS token, like tests/tiny.py), 'token' (a BOS token the tokenizer does not add, like
    SmolLM2's), or 'added' (a tokenizer that starts every text with it by itself)."""
    lm = tiny_model("llama")
    tokenizer = lm.tokenizer
    if bos != "none":
        tokenizer.add_special_tokens({"bos_token": BOS})
    if bos == "added":
        bos_id = tokenizer.bos_token_id
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
        )
    lm.model.save_pretrained(directory)  # safetensors
    tokenizer.save_pretrained(directory)
    return directory
