"""The whole tree (package, tests, benchmarks, setup.py) is ruff-clean and ruff-formatted, by the rules in
pyproject.toml's [tool.ruff]; .pre-commit-config.yaml runs the same two commands before a commit."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_the_tree_passes_ruff(command):
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_sees_every_part_of_the_tree():
    """A file ruff skips is a file nobody lints: the package, the tests, the benchmarks and setup.py are all in."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    seen = {Path(line).resolve().relative_to(ROOT).parts[0] for line in result.stdout.splitlines() if line.strip()}
    assert {"layerscope", "tests", "benchmarks", "setup.py"} <= seen
