"""Stage map: signatures against independent computations, the segmentation rule, several families."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from layerscope.analyses.lens import logit_lens
from layerscope.analyses.neurons import neuron_census
from layerscope.analyses.prompt_sets import PromptItem
from layerscope.analyses.stages import STAGES, BlockSignature, _forward_signatures, segment, stage_map
from layerscope.models.adapter import ModelAdapter
from layerscope.models.loading import LoadedModel
from tests.manual import rebuilt_without, with_blocks_permuted
from tests.studies import TINY_TEXT, hand_metrics, invoke
from tests.test_neurons import plant
from tests.tiny import tiny_config, tiny_model, tiny_tokenizer

PROMPTS = [PromptItem(TINY_TEXT), PromptItem("red blue green the city is big and small")]


def stages_in_order(stage_map_blocks) -> bool:
    order = [STAGES.index(b.stage) for b in stage_map_blocks]
    return order == sorted(order)


def swapped(n_blocks: int, block: int) -> list[int]:
    order = list(range(n_blocks))
    order[block], order[block + 1] = block + 1, block
    return order


def mean_kl(lm, edited_model) -> float:
    """KL(base || edited) in nats, mean over positions, then over PROMPTS: the edited model is rebuilt from a
    filtered or reordered state dict and run plainly, without layerscope's hooks."""
    kls = []
    with torch.no_grad():
        for item in PROMPTS:
            ids = lm.encode(item.text)
            base, edited = lm.model(input_ids=ids).logits[0], edited_model(input_ids=ids).logits[0]
            kls.append(hand_metrics(base, edited, ids[0], last_only=False)[0])
    return sum(kls) / len(kls)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "gpt2", "gpt_neox", "phi"])
def test_stage_map_runs_on_each_family(family):
    lm = tiny_model(family)
    result = stage_map(lm, PROMPTS)
    assert [b.block for b in result.blocks] == list(range(lm.n_blocks))
    assert result.blocks[0].stage == STAGES[0] and result.blocks[-1].stage == STAGES[3]
    assert stages_in_order(result.blocks) and all(b.reason for b in result.blocks)
    n = lm.n_blocks
    drop = [mean_kl(lm, rebuilt_without(lm.model, {b})) for b in range(n)]
    swap = [mean_kl(lm, with_blocks_permuted(lm.model, swapped(n, b))) for b in range(n - 1)]
    assert [b.drop_kl for b in result.blocks] == pytest.approx(drop, abs=1e-4)
    assert [b.swap_kl for b in result.blocks[:-1]] == pytest.approx(swap, abs=1e-4)
    assert result.blocks[-1].swap_kl is None
    data = json.loads(json.dumps(result.to_dict()))
    assert data["heuristic"] is True and sum(len(v) for v in data["stages"].values()) == lm.n_blocks


def test_signatures_equal_independent_computations():
    lm = tiny_model("llama")
    ids = lm.encode(TINY_TEXT)
    signatures = _forward_signatures(lm, ids)
    # lens: the engine's logit-lens grid, rows 1..L, mean over positions
    grid = logit_lens(lm, ids)
    for b in range(lm.n_blocks):
        assert signatures["lens_kl"][b] == pytest.approx(
            sum(grid.column(t, "kl_to_final")[b + 1] for t in range(ids.shape[1])) / ids.shape[1], abs=1e-4
        )
    # previous-five attention from an eager copy of the same weights, by loops
    eager = tiny_model("llama")
    eager.model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager.model(input_ids=ids, output_attentions=True).attentions
    for b, probs in enumerate(attentions):
        shares = [float(probs[0, :, t, max(0, t - 5) : t].sum(-1).mean()) for t in range(1, ids.shape[1])]
        assert signatures["prev5_attention"][b] == pytest.approx(sum(shares) / len(shares), abs=1e-5)
    # MLP output = block output - block input - attention output (llama blocks are sequential residual)
    seen = {}
    hooks = [
        lm.adapter.blocks[b].register_forward_hook(
            lambda m, a, k, o, b=b: seen.__setitem__(("block", b), (a[0] if a else k["hidden_states"], o)),
            with_kwargs=True,
        )
        for b in range(lm.n_blocks)
    ]
    hooks += [
        lm.adapter.attention(b).register_forward_hook(lambda m, a, o, b=b: seen.__setitem__(("attn", b), o[0]))
        for b in range(lm.n_blocks)
    ]
    with torch.no_grad():
        lm.model(input_ids=ids)
    for hook in hooks:
        hook.remove()
    for b in range(lm.n_blocks):
        hidden_in, hidden_out = seen[("block", b)]
        hidden_out = hidden_out[0] if isinstance(hidden_out, tuple) else hidden_out
        mlp = hidden_out - hidden_in - seen[("attn", b)]
        assert signatures["mlp_norm"][b] == pytest.approx(mlp[0].norm(dim=-1).mean().item(), rel=1e-4)
        assert signatures["attn_norm"][b] == pytest.approx(seen[("attn", b)][0].norm(dim=-1).mean().item(), rel=1e-4)


def signature(block, drop=0.1, lens=1.0, mlp=1.0):
    return BlockSignature(block, drop, 0.0, lens, 1.0, 1.0, mlp, 1.0, 0.5)


def test_segmentation_rule_by_hand():
    # 12 blocks: drop-KL high at 0-2 (quarter = 3, so all three), MLP norm high at 9-11,
    # lens KL peaks at block 5 (8.0) and first falls to <= 6.0 at block 7
    drops = [9, 5, 3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    lens = [9, 9, 9, 4, 5, 8, 7, 6, 3, 2, 1, 0]
    mlps = [1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 9]
    blocks = [signature(b, drops[b], lens[b], mlps[b]) for b in range(12)]
    segment(blocks)
    assert [b.stage for b in blocks] == [STAGES[0]] * 3 + [STAGES[1]] * 4 + [STAGES[2]] * 2 + [STAGES[3]] * 3
    # a model with no outstanding block: only block 0 and the last block are pinned by the rule
    flat = [signature(b) for b in range(8)]
    segment(flat)
    assert flat[0].stage == STAGES[0] and flat[-1].stage == STAGES[3] and stages_in_order(flat)


def test_cli_stages_json_and_table(tiny_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(TINY_TEXT + "\n")
    result = invoke("stages", "--model", str(tiny_dir), "--prompts", str(prompts), "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert len(data["blocks"]) == 4 and {"drop_kl", "swap_kl", "lens_kl", "prev5_attention", "stage", "reason"} <= set(
        data["blocks"][0]
    )
    table = invoke("stages", "--model", str(tiny_dir), "--prompts", str(prompts)).stdout
    assert "heuristic" in table.lower() and "detokenisation" in table
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    bad = invoke("stages", "--model", str(tiny_dir), "--prompts", str(empty))
    assert bad.exit_code == 1 and "the file is empty" in bad.stderr


def eight_block_llama():
    """A tiny llama of 8 blocks, so the last quarter holds two: the last block and one the rule must decide."""
    torch.manual_seed(0)
    config = tiny_config("llama")
    config.num_hidden_layers = 8
    model = AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(name="tiny-llama-8", model=model, tokenizer=tiny_tokenizer(), adapter=ModelAdapter(model))


def test_planted_suppression_neurons_join_the_signatures_and_make_a_sharpening_block():
    """Block 6 gets three neurons that write minus a token's unembedding: the census counts them, the signature
    shows them, and the rule puts block 6 into residual sharpening, saying why; without them it is not there."""
    lm = eight_block_llama()
    before = stage_map(lm, PROMPTS)
    assert before.blocks[6].stage != STAGES[3]
    assert [(b.prediction_neurons, b.suppression_neurons) for b in before.blocks] == [(0, 0)] * 8
    token = lm.tokenizer.convert_tokens_to_ids("paris")
    for neuron in (3, 11, 40):
        plant(lm, 6, neuron, token, -1.0)
    after = stage_map(lm, PROMPTS)
    census = neuron_census(lm)
    assert [(b.prediction_neurons, b.suppression_neurons) for b in after.blocks] == [
        (b.prediction, b.suppression) for b in census.blocks
    ]
    assert (after.blocks[6].prediction_neurons, after.blocks[6].suppression_neurons) == (0, 3)
    assert after.blocks[6].stage == STAGES[3]
    assert after.blocks[6].reason == "suppression neurons 3 > prediction neurons 0"
    data = after.to_dict()
    assert data["heuristic"] is True and data["blocks"][6]["suppression_neurons"] == 3
    assert "suppression neurons outnumber its prediction neurons" in data["rule"]


def test_a_mixture_of_experts_has_no_counts_and_the_rule_goes_on_without_them():
    result = stage_map(tiny_model("mixtral"), PROMPTS[:1])
    assert all(b.prediction_neurons is None and b.suppression_neurons is None for b in result.blocks)
    assert result.blocks[-1].stage == STAGES[3] and stages_in_order(result.blocks)


def test_on_the_demo_model_the_last_blocks_where_suppression_outnumbers_prediction_sharpen(demo_lm):
    """The demo model's census of its last two blocks (the others left uncounted to keep the test short) in
    otherwise flat signatures: both have more suppression than prediction neurons (5/6 and 54/65 here), so both are
    residual sharpening, block 28 by its neurons; the run stops at block 27, which is not counted."""
    n = demo_lm.n_blocks
    census = neuron_census(demo_lm, blocks=[n - 2, n - 1])
    blocks = [signature(b) for b in range(n)]
    for counts in census.blocks:
        blocks[counts.block].prediction_neurons = counts.prediction
        blocks[counts.block].suppression_neurons = counts.suppression
    segment(blocks)
    assert [b.block for b in blocks if b.stage == STAGES[3]] == [n - 2, n - 1]
    assert all(b.suppression > b.prediction for b in census.blocks)
    second_last = census.block(n - 2)
    assert blocks[n - 2].reason == (
        f"suppression neurons {second_last.suppression} > prediction neurons {second_last.prediction}"
    )


def test_segmentation_with_probe_rises_by_hand():
    """The 12 blocks above, with significant probe rises at block 2 (inside the drop-KL run) and block 7 (before
    the lens KL first falls at block 7... so ensembling would start there): PROBE_RULE ends detokenisation before
    block 2 and starts ensembling after block 7."""
    drops = [9, 5, 3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    lens = [9, 9, 9, 4, 5, 8, 7, 6, 3, 2, 1, 0]
    mlps = [1, 1, 1, 1, 1, 1, 1, 1, 1, 5, 5, 9]
    blocks = [signature(b, drops[b], lens[b], mlps[b]) for b in range(12)]
    for b in blocks:
        b.probe_accuracy, b.probe_rise = 0.5, b.block in (2, 7)
    segment(blocks)
    assert [b.stage for b in blocks] == [STAGES[0]] * 2 + [STAGES[1]] * 6 + [STAGES[2]] + [STAGES[3]] * 3
    assert blocks[2].reason == "probe accuracy 50.0%: a significant rise"
    assert blocks[8].reason.endswith("after the last significant probe rise (block 7)")
    # a rise that comes after the lens-KL start of ensembling moves nothing earlier, and none moves nothing
    for b in blocks:
        b.probe_rise = b.block == 4
    segment(blocks)
    assert [b.stage for b in blocks] == [STAGES[0]] * 3 + [STAGES[1]] * 4 + [STAGES[2]] * 2 + [STAGES[3]] * 3


def jumping_probe(lm, accuracies, errors, model=None):
    """A hand-built ProbeReport over the model's grid rows (emb, 0..L-1): these accuracies and standard errors,
    a control of 0.3 ± 0.05, classes of equal size (majority 0.25)."""
    from layerscope.analyses.probes import ProbeReport, RowProbe
    from layerscope.analyses.residual import layer_labels

    rows = [
        RowProbe(name, accuracy, se, 0.3, 0.05)
        for name, accuracy, se in zip(layer_labels(lm.n_blocks), accuracies, errors, strict=True)
    ]
    return ProbeReport(model or lm.name, "kind", ["a", "b", "c", "d"], 16, 4, 0, 0.25, rows)


def test_the_probe_signature_is_the_reports_numbers_and_its_jump_makes_feature_engineering():
    """Tiny llama, 4 blocks: the probe jumps from 30% to 90% at block 1's output. Each signature is the report's
    number at the block's output row; the rise is significant at block 1 only (by hand: 0.6 > 2·hypot(0.03,
    0.02); block 0's 0.05 is not > 2·hypot(0.02, 0.02) = 0.057); block 1 is feature engineering, and
    ensembling, whatever the lens says, starts after it."""
    from layerscope.analyses.stages import PROBE_RULE
    from layerscope.cli.tables import stages_table

    lm = tiny_model("llama")
    probe = jumping_probe(lm, [0.25, 0.3, 0.9, 0.92, 0.93], [0.02, 0.02, 0.03, 0.02, 0.02])
    result = stage_map(lm, PROMPTS, probe=probe)
    assert [b.probe_accuracy for b in result.blocks] == [0.3, 0.9, 0.92, 0.93]
    assert [b.probe_gain for b in result.blocks] == [r.accuracy - 0.3 for r in probe.rows[1:]]
    assert [b.probe_rise for b in result.blocks] == [False, True, False, False]
    assert [b.stage for b in result.blocks] == [STAGES[0], STAGES[1], STAGES[2], STAGES[3]]
    assert result.blocks[1].reason == "probe accuracy 90.0%: a significant rise"
    assert result.rule.endswith(PROBE_RULE) and result.to_dict()["probe"]["label"] == "kind"
    assert {"probe_accuracy", "probe_gain", "probe_rise"} <= set(result.records().columns)
    table = stages_table(result)
    assert "  90.0%*  60.0%" in table and '"kind"' in table
    assert result.plot().axes[-1].get_ylabel() == "probe accuracy (held out)"
    # without the probe, the same blocks carry no probe columns' values
    assert all(b.probe_accuracy is None for b in stage_map(lm, PROMPTS).blocks)


def test_a_probe_of_another_model_or_other_rows_is_refused():
    from layerscope.errors import LayerscopeError

    lm = tiny_model("llama")
    accuracies, errors = [0.5] * 5, [0.01] * 5
    for probe, message in [
        (jumping_probe(lm, accuracies, errors, model="other"), "probe= was computed on 'other'"),
        ("probe.json", "probe= must be a ProbeReport"),
    ]:
        with pytest.raises(LayerscopeError, match=message):
            stage_map(lm, PROMPTS, probe=probe)
    short = jumping_probe(lm, accuracies, errors)
    short.rows.pop()
    with pytest.raises(LayerscopeError, match="not this model's grid rows"):
        stage_map(lm, PROMPTS, probe=short)


def test_cli_stages_with_probe_data_equals_the_probe_command(tiny_dir, tmp_path):
    """`stages --probe-data --probe-label`: each block's probe accuracy is `layerscope probe`'s on the same file
    at the block's output row; bad probe input is one error line before the model loads."""
    prompts = tmp_path / "p.txt"
    prompts.write_text(TINY_TEXT + "\n")
    data = tmp_path / "d.jsonl"
    words = ["red", "blue", "green", "city", "big", "small", "one", "two"]
    data.write_text(
        "".join(
            json.dumps({"prompt": f"the {w} is {v}", "kind": k}) + "\n"
            for k, v in [("x", "one"), ("y", "two")]
            for w in words
        )
    )
    probed = invoke("probe", "--model", str(tiny_dir), "--data", str(data), "--label", "kind", "--format", "json")
    assert probed.exit_code == 0, probed.output
    staged = invoke(
        "stages",
        "--model",
        str(tiny_dir),
        "--prompts",
        str(prompts),
        "--probe-data",
        str(data),
        "--probe-label",
        "kind",
        "--format",
        "json",
    )
    assert staged.exit_code == 0, staged.output
    rows = json.loads(probed.stdout)["rows"]
    blocks = json.loads(staged.stdout)["blocks"]
    assert [b["probe_accuracy"] for b in blocks] == [r["accuracy"] for r in rows[1:]]
    assert [b["probe_gain"] for b in blocks] == [r["accuracy"] - r["control"] for r in rows[1:]]
    (tmp_path / "not.jsonl").write_text("the city is big\n")
    for args, fragment in [
        (["--probe-data", str(data), "--probe-label", "colour"], '"colour"'),
        (["--probe-data", str(tmp_path / "not.jsonl"), "--probe-label", "kind"], "not.jsonl"),
        (["--probe-data", str(data)], "--probe-data and --probe-label go together"),
        (["--probe-label", "kind"], "--probe-data and --probe-label go together"),
        (["--probe-data", str(data), "--probe-label", "prompt"], "--probe-label 'prompt'"),
    ]:
        bad = invoke("stages", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts), *args)
        lines = bad.stderr.strip().splitlines()
        assert bad.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (
            bad.stderr
        )
