"""The engine never imports textual or rich, nor matplotlib until a figure is drawn (`.plot()`), and `import layerscope`
pulls in no heavy module."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import layerscope

ROOT = Path(__file__).parent.parent


def engine_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(layerscope.__path__, "layerscope.")]
    engine = [n for n in names if not n.startswith(("layerscope.tui", "layerscope.cli"))]
    assert "layerscope.interventions.core" in engine and "layerscope.analyses.lens" in engine
    return engine


def test_engine_imports_neither_textual_nor_rich_nor_matplotlib():
    code = (
        "import importlib, sys\n"
        f"for name in {engine_modules()!r}: importlib.import_module(name)\n"
        "leaks = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich', 'matplotlib'))\n"
        "print(','.join(leaks))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_package_import_is_light():
    code = (
        "import sys, layerscope, layerscope.cli.app; "
        "print(','.join(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_import_contracts_hold():
    """The same split, statically, by import-linter ([tool.importlinter] in pyproject.toml): the engine imports
    neither textual, rich, layerscope.cli nor layerscope.tui, in any function or under TYPE_CHECKING too, and the
    explorer's widgets do not import its app."""
    lint_imports = Path(sys.executable).with_name("lint-imports")  # import-linter's command, beside this python
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
