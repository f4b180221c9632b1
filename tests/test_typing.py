"""The whole package passes mypy with the project's configuration ([tool.mypy] in pyproject.toml), so its
py.typed marker is honest. torch, transformers and accelerate are not followed there: the check takes seconds."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_package_passes_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy", "layerscope"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
