"""`layerscope lens` and `layerscope run`: JSON contract, formats, and one-line errors."""

import csv
import io
import json
import re

import pytest
from typer.testing import CliRunner

from layerscope.cli.app import app

runner = CliRunner()
PROMPT = "The capital of France is"


@pytest.fixture(autouse=True)
def reuse_demo_model(cli_demo_lm):
    """The CLI loads the demo model through `ModelOptions.load`; hand it the session's copy to keep tests fast."""


def invoke(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def test_lens_json_contract():
    result = invoke("lens", "--prompt", PROMPT, "--top-k", "3", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "SmolLM2-135M-Instruct"
    assert data["tokens"] == ["The", " capital", " of", " France", " is"]
    assert data["layers"] == ["emb", *map(str, range(30))]
    assert len(data["cells"]) == 31 and all(len(row) == 5 for row in data["cells"])
    cell = data["cells"][-1][-1]
    assert set(cell) >= {"top", "entropy_bits", "kl_to_final"}
    assert [set(t) for t in cell["top"]] == [{"token", "id", "prob"}] * 3
    assert cell["top"][0]["token"] == " Paris"


def test_lens_json_reads_back_as_the_engine_grid(demo_lm):
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.lens import logit_lens

    data = json.loads(invoke("lens", "--prompt", PROMPT, "--top-k", "3", "--format", "json").stdout)
    grid = DecodeGrid.from_dict(data)
    assert grid == logit_lens(demo_lm, demo_lm.encode(PROMPT), top_k=3)  # JSON keeps every float exactly
    assert grid.to_dict() == data and grid.top1(30, 4).token == " Paris"


def test_lens_table_and_csv():
    table = invoke("lens", "--prompt", PROMPT)
    assert table.exit_code == 0 and "Paris" in table.stdout.splitlines()[-1]
    result = invoke("lens", "--prompt", PROMPT, "--top-k", "2", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 31 * 5 * 2
    assert rows[-2]["layer"] == "29" and rows[-2]["token"] == " Paris" and rows[-2]["rank"] == "0"


def test_prompt_from_stdin_and_file(tmp_path):
    assert json.loads(invoke("lens", "-f", "json", input=PROMPT + "\n").stdout)["tokens"][-1] == " is"
    path = tmp_path / "p.txt"
    path.write_text(PROMPT)
    out = tmp_path / "grid.json"
    result = invoke("lens", "--prompt-file", str(path), "-f", "json", "--out", str(out))
    assert result.exit_code == 0 and result.stdout == ""
    assert json.loads(out.read_text())["tokens"][1] == " capital"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.json", "p.txt"]  # no temporary file left


def test_run_json_contract():
    result = invoke("run", "--prompt", PROMPT, "--drop", "0", "--max-new-tokens", "4", "-f", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"model", "tokens", "layers", "baseline", "intervened", "comparison", "continuation"}
    assert data["interventions"] == [{"kind": "drop", "blocks": [0]}]
    assert data["baseline"]["cells"][-1][-1]["top"][0]["token"] == " Paris"
    positions = data["comparison"]["positions"]
    assert len(positions) == 5 and set(positions[0]) >= {"kl", "top1_agree", "entropy_delta", "loss_delta"}
    assert positions[-1]["loss_delta"] is None
    assert data["comparison"]["mean_kl"] > 1
    assert data["continuation"]["baseline"]["text"].startswith(" Paris")
    assert set(data["continuation"]["intervened"]) == {"text", "token_ids"}


def test_run_table_with_several_interventions():
    result = invoke(
        "run",
        "-p",
        PROMPT,
        "--swap",
        "10",
        "--freeze-from",
        "25",
        "--skip-attn-from",
        "28",
        "--mask-heads",
        "4.2,7.1",
        "--mask-mode",
        "uniform",
        "--max-new-tokens",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "swap, freeze, skip-attn, mask-heads" in result.stdout and "mean KL" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["lens", "--prompt", "   "], "--prompt is empty (only whitespace)"),
        (["lens", "--prompt-file", "/nonexistent/p.txt"], "Cannot read prompt file"),
        (["lens", "--prompt", "x", "--model", "./no/such/dir"], "No model directory"),
        (["lens", "--prompt", "x", "--out", "/nonexistent/dir/out.json"], "not writable"),
        (["run", "--prompt", "x", "--drop", "3-x"], "Bad block spec"),
        (["run", "--prompt", "x", "--drop", "99"], "block 99 is out of range 0..29"),
        (["run", "--prompt", "x", "--swap", "29"], "no next block"),
        (["run", "--prompt", "x", "--mask-heads", "3.x"], "Bad head spec"),
        (["run", "--prompt", "x", "--mask-heads", "3.9"], "head 9 is out of range"),
        (["run", "--prompt", "x"], "No intervention given"),
        (["lens", "--prompt", "word " * 9000], "context is 8192"),
    ],
)
def test_bad_input_is_one_clear_line(args, message):
    result = invoke(*args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {lines[0][7:]}"] and message in lines[0]


def test_every_command_has_help_with_an_example():
    import typer.main

    def leaves(group, path):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):
                yield from leaves(command, [*path, name])
            else:
                yield [*path, name]

    commands = list(leaves(typer.main.get_command(app), []))
    assert ["heads", "retrieval"] in commands and ["tui"] in commands and len(commands) >= 10
    for command in commands:
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout, command


def test_every_command_shows_the_shared_options_with_their_help():
    """The shared options are declared once (cli/common.py) and still reach every command's --help."""
    import typer.main

    shared = {
        "--model": "a hub id",
        "--device": "cuda:N",
        "--dtype": "float32",
        "--device-map": "accelerate",
        "--trust-remote-code": "Off unless asked",
    }
    for path, _ in [(("tui",), None), *_leaf_commands(typer.main.get_command(app))]:
        text = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400"}).stdout  # one line per option
        lines = {match[1]: line for line in text.splitlines() if (match := re.match(r"│[\s*]*(--[\w-]+)", line))}
        for option, words in shared.items():
            assert words in lines[option], (path, option)
        assert ("--debug" in lines) == (path != ("tui",)), path


def _leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*path, name))
        elif name != "tui":
            yield (*path, name), command
