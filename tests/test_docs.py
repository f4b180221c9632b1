"""The documentation site builds with `mkdocs build --strict`, so a broken link, a link to a missing page or
heading, a page left out of the nav or a docstring the reference cannot render fails the suite; and the docs'
examples that claim output give it: the Python guide's, and every `console` transcript of the docs, each a quick
setting on the demo model (the long studies' outputs, minutes each on a CPU, are `text` blocks marked as recorded
output)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.examples import ROOT, blocks, read, run_python, run_transcript, section


def build(root: Path, site: Path) -> subprocess.CompletedProcess:
    """mkdocs run from `root` (snippets and mkdocstrings read paths from there), offline."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(root / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def test_site_builds_strict(tmp_path):
    result = build(ROOT, tmp_path / "site")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "reference" / "index.html").read_text().count('class="doc doc-heading"') >= 40
    assert "Keep a Changelog" in (tmp_path / "site" / "changelog" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is not a formality: a copy of the site with one link to a missing heading fails."""
    root = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", root / "docs")
    for name in ("mkdocs.yml", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, root / name)
    (root / "layerscope").symlink_to(ROOT / "layerscope")
    page = root / "docs" / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [nowhere](methods.md#no-such-heading).\n")
    result = build(root, tmp_path / "site")
    assert result.returncode != 0 and "no-such-heading" in result.stderr


def test_keymap_table_lists_the_app_bindings():
    """docs/explorer.md's table of binding ids is the app's own list, ids and default keys."""
    from textual.binding import Binding

    from layerscope.tui.app import LayerscopeApp

    table = re.findall(r"^\| `(\w+)` \| `([^`]+)` \| ", section("docs/explorer.md", "### Keymaps"), re.M)
    app = [(binding.id, binding.key) for binding in LayerscopeApp.BINDINGS if isinstance(binding, Binding)]
    assert table == app


def test_python_api_guide_runs(demo_lm):
    """The guide's first example runs as written and prints what its comments say."""
    (example, _) = blocks("docs/python-api.md", "# Python API", "python")
    printed = run_python(example, {}, "docs/python-api.md").splitlines()
    assert printed[0] == " Paris"  # the last row is the model's own output
    assert "[' Paris', ' Rome']" in printed
    assert "torch.Size([2, 5, 576]) torch.Size([2, 5])" in printed


TRANSCRIPTS = [
    ("docs/cli/lens-run.md", "## `layerscope lens`: the logit lens"),
    ("docs/cli/lens-run.md", "## `layerscope run`: interventions, compared with the baseline"),
    ("docs/cli/neurons-attribute.md", "## `layerscope attribute`: direct logit attribution"),
    ("docs/cli/trace.md", "# trace: causal tracing (activation patching)"),
    ("docs/cli/layer-studies.md", "## `layerscope sweep`: one intervention at every layer"),
    ("docs/cli/layer-studies.md", "## `layerscope influence`: Block Influence and pruning (ShortGPT)"),
    ("docs/cli/layer-studies.md", "## `layerscope exit`: an early-exit estimate from the lens"),
    ("docs/cli/neurons-attribute.md", "## `layerscope neurons`: prediction and suppression neurons"),
    ("docs/cli/patchscope-heads.md", "### Example"),
    ("docs/cli/patchscope-heads.md", "## `layerscope heads retrieval`: retrieval heads (needle in a haystack)"),
    ("docs/cli/patchscope-heads.md", "## `layerscope heads induction`: induction and previous-token heads"),
    ("docs/heads-pattern.md", "## `layerscope heads pattern`: where a head looks"),
    ("docs/probes.md", "# Linear probes per row: `layerscope probe`"),
    ("docs/lens-generate.md", "## On the command line"),
]


@pytest.mark.parametrize(("page", "heading"), TRANSCRIPTS)
def test_cli_transcripts(page, heading, cli_demo_lm):
    """The command pages' transcripts of quick commands on the demo model are what the commands print."""
    (transcript,) = blocks(page, heading, "console")
    run_transcript(transcript)


def test_lens_json_sample(cli_demo_lm):
    """The lens page's JSON sample is the command's output with `--top-k 2`: its keys in order, the prompt's
    tokens, the first and the last cell, each number as close as its printed digits allow."""
    from typer.testing import CliRunner

    from layerscope.cli.app import app

    (sample,) = blocks("docs/cli/lens-run.md", "## `layerscope lens`: the logit lens", "json")
    command = ["lens", "--model", "demo", "--prompt", "The capital of France is", "--top-k", "2", "--format", "json"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert re.findall(r'^ "(\w+)":', sample, re.M) == list(data)
    for key in ("model", "method", "tokens", "token_ids"):
        assert f'"{key}": {json.dumps(data[key])}' in sample
    shown = [
        (
            [
                (token, int(id_), prob)
                for token, id_, prob in re.findall(r'"token": (".*?"), "id": (\d+), "prob": ([^}]+)}', top)
            ],
            entropy,
            kl,
        )
        for top, entropy, kl in re.findall(
            r'"top": \[(.*?)\],\s*"entropy_bits": ([^,]+), "kl_to_final": ([^}]+)}', sample, re.S
        )
    ]
    cells = [data["cells"][0][0], data["cells"][-1][-1]]
    assert len(shown) == len(cells)
    for (top, entropy, kl), cell in zip(shown, cells, strict=True):
        assert [(json.loads(token), id_) for token, id_, _ in top] == [
            (entry["token"], entry["id"]) for entry in cell["top"]
        ]
        pairs = [(prob, entry["prob"]) for (_, _, prob), entry in zip(top, cell["top"], strict=True)]
        for printed, value in [*pairs, (entropy, cell["entropy_bits"]), (kl, cell["kl_to_final"])]:
            assert abs(value - float(printed)) <= 0.5 * 10.0 ** Decimal(printed).as_tuple().exponent, (printed, value)


def test_every_console_block_is_run():
    """A `console` block claims output, so each one in the docs is a section of TRANSCRIPTS (recorded output is
    fenced as `text`)."""
    for page in sorted((ROOT / "docs").rglob("*.md")):
        name = page.relative_to(ROOT).as_posix()
        run = [heading for listed, heading in TRANSCRIPTS if listed == name]
        assert read(name).count("```console\n") == len(run), name


def test_cli_page_lists_every_command():
    """docs/cli/index.md's table names every command and subcommand of the app, each in its own row."""
    from typer.main import get_command

    from layerscope.cli.app import app

    first_cells = [row.split("|")[1].strip() for row in re.findall(r"^\| `.*$", read("docs/cli/index.md"), re.M)]
    for name, command in get_command(app).commands.items():
        (cell,) = [cell for cell in first_cells if cell.startswith(f"`{name}")]
        assert all(f"`{sub}`" in cell or f"`{name} {sub}`" in cell for sub in getattr(command, "commands", {}))
