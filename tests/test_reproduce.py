"""`layerscope reproduce NAME --quick` on the demo model: each paper's JSON equals the engine's own result for the
same inputs, its figures are valid PNG files, and its summary names the measured values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from matplotlib.image import imread

from layerscope.analyses.causal_trace import trace_prompt
from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.head_ablation import niah_accuracy
from layerscope.analyses.influence import block_influence, perplexity, pruned, text_windows
from layerscope.analyses.needles import build_tests, load_haystack, load_needles
from layerscope.analyses.prompt_sets import answer_matches, load_prompt_set
from layerscope.analyses.retrieval import retrieval_scores
from layerscope.analyses.sweep import sweep
from layerscope.analyses.token_swap import Donor, token_swap_sweep
from layerscope.locations import sample_file
from layerscope.reproduce import PAPERS
from layerscope.reproduce.common import Reproduction, percent, write_files
from layerscope.reproduce.rome import GROUPS, ROME_SITES, position_groups
from layerscope.textfiles import read_text_file
from tests.studies import cli_demo, invoke  # noqa: F401  (cli_demo is a fixture)

PNG = b"\x89PNG\r\n\x1a\n"


def reproduce(name: str, folder: Path) -> dict:
    """The CLI at --quick: the files it writes, each figure a PNG that decodes; its JSON (also on --out)."""
    out = folder.parent / f"{name}-out.json"
    result = invoke(
        "reproduce", name, "--model", "demo", "--quick", "--figure-dir", str(folder), "-f", "json", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == sorted(PAPERS[name].files("png"))
    for figure in PAPERS[name].figures:
        path = folder / f"{name}-{figure}.png"
        assert path.read_bytes().startswith(PNG)
        assert min(imread(path).shape[:2]) > 100
    data = json.loads((folder / f"{name}.json").read_text())
    assert data == json.loads(out.read_text())
    assert data["paper"] == name and data["quick"] and data["model"] == "SmolLM2-135M-Instruct"
    assert (folder / f"{name}-summary.txt").read_text().strip() == data["summary"]
    return data


def test_stages(cli_demo, tmp_path):  # noqa: F811
    data = reproduce("stages", tmp_path / "figures")
    items = load_prompt_set(sample_file("general.txt"))[: data["settings"]["n_prompts"]]
    engine = [row.to_dict() for row in sweep(cli_demo, items, "drop") if row.prompt_index is None]  # swap: same path
    assert [{k: v for k, v in row.items() if k != "depth"} for row in data["data"]["curves"]["drop"]] == engine
    assert [row["layer"] for row in data["data"]["curves"]["swap"]] == list(range(cli_demo.n_blocks - 1))
    first = data["data"]["curves"]["drop"][0]
    assert (
        f"dropping block 0 keeps {percent(first['top1_agree'])} top-1 agreement (KL {first['kl']:.3f}"
        in data["summary"]
    )
    # every format, drawn from the JSON's own numbers: the format only changes the files' suffix
    result = Reproduction(
        data["paper"], data["model"], data["quick"], data["settings"], data["data"], data["summary"], []
    )
    for format in ("svg", "pdf"):
        written = write_files(result, PAPERS["stages"].module().draw(result), tmp_path / format, format)
        assert sorted(p.name for p in written) == sorted(PAPERS["stages"].files(format))
    assert (tmp_path / "svg" / "stages-fig3.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "pdf" / "stages-fig3.pdf").read_bytes().startswith(b"%PDF")


def test_afcl(cli_demo, tmp_path):  # noqa: F811
    data = reproduce("afcl", tmp_path / "figures")
    settings, curves = data["settings"], data["data"]["curves"]
    items = load_prompt_set(sample_file("capitals.jsonl"))[: settings["n_prompts"]]
    tokens = settings["max_new_tokens"]
    assert data["data"]["baseline_accuracy"] == np.mean(
        [answer_matches(greedy_continuation(cli_demo, cli_demo.encode(i.text), tokens).text, i.answer) for i in items]
    )
    layer = data["data"]["layers"][2]
    # accuracy comes from the engine's greedy decoding, one intervention at a time: equal whatever the layers asked
    [freeze] = [
        r
        for r in sweep(cli_demo, items, "freeze", [layer], accuracy=True, max_new_tokens=tokens)
        if r.prompt_index is None
    ]
    assert next(r["accuracy"] for r in curves["freeze"] if r["layer"] == layer) == freeze.accuracy
    [swap] = [r for r in token_swap_sweep(cli_demo, items, Donor(), [layer], tokens) if r.prompt_index is None]
    measured = next(r for r in curves["swap-token"] if r["layer"] == layer)
    assert (measured["follows_donor"], measured["accuracy"]) == (swap.follows_donor, swap.accuracy)
    assert set(curves) == {"freeze", "random", "swap-token", "skip-attn"}
    assert f"This model answers {percent(data['data']['baseline_accuracy'])} unmodified" in data["summary"]
    for kind in curves:
        lowest = min(curves[kind], key=lambda row: row["accuracy"])
        assert (
            f"{kind}: " in data["summary"]
            and f"lowest accuracy {percent(lowest['accuracy'])} at block {lowest['layer']}" in data["summary"]
        )


def test_shortgpt(cli_demo, tmp_path):  # noqa: F811
    data = reproduce("shortgpt", tmp_path / "figures")
    settings, result = data["settings"], data["data"]
    calibration, held_out = (
        text_windows(cli_demo, read_text_file(sample_file(name), "text")[: settings["characters"]], settings["window"])
        for name in ("calibration.txt", "heldout.txt")
    )
    assert result["bi"] == block_influence(cli_demo, calibration)
    step = result["pruning"][0]
    lowest = sorted(sorted(range(cli_demo.n_blocks), key=result["bi"].__getitem__)[: step["removed_blocks"]])
    assert step["block_influence_removed"] == lowest
    assert step["perplexity"]["baseline"] == perplexity(cli_demo, held_out)
    with pruned(cli_demo, lowest):
        assert step["perplexity"]["block_influence"] == perplexity(cli_demo, held_out)
    assert step["last_removed"] == list(range(cli_demo.n_blocks - step["removed_blocks"], cli_demo.n_blocks))
    largest = result["pruning"][-1]
    assert (
        f"the {largest['removed_blocks']} lowest-BI blocks are "
        f"{', '.join(map(str, largest['block_influence_removed']))}" in data["summary"]
    )
    assert f"{largest['perplexity']['block_influence']:.2f} lowest BI" in data["summary"]


def test_retrieval(cli_demo, tmp_path):  # noqa: F811
    data = reproduce("retrieval", tmp_path / "figures")
    settings, result = data["settings"], data["data"]
    lengths, depths, tokens = settings["lengths"], settings["depths"], settings["max_new_tokens"]
    needles = [load_needles()[line - 1] for line in settings["needles"]]
    scores = retrieval_scores(cli_demo, needles=needles, lengths=lengths, depths=depths, max_new_tokens=tokens)
    assert result["scores"] == scores.matrix().tolist()
    assert result["share_above"] == scores.share_above() and result["answered"] == scores.meta["answered"] > 0
    [ablation] = result["ablations"]
    k = ablation["k"]
    assert k == round(0.05 * cli_demo.n_blocks * cli_demo.adapter.n_heads)
    top = scores.top(k)
    assert [(h["layer"], h["head"]) for h in ablation["heads"]] == [(h.layer, h.head) for h in top]
    tests = build_tests(cli_demo, load_haystack(), needles, lengths, depths)
    assert ablation["accuracy"][f"top-{k} uniform"] == niah_accuracy(cli_demo, tests, tokens, top, "uniform")
    assert f"{percent(scores.share_above())} of heads above 0.1 ({len(scores.above())} of 270)" in data["summary"]
    assert f"top {k} heads masked: {percent(ablation['accuracy'][f'top-{k} zero'])} (zero)" in data["summary"]


def test_rome(cli_demo, tmp_path):  # noqa: F811
    data = reproduce("rome", tmp_path / "figures")
    result = data["data"]
    item = load_prompt_set(sample_file("capitals.jsonl"))[0]
    engine = trace_prompt(cli_demo, item.text, item.subject, " " + item.answer, site="mlp", window=10)
    assert result["traces"][0]["effects"]["mlp"] == engine.values().tolist()
    assert result["traces"][0]["subject_positions"] == engine.subject_positions
    for site in ROME_SITES:  # the grouped average, by numpy over the prompts' traces
        groups = result["sites"][site]["groups"]
        for group, row in zip(groups, result["sites"][site]["average"]):
            per_prompt = [
                np.asarray(t["effects"][site])[
                    :, position_groups(t["subject_positions"], len(t["tokens"]))[group]
                ].mean(axis=1)
                for t in result["traces"]
                if position_groups(t["subject_positions"], len(t["tokens"]))[group]
            ]
            np.testing.assert_allclose(row, np.mean(per_prompt, axis=0), rtol=1e-12, atol=1e-15)
        assert groups == [g for g in GROUPS if g in groups] and "last token" in groups
    mlp = result["sites"]["mlp"]
    values = mlp["average"][mlp["groups"].index("last subject token")]
    assert f"mlp at the last subject token peaks at block {int(np.argmax(values))} " in data["summary"]
    assert f"AIE {max(values):.3f}" in data["summary"]


def test_a_data_folder_replaces_the_shipped_files_and_must_hold_them(cli_demo, tmp_path):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "capitals.jsonl").write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n')
    result = invoke("reproduce", "stages", "--quick", "--data", str(data), "--figure-dir", str(tmp_path / "f"))
    assert result.exit_code == 1 and not (tmp_path / "f").exists()
    assert result.stderr.strip() == (
        f"error: --data '{data}' has no general.txt: stages reads general.txt (formats: sample_prompts/README.md)."
    )
    (data / "general.txt").write_text("The cat sat on the\nOne, two, three,\n")
    result = invoke(
        "reproduce", "stages", "--quick", "--data", str(data), "--figure-dir", str(tmp_path / "f"), "-f", "json"
    )
    assert result.exit_code == 0, result.output
    curves = json.loads(result.stdout)["data"]["curves"]
    items = load_prompt_set(data / "general.txt")
    assert curves["drop"][3]["kl"] == next(r.kl for r in sweep(cli_demo, items, "drop") if r.key == (None, 3))


def test_position_groups_follow_the_paper():
    """'The Space Needle is in downtown': subject tokens 1..3 of 7."""
    assert position_groups((1, 4), 7) == {
        "first subject token": [1],
        "middle subject tokens": [2],
        "last subject token": [3],
        "first subsequent token": [4],
        "further tokens": [5],
        "last token": [6],
    }
    one = position_groups((3, 4), 5)  # "The capital of France is": one subject token, then the last token
    assert one["first subject token"] == one["last subject token"] == [3]
    assert one["first subsequent token"] == one["further tokens"] == one["middle subject tokens"] == []


def test_without_matplotlib_one_error_line_says_how_to_install(tmp_path):
    """matplotlib made unimportable in a real process (None in sys.modules is how Python blocks an import)."""
    code = (
        "import sys; sys.modules['matplotlib'] = None; from layerscope.cli.app import main; "
        f"sys.argv = ['layerscope', 'reproduce', 'stages', '--figure-dir', {str(tmp_path / 'f')!r}]; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: Figures need matplotlib, which is not installed: pip install 'layerscope[plot]'"
    ]
    assert not (tmp_path / "f").exists()


def test_the_engine_imports_matplotlib_only_to_draw():
    code = (
        "import sys, layerscope.cli.reproduce\n"
        f"for name in {list(PAPERS)!r}: __import__('layerscope.reproduce.' + name)\n"
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
