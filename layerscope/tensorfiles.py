"""Safetensors files read and written whole: a file cut short (a kill while saving) is one clear error when read,
and a file is replaced only by a whole new one."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from layerscope.errors import LayerscopeError


def replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """`write(temp)` writes a temporary file beside `path`, which is flushed to disk and renamed over `path`: a
    kill at any moment leaves the old file or the new one, whole."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        write(temp)
        with open(temp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def read_safetensors(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file, or one LayerscopeError naming it."""
    try:
        with safe_open(str(path), "pt") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise LayerscopeError(
            f"{what} '{path}' cannot be read ({error}); it may have been cut short while being written."
        ) from None
