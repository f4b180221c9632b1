"""Silent wrong results and data hazards: resumed files from other runs, partial head-score files, --out over
an input, file modes, long-prompt lens memory, too little calibration text."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from layerscope.analyses.grid import distribution_stats
from layerscope.analyses.head_scores import HeadScores, load_head_scores
from layerscope.analyses.influence import MIN_TOKENS, influence
from layerscope.analyses.lens import lens_grid_rows, lens_states, logit_lens
from layerscope.analyses.residual import capture_residuals
from layerscope.errors import LayerscopeError
from layerscope.interventions import DropBlocks
from layerscope.outputs import write_atomic
from tests.studies import TINY_TEXT, invoke
from tests.tiny import random_ids, tiny_model

PROMPTS_A = ["the cat sat on the mat", "a dog ran to the park", "one two three four five"]
PROMPTS_B = ["the capital of france is paris", "red blue green", "italy rome city country"]


def one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- sweep --resume only continues a file computed from the same things ---------------------------------


@pytest.fixture
def sweep_files(tmp_path, tiny_dir):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(PROMPTS_A) + "\n")
    b.write_text("\n".join(PROMPTS_B) + "\n")
    out = tmp_path / "rows.jsonl"
    base = ["sweep", "--model", str(tiny_dir), "--format", "jsonl", "--out", str(out)]
    return a, b, out, base


def interrupted_copy(out: Path, keep: int) -> str:
    """What Ctrl-C leaves: the source line and the first `keep` rows."""
    text = "".join(out.read_text().splitlines(keepends=True)[: 1 + keep])
    out.write_text(text)
    return text


def test_sweep_file_starts_with_its_source(sweep_files):
    a, _, out, base = sweep_files
    assert invoke(*base, "-i", "random", "--seed", "3", "--prompts", str(a)).exit_code == 0
    source = json.loads(out.read_text().splitlines()[0])["source"]
    assert source["intervention"] == "random" and source["layers"] == [0, 1, 2, 3] and source["seed"] == 3
    assert source["prompts"]["file"] == "a.txt" and source["prompts"]["count"] == 3
    assert len(source["prompts"]["sha256"]) == 64


@pytest.mark.parametrize(
    "change, field",
    [
        (["--prompts", "{b}"], "other prompts"),
        (["--prompts", "{a}", "--layers", "0-1"], "other layers"),
        (["--prompts", "{a}", "-i", "swap"], "line 2 is not a row of a 'swap' sweep"),
        (["--prompts", "{a}", "--batch-size", "2"], "other batch_size"),
    ],
)
def test_resume_refuses_a_file_from_another_sweep(sweep_files, change, field):
    a, b, out, base = sweep_files
    assert invoke(*base, "-i", "drop", "--prompts", str(a)).exit_code == 0
    before = interrupted_copy(out, keep=4)
    changed = [part.format(a=a, b=b) for part in change]
    result = (
        invoke(*base, "-i", "drop", *changed, "--resume")
        if "-i" not in changed
        else invoke(*base, *changed, "--resume")
    )
    one_error_line(result, "--resume", field)
    assert out.read_text() == before


def test_resume_refuses_another_seed_for_random_only(sweep_files):
    a, _, out, base = sweep_files
    assert invoke(*base, "-i", "random", "--seed", "1", "--prompts", str(a)).exit_code == 0
    interrupted_copy(out, keep=2)
    one_error_line(invoke(*base, "-i", "random", "--seed", "2", "--prompts", str(a), "--resume"), "other seed")
    assert invoke(*base, "-i", "drop", "--prompts", str(a)).exit_code == 0
    full = out.read_text()
    interrupted_copy(out, keep=2)
    resumed = invoke(*base, "-i", "drop", "--seed", "2", "--prompts", str(a), "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert out.read_text() == full


def test_resume_refuses_rows_without_a_source_line(sweep_files):
    a, _, out, base = sweep_files
    assert invoke(*base, "-i", "drop", "--prompts", str(a)).exit_code == 0
    rows_only = "".join(out.read_text().splitlines(keepends=True)[1:4])
    out.write_text(rows_only)
    one_error_line(invoke(*base, "-i", "drop", "--prompts", str(a), "--resume"), "source line")
    assert out.read_text() == rows_only


def test_resume_of_an_empty_or_missing_file_starts_it(sweep_files):
    a, _, out, base = sweep_files
    assert invoke(*base, "-i", "drop", "--prompts", str(a)).exit_code == 0
    full = out.read_text()
    out.unlink()
    assert invoke(*base, "-i", "drop", "--prompts", str(a), "--resume").exit_code == 0
    assert out.read_text() == full
    out.write_text("")
    assert invoke(*base, "-i", "drop", "--prompts", str(a), "--resume").exit_code == 0
    assert out.read_text() == full


def test_a_resumed_row_that_is_not_finite_is_refused_by_its_line(sweep_files):
    a, _, out, base = sweep_files
    assert invoke(*base, "-i", "drop", "--prompts", str(a)).exit_code == 0
    lines = out.read_text().splitlines()
    lines[2] = lines[2].replace('"kl": ', '"kl": NaN, "was": ', 1)
    out.write_text("\n".join(lines[:3]) + "\n")
    one_error_line(invoke(*base, "-i", "drop", "--prompts", str(a), "--resume"), "line 3 is not valid JSON", "NaN")


# --- head score files: every head exactly once, finite, this model's shape -------------------------------


def scores_dict(lm, edit=None) -> dict:
    data = HeadScores.from_matrix(
        lm, "retrieval", torch.rand(4, 4, generator=torch.Generator().manual_seed(0)), {}
    ).to_dict()
    if edit:
        edit(data["heads"])
    return data


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda heads: heads.__delitem__(slice(10, None)), "list 10 of the 16 heads (2.2 is missing)"),
        (lambda heads: heads.__setitem__(5, dict(heads[4])), "list head 1.0 twice"),
        (lambda heads: heads[3].__setitem__("score", math.nan), "head 0.3 is nan"),
        (lambda heads: heads[15].__setitem__("head", 7), "outside their own shape"),
    ],
)
def test_incomplete_or_broken_scores_are_refused(tmp_path, edit, message):
    lm = tiny_model("llama")
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores_dict(lm, edit)))
    with pytest.raises(LayerscopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_head_scores(path)


def test_scores_of_another_attention_layout_are_refused(tmp_path):
    """Same 4 x 4 shape, but the llama groups 2 query heads per KV head and gpt2 has no grouping."""
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores_dict(tiny_model("gpt2"))))
    with pytest.raises(LayerscopeError, match="KV group 1, but in tiny-llama it reads KV head 0"):
        load_head_scores(path, tiny_model("llama"))


def test_ablate_refuses_a_partial_scores_file(tmp_path, tiny_dir):
    data = scores_dict(tiny_model("llama"), lambda heads: heads.__delitem__(slice(7, None)))
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(data))
    one_error_line(
        invoke("heads", "ablate", "--model", str(tiny_dir), "--scores", str(path), "--top", "2"),
        "list 7 of the 16 heads",
    )


# --- records read from JSON Lines: every field of its type, the first bad line named, before the model ------


GOOD_NEEDLE = {
    "needle": "The key is under the red mat.",
    "question": "Where is the key?",
    "answer": "under the red mat",
}


@pytest.mark.parametrize(
    "record, message",
    [
        ({**GOOD_NEEDLE, "needle": None}, '"needle" must be text, not null'),
        ({**GOOD_NEEDLE, "answer": ""}, '"answer" must be text, not ""'),
        ({**GOOD_NEEDLE, "question": "   "}, '"question" must be text, not "   "'),
        ({**GOOD_NEEDLE, "answer": 42}, '"answer" must be text, not 42'),
        ({k: v for k, v in GOOD_NEEDLE.items() if k != "question"}, 'no "question"'),
        ({**GOOD_NEEDLE, "answr": "x"}, 'unknown "answr"'),
        ([GOOD_NEEDLE], "expected a JSON object"),
        ({**GOOD_NEEDLE, "answer": "in the blue box"}, "is not part of its needle"),
        ('{"needle": "x"', "not valid JSON"),
    ],
)
@pytest.mark.parametrize("command", [["heads", "retrieval"], ["heads", "ablate", "--scores", "{scores}", "--top", "1"]])
def test_a_bad_needle_record_is_named_by_its_line_before_the_model(tmp_path, tiny_dir, record, message, command):
    lm = tiny_model("llama")
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(scores_dict(lm)))
    needles = tmp_path / "needles.jsonl"
    line = record if isinstance(record, str) else json.dumps(record)
    needles.write_text(f"{json.dumps(GOOD_NEEDLE)}\n# a comment\n\n{line}\n")
    args = [a.format(scores=scores) for a in command]
    one_error_line(
        invoke(*args, "--needles", str(needles), "--model", str(tmp_path / "no-model")),
        f"Needles file '{needles}' line 4: ",
        message,
    )


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "The capital of France is", "answer": None}, '"answer" must be text, not null'),
        ({"prompt": 3}, '"prompt" must be text, not 3'),
        ({"promt": "x"}, 'no "prompt"'),
        ({"prompt": "x", "answr": "y"}, 'unknown "answr"'),
    ],
)
@pytest.mark.parametrize("command", [["sweep"], ["stages"], ["sweep", "-i", "swap-token"]])
def test_a_bad_prompt_record_is_named_by_its_line_before_the_model(tmp_path, record, message, command):
    prompts = tmp_path / "capitals.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "The capital of Italy is", "answer": "Rome", "subject": "Italy"})
        + "\n"
        + json.dumps(record)
        + "\n"
    )
    one_error_line(
        invoke(*command, "--prompts", str(prompts), "--model", str(tmp_path / "no-model")),
        f"'{prompts}' line 2: ",
        message,
    )


def test_scores_of_another_kind_are_not_read_as_retrieval_heads(tmp_path, tiny_dir):
    """An induction scores file (which `heads induction --format json` writes, its previous-token scores inside)
    is not a list of retrieval heads."""
    lm = load_model_dir(tiny_dir)
    induction = tmp_path / "induction.json"
    result = invoke(
        "heads",
        "induction",
        "--model",
        str(tiny_dir),
        "--seq-len",
        "4",
        "--samples",
        "1",
        "--format",
        "json",
        "--out",
        str(induction),
    )
    assert result.exit_code == 0, result.output
    for command in (["heads", "activity", "-p", "the cat"], ["heads", "ablate", "--top", "1"]):
        one_error_line(
            invoke(*command, "--scores", str(induction), "--model", str(tmp_path / "no-model")),
            f"'{induction}' holds induction scores, not retrieval scores",
        )
    assert load_head_scores(induction, lm).kind == "induction"  # the explorer shows any kind
    old = {k: v for k, v in json.loads(induction.read_text()).items() if k != "kind"}
    induction.write_text(json.dumps(old))
    with pytest.raises(LayerscopeError, match=f"'{induction}': Not a head scores file: it does not say which kind"):
        load_head_scores(induction)


def load_model_dir(directory):
    from layerscope.models.loading import load_model

    return load_model(str(directory), device="cpu")


def test_scores_of_another_model_of_the_same_shape_are_refused(tmp_path):
    lm = tiny_model("llama")
    path = tmp_path / "scores.json"
    for name, fits in [
        ("tiny-llama", True),
        ("org/tiny-llama", True),
        ("/models/tiny-llama/", True),
        ("tiny-llama-instruct", False),
        ("SmolLM2-135M", False),
    ]:
        path.write_text(json.dumps({**scores_dict(lm), "model": name}))
        if fits:
            assert load_head_scores(path, lm).model == name
        else:
            with pytest.raises(LayerscopeError, match=f"are for {name}, not tiny-llama"):
                load_head_scores(path, lm)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda data: data.update(n_blocks="4"), '"n_blocks" is "4", not a whole number'),
        (lambda data: data.update(n_blocks=True), '"n_blocks" is true, not a whole number'),
        (lambda data: data.update(model=None), '"model" is null, not text'),
        (lambda data: data.update(kind="retreival"), 'Unknown head score kind "retreival"'),
        (lambda data: data["heads"][2].update(score="0.5"), 'a head\'s "score" is "0.5", not a number'),
        (lambda data: data["heads"][2].update(layer=1.5), 'a head\'s "layer" is 1.5, not a whole number'),
        (lambda data: data.update(meta=[1]), '"meta" is not an object'),
        (lambda data: data.update(heads={}), '"heads" is {}, not a list'),
    ],
)
def test_scores_fields_of_the_wrong_type_are_named(tmp_path, edit, message):
    data = scores_dict(tiny_model("llama"))
    edit(data)
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LayerscopeError, match=re.escape(f"Scores file '{path}': ") + ".*" + re.escape(message)):
        load_head_scores(path)


# --- --out never replaces a file the command reads --------------------------------------------------------


def same_file_ways(tmp_path: Path, target: Path) -> dict[str, Path]:
    os.symlink(target, tmp_path / "link")
    os.link(target, tmp_path / "hard")
    return {
        "same": target,
        "dotted": tmp_path / "." / target.name,
        "symlink": tmp_path / "link",
        "hard link": tmp_path / "hard",
    }


COMMANDS = {
    "lens": (["lens", "--prompt-file", "{input}"], "the capital of france is"),
    "run": (["run", "--drop", "1", "--prompt-file", "{input}"], "the capital of france is"),
    "patchscope": (["patchscope", "--prompt-file", "{input}"], "the capital of france is"),
    "sweep": (["sweep", "--prompts", "{input}", "--format", "jsonl"], "the cat sat\n"),
    "sweep --resume": (["sweep", "--prompts", "{input}", "--format", "jsonl", "--resume"], "the cat sat\n"),
    "stages": (["stages", "--prompts", "{input}"], "the cat sat\n"),
    "influence": (["influence", "--text", "{input}"], TINY_TEXT),
    "influence --eval-text": (["influence", "--prune", "1", "--eval-text", "{input}"], TINY_TEXT),
    "heads retrieval": (["heads", "retrieval", "--haystack", "{input}"], TINY_TEXT),
    "heads activity": (["heads", "activity", "--scores", "{input}", "--prompt", "x"], "{}"),
    "heads ablate": (["heads", "ablate", "--top", "1", "--needles", "{input}"], "{}"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_out_over_an_input_is_refused(tmp_path, command):
    args, content = COMMANDS[command]
    source = tmp_path / "input.txt"
    source.write_text(content)
    if command == "heads ablate":
        args = [*args, "--scores", str(tmp_path / "scores.json")]
    for way, out in same_file_ways(tmp_path, source).items():
        result = invoke(*[a.format(input=source) for a in args], "--model", "demo", "--out", str(out))
        one_error_line(result, "is the", "this command reads")
        assert source.read_text() == content, way


def test_out_over_a_gguf_model_is_refused(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    one_error_line(invoke("heads", "induction", "--model", str(model), "--out", str(model)), "--model file")
    assert model.read_bytes() == b"GGUF"


# --- files get the umask's mode, and a rewritten file keeps its own ----------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_follows_the_umask_and_keeps_a_mode(tmp_path):
    out = tmp_path / "result.json"
    old = os.umask(0o022)
    try:
        write_atomic("{}", out)
        assert mode(out) == 0o644
        os.umask(0o077)
        write_atomic("{}", tmp_path / "private.json")
        assert mode(tmp_path / "private.json") == 0o600
        out.chmod(0o640)
        write_atomic("[]", out)
        assert mode(out) == 0o640 and out.read_text() == "[]"
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_out_and_sweep_jsonl_follow_the_umask(tmp_path, tiny_dir, umask_022):
    lens_out, sweep_out = tmp_path / "grid.csv", tmp_path / "rows.jsonl"
    assert invoke("lens", "--model", str(tiny_dir), "-p", "the cat", "-f", "csv", "--out", str(lens_out)).exit_code == 0
    prompts = tmp_path / "p.txt"
    prompts.write_text("the cat sat\n")
    assert (
        invoke(
            "sweep", "--model", str(tiny_dir), "--prompts", str(prompts), "-f", "jsonl", "--out", str(sweep_out)
        ).exit_code
        == 0
    )
    assert mode(lens_out) == mode(sweep_out) == 0o644


def test_influence_save_follows_the_umask(tmp_path, tiny_dir, umask_022):
    text = tmp_path / "t.txt"
    text.write_text(TINY_TEXT)
    save = tmp_path / "pruned"
    result = invoke(
        "influence",
        "--model",
        str(tiny_dir),
        "--text",
        str(text),
        "--eval-text",
        str(text),
        "--prune",
        "1",
        "--save",
        str(save),
    )
    assert result.exit_code == 0, result.output
    assert mode(save) == 0o755 and {mode(p) for p in save.iterdir()} == {0o644}


def test_demo_cache_follows_the_umask(tmp_path, monkeypatch, umask_022):
    """The cache is written by the real code; only the download and the GGUF reader are stood in for."""
    import layerscope.models.demo as demo

    lm = tiny_model("llama")
    monkeypatch.setenv("LAYERSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "_download_gguf", lambda workdir, progress: workdir / "x.gguf")
    monkeypatch.setattr(demo, "load_gguf", lambda path: (lm.model, lm.tokenizer))
    target = demo.prepare_demo()
    assert demo.is_demo_cached()
    assert mode(target) == mode(target.parent) == 0o755
    assert {mode(p) for p in target.iterdir()} == {0o644}


# --- the lens on a long prompt: logits only a tile at a time, same numbers -------------------------------


def assert_same_grid(chunked, whole) -> None:
    assert chunked.layers == whole.layers and len(chunked.cells) == len(whole.cells)
    for chunked_row, whole_row in zip(chunked.cells, whole.cells):
        assert len(chunked_row) == len(whole_row)
        for a, b in zip(chunked_row, whole_row):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
            assert a.entropy_bits == pytest.approx(b.entropy_bits, abs=1e-4)
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=1e-4)


def recorded_decodes(lm, monkeypatch) -> list[int]:
    """Numbers of logits each decode call made (the real decode runs)."""
    sizes: list[int] = []
    real = lm.adapter.decode

    def decode(residual):
        logits = real(residual)
        sizes.append(logits.numel())
        return logits

    monkeypatch.setattr(lm.adapter, "decode", decode)
    return sizes


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2"])
def test_chunked_lens_equals_the_whole_lens_on_tiny_models(family, monkeypatch):
    lm = tiny_model(family)
    ids = random_ids(40, seed=1)
    whole = logit_lens(lm, ids, top_k=4, budget=2**40)
    budget = 3 * lm.model.config.vocab_size * 4  # three positions of one row at a time
    sizes = recorded_decodes(lm, monkeypatch)
    chunked = logit_lens(lm, ids, top_k=4, budget=budget)
    assert max(sizes) * 4 <= budget and len(sizes) > lm.n_blocks + 1
    assert_same_grid(chunked, whole)
    with torch.inference_mode():
        model_logits = lm.model(ids).logits[0].float()
    assert [c.top[0].id for c in chunked.cells[-1]] == model_logits.argmax(-1).tolist()


def test_chunked_lens_equals_the_whole_lens_on_the_demo_model(demo_lm, monkeypatch):
    ids = demo_lm.encode("The Eiffel Tower is in Paris, and the Colosseum is in Rome. " * 3)
    whole = logit_lens(demo_lm, ids, budget=2**40)
    vocab = demo_lm.model.config.vocab_size
    sizes = recorded_decodes(demo_lm, monkeypatch)
    chunked = logit_lens(demo_lm, ids, budget=7 * vocab * 4)
    assert max(sizes) == 7 * vocab and ids.shape[1] > 14
    assert_same_grid(chunked, whole)


def test_lens_never_holds_all_rows_of_a_long_prompt(demo_lm, monkeypatch):
    """Every decode, the model's own output included, stays within the budget, not T x vocab."""
    from layerscope.analyses.lens import DECODE_BUDGET

    sizes = recorded_decodes(demo_lm, monkeypatch)
    outputs: list[int] = []
    handle = demo_lm.model.register_forward_hook(lambda module, args, output: outputs.append(output.logits.numel()))
    try:
        ids = demo_lm.encode("one two three four five six seven eight nine ten " * 25)  # 250 tokens
        grid = logit_lens(demo_lm, ids, top_k=2)
    finally:
        handle.remove()
    vocab = demo_lm.model.config.vocab_size
    assert ids.shape[1] * vocab * 4 > DECODE_BUDGET >= max(sizes) * 4
    assert outputs == [vocab]  # the forward produced the last position's logits only
    assert len(grid.cells) == demo_lm.n_blocks + 1 and all(len(row) == ids.shape[1] for row in grid.cells)


def test_two_run_rows_give_the_kl_between_runs(monkeypatch):
    """The explorer's rows: both runs' cells and KL(baseline || intervened), against the formula."""
    lm = tiny_model("qwen2")
    ids = random_ids(20, seed=2)
    runs = [lens_states(lm, ids), lens_states(lm, ids, [DropBlocks((1,))])]
    rows = list(lens_grid_rows(lm, runs, top_k=3, budget=6 * lm.model.config.vocab_size * 4, final_budget=0))
    with torch.inference_mode():
        base = torch.log_softmax(lm.adapter.decode(capture_residuals(lm.adapter, ids).states[:, 0]).double(), -1)
        dropped = logit_lens(lm, ids, top_k=3, interventions=[DropBlocks((1,))], budget=2**40)
    for row, lens_row in enumerate(rows):
        assert [c.top[0].id for c in lens_row.cells[1]] == [c.top[0].id for c in dropped.cells[row]]
        other = torch.log_softmax(lm.adapter.decode(runs[1][row]).double(), -1)
        kl = (base[row].exp() * (base[row] - other)).sum(-1).clamp_min(0)
        assert lens_row.kl_between == pytest.approx(kl.tolist(), abs=1e-5)
        assert distribution_stats(other, base[row])[1].clamp_min(0).tolist() == pytest.approx(kl.tolist(), abs=1e-9)


def test_rows_stream_one_by_one_while_the_final_row_fits(monkeypatch):
    """The explorer shows rows as they come: the first row is out before the later rows are decoded, and the
    rows equal the position-tiled ones."""
    lm = tiny_model("llama")
    ids = random_ids(20, seed=3)
    runs = [lens_states(lm, ids), lens_states(lm, ids, [DropBlocks((2,))])]
    tiled = list(lens_grid_rows(lm, runs, top_k=3, budget=4 * lm.model.config.vocab_size * 4, final_budget=0))
    sizes = recorded_decodes(lm, monkeypatch)
    streamed = lens_grid_rows(lm, runs, top_k=3, budget=ids.shape[1] * lm.model.config.vocab_size * 4)  # a row
    first = next(streamed)
    decoded_before_first = sum(sizes)
    rest = list(streamed)
    assert decoded_before_first < sum(sizes) / 2
    for a, b in zip([first, *rest], tiled):
        assert [[c.top[0].id for c in run] for run in a.cells] == [[c.top[0].id for c in run] for run in b.cells]
        assert a.kl_between == pytest.approx(b.kl_between, abs=1e-5)


# --- influence says when it rests on too few tokens ------------------------------------------------------


def test_influence_warns_with_the_token_count(tmp_path, tiny_dir):
    lm = tiny_model("llama")
    report = influence(lm, "the cat sat")
    assert report.calibration_tokens == 3
    assert report.warnings and f"only 3 calibration tokens (fewer than {MIN_TOKENS})" in report.warnings[0]
    assert report.to_dict()["warnings"] == report.warnings
    assert influence(lm, " ".join([TINY_TEXT] * 20)).warnings == []
    text = tmp_path / "short.txt"
    text.write_text("the cat sat")
    result = invoke("influence", "--model", str(tiny_dir), "--text", str(text), "--format", "json")
    assert result.exit_code == 0
    assert "warning: only 3 calibration tokens" in result.stderr
    assert json.loads(result.stdout)["warnings"]
