"""The whole package passes mypy with the project's configuration ([tool.mypy] in pyproject.toml), so its
py.typed marker is honest. torch, transformers and accelerate are not followed there: the check takes seconds."""

import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).parent.parent


def test_the_package_passes_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy", "layerscope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_function_must_be_annotated():
    """Issue 10: public functions carry type hints; the check refuses a def without them, so it stays that way."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["disallow_untyped_defs"] is True
