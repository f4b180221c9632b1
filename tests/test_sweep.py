"""Sweeps: every row equals the same intervention run alone through the engine; resume; bad input."""

from __future__ import annotations

import json

import pytest
import torch

from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.prompt_sets import PromptItem, answer_matches, load_prompt_set
from layerscope.analyses.residual import capture_residuals
from layerscope.analyses.steering import SavedVector
from layerscope.analyses.sweep import make_intervention, sweep, sweep_kinds, sweep_layers
from layerscope.analyses.token_swap import Donor, token_swap_sweep
from layerscope.errors import LayerscopeError
from layerscope.interventions import REGISTRY, PatchState, intervene
from tests.studies import TINY_TEXT, hand_metrics, invoke
from tests.tiny import tiny_model

TINY_PROMPTS = [
    PromptItem(TINY_TEXT),
    PromptItem("red blue green the city is big"),
    PromptItem("one two three four five six seven eight nine ten"),
]


def engine_logits(lm, ids, interventions):
    """The reference: the engine's hooks and one plain forward."""
    with intervene(lm, interventions, seq_len=ids.shape[1]), torch.inference_mode():
        return lm.model(input_ids=ids, use_cache=False).logits[0]


@pytest.mark.parametrize(
    "family", ["llama", "gemma2", "gemma3_text", "gpt2", "gpt_neox", "phi", "falcon", "mixtral", "bloom"]
)
def test_every_row_equals_the_engine_run_alone(family):
    lm = tiny_model(family)
    for kind in sweep_kinds():
        assert_points_equal_the_engine(lm, kind)


def kind_settings(lm, kind: str) -> dict:
    """What a kind needs besides its block: steer, a steering vector (random, fixed) and its factor."""
    if kind != "steer":
        return {}
    hidden = lm.model.get_input_embeddings().weight.shape[-1]
    return {
        "steer": SavedVector(torch.randn(hidden, generator=torch.Generator().manual_seed(0)), lm.name, 0),
        "steer_factor": 2.0,
    }


def assert_points_equal_the_engine(lm, kind: str) -> None:
    # batch_size 3 over 4 (or 3) layers: the plans of one batch start at different blocks
    settings = kind_settings(lm, kind)
    points = list(sweep(lm, TINY_PROMPTS, kind, batch_size=3, settings=settings))
    per_prompt = [p for p in points if p.prompt_index is not None]
    assert len(per_prompt) == len(TINY_PROMPTS) * len(sweep_layers(kind, lm.n_blocks, settings))
    for point in per_prompt:
        ids = lm.encode(TINY_PROMPTS[point.prompt_index].text)
        base = engine_logits(lm, ids, [])
        other = engine_logits(lm, ids, [make_intervention(kind, point.layer, lm.n_blocks, settings=settings)])
        expected = hand_metrics(base, other, ids[0], REGISTRY[kind].measured_at_last_token)
        got = (point.kl, point.top1_agree, point.entropy_delta, point.loss_delta)
        assert got[0] == pytest.approx(expected[0], abs=1e-4), (kind, point)
        assert got[1] == expected[1], (kind, point)
        assert got[2] == pytest.approx(expected[2], abs=1e-3), (kind, point)
        assert (got[3] is None) == (expected[3] is None)
        if expected[3] is not None:
            assert got[3] == pytest.approx(expected[3], abs=1e-4)
    for average in (p for p in points if p.prompt_index is None):
        mine = [r.kl for r in per_prompt if r.layer == average.layer]
        assert average.kl == pytest.approx(sum(mine) / len(mine))


def test_interrupted_sweep_continues_to_the_same_rows():
    lm = tiny_model("qwen2")
    full = [r.to_dict() for r in sweep(lm, TINY_PROMPTS, "freeze", batch_size=3)]
    generator = sweep(lm, TINY_PROMPTS, "freeze", batch_size=3)
    first = [next(generator) for _ in range(5)]  # stops in the middle of a prompt and of a batch
    generator.close()
    rest = [r.to_dict() for r in sweep(lm, TINY_PROMPTS, "freeze", batch_size=3, done=first)]
    assert [r.to_dict() for r in first] + rest == full


def test_an_empty_prompt_list_is_refused_not_averaged_to_none():
    # mypy found it: the set averages of no prompts had kl/top1/entropy None, which SweepPoint types as float
    with pytest.raises(LayerscopeError, match="empty"):
        list(sweep(tiny_model("qwen2"), [], "drop"))


def test_demo_block_zero_is_among_the_most_damaging(demo_lm):
    prompts = [PromptItem("The capital of France is"), PromptItem("Monday, Tuesday, Wednesday, Thursday,")]
    kl = {r.layer: r.kl for r in sweep(demo_lm, prompts, "drop") if r.prompt_index is None}
    worst = sorted(kl, key=kl.get, reverse=True)
    assert 0 in worst[:3]
    middle = [kl[b] for b in range(8, 23)]
    assert sum(v < kl[0] / 5 for v in middle) >= 0.8 * len(middle)


def test_demo_accuracy_is_the_engine_greedy_answer(demo_lm):
    item = PromptItem("The capital of France is", answer="Paris")
    rows = [
        r
        for r in sweep(demo_lm, [item], "drop", layers=[0, 15], accuracy=True, max_new_tokens=3)
        if r.prompt_index is not None
    ]
    ids = demo_lm.encode(item.text)
    for row in rows:
        text = greedy_continuation(demo_lm, ids, 3, [make_intervention("drop", row.layer, demo_lm.n_blocks)]).text
        assert row.accuracy == float(answer_matches(text, "Paris"))
    assert [r.accuracy for r in rows] == [0.0, 1.0]  # block 0 is catastrophic; block 15 barely matters


def test_swap_token_follows_donor_early_and_original_late(demo_lm):
    item = PromptItem("The capital of France is", answer="Paris", subject="France")
    rows = {r.row: r for r in token_swap_sweep(demo_lm, [item], Donor(), rows=[0, 30]) if r.prompt_index == 0}
    # the patched state at row 30 is after every block: the answer cannot change
    assert rows[30].follows_original == 1.0 and rows[30].kl == pytest.approx(0, abs=1e-5)
    # at row 0 the donor's embedding replaces "France": the model answers for Italy
    assert rows[0].follows_donor == 1.0
    ids = demo_lm.encode(item.text)
    donor_ids = demo_lm.encode("The country Italy")
    vector = capture_residuals(demo_lm.adapter, donor_ids).states[0, 0, -1]
    expected = greedy_continuation(demo_lm, ids, 4, [PatchState(0, 3, vector)]).text
    assert rows[0].continuation == expected


def test_prompt_files(tmp_path):
    good = tmp_path / "set.jsonl"
    good.write_text('{"prompt": "a", "answer": "b"}\n\n# note\n{"prompt": "c"}\n')
    assert load_prompt_set(good) == [PromptItem("a", "b"), PromptItem("c")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    with pytest.raises(LayerscopeError, match="line 2"):
        load_prompt_set(bad)


def test_cli_jsonl_resume_gives_the_same_file(tiny_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(p.text for p in TINY_PROMPTS) + "\n")
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    common = [
        "sweep",
        "--model",
        str(tiny_dir),
        "-i",
        "drop",
        "--prompts",
        str(prompts),
        "--format",
        "jsonl",
        "--batch-size",
        "3",
    ]
    assert invoke(*common, "--out", str(full)).exit_code == 0
    lines = full.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 3 * 4 + 4 and "source" in json.loads(lines[0])
    # what Ctrl-C leaves: the rows flushed so far, and maybe half a row being written
    part.write_text("".join(lines[:5]) + lines[5][:20])
    result = invoke(*common, "--out", str(part), "--resume")
    assert result.exit_code == 0, result.output
    assert part.read_text() == full.read_text()
    other = invoke(*common, "--out", str(part), "--resume", "--layers", "0-1")
    assert other.exit_code == 1 and "other layers" in other.stderr
    assert part.read_text() == full.read_text()
    assert all(
        json.loads(line).keys()
        >= {"intervention", "layer", "prompt_index", "kl", "top1_agree", "entropy_delta", "loss_delta", "accuracy"}
        for line in lines[1:]
    )


def test_cli_table_csv_json(tiny_dir, tmp_path):
    args = ["sweep", "--model", str(tiny_dir), "-i", "swap", "--layers", "0-1"]
    prompts = tmp_path / "p.txt"
    prompts.write_text(TINY_TEXT + "\n")
    table = invoke(*args, "--prompts", str(prompts))
    assert table.exit_code == 0 and table.stdout.splitlines()[-1].split()[0] == "1"
    data = json.loads(invoke(*args, "--prompts", str(prompts), "--format", "json").stdout)
    assert [(r["layer"], r["prompt_index"]) for r in data["rows"]] == [(0, 0), (1, 0), (0, None), (1, None)]
    csv_lines = invoke(*args, "--prompts", str(prompts), "--format", "csv").stdout.splitlines()
    assert csv_lines[0].startswith("intervention,layer,prompt_index,kl") and len(csv_lines) == 5


@pytest.mark.parametrize(
    "args, message",
    [
        (["-i", "dropp"], "Unknown intervention 'dropp'"),
        (["--prompts", "{empty}"], "no prompts"),
        (["--prompts", "{bad}"], "line 2: not valid JSON"),
        (["--prompts", "{plain}", "--accuracy"], 'has no "answer"'),
        (["--out", "{nowhere}"], "not writable"),
        (["--layers", "0-40"], "out of range"),
        (["--resume"], "--resume needs"),
        (["-i", "swap-token", "--prompts", "{plain}"], 'needs both "subject" and "answer"'),
    ],
)
def test_cli_bad_input_is_one_line(cli_demo, tmp_path, args, message):
    files = {
        "empty": tmp_path / "empty.txt",
        "bad": tmp_path / "bad.jsonl",
        "plain": tmp_path / "plain.txt",
        "nowhere": tmp_path / "missing" / "out.jsonl",
    }
    files["empty"].write_text("# only a comment\n\n")
    files["bad"].write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "c"\n')
    files["plain"].write_text("The capital of France is\n")
    args = [a.format(**files) for a in args]
    result = invoke("sweep", "--model", "demo", *args, "--format", "jsonl")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""
    assert not files["nowhere"].parent.exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new file", "file replaced"])
def test_ctrl_c_keeps_every_finished_row(tmp_path, existing):
    from layerscope.cli.studies import SweepFormat, SweepOutput, _write_sweep

    lm = tiny_model("llama")
    out = tmp_path / "rows.jsonl"
    if existing:
        out.write_text('{"an": "older sweep"}\n')

    def interrupted():
        for number, row in enumerate(sweep(lm, TINY_PROMPTS, "drop")):
            if number == 3:
                raise KeyboardInterrupt
            yield row

    with pytest.raises(LayerscopeError, match="interrupted after 3 new rows, all kept; to continue, run: .*--resume"):
        source = {"intervention": "drop", "model": lm.name, "prompts": {"file": "inline", "count": len(TINY_PROMPTS)}}
        _write_sweep(interrupted(), source, SweepOutput(SweepFormat.jsonl, out), keep=None, done=[])
    assert [json.loads(line)["layer"] for line in out.read_text().splitlines()[1:]] == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_swap_token_points_name_the_grid_row_and_old_files_still_resume(tmp_path):
    """token-swap's points are at grid rows (`row`), not blocks (`layer`); a file written with `layer` resumes."""
    from layerscope.analyses.token_swap import TokenSwapPoint
    from layerscope.cli.studies import _sweep_points

    lm = tiny_model("llama")
    items = [
        PromptItem("the capital of france is", "paris", "france"),
        PromptItem("the city of italy is", "rome", "italy"),
    ]
    donor = ("the city rome", "rome", "rome")
    full = [r.to_dict() for r in token_swap_sweep(lm, items, Donor(*donor), rows=[0, 4], max_new_tokens=2)]
    assert all("row" in r and "layer" not in r for r in full)
    old = [{("layer" if k == "row" else k): v for k, v in r.items()} for r in full[:1]]
    assert TokenSwapPoint.from_dict(old[0]).to_dict() == full[0]
    rest = [
        point.to_dict()
        for point in _sweep_points(
            lm,
            items,
            "swap-token",
            [0, 4],
            [0, 4],
            None,
            2,
            0,
            1,
            donor,
            old,
            tmp_path / "x.jsonl",
            lambda *a: None,
            {},
        )
    ]
    assert rest == full[1:]
