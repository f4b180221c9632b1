"""The code examples of the README and the docs pages, read from the files a reader sees, so the tests run
exactly what is written there: Python blocks, the output printed after them, and console transcripts."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
ELIDED = "..."  # a transcript line that stands for lines left out


def read(page: str) -> str:
    """A Markdown file by its path from the repository root: `README.md`, `docs/python-api.md`."""
    return (ROOT / page).read_text(encoding="utf-8")


def section(page: str, heading: str) -> str:
    """The text under `heading` (a whole heading line, `## Python API`) up to the next heading of its level or
    above, outside code blocks (where `# ` starts a comment); one such heading must exist."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = read(page).split("\n")
    starts = [index for index, line in enumerate(lines) if line == heading]
    assert len(starts) == 1, f"{page}: {len(starts)} headings {heading!r}"
    fenced = False
    for end in range(starts[0] + 1, len(lines)):
        fenced ^= lines[end].startswith("```")
        marks = len(lines[end]) - len(lines[end].lstrip("#"))
        if not fenced and 0 < marks <= level and lines[end][marks : marks + 1] == " ":
            break
    else:
        end = len(lines)
    return "\n".join(lines[starts[0] + 1 : end]) + "\n"


def blocks(page: str, heading: str, language: str) -> list[str]:
    """The fenced code blocks of one language in a section, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```\n", section(page, heading), re.M | re.S)


def run_python(code: str, namespace: dict, name: str) -> str:
    """Runs a block as a script in `namespace` and returns what it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, name, "exec"), namespace)
    return printed.getvalue()


def run_transcript(transcript: str) -> None:
    """A console block: `$ layerscope ARGS` on its first line, then the output. Runs the command in this process
    and checks that the output holds every shown line (trailing spaces aside) in the order shown; a line `...`
    stands for lines left out, so only lines that follow each other with no `...` between must be adjacent."""
    from layerscope.cli.app import app

    command, *shown = transcript.rstrip("\n").split("\n")
    assert command.startswith("$ layerscope "), command
    result = CliRunner().invoke(app, shlex.split(command.removeprefix("$ layerscope ")))
    assert result.exit_code == 0, result.output
    output = [line.rstrip() for line in result.stdout.split("\n")]
    position = 0
    adjacent = False
    for line in (line.rstrip() for line in shown):
        if line.strip() == ELIDED:
            adjacent = False
            continue
        if adjacent:
            assert output[position : position + 1] == [line], f"expected {line!r} next, output:\n{result.stdout}"
        else:
            assert line in output[position:], f"expected {line!r}, output:\n{result.stdout}"
            position = output.index(line, position)
        position += 1
        adjacent = True
