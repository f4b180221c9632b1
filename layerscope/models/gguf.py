"""Reading GGUF files: a quick check of the header, then transformers' dequantising reader.

Used by the loader (`--model file.gguf`) and by the demo model's first download.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from layerscope.errors import LayerscopeError

GGUF_HEADER_BYTES = 24  # b"GGUF", the version (u32), the tensor count and the metadata count (u64 each)


def check_gguf_header(path: Path) -> None:
    """An empty, foreign or cut-off file is named as such before transformers parses it."""
    with open(path, "rb") as file:
        header = file.read(GGUF_HEADER_BYTES)
    if not header:
        raise LayerscopeError(f"GGUF file '{path}' is empty.")
    if not header.startswith(b"GGUF") and not b"GGUF".startswith(header):
        raise LayerscopeError(f"'{path}' is not a GGUF file: it does not start with the bytes 'GGUF'.")
    if len(header) < GGUF_HEADER_BYTES:
        raise LayerscopeError(
            f"GGUF file '{path}' is truncated: {len(header)} bytes, less than its "
            f"{GGUF_HEADER_BYTES}-byte header. Download it again."
        )


def load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF file into a plain model that `save_pretrained` accepts."""
    check_gguf_header(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (struct.error, UnicodeDecodeError, IndexError, OverflowError, MemoryError) as error:
        # transformers' reader walks the metadata with struct and runs off the end of a cut-off file
        raise LayerscopeError(
            f"GGUF file '{path}' is truncated or corrupt ({path.stat().st_size} bytes; "
            f"{type(error).__name__}: {error}). Download it again."
        ) from error
    except KeyError as error:
        raise LayerscopeError(f"Could not read GGUF file '{path}': its metadata lacks {error}.") from error
    except (OSError, ValueError) as error:
        raise LayerscopeError(f"Could not read GGUF file '{path}': {error}") from error
    # The weights are dequantised; clear the quantisation marker so the model behaves as a plain one.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer
