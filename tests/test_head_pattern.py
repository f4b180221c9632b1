"""A head's attention pattern (analyses.heads.attention_pattern) equals transformers' eager `output_attentions`."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from layerscope.analyses.heads import attention_pattern
from layerscope.cli.app import app
from layerscope.errors import LayerscopeError
from layerscope.interventions import DropBlocks, MaskHeads
from tests.tiny import random_ids, tiny_model

HEADS = [(0, 0), (1, 3), (3, 1)]
runner = CliRunner()


def eager_attentions(family: str, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same tiny model (same seed), run by transformers itself with eager attention."""
    lm = tiny_model(family)
    lm.model.set_attn_implementation("eager")
    with torch.no_grad():
        return lm.model(ids, output_attentions=True, use_cache=False).attentions


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen2"])
def test_pattern_equals_eager_output_attentions(family):
    ids = random_ids(11)
    pattern = attention_pattern(tiny_model(family), ids, HEADS)
    want = eager_attentions(family, ids)
    assert list(pattern.weights) == HEADS and pattern.token_ids == ids[0].tolist()
    for block, head in HEADS:
        torch.testing.assert_close(
            torch.tensor(pattern.weights[block, head]), want[block][0, head].float(), atol=1e-5, rtol=0
        )
    strongest = pattern.strongest((1, 3), 10, k=3)
    row = want[1][0, 3, 10]
    assert [key for key, _ in strongest] == row.topk(3).indices.tolist()


def test_with_interventions():
    """Dropping block 0 changes what block 1's heads see, as in a model run without block 0; the dropped block's
    own heads still see their input (their output is what the drop discards); a head mask acts on the output,
    not on the pattern the head computes."""
    ids = random_ids(9)
    lm = tiny_model("llama")
    dropped = attention_pattern(lm, ids, [(0, 1), (1, 2)], [DropBlocks((0,))])
    assert dropped.weights[0, 1] == attention_pattern(lm, ids, [(0, 1)]).weights[0, 1]
    reference = tiny_model("llama")
    reference.model.set_attn_implementation("eager")
    reference.model.model.layers = torch.nn.ModuleList(list(reference.model.model.layers)[1:])
    for index, layer in enumerate(reference.model.model.layers):
        layer.self_attn.layer_idx = index
    with torch.no_grad():
        want = reference.model(ids, output_attentions=True, use_cache=False).attentions[0][0, 2]
    torch.testing.assert_close(torch.tensor(dropped.weights[1, 2]), want.float(), atol=1e-5, rtol=0)
    masked = attention_pattern(lm, ids, [(2, 0)], [MaskHeads(((2, 0),), "zero")])
    assert masked.weights == attention_pattern(lm, ids, [(2, 0)]).weights


def test_bad_heads_and_families_say_so():
    with pytest.raises(LayerscopeError, match="heads= holds head 9.0, outside"):
        attention_pattern(tiny_model("llama"), random_ids(5), [(9, 0)])
    with pytest.raises(LayerscopeError, match="not available for bloom"):
        attention_pattern(tiny_model("bloom"), random_ids(5), [(0, 0)])


def test_only_the_chosen_heads_are_computed_in_the_order_asked():
    """A reader of some heads gets exactly those heads' rows of the all-heads probabilities (GQA: heads 3 and 0
    read different key heads), and nothing bigger: (1, chosen heads, queries, keys)."""
    from layerscope.interventions.attention import read_attention

    lm = tiny_model("qwen2")
    ids = random_ids(10)
    shapes, rows = [], {}

    def reader(block, probs):
        shapes.append(tuple(probs.shape))
        rows[block] = probs[0]

    with read_attention(lm.model, {1: lm.adapter.attention(1)}, reader, {1: (3, 0, 2)}), torch.no_grad():
        lm.model(ids, use_cache=False)
    assert shapes == [(1, 3, 10, 10)]
    want = eager_attentions("qwen2", ids)[1][0]
    torch.testing.assert_close(rows[1], want[[3, 0, 2]].float(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Tiny models saved as model folders, for the CLI."""
    folders = {}
    for family in ("llama", "qwen2", "bloom"):
        lm = tiny_model(family)
        folders[family] = tmp_path_factory.mktemp(f"tiny-{family}")
        lm.model.save_pretrained(folders[family])
        lm.tokenizer.save_pretrained(folders[family])
    return folders


PROMPT = "the cat sat on the mat and the dog ran"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_cli_pattern_equals_eager_output_attentions(family, family_dirs):
    """`heads pattern` JSON, CSV and table against transformers itself (eager attention, output_attentions) on
    the saved model folder; under --drop 0 against a model without block 0."""
    folder = family_dirs[family]
    args = ["heads", "pattern", "--model", str(folder), "--heads", "2.3,0.1", "-p", PROMPT]
    result = runner.invoke(app, [*args, "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ids = torch.tensor([data["token_ids"]])
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        want = model(ids, output_attentions=True, use_cache=False).attentions
    assert list(data["weights"]) == ["2.3", "0.1"] and data["intervened"] is None
    for spec, (block, head) in (("2.3", (2, 3)), ("0.1", (0, 1))):
        torch.testing.assert_close(torch.tensor(data["weights"][spec]), want[block][0, head], atol=1e-5, rtol=0)
    table = runner.invoke(app, [*args, "--keys", "2"])
    assert table.exit_code == 0, table.output
    section = table.stdout.split("head 0.1, baseline")[1].splitlines()
    last = section[2 + ids.shape[1] - 1]  # the title's rest, the column header, then one line per query
    strongest = want[0][0, 1, -1].topk(2).indices.tolist()
    assert [int(cell.split()[0]) for cell in last.split(maxsplit=2)[2].split(" | ")] == strongest
    dropped = runner.invoke(app, [*args, "--drop", "0", "-f", "csv"])
    assert dropped.exit_code == 0, dropped.output
    rows = list(csv.DictReader(io.StringIO(dropped.stdout)))
    model.model.layers = torch.nn.ModuleList(list(model.model.layers)[1:])
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    if getattr(model.config, "layer_types", None):  # qwen2: each layer keeps its sliding window or full attention
        model.config.layer_types = model.config.layer_types[1:]
    with torch.no_grad():
        without_first = model(ids, output_attentions=True, use_cache=False).attentions[1][0, 3]
    got = torch.zeros_like(without_first)
    for row in rows:
        if (row["run"], row["block"], row["head"]) == ("intervened", "2", "3"):
            got[int(row["query"]), int(row["key"])] = float(row["weight"])
    torch.testing.assert_close(got, without_first, atol=1e-5, rtol=0)
    assert {row["run"] for row in rows} == {"baseline", "intervened"}


def test_cli_pattern_mistakes_are_one_line(family_dirs):
    for args, fragment in (
        (["--heads", "4.0"], "--heads holds head 4.0, outside the model's 4 blocks x 4 heads"),
        (["--heads", "0.4"], "--heads holds head 0.4, outside"),
        (["--heads", "0.x"], "--heads: Bad head spec '0.x'"),
        (["--heads", "0.0", "--model", str(family_dirs["bloom"])], "not available for bloom"),
    ):
        result = runner.invoke(app, ["heads", "pattern", "--model", str(family_dirs["llama"]), "-p", PROMPT, *args])
        lines = [line for line in result.stderr.splitlines() if not line.startswith("[layerscope] ")]
        assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert fragment in lines[0], lines[0]
