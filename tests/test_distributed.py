"""Data-parallel runs under torchrun (2 CPU processes, gloo, 1 thread each) write what one process with 2 threads
writes: the same rows in the same order, the same texts, and numbers equal up to fp32 rounding (another thread
count sums in another order; `TOLERANCE` bounds the difference from the arithmetic).

The commands run for real in subprocesses on a tiny llama saved to a folder. One launch per case keeps the
suite fast (each process pays for its torch import): the sweep through `torchrun -m layerscope`, the other
studies through one script that runs each command in turn in the same job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.tiny import VOCAB, tiny_model
from tests.tolerance import kl_atol, model_delta

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "the cat sat on the mat",
    "a dog ran to the park",
    "the capital of france is paris",
    "one two three four",
    "red blue green",
    "the city is big and the park is small",
    "six seven eight nine ten",
]
NEEDLE = {"needle": "the red cat is in paris", "question": "where is the red cat", "answer": "paris"}
HAYSTACK = " ".join(["the dog ran to the park and sat on a mat", "one two three big city"] * 6)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distributed")
    lm = tiny_model("llama", seed=4)  # a seed whose greedy answers differ between needle tests
    lm.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    (folder / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    (folder / "text.txt").write_text(" ".join(PROMPTS * 3), encoding="utf-8")
    (folder / "needles.jsonl").write_text(json.dumps(NEEDLE) + "\n", encoding="utf-8")
    (folder / "haystack.txt").write_text(HAYSTACK, encoding="utf-8")
    return folder


TOLERANCE = kl_atol(model_delta(tiny_model("llama"), 1.0), VOCAB)
"""How far two runs of a study may differ, relative to max(1, |number|): every number is a KL, an entropy, a
probability, a log-likelihood (perplexities relative to it), a cosine or a score from the logits and states of
this tiny model, whose values are of order 1; `kl_atol` bounds the widest of them."""


def assert_same_up_to_rounding(got: str, expected: str) -> None:
    """The same JSON document or JSONL lines: equal keys in equal order, equal texts, ints and flags; floats
    within TOLERANCE."""

    def same(a: object, b: object, where: str) -> None:
        if isinstance(b, float) and isinstance(a, (int, float)) and not isinstance(a, bool):
            assert abs(a - b) <= TOLERANCE * max(1.0, abs(b)), f"{where}: {a} != {b}"
        elif isinstance(b, dict):
            assert isinstance(a, dict) and list(a) == list(b), f"{where}: keys {list(a)} != {list(b)}"
            for key in b:
                same(a[key], b[key], f"{where}.{key}")
        elif isinstance(b, list):
            assert isinstance(a, list) and len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
            for index, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{index}]")
        else:
            assert a == b and type(a) is type(b), f"{where}: {a!r} != {b!r}"

    def documents(text: str) -> list:
        try:
            return [json.loads(text)]
        except json.JSONDecodeError:  # JSONL: one document a line
            return [json.loads(line) for line in text.splitlines()]

    same(documents(got), documents(expected), "output")


def launch(arguments: list[str], processes: int, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m ...` in one process with 2 threads, or the same under `torchrun --standalone --nproc_per_node N`
    with 1 thread per process (what torchrun sets by default)."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (torchrun if processes > 1 else [sys.executable]) + arguments
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1" if processes > 1 else "2",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def sweep_arguments(inputs: Path, out: str) -> list[str]:
    return [
        "-m",
        "layerscope",
        "sweep",
        "--model",
        str(inputs / "model"),
        "--prompts",
        str(inputs / "prompts.txt"),
        "--intervention",
        "drop",
        "--device",
        "cpu",
        "--format",
        "jsonl",
        "--out",
        out,
    ]


@pytest.fixture(scope="module")
def single(inputs) -> bytes:
    """The JSONL file of the sweep in one process."""
    launch(sweep_arguments(inputs, str(inputs / "one.jsonl")), 1, inputs)
    return (inputs / "one.jsonl").read_bytes()


def test_sweep_under_torchrun_writes_the_single_process_file(inputs, single, tmp_path):
    two = launch(sweep_arguments(inputs, "two.jsonl"), 2, tmp_path)
    assert len(single.splitlines()) == 1 + len(PROMPTS) * 4 + 4  # the source line, every (prompt, block), 4 averages
    assert_same_up_to_rounding((tmp_path / "two.jsonl").read_text(encoding="utf-8"), single.decode())
    assert two.stdout.strip() == ""  # the JSONL went to the file; the other rank wrote nothing anywhere
    assert two.stderr.count("[layerscope] sweep drop") == 1  # progress from rank 0 only


def test_resume_of_a_sharded_sweep(inputs, single, tmp_path):
    lines = single.splitlines(keepends=True)
    (tmp_path / "cut.jsonl").write_bytes(
        b"".join(lines[:9]) + lines[9][:20]
    )  # the source, 8 rows, then a half-written one
    launch(sweep_arguments(inputs, "cut.jsonl") + ["--resume"], 2, tmp_path)
    resumed = (tmp_path / "cut.jsonl").read_bytes()
    assert resumed.startswith(b"".join(lines[:9]))  # the finished rows are kept as they were
    assert_same_up_to_rounding(resumed.decode(), single.decode())


STUDIES = {
    "stages": lambda i: ["stages", "--prompts", str(i / "prompts.txt")],
    "influence": lambda i: [
        "influence",
        "--text",
        str(i / "text.txt"),
        "--eval-text",
        str(i / "text.txt"),
        "--window",
        "9",
        "--prune",
        "1",
    ],
    "retrieval": lambda i: [
        "heads",
        "retrieval",
        "--haystack",
        str(i / "haystack.txt"),
        "--needles",
        str(i / "needles.jsonl"),
        "--lengths",
        "10,30",
        "--depths",
        "0,50,100",
        "--max-new-tokens",
        "4",
    ],
    "induction": lambda i: ["heads", "induction", "--seq-len", "6", "--samples", "5"],
    "ablate": lambda i: [
        "heads",
        "ablate",
        "--scores",
        str(i / "retrieval.json"),
        "--top",
        "2",
        "--haystack",
        str(i / "haystack.txt"),
        "--needles",
        str(i / "needles.jsonl"),
        "--lengths",
        "10,30",
        "--depths",
        "0,100",
        "--max-new-tokens",
        "4",
    ],
    "swap-token": lambda i: [
        "sweep",
        "--intervention",
        "swap-token",
        "--prompts",
        str(i / "capitals.jsonl"),
        "--donor-prompt",
        "the city rome",
        "--donor-word",
        "rome",
        "--donor-answer",
        "rome",
        "--max-new-tokens",
        "2",
        "--format",
        "jsonl",
    ],
}


def run_studies(model: str, folder: str) -> None:
    """Every study of STUDIES in turn, in this process (one torchrun job for all), as JSON files in `folder`."""
    from layerscope.cli.app import app

    inputs = Path(folder)
    for name, arguments in STUDIES.items():
        arguments = arguments(inputs)
        arguments += [] if "--format" in arguments else ["--format", "json"]
        arguments += ["--model", model, "--device", "cpu", "--out", str(inputs / f"{name}.json")]
        assert app(arguments, standalone_mode=False) in (None, 0), f"{name} failed"


def test_other_studies_under_torchrun_write_the_single_process_files(inputs, tmp_path):
    capitals = [
        {"prompt": "the capital of france is", "answer": "paris", "subject": "france"},
        {"prompt": "the big city of italy is", "answer": "rome", "subject": "italy"},
        {"prompt": "a small city of france is", "answer": "paris", "subject": "france"},
    ]
    outputs = {}
    for processes in (1, 2):
        folder = tmp_path / str(processes)
        folder.mkdir()
        (folder / "capitals.jsonl").write_text("".join(json.dumps(c) + "\n" for c in capitals), encoding="utf-8")
        for name in ("prompts.txt", "text.txt", "needles.jsonl", "haystack.txt"):
            (folder / name).write_bytes((inputs / name).read_bytes())
        script = (
            f"from tests.test_distributed import run_studies; run_studies({str(inputs / 'model')!r}, {str(folder)!r})"
        )
        launch(["-c", script] if processes == 1 else ["--no-python", sys.executable, "-c", script], processes, ROOT)
        outputs[processes] = {name: (folder / f"{name}.json").read_text(encoding="utf-8") for name in STUDIES}
    for name in STUDIES:
        single = outputs[1][name].replace(str(tmp_path / "1"), "FOLDER")
        assert_same_up_to_rounding(outputs[2][name].replace(str(tmp_path / "2"), "FOLDER"), single)
    results = json.loads(outputs[1]["retrieval"])["meta"]["results"]
    assert len(results) == 6 and len({r["answer"] for r in results}) > 1  # the order of the tests shows
    assert len(json.loads(outputs[1]["influence"])["blocks"]) == 4


WHO_COMPUTED = """
import json, torch.distributed
from layerscope import distributed
distributed.start("cpu")
results = list(distributed.ordered_results(list(range(7)), lambda i: [(i, distributed.rank())] * (i % 3)))
if distributed.is_writer():
    print(json.dumps(results))
"""


def test_items_are_shared_out_round_by_round_and_gathered_in_order(tmp_path):
    """Item i goes to rank i % 2; results come back in item order on rank 0, several or none per item."""
    done = launch(["--no-python", sys.executable, "-c", WHO_COMPUTED], 2, tmp_path)
    results = [tuple(pair) for pair in json.loads(done.stdout)]
    assert results == [(i, i % 2) for i in range(7) for _ in range(i % 3)]


def test_without_torchrun_nothing_is_shared_out(monkeypatch):
    from layerscope import distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.start("auto") == "auto"
    assert not torch.distributed.is_initialized()
    assert list(distributed.mapped([3, 1, 2], lambda x: x * 10)) == [30, 10, 20]
    assert distributed.from_writer({"a": 1}) == {"a": 1}
