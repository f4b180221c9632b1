"""What an output option may name, and what a run leaves there, walked over every command of the app: an output
never replaces a file the command reads, a folder is refused before any work, a device or a pipe is written
through (never renamed over), '-' is standard output, and a run that fails leaves an existing output as it was.

Devices are twins of /dev/null and /dev/full made in the test's folder when the tests run as root (code that
renames over a device would then replace the twin, not the system's node); otherwise the real ones, which a
user cannot rename over."""

from __future__ import annotations

import inspect
import json
import os
import stat
import subprocess
import sys
import threading
import typing
from pathlib import Path

import pytest
import torch
import typer.main
from typer.testing import CliRunner

from layerscope.analyses.head_scores import HeadScores
from layerscope.analyses.jacobian_lens import JacobianLens
from layerscope.analyses.tuned_lens import TunedLens
from layerscope.cli.app import app
from layerscope.cli.common import Reads, Writes, file_options
from layerscope.errors import LayerscopeError
from layerscope.models.loading import load_model
from layerscope.outputs import streamed_lines, write_atomic, writes_through
from tests.studies import TINY_TEXT


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path_factory, monkeypatch):
    """Commands that write to a default place (reproduce's --figure-dir) write into a scratch folder, never into
    the checkout the tests run from."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(arg) for arg in args])


def refused(result, *fragments: str) -> str:
    """One `error:` line, exit 1; the line."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[layerscope] ")]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(commands(typer.main.get_command(app)))
MARKS = {path: file_options(command.callback) for path, command in COMMANDS.items()}
FILE_OUTPUTS = {
    path: flag
    for path, marks in MARKS.items()
    for flag, mark in marks.values()
    if isinstance(mark, Writes) and not mark.folder and mark.check is None
}
"""Each command's result file (--out)."""
FIGURES = {
    path: flag
    for path, marks in MARKS.items()
    for flag, mark in marks.values()
    if isinstance(mark, Writes) and mark.check is not None and flag == "--figure"
}
TENSOR_FILES = {
    path: flag
    for path, marks in MARKS.items()
    for flag, mark in marks.values()
    if isinstance(mark, Writes) and mark.check is not None and flag != "--figure"
}
"""Files of tensors a command writes (a steering vector), never to standard output: walked by their own test."""
"""Each command's figure file (--figure)."""
OUTPUT_FILES = [(path, flag) for outputs in (FILE_OUTPUTS, FIGURES) for path, flag in outputs.items()]
WRITERS = {path for path, marks in MARKS.items() if any(isinstance(mark, Writes) for _, mark in marks.values())}
READS = [
    (path, flag)
    for path, marks in MARKS.items()
    if path in WRITERS
    for flag, mark in marks.values()
    if isinstance(mark, Reads)
]


def takes_path(path: tuple[str, ...], name: str) -> bool:
    annotation = inspect.signature(COMMANDS[path].callback).parameters[name].annotation
    return Path in typing.get_args(typing.get_args(annotation)[0]) + (typing.get_args(annotation)[0],)


def required(path: tuple[str, ...], fill: Path) -> list[str]:
    """Values for the options the parser insists on (a path for paths, 1 for numbers), so that the command
    reaches its own checks."""
    args = []
    for param in COMMANDS[path].params:
        if param.required:
            args += [param.opts[0], str(fill) if takes_path(path, param.name) else "1"]
    return args


def test_every_path_option_of_every_command_says_whether_it_is_read_or_written():
    for path, command in COMMANDS.items():
        for param in command.params:
            if takes_path(path, param.name) or param.name == "model":
                assert param.name in MARKS[path], f"{' '.join(path)} {param.opts[0]}"
    assert set(FILE_OUTPUTS) >= {
        ("lens",),
        ("run",),
        ("sweep",),
        ("trace",),
        ("tunedlens", "eval"),
        ("jacobianlens", "eval"),
        ("heads", "retrieval"),
        ("heads", "activity"),
    }
    assert ("tunedlens", "train") not in FILE_OUTPUTS  # its --out is a folder
    assert (("trace",), "--noise-subjects") in READS  # a file read: never an output, shipped default included


def test_every_command_that_writes_a_result_can_draw_it_as_a_figure():
    assert set(FIGURES) == set(FILE_OUTPUTS) and set(FIGURES.values()) == {"--figure"}


# --- an output is never a file the command reads, checked before anything else ---------------------------


@pytest.fixture
def read_files(tmp_path: Path) -> tuple[Path, Path]:
    """A file, and a folder with a model's and a lens's files, to give any read option."""
    file = tmp_path / "input.txt"
    file.write_text("the cat sat\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "lens.safetensors"):
        (folder / name).write_text(name)
    return file, folder


@pytest.mark.parametrize("path, read_flag", READS, ids=lambda part: " ".join(part) if isinstance(part, tuple) else part)
def test_no_output_replaces_a_file_read_or_a_file_of_a_folder_read(path, read_flag, read_files, tmp_path):
    file, folder = read_files
    for out_flag, mark in [(flag, mark) for flag, mark in MARKS[path].values() if isinstance(mark, Writes)]:
        base = [*path, *required(path, tmp_path / "absent"), "--model", str(tmp_path / "no-model")]
        if mark.folder:  # a folder output: a file it would write is the one read
            if mark.files is None:  # any files: the folder must be new or empty, so it cannot hold an input
                continue
            name = next(iter(mark.files()))
            (folder / name).write_text(name)  # a file of the read folder, whatever the output's files are
            for given in (folder, folder / name):
                args = [*base, read_flag, given, out_flag, folder]
                refused(invoke(*args), f"its {name}", "this command reads")
            assert (folder / name).read_text() == name
            continue
        refused(invoke(*base, read_flag, file, out_flag, file), "this command reads")
        assert file.read_text() == "the cat sat\n"
        for name in ("config.json", "lens.safetensors"):
            line = refused(invoke(*base, read_flag, folder, out_flag, folder / name), "this command reads")
            assert f"{name} of the {read_flag} folder" in line
            assert (folder / name).read_text() == name
        os.symlink(file, tmp_path / "link")
        os.link(file, tmp_path / "hard")
        for same in (tmp_path / "link", tmp_path / "hard", tmp_path / "." / file.name):
            refused(invoke(*base, read_flag, file, out_flag, same), "this command reads")
        assert file.read_text() == "the cat sat\n"
        (tmp_path / "link").unlink()
        (tmp_path / "hard").unlink()


def shipped_defaults() -> list[tuple[tuple[str, ...], str, str, Path]]:
    return [
        (path, flag, out_flag, default)
        for path, marks in MARKS.items()
        for flag, mark in marks.values()
        if isinstance(mark, Reads)
        for default in mark.defaults
        for out_path, out_flag in OUTPUT_FILES
        if out_path == path
    ]


@pytest.mark.parametrize("path, flag, out_flag, default", shipped_defaults(), ids=str)
def test_no_output_replaces_a_shipped_file_read_by_default(path, flag, out_flag, default, tmp_path):
    before = default.read_bytes()
    try:
        refused(
            invoke(*path, *required(path, tmp_path / "absent"), "--model", tmp_path / "no-model", out_flag, default),
            f"the {flag} file this command reads",
        )
    finally:
        if default.read_bytes() != before:
            default.write_bytes(before)
            pytest.fail(f"{default} was replaced")


@pytest.mark.parametrize(
    "path, flag", OUTPUT_FILES, ids=lambda part: " ".join(part) if isinstance(part, tuple) else part
)
def test_an_output_that_is_a_folder_is_refused_before_the_model_or_any_input(path, flag, tmp_path):
    """The model folder does not exist: the error about --out (--figure) shows the check came first."""
    result = invoke(*path, *required(path, tmp_path / "absent"), "--model", tmp_path / "no-model", flag, tmp_path)
    refused(result, f"{flag} '{tmp_path}' is a folder")
    assert sorted(tmp_path.iterdir()) == []


def test_a_model_folder_and_a_gguf_model_are_inputs(tmp_path, tiny_dir):
    before = {file.name: file.read_bytes() for file in tiny_dir.iterdir()}
    for name in before:
        refused(
            invoke("lens", "--model", tiny_dir, "-p", "the cat", "--out", tiny_dir / name),
            f"{name} of the --model folder",
        )
    assert {file.name: file.read_bytes() for file in tiny_dir.iterdir()} == before
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    refused(invoke("heads", "induction", "--model", gguf, "--out", gguf), "--model file")
    assert gguf.read_bytes() == b"GGUF"


def test_the_demo_and_a_cached_hub_model_are_inputs_too(tmp_path, monkeypatch):
    """Their folders are in caches: the demo's in layerscope's, a hub id's snapshot in Hugging Face's."""
    from huggingface_hub import constants

    monkeypatch.setenv("LAYERSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    demo = tmp_path / "cache" / "demo" / "SmolLM2-135M-Instruct"
    demo.mkdir(parents=True)
    (demo / "config.json").write_text("{}")
    refused(invoke("lens", "-p", "x", "--out", demo / "config.json"), "config.json of the --model folder")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--someone--model"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "blobs").mkdir()
    (repo / "blobs" / "f00d").write_text("{}")
    (snapshot / "config.json").symlink_to(repo / "blobs" / "f00d")
    for out in (snapshot / "config.json", repo / "blobs" / "f00d"):
        refused(invoke("lens", "-m", "someone/model", "-p", "x", "--out", out), "config.json of the --model folder")
    assert (repo / "blobs" / "f00d").read_text() == "{}" and (snapshot / "config.json").is_symlink()
    assert demo.joinpath("config.json").read_text() == "{}"


# --- the tuned lens folder, and the pruned model folder ------------------------------------------------------


@pytest.mark.parametrize("path", [("tunedlens", "train"), ("jacobianlens", "fit")], ids=" ".join)
def test_a_lens_folder_is_checked_before_the_work(tmp_path, tiny_dir, path):
    file = tmp_path / "lens"
    file.write_text("mine")
    refused(invoke(*path, "--model", tmp_path / "no-model", "--out", file), "exists and is not a folder")
    assert file.read_text() == "mine"
    config = (tiny_dir / "config.json").read_bytes()
    refused(
        invoke(*path, "--model", tiny_dir, "--out", tiny_dir),
        "(its config.json) is the config.json of the --model folder",
    )
    assert (tiny_dir / "config.json").read_bytes() == config
    refused(invoke(*path, "--model", tiny_dir, "--out", "-"), "'-' (standard output) cannot be one")
    calibration = tmp_path / "text"
    calibration.mkdir()
    (calibration / "config.json").write_text("{}")
    refused(
        invoke(
            *path,
            "--model",
            tmp_path / "no-model",
            "--text",
            calibration / "config.json",
            "--out",
            calibration,
        ),
        "is the --text file this command reads",
    )


def test_influence_save_is_a_new_folder_that_holds_no_other_output(tmp_path):
    save = tmp_path / "pruned"
    save.mkdir()
    refused(
        invoke(
            "influence", "--model", tmp_path / "no-model", "--prune", "1", "--save", save, "--out", save / "bi.json"
        ),
        "is in the --save folder",
    )
    (save / "kept").write_text("kept")
    refused(invoke("influence", "--model", tmp_path / "no-model", "--prune", "1", "--save", save), "is not empty")
    file = tmp_path / "file"
    file.write_text("x")
    refused(invoke("influence", "--model", tmp_path / "no-model", "--prune", "1", "--save", file), "not a folder")
    assert (save / "kept").read_text() == "kept" and file.read_text() == "x"


# --- every command with a file output, run for real on a tiny model ------------------------------------------


@pytest.fixture(scope="module")
def inputs(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    lm = load_model(str(tiny_dir), device="cpu")
    (folder / "prompts.txt").write_text("the cat sat on the\none two three four\n")
    (folder / "text.txt").write_text(" ".join([TINY_TEXT] * 20))
    scores = HeadScores.from_matrix(lm, "retrieval", torch.rand(lm.n_blocks, lm.adapter.n_heads))
    (folder / "scores.json").write_text(json.dumps(scores.to_dict()))
    TunedLens(lm.adapter.config.hidden_size, lm.n_blocks, lm.name).save(folder / "lens")
    hidden = lm.adapter.config.hidden_size
    JacobianLens(torch.eye(hidden).repeat(lm.n_blocks, 1, 1), 1, lm.name).save(folder / "jacobian")
    return {"model": tiny_dir, **{path.stem: path for path in folder.iterdir()}}


RUNS = {  # a quick run of each command that writes a file, on the tiny model
    ("lens",): ["-p", "the cat sat", "--generate", "2"],
    ("run",): ["-p", "the cat sat", "--drop", "1", "--max-new-tokens", "2"],
    ("patchscope",): ["-p", "the cat sat"],
    ("sweep",): ["--prompts", "{prompts}", "--no-accuracy"],
    ("influence",): ["--text", "{text}", "--window", "16"],
    ("stages",): ["--prompts", "{prompts}"],
    ("neurons",): ["--blocks", "0"],
    ("exit",): ["--prompts", "{prompts}"],
    ("probe",): ["--folds", "2"],
    ("attribute",): ["-p", "the cat sat", "--answer", "mat"],
    ("trace",): ["-p", "the cat sat on the", "--subject", "cat", "--answer", " mat"],
    ("tunedlens", "eval"): ["--lens", "{lens}", "--text", "{text}", "--tokens", "16"],
    ("jacobianlens", "eval"): ["--lens", "{jacobian}", "--text", "{text}", "--tokens", "16"],
    ("heads", "retrieval"): ["--lengths", "64", "--depths", "50", "--max-new-tokens", "2"],
    ("heads", "activity"): ["--scores", "{scores}", "-p", "the cat sat", "--max-new-tokens", "2"],
    ("heads", "induction"): ["--seq-len", "4", "--samples", "1"],
    ("heads", "ablate"): [
        "--scores",
        "{scores}",
        "--top",
        "1",
        "--lengths",
        "64",
        "--depths",
        "50",
        "--max-new-tokens",
        "2",
    ],
    ("heads", "pattern"): ["--heads", "1.1", "-p", "the cat sat", "--drop", "0"],
    **{("reproduce", name): ["--quick"] for name in ("stages", "afcl", "shortgpt", "retrieval", "rome")},
}


def test_every_command_with_a_file_output_has_a_run():
    assert set(RUNS) == set(FILE_OUTPUTS)


def test_a_tensor_file_is_written_whole_through_devices_and_never_to_stdout(inputs, tmp_path, monkeypatch):
    """`steer vector --out`: a device is written through, a full one is one error line, '-' is refused before
    the model, and a failed run leaves an existing file as it was."""
    assert TENSOR_FILES == {("steer", "vector"): "--out"}
    monkeypatch.chdir(tmp_path)
    args = ["steer", "vector", "--model", str(inputs["model"]), "--row", "1"]
    args += ["--positive", str(inputs["prompts"]), "--negative", str(inputs["prompts"])]
    written_through_devices(args, tmp_path)
    refused(invoke(*[*args[:2], "--model", str(tmp_path / "no-model"), *args[4:]], "--out", "-"), "--out", "'-'")
    out = tmp_path / "v.safetensors"
    out.write_bytes(b"earlier vector")
    refused(invoke(*args, "--row", "99", "--out", out), "--row 99")
    assert out.read_bytes() == b"earlier vector"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def run_args(path: tuple[str, ...], inputs: dict[str, Path]) -> list[str]:
    return [*path, "--model", str(inputs["model"]), *(arg.format(**inputs) for arg in RUNS[path])]


def device(tmp_path: Path, name: str, minor: int) -> Path:
    """A twin of /dev/<name> (char 1, minor) in tmp_path as root; the real node otherwise."""
    if os.geteuid() != 0:
        return Path("/dev") / name
    twin = tmp_path / name
    os.mknod(twin, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    return twin


def written_through_devices(args: list[str], tmp_path: Path) -> None:
    """`--out` a null device is written through and stays the device; a full one is one error line."""
    null = device(tmp_path, "null", 3)
    result = invoke(*args, "--out", null)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)
    full = device(tmp_path, "full", 7)
    refused(invoke(*args, "--out", full), f"Cannot write '{full}': No space left on device")
    assert stat.S_ISCHR(os.stat(full).st_mode)


@pytest.mark.parametrize("path", RUNS, ids=" ".join)
def test_devices_are_written_through_and_dash_is_stdout(path, inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = run_args(path, inputs)
    written_through_devices(args, tmp_path)
    stdout = invoke(*args, "-f", "json", "--out", "-")
    assert stdout.exit_code == 0, stdout.output
    assert json.loads(stdout.stdout) and not (tmp_path / "-").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


@pytest.mark.parametrize("path", RUNS, ids=" ".join)
def test_a_failed_run_leaves_an_existing_output_as_it_was(path, inputs, tmp_path):
    """The model folder's config.json is not JSON: the run fails after the checks, when the model loads."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in inputs["model"].iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    (broken / "config.json").write_text("{not json")
    out = tmp_path / "result.json"
    out.write_bytes(b"earlier result\n")
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"earlier figure")
    args = run_args(path, {**inputs, "model": broken})
    assert invoke(*args, "--out", out, "--figure", figure).exit_code == 1
    assert out.read_bytes() == b"earlier result\n" and figure.read_bytes() == b"earlier figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "figure.png", "result.json"]


FIGURE_HEADERS = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}


@pytest.mark.parametrize("path", RUNS, ids=" ".join)
def test_the_figure_is_written_with_the_result_in_the_format_its_suffix_names(path, inputs, tmp_path):
    """Each command in one of the formats, in turn; with --out, and without it (the table still on stdout)."""
    kind = list(FIGURE_HEADERS)[list(RUNS).index(path) % len(FIGURE_HEADERS)]
    figure, out = tmp_path / f"figure.{kind}", tmp_path / "result.json"
    figure.write_bytes(b"an older figure, replaced")
    result = invoke(*run_args(path, inputs), "-f", "json", "--out", out, "--figure", figure)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) and figure.read_bytes().startswith(FIGURE_HEADERS[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([figure.name, out.name])  # no temporary file left


def test_the_figure_alone_leaves_the_result_on_stdout(inputs, tmp_path):
    figure = tmp_path / "grid.svg"
    result = invoke(*run_args(("lens",), inputs), "--figure", figure)
    assert result.exit_code == 0 and result.stdout.startswith("layer |"), result.output
    assert figure.read_bytes().startswith(b"<?xml")


def test_the_figure_and_the_result_are_two_files(inputs, tmp_path):
    same = tmp_path / "both.svg"
    refused(
        invoke(*run_args(("lens",), inputs), "--out", same, "--figure", tmp_path / "." / "both.svg"),
        "is the --out file too",
    )
    assert not same.exists()


# --- one mechanism, shown once: symlinks, descriptors, pipes, modes ------------------------------------------


def test_a_symlink_to_a_file_keeps_the_link_and_writes_its_target(tmp_path, inputs):
    target = tmp_path / "target.csv"
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    result = invoke(*run_args(("lens",), inputs), "-f", "csv", "--out", link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and os.readlink(link) == target.name
    assert target.read_text().startswith("method,layer,position")


def test_a_link_to_an_open_descriptor_appends_to_what_it_names(tmp_path, inputs):
    """`--out /dev/stdout >> log`: the log keeps its lines, the result follows them (no rename, no truncation).
    The link lives in tmp_path: code that renames over it replaces the link, not the system's /dev/stdout."""
    link = tmp_path / "stdout"
    link.symlink_to("/proc/self/fd/1")
    assert writes_through(link) and writes_through(Path("/dev/stdout"))
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with open(log, "ab") as stdout:
        result = subprocess.run(
            [sys.executable, "-m", "layerscope.cli.app", *run_args(("lens",), inputs), "-f", "csv", "--out", str(link)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    lines = log.read_text().splitlines()
    assert lines[0] == "earlier line" and lines[1].startswith("method,layer,position")


def test_a_named_pipe_is_written_through(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    write_atomic('{"a": 1}', pipe)
    reader.join(timeout=60)
    assert received == ['{"a": 1}'] and stat.S_ISFIFO(os.stat(pipe).st_mode)


def test_a_socket_or_a_folder_is_refused_by_the_writer_too(tmp_path):
    with pytest.raises(LayerscopeError, match="is a folder"):
        write_atomic("x", tmp_path)
    import socket

    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock"))
        with pytest.raises(LayerscopeError, match="not a regular file, a character device or a pipe"):
            write_atomic("x", tmp_path / "sock")


def test_a_full_stdout_is_one_error_line(inputs):
    args = [sys.executable, "-m", "layerscope.cli.app", *run_args(("lens",), inputs)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open("/dev/full", "wb") as full:
        result = subprocess.run(args, stdout=full, stderr=subprocess.PIPE, env=env, timeout=300)
    lines = [line for line in result.stderr.decode().splitlines() if not line.startswith("[layerscope] ")]
    assert result.returncode == 1 and lines == ["error: Cannot write standard output: No space left on device."]


# --- a sweep's JSONL, streamed row by row --------------------------------------------------------------------


def test_a_jsonl_sweep_refused_midway_leaves_the_old_file_and_creates_none(tmp_path, inputs):
    """The second prompt is longer than the tiny model's context: refused after the first prompt's rows."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the cat sat\n" + " ".join(["cat"] * 400) + "\n")
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b'{"earlier": "rows"}\n')
    args = ["sweep", "--model", inputs["model"], "--prompts", prompts, "--no-accuracy", "-f", "jsonl"]
    refused(invoke(*args, "--out", out), "this model's context is 256")
    assert out.read_bytes() == b'{"earlier": "rows"}\n'
    refused(invoke(*args, "--out", tmp_path / "new.jsonl"), "this model's context is 256")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "rows.jsonl"]


@pytest.mark.parametrize("keep", [None, 6])
def test_streamed_lines_keep_lines_on_ctrl_c_and_restore_the_file_on_failure(tmp_path, keep):
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b"line1\nhalf")  # a last line cut off mid-write
    with pytest.raises(ValueError):
        with streamed_lines(out, keep) as write:
            write("new")
            raise ValueError("a failure")
    assert out.read_bytes() == b"line1\nhalf"
    with pytest.raises(KeyboardInterrupt):
        with streamed_lines(out, keep) as write:
            write("new")
            raise KeyboardInterrupt
    assert out.read_bytes() == (b"line1\nnew\n" if keep else b"new\n")
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(ValueError):
        with streamed_lines(fresh) as write:
            write("new")
            assert fresh.read_bytes() == b"new\n"  # written in place as it comes: a killed run leaves it
            raise ValueError("a failure")
    assert not fresh.exists()
