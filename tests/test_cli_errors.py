"""Bad input from a newcomer's first hour: each case is one `error:` line on stderr and exit code 1, never a
traceback, a usage box or a minute of retries. Cases that depend on the process itself (closed streams,
bytes in argv, Ctrl-C) run the real command in a subprocess."""

from __future__ import annotations

import enum
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from layerscope.cli.app import app
from layerscope.cli.common import escaped, shorten
from layerscope.errors import LayerscopeError, UnsupportedArchitecture, require_utf8
from layerscope.models.loading import available_devices, load_model, pick_device
from tests.tiny import tiny_model

runner = CliRunner()
COMMAND = [sys.executable, "-m", "layerscope.cli.app"]
PROMPT = "The capital of France is"


def invoke(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("[layerscope] ")]  # progress
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cli(*args: str | bytes, stdin=None, env: dict | None = None, close: tuple[int, ...] = (), timeout: int = 300):
    """The real command in a child process; `close` names file descriptors closed in the child (0: stdin)."""

    def close_streams():
        for fd in close:
            os.close(fd)

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin,
        capture_output=not close,
        env=environment,
        preexec_fn=close_streams if close else None,
        timeout=timeout,
        stdout=subprocess.PIPE if close and 1 not in close else None,
        stderr=subprocess.PIPE if close and 2 not in close else None,
    )


@pytest.fixture
def demo_cli(cli_demo_lm):
    """CLI commands reuse the session's demo model instead of loading their own."""
    return cli_demo_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    lm = tiny_model("llama")
    directory = tmp_path_factory.mktemp("tiny-llama")
    lm.model.save_pretrained(directory)
    lm.tokenizer.save_pretrained(directory)
    return directory


# Option values: every bounded int, every enum, every int of every command, through the parser.

REQUIRED = {
    ("heads", "activity"): ["--scores", "s.json"],
    ("heads", "ablate"): ["--scores", "s.json", "--top", "1"],
    ("tunedlens", "train"): ["--out", "lens-out"],
    ("tunedlens", "eval"): ["--lens", "lens-in"],
    ("jacobianlens", "fit"): ["--out", "lens-out"],
    ("jacobianlens", "eval"): ["--lens", "lens-in"],
    ("heads", "pattern"): ["--heads", "0.0"],
    ("steer", "vector"): ["--positive", "p.txt", "--negative", "n.txt", "--row", "1", "--out", "v.safetensors"],
}


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _bad_values():
    """(command path, option, bad value) for every option whose values the parser can refuse."""
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            option = param.opts[0]
            low = getattr(param, "min", None) if hasattr(param, "min") else getattr(param.type, "min", None)
            high = getattr(param, "max", None) if hasattr(param, "max") else getattr(param.type, "max", None)
            if low is not None:
                yield path, option, str(low - 1)
            if high is not None:
                yield path, option, str(high + 1)
            if isinstance(param.default, enum.Enum):
                yield path, option, "bogus"
            elif isinstance(param.default, int) and not isinstance(param.default, bool):
                yield path, option, "12x"


BAD_VALUES = list(_bad_values())


def test_the_bad_values_cover_every_command():
    assert {path for path, _, _ in BAD_VALUES} >= {
        ("lens",),
        ("run",),
        ("patchscope",),
        ("sweep",),
        ("influence",),
        ("heads", "retrieval"),
        ("heads", "induction"),
        ("heads", "ablate"),
        ("heads", "activity"),
        ("heads", "pattern"),
        ("tunedlens", "train"),
        ("jacobianlens", "fit"),
        ("tui",),
        ("probe",),
        ("steer", "vector"),
        *(("reproduce", name) for name in ("stages", "afcl", "shortgpt", "retrieval", "rome")),
    }
    assert (("lens",), "--top-k", "0") in BAD_VALUES and (("lens",), "--top-k", "101") in BAD_VALUES
    assert (("lens",), "--generate", "-1") in BAD_VALUES
    assert {
        (("trace",), "--samples", "0"),
        (("trace",), "--samples", "1001"),
        (("trace",), "--metric", "bogus"),
        (("trace",), "--site", "bogus"),
        (("trace",), "--noise-std", "bogus"),
    } <= set(BAD_VALUES)


@pytest.mark.parametrize(
    "path, option, value", BAD_VALUES, ids=lambda part: " ".join(part) if isinstance(part, tuple) else part
)
def test_every_bad_option_value_is_one_error_line(path, option, value):
    result = invoke(*path, *REQUIRED.get(path, []), option, value)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, option, f"layerscope {' '.join(path)} --help")


FIGURE_COMMANDS = [
    path
    for path, command in _commands(typer.main.get_command(app))
    if any(param.opts[0] == "--figure" for param in command.params)
]


@pytest.mark.parametrize("path", FIGURE_COMMANDS, ids=" ".join)
def test_a_figure_of_an_unknown_format_or_in_a_missing_folder_is_refused_before_the_model(tmp_path, path):
    """The model does not exist: the error about --figure shows its check came first."""
    base = [*path, *REQUIRED.get(path, []), "--model", str(tmp_path / "no-model")]
    for name in ("figure.jpg", "figure", "-", "figure.png.txt"):
        assert_one_error_line(
            invoke(*base, "--figure", str(tmp_path / name) if name != "-" else name).stderr,
            "--figure",
            "its suffix; name a .png, .svg or .pdf file",
        )
    missing = tmp_path / "missing" / "figure.png"
    assert_one_error_line(
        invoke(*base, "--figure", str(missing)).stderr, f"Cannot write '{missing}'", "folder does not exist"
    )
    assert sorted(tmp_path.iterdir()) == []


def test_the_figure_commands_cover_every_command_that_writes_a_result():
    assert set(FIGURE_COMMANDS) >= {
        ("lens",),
        ("run",),
        ("patchscope",),
        ("sweep",),
        ("influence",),
        ("stages",),
        ("exit",),
        ("trace",),
        ("neurons",),
        ("attribute",),
        ("tunedlens", "eval"),
        ("jacobianlens", "eval"),
        ("heads", "retrieval"),
        ("heads", "induction"),
        ("heads", "ablate"),
        ("heads", "activity"),
        ("heads", "pattern"),
        ("probe",),
    }


def test_a_figure_without_matplotlib_is_one_line_saying_how_to_install_it(tmp_path):
    """matplotlib blocked in the child, as if the extra were not installed; refused before the model loads."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\nfrom layerscope.cli.app import main\n"
        f"sys.argv = ['layerscope', 'lens', '-p', 'x', '--model', {str(tmp_path / 'no-model')!r}, "
        f"'--figure', {str(tmp_path / 'grid.png')!r}]\nmain()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr, "Figures need matplotlib, which is not installed: pip install 'layerscope[plot]'"
    )


def _number_kind(param) -> type | None:
    """int or float for a number option (bool is neither), else None."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)  # typer 0.29
    if annotation is None:  # older typer: click's own types
        annotation = {"integer": int, "integer range": int, "float": float, "float range": float}.get(
            getattr(getattr(param, "type", None), "name", "")
        )
    return annotation if annotation in (int, float) else None


NOT_NUMBERS = {
    float: ["nan", "inf", "-inf", "1e999", "NaN", "infinity"],
    int: ["99999999999999999999", "-1", "²", "٣", "1_0"],
}


def _bad_numbers():
    """(command path, option, bad value) for every number option of every command, found in the app itself:
    an option added later is walked too."""
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            kind = _number_kind(param)
            for value in NOT_NUMBERS.get(kind, []):  # type: ignore[arg-type]
                yield path, param.opts[0], value


BAD_NUMBERS = list(_bad_numbers())


def test_the_bad_numbers_cover_every_number_option():
    options = {(path, option) for path, option, _ in BAD_NUMBERS}
    assert {
        (("trace",), "--noise-scale"),
        (("tunedlens", "train"), "--lr"),
        (("trace",), "--seed"),
        (("trace",), "--samples"),
        (("run",), "--freeze-from"),
        (("tunedlens", "eval"), "--tokens"),
        (("jacobianlens", "eval"), "--tokens"),
        (("jacobianlens", "fit"), "--dim-batch"),
        (("jacobianlens", "fit"), "--max-prompts"),
        (("tui",), "--top-k"),
        (("heads", "induction"), "--seq-len"),
        (("run",), "--steer-factor"),
        (("steer", "vector"), "--row"),
    } <= options
    assert {path for path, _ in options} == {path for path, _ in _commands(typer.main.get_command(app))} - {("stages",)}


@pytest.mark.parametrize(
    "path, option, value", BAD_NUMBERS, ids=lambda part: " ".join(part) if isinstance(part, tuple) else part
)
def test_every_number_option_refuses_non_finite_huge_negative_and_odd_digits_before_the_model(
    tmp_path, path, option, value
):
    """The model named does not exist: the refusal names the flag, so it came before any loading."""
    result = invoke(*path, *REQUIRED.get(path, []), "--model", str(tmp_path / "no-model"), option, value)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"'{option}'", value.lstrip("-") if value != "99999999999999999999" else value)


def _text_options():
    """(command path, option) for every text option of every command but the explorer (which opens with an empty
    prompt box), found in the app itself."""
    for path, command in _commands(typer.main.get_command(app)):
        for param in command.params:
            if getattr(getattr(param, "type_descriptor", None), "annotation", None) is str and path != ("tui",):
                yield path, param.opts[0]


TEXT_OPTIONS = list(_text_options())


def test_the_text_options_cover_the_prompts_of_every_command():
    assert {
        (("trace",), "--corrupt-prompt"),
        (("trace",), "--subject"),
        (("trace",), "--contrast"),
        (("patchscope",), "--target-prompt"),
        (("sweep",), "--donor-prompt"),
        (("lens",), "--model"),
        (("heads", "retrieval"), "--span"),
    } <= set(TEXT_OPTIONS)


EMPTY_TEXTS = [
    (path, option, value)
    for path, option in TEXT_OPTIONS
    for value in ["", "   "]
    if not value or option.endswith("prompt")
]


@pytest.mark.parametrize(
    "path, option, value", EMPTY_TEXTS, ids=lambda part: " ".join(part) if isinstance(part, tuple) else repr(part)
)
def test_an_empty_text_option_is_refused_by_its_name_before_the_model(tmp_path, path, option, value):
    """Empty is refused everywhere; only whitespace is refused for prompts (an answer may be a newline)."""
    args = [*path, *REQUIRED.get(path, []), option, value]
    if option != "--model":
        args += ["--model", str(tmp_path / "no-model")]
    result = invoke(*args)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"{option} is empty")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["trace", "-p", PROMPT, "--noise-scale", "101"], "--noise-scale"),
        (["patchscope", "-p", PROMPT, "--target-layer", "²"], "--target-layer"),
        (["patchscope", "-p", PROMPT, "--target-layer", "٣"], "--target-layer"),
        (["patchscope", "-p", PROMPT, "--target-layer", "99999999999999999999"], "--target-layer"),
        (["run", "-p", PROMPT, "--drop", "0-99999999999"], "--drop"),
        (["run", "-p", PROMPT, "--swap", "1-99999999999"], "--swap"),
        (["run", "-p", PROMPT, "--steer-at", "4,99999999999"], "--steer-at"),
        (["run", "-p", PROMPT, "--steer-positions", "0-99999999999"], "--steer-positions"),
        (["heads", "pattern", "-p", PROMPT, "--heads", "1.1", "--steer-positions", "-2"], "--steer-positions"),
        (["sweep", "--steer-positions", "٣"], "--steer-positions"),
        (["run", "-p", PROMPT, "--mask-heads", "٣.1"], "--mask-heads"),
        (["sweep", "--layers", "0-99999999999"], "--layers"),
        (["sweep", "--layers", "²"], "--layers"),
        (["sweep", "--steer-factor", "1,nan"], "--steer-factor"),
        (["sweep", "--steer-factor", "-4,1e999"], "--steer-factor"),
        (["heads", "retrieval", "--lengths", "512-99999999999"], "--lengths"),
        (["heads", "retrieval", "--depths", "0-101"], "--depths"),
        (["heads", "ablate", "--scores", "s.json", "--top", "1", "--depths", "0-9999999999"], "--depths"),
        (["heads", "pattern", "-p", PROMPT, "--heads", "٣.1"], "--heads"),
        (["heads", "pattern", "-p", PROMPT, "--heads", "3"], "--heads"),
        (["heads", "pattern", "-p", PROMPT, "--heads", "1.1", "--drop", "0-99999999999"], "--drop"),
    ],
)
def test_number_specs_are_strict_and_bounded_before_the_model(tmp_path, args, fragment):
    result = invoke(*args, "--model", str(tmp_path / "no-model"))
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["lens", "--top-k", "100000"], "--top-k"),
        (["lens", "--bogus"], "--bogus"),
        (["lens", "--prompt"], "--prompt"),
        (["heads", "ablate", "--top", "3"], "--scores"),
        (["heads", "ablate", "--scores", "s.json", "--top", "0"], "--top"),
        (["heads", "ablate", "--scores", "s.json", "--top", "-2"], "--top"),
        (["heads", "bogus"], "bogus"),
        (["bogus"], "bogus"),
        (["--bogus"], "--bogus"),
    ],
)
def test_usage_mistakes_are_one_error_line(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, fragment)


@pytest.mark.parametrize(
    "args", [["--help"], ["lens", "--help"], ["heads", "--help"], ["heads", "ablate", "--help"], ["heads"]]
)
def test_help_still_works(args):
    result = invoke(*args)
    assert result.exit_code == 0 and "Usage" in result.stdout and not result.stderr


def test_installed_command_follows_the_rule_too():
    result = cli("lens", "--top-k", "0")
    assert result.returncode == 1
    assert_one_error_line(result.stderr.decode(), "--top-k")


# A bug is not a user mistake: it keeps its traceback.

BUGGY_LENS = """
import sys
import layerscope.analyses.lens as lens

def logit_lens(*args, **kwargs):
    raise ValueError("deliberate bug deep in the engine")

lens.logit_lens = logit_lens
sys.argv = ["layerscope", *sys.argv[1:]]
from layerscope.cli.app import main
main()
"""


def test_a_bug_in_the_engine_shows_its_traceback_not_an_error_line(tiny_dir):
    """Only LayerscopeError and OSError are the user's: a ValueError raised by the engine is a bug, and a
    one-line `error:` would hide where it happened."""
    result = subprocess.run(
        [sys.executable, "-c", BUGGY_LENS, "lens", "--model", str(tiny_dir), "--prompt", PROMPT],
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    stderr = result.stderr.decode()
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in stderr and "in logit_lens" in stderr
    assert stderr.rstrip().splitlines()[-1] == "ValueError: deliberate bug deep in the engine"
    assert not any(line.startswith("error: ") for line in stderr.splitlines())


def test_user_mistakes_and_file_errors_stay_one_line_and_debug_shows_their_traceback(tmp_path):
    missing = str(tmp_path / "missing.txt")
    assert_one_error_line(invoke("lens", "--prompt-file", missing).stderr, "missing.txt")
    result = invoke("lens", "--prompt-file", missing, "--debug")
    assert result.exit_code == 1 and isinstance(result.exception, LayerscopeError)


# Results that are not finite: an error, never an output.


def test_non_finite_numbers_are_found_and_named():
    from layerscope.outputs import json_line, non_finite, to_csv, to_json
    from layerscope.records import Records

    data = {"cells": [[{"kl": 1.0}, {"kl": 2.5}], [{"kl": 0.0}, {"kl": float("nan")}]], "tokens": ["a", "b"]}
    assert non_finite(data) == "cells[1][1].kl = nan"
    assert non_finite([{"x": 1, "y": None}, {"x": float("-inf")}]) == "[1].x = -inf"
    assert non_finite({"a": [1, 2.0, "inf"], "b": True}) is None  # text and bool are not numbers
    for render in (to_json, json_line, lambda d: to_csv(Records.of(["kl"], [[c["kl"]] for c in d["cells"][1]]))):
        with pytest.raises(LayerscopeError, match=r"not finite \((cells\[1\]\[1\]\.kl|\[1\]\.kl) = nan\)"):
            render(data)
    clean = {"x": [1.5, 2], "y": {"z": -0.0}}
    assert json.loads(to_json(clean)) == clean


@pytest.mark.parametrize("format", ["json", "csv", "table"])
def test_a_result_that_is_not_finite_is_an_error_and_writes_nothing(tmp_path, tiny_dir, monkeypatch, format):
    """A lens grid with one NaN probability (the real grid of a real model, one number changed after): every
    format refuses it, names the number, and the file at --out is left as it was."""
    import layerscope.analyses.lens as lens_module

    real = lens_module.logit_lens

    def with_nan(*args, **kwargs):
        grid = real(*args, **kwargs)
        grid.cells[2][1].top[0].prob = float("nan")
        return grid

    monkeypatch.setattr(lens_module, "logit_lens", with_nan)
    out = tmp_path / "out.txt"
    out.write_text("the user's earlier result")
    result = invoke("lens", "--model", str(tiny_dir), "--prompt", "the cat sat", "--format", format, "--out", str(out))
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "not finite", "= nan")
    assert out.read_text() == "the user's earlier result"
    monkeypatch.setattr(lens_module, "logit_lens", real)
    assert invoke("lens", "--model", str(tiny_dir), "--prompt", "the cat sat", "--format", format).exit_code == 0


# GGUF files that are not whole.


def _small_gguf(path: Path) -> bytes:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("token_embd.weight", np.ones((3, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"GGUF\x03\0\0\0", "is truncated: 8 bytes"),
        (b"GG", "is truncated: 2 bytes"),
        (bytes(range(256)) * 4, "is not a GGUF file"),
        (b"", "is empty"),
    ],
)
def test_broken_gguf_headers_are_named(tmp_path, content, message):
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(LayerscopeError, match=message):
        load_model(str(path), device="cpu")
    result = invoke("lens", "--model", str(path), "--prompt", PROMPT)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, message)


def test_a_gguf_cut_anywhere_is_one_clear_error(tmp_path):
    whole = _small_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    for length in range(0, len(whole), 5):
        cut.write_bytes(whole[:length])
        with pytest.raises(LayerscopeError, match="GGUF"):
            load_model(str(cut), device="cpu")


# Devices.


def _unavailable_devices() -> list[str]:
    devices = [f"cuda:{torch.cuda.device_count()}", "xla", "meta"]
    if not torch.cuda.is_available():
        devices.append("cuda")
    if not torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("device", _unavailable_devices())
def test_a_device_this_machine_lacks_is_named_with_those_it_has(device):
    with pytest.raises(LayerscopeError, match=f"'{device}' is not available here; this machine has: auto, cpu"):
        pick_device(device)
    result = invoke("lens", "--prompt", PROMPT, "--device", device)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"'{device}'", ", ".join(available_devices()))


def test_an_unknown_device_and_device_map_are_refused():
    with pytest.raises(LayerscopeError, match="Unknown device 'garbage'.*cpu"):
        pick_device("garbage")
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(LayerscopeError, match="Unknown device map 'garbage': use auto"):
        load_model("demo", device_map="garbage")


# Prompts: closed stdin, bytes that are not UTF-8, control characters.


@pytest.mark.parametrize("args", [["tui"], []])
def test_the_explorer_without_a_terminal_is_one_error_line(args):
    closed = cli(*args, close=(0,))
    assert closed.returncode == 1
    assert_one_error_line(closed.stderr.decode(), "reads keys from a terminal")
    piped = cli(*args, stdin=b"")
    assert piped.returncode == 1
    assert_one_error_line(piped.stderr.decode(), "reads keys from a terminal")


def test_closed_stdin_means_no_prompt():
    result = cli("lens", close=(0,))
    assert result.returncode == 1
    assert_one_error_line(result.stderr.decode(), "No prompt")


def test_closed_stdout_is_one_error_line():
    result = cli("lens", "--prompt", PROMPT, close=(1,))
    assert result.returncode == 1
    assert_one_error_line(result.stderr.decode(), "Standard output is closed", "--out")


def test_closed_stderr_keeps_progress_out_of_stdout(tmp_path):
    path = tmp_path / "t.gguf"
    path.write_bytes(b"GGUF\x03\0\0\0")
    result = cli("lens", "--model", str(path), "--prompt", PROMPT, close=(2,))
    assert result.returncode == 1 and result.stdout == b""


NOT_UTF8 = b"The capital of \xff France is"


@pytest.mark.parametrize(
    "args",
    [
        ["lens", "--prompt", NOT_UTF8],
        ["run", "--drop", "3", "--prompt", NOT_UTF8],
        ["patchscope", "--prompt", "France", "--target-prompt", b"The \xff x is"],
        ["sweep", "--intervention", "swap-token", "--donor-word", b"It\xe9ly"],
    ],
)
def test_argv_bytes_that_are_not_utf8_are_refused_with_the_option_named(args):
    result = cli(*args)
    assert result.returncode == 1
    option = next(arg for arg, value in zip(args, args[1:]) if isinstance(value, bytes))
    assert_one_error_line(result.stderr.decode(), f"{option} is not valid UTF-8", "at character")


def test_stdin_and_prompt_file_bytes_that_are_not_utf8_are_refused(tmp_path):
    result = cli("lens", stdin=NOT_UTF8)
    assert result.returncode == 1
    assert_one_error_line(result.stderr.decode(), "The prompt on stdin is not valid UTF-8", "0xff at offset 15")
    path = tmp_path / "prompt.txt"
    path.write_bytes(NOT_UTF8)
    result = invoke("lens", "--prompt-file", str(path))
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "prompt file", "can't decode byte 0xff")


def test_valid_utf8_on_stdin_reaches_the_model_unchanged(demo_cli, demo_lm):
    text = "Où est la capitale ? 日本"
    result = invoke("lens", "--format", "json", input=text.encode())
    assert result.exit_code == 0, result.stderr
    tokens = json.loads(result.stdout)["tokens"]
    assert tokens == demo_lm.token_texts(demo_lm.encode(text)[0]) and "".join(tokens).startswith("Où est la capitale")


def test_engine_refuses_lone_surrogates(demo_lm):
    with pytest.raises(LayerscopeError, match=r"The prompt is not valid UTF-8 \(byte 0xff at character 3\)"):
        demo_lm.encode("The\udcff capital")
    assert require_utf8(b"caf\xc3\xa9", "x") == "café"
    with pytest.raises(LayerscopeError, match="lone surrogate U\\+D800"):
        require_utf8("a\ud800", "x")


CONTROL = "The \x1b[31mcapital\x07 of\x00 France\x7f is\x9b"


def test_control_characters_are_escaped_in_tables_and_exact_in_json(demo_cli):
    table = invoke("lens", "--prompt", CONTROL)
    assert table.exit_code == 0, table.stderr
    raw = {chr(code) for code in [*range(0x00, 0x20), *range(0x7F, 0xA0)]} - {"\n"}
    assert not raw & set(table.stdout)
    assert "\\x1b" in table.stdout and "\\x07" in table.stdout
    data = json.loads(invoke("lens", "--prompt", CONTROL, "--format", "json").stdout)
    assert "".join(data["tokens"]).startswith(CONTROL[:-1])  # the last token holds half of U+009B's bytes


def test_visible_and_shorten_escape_every_control_character():
    assert escaped("a\x1bb\x07c\x00d\x7fe\x9bf\ng\th\u2028é") == "a\\x1bb\\x07c\\x00d\\x7fe\\x9bf\\ng\\th\\u2028é"
    assert shorten("\x1b\x1b\x1b", 6) == "\\x1b\\…"


def test_an_error_that_quotes_input_stays_one_line(tmp_path):
    result = invoke("lens", "--prompt-file", str(tmp_path / "no\nsuch\x1b[2J"))
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "no\\nsuch\\x1b[2J")


# Model sources: directories that are not whole, unsupported families, hub ids that cannot be fetched.


def test_incomplete_directories_say_everything_they_lack(tmp_path, tiny_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayerscopeError, match="no config.json; no weights .*; no tokenizer .*vocab.json\\)\\.$"):
        load_model(str(empty), device="cpu")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text((tiny_dir / "config.json").read_text())
    result = invoke("lens", "--model", str(config_only), "--prompt", PROMPT)
    assert result.exit_code == 1
    line = assert_one_error_line(result.stderr, "no weights (*.safetensors); no tokenizer")
    assert "config.json" not in line.split(":", 2)[-1]
    loaded = load_model(str(tiny_dir), device="cpu")
    assert loaded.adapter.family == "llama"


@pytest.mark.parametrize("model_type", ["bert", "not-a-family"])
def test_an_unsupported_family_is_refused_before_the_model_is_built(tmp_path, tiny_dir, model_type):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for file in tiny_dir.iterdir():
        (foreign / file.name).write_bytes(file.read_bytes())
    config = json.loads((tiny_dir / "config.json").read_text())
    (foreign / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    with pytest.raises(UnsupportedArchitecture, match=f"'{model_type}' is not supported.*Tested: .*llama"):
        load_model(str(foreign), device="cpu")
    result = invoke("lens", "--model", str(foreign), "--prompt", PROMPT)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"'{model_type}' is not supported")


def test_a_supported_family_on_a_config_of_another_is_one_error_line(tmp_path, tiny_dir):
    """A falcon model_type on a llama config: transformers builds a falcon from llama's keys."""
    falcon = tmp_path / "falcon"
    falcon.mkdir()
    for file in tiny_dir.iterdir():
        (falcon / file.name).write_bytes(file.read_bytes())
    config = json.loads((tiny_dir / "config.json").read_text())
    (falcon / "config.json").write_text(json.dumps({**config, "model_type": "falcon"}))
    result = cli("lens", "--model", str(falcon), "--prompt", PROMPT)
    assert result.returncode == 1
    assert_one_error_line(result.stderr.decode(), "config.json of", "does not describe a valid model")


def _cut_in_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "config.json").write_text("[1]"), "The config.json of '{d}' is not a JSON object"),
        (lambda d: (d / "config.json").write_text('"llama"'), "The config.json of '{d}' is not a JSON object"),
        (
            lambda d: (d / "config.json").write_text(
                json.dumps({**json.loads((d / "config.json").read_text()), "num_hidden_layers": "four"})
            ),
            "does not describe a valid model of its model_type: Validation error for field 'num_hidden_layers'",
        ),
        (
            lambda d: _cut_in_half(d / "model.safetensors"),
            "its safetensors weights cannot be read (Error while deserializing",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "its safetensors weights cannot be read"),
        (lambda d: (d / "tokenizer_config.json").write_text("[1]"), "The tokenizer files of '{d}' cannot be read"),
    ],
)
def test_a_model_folder_file_that_is_damaged_is_one_error_line(tmp_path, tiny_dir, damage, message):
    """A model folder's files are inputs like any other: cut short or of the wrong shape, one line names them."""
    model = tmp_path / "model"
    model.mkdir()
    for file in tiny_dir.iterdir():
        (model / file.name).write_bytes(file.read_bytes())
    damage(model)
    result = invoke("lens", "--model", str(model), "--prompt", PROMPT)
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, message.format(d=model))


def test_an_uncached_hub_id_offline_fails_at_once_saying_how_to_fetch_it():
    result = cli("lens", "--model", "someone/not-cached-anywhere", "--prompt", PROMPT)
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr.decode(), "HF_HUB_OFFLINE", "hf download someone/not-cached-anywhere", "local directory"
    )


def test_an_uncached_hub_id_without_network_fails_at_once():
    """Port 9 on this machine refuses at once: the hub cannot be reached, as with no network."""
    result = cli(
        "lens",
        "--model",
        "someone/not-cached-anywhere",
        "--prompt",
        PROMPT,
        env={
            "HF_HUB_OFFLINE": None,
            "HF_ENDPOINT": "http://127.0.0.1:9",
            "HTTPS_PROXY": None,
            "https_proxy": None,
            "ALL_PROXY": None,
            "all_proxy": None,
        },
    )
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr.decode(), "http://127.0.0.1:9 cannot be reached", "hf download someone/not-cached-anywhere"
    )


# Counts: heads to mask, tokens to generate.


def test_ablation_head_counts_say_what_is_wrong(demo_lm):
    from layerscope.analyses.head_ablation import ablation_heads
    from layerscope.analyses.head_scores import HeadScores

    scores = HeadScores.from_matrix(demo_lm, "retrieval", torch.rand(demo_lm.n_blocks, demo_lm.adapter.n_heads))
    for k in (0, -3):
        with pytest.raises(LayerscopeError, match=f"^k= must be at least 1 .*not {k}"):
            ablation_heads(scores, k, 0)
    with pytest.raises(LayerscopeError, match="has 270 heads.*K at most 135"):
        ablation_heads(scores, 136, 0)
    top, chosen = ablation_heads(scores, 135, 0)
    assert len(top) == len(chosen) == 135 and not {(h.layer, h.head) for h in top} & {(h.layer, h.head) for h in chosen}


def test_generation_is_bounded_by_the_context_everywhere():
    from layerscope.analyses.compare import greedy_continuation, run_interventions
    from layerscope.analyses.decoding import answer_steps
    from layerscope.analyses.patchscope import parse_target, patched_rows
    from layerscope.interventions import DropBlocks

    lm = tiny_model("llama")  # a context of 256 tokens
    ids = lm.encode("the cat sat on the mat")
    room = lm.adapter.max_context - ids.shape[1]
    assert len(greedy_continuation(lm, ids, room).token_ids) == room
    assert greedy_continuation(lm, ids, 0).token_ids == []
    for too_many in (room + 1, 100_000):
        with pytest.raises(LayerscopeError, match=f"exceed this model's context of 256 tokens: ask for at most {room}"):
            greedy_continuation(lm, ids, too_many)
        with pytest.raises(LayerscopeError, match="at most"):
            run_interventions(lm, ids, [DropBlocks((1,))], max_new_tokens=too_many)
        with pytest.raises(LayerscopeError, match="at most"):
            next(answer_steps(lm, ids, too_many))
        target = parse_target(lm, "the cat sat on x", "x")
        states = torch.zeros(1, 1, lm.model.config.hidden_size)
        with pytest.raises(LayerscopeError, match="at most"):
            next(patched_rows(lm, states, target, max_new_tokens=300))
    with pytest.raises(LayerscopeError, match="^max_new_tokens=-1 is out of range"):
        greedy_continuation(lm, ids, -1)


def test_run_refuses_more_new_tokens_than_the_context_holds(demo_cli):
    result = invoke("run", "--prompt", PROMPT, "--drop", "3", "--max-new-tokens", "100000")
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, "100000 new tokens after a 5-token prompt", "at most 8187")


# Ctrl-C in a jsonl sweep: the printed command resumes it, as printed.


@pytest.mark.demo
def test_the_interrupted_sweep_prints_a_command_that_resumes_it(tmp_path):
    out = tmp_path / "sweep out.jsonl"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The capital of France is\nOne, two, three,\nThe cat sat on the\n", encoding="utf-8")
    args = [
        "sweep",
        "--intervention",
        "drop",
        "--prompts",
        str(prompts),
        "--batch-size",
        "1",
        "--format",
        "jsonl",
        "--out",
        str(out),
        "--no-accuracy",
    ]
    child = subprocess.Popen([*COMMAND, *args], stderr=subprocess.PIPE, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    while child.poll() is None and not (out.is_file() and out.stat().st_size):
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stderr = child.communicate(timeout=300)[1].decode()
    assert child.returncode == 1
    line = assert_one_error_line(stderr, "all kept; to continue, run: ")
    printed = shlex.split(line.split("to continue, run: ", 1)[1])
    assert printed[0] == "layerscope" and printed[-1] == "--resume" and str(out) in printed
    kept = len(out.read_text().splitlines())
    resumed = subprocess.run(
        [*COMMAND, *printed[1:]], capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    source, *rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "source" in source and len(rows) + 1 > kept
    keys = [(row["prompt_index"], row["layer"]) for row in rows]
    assert len(keys) == len(set(keys)) and {layer for index, layer in keys if index is None} == set(range(30))
