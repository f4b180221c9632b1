"""The public API's modules pass mypy with the project's configuration ([tool.mypy] in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
TYPED = ["layerscope/__init__.py", "layerscope/models/loading.py", "layerscope/analyses/activations.py",
         "layerscope/analyses/lens.py", "layerscope/analyses/grid.py", "layerscope/analyses/compare.py",
         "layerscope/analyses/patchscope.py"]
"""Checked file by file until the whole package passes; imported modules are read for their types only."""


def test_public_api_modules_pass_mypy():
    result = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", *TYPED], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
