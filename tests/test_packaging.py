"""Installed as a user installs it: build the wheel, install it (not editable) into a fresh venv, and run
the `layerscope` script from another directory. The wheel must carry the themes and sample prompts.

The fresh venv sees the running venv's packages (torch, transformers, ...) through a .pth line, so nothing
is downloaded; .pth files of that folder are not processed, so the editable layerscope stays invisible,
and the test checks that the installed copy is what runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.saved import save_tiny_llama

REPO = Path(__file__).resolve().parents[1]
SOURCE_ITEMS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "layerscope", "themes", "sample_prompts")


def data_files(folder: str) -> set[str]:
    return {path.relative_to(REPO / folder).as_posix() for path in (REPO / folder).rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a clean copy of the source, so no stale build folder of the checkout can leak in."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for item in SOURCE_ITEMS:
        path = REPO / item
        if path.is_dir():
            shutil.copytree(path, source / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, source / item)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            str(source),
            "--wheel-dir",
            str(root / "dist"),
        ],
        check=True,
    )
    (built,) = (root / "dist").glob("layerscope-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its bin folder."""
    target = tmp_path_factory.mktemp("venv")
    venv.create(target, with_pip=False)  # the running pip installs into it (--python): faster than ensurepip
    python = target / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_outer_venv.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        check=True,
    )
    return target / "bin"


def run_in(bin_dir: Path, cwd: Path, *args: str) -> str:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_wheel_carries_the_data_folders(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("themes", "sample_prompts"):
        assert {f"layerscope/data/{folder}/{name}" for name in data_files(folder)} <= names
    assert "layerscope/locations.py" in names and "layerscope/__main__.py" in names


def test_installed_wheel_runs_from_another_directory(installed, tmp_path):
    model = save_tiny_llama(tmp_path / "tiny-llama")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    where = run_in(
        installed,
        elsewhere,
        "python",
        "-c",
        "import layerscope, layerscope.locations as l; print(layerscope.__file__); "
        "print(l.SHIPPED_THEMES); print(l.SAMPLE_PROMPTS)",
    ).split()
    site = installed.parent.resolve()
    assert all(Path(path).resolve().is_relative_to(site) for path in where), where

    lens = json.loads(
        run_in(
            installed,
            elsewhere,
            "layerscope",
            "lens",
            "--model",
            str(model),
            "--prompt",
            "the cat sat on the mat",
            "--format",
            "json",
        )
    )
    assert lens["tokens"] == ["the", "cat", "sat", "on", "the", "mat"] and len(lens["cells"]) == 5

    sweep = json.loads(
        run_in(
            installed, elsewhere, "layerscope", "sweep", "--model", str(model), "--layers", "0,3", "--format", "json"
        )
    )
    lines = (REPO / "sample_prompts" / "general.txt").read_text(encoding="utf-8").splitlines()
    prompts = [line for line in lines if line.strip() and not line.startswith("#")]
    indices = {row["prompt_index"] for row in sweep["rows"]}
    assert indices == {*range(len(prompts)), None}  # the default prompt set came from the package data

    themes = run_in(installed, elsewhere, "layerscope", "tui", "--list-themes").split()
    assert {Path(name).stem for name in data_files("themes")} <= set(themes)
    assert "textual-dark" in themes

    assert "Usage: python -m layerscope" in run_in(installed, elsewhere, "python", "-m", "layerscope", "--help")
