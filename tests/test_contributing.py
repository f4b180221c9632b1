"""The worked example of a new intervention kind in docs/contributing.md works as written: the one class gives the
registry entry, the range and conflict checks, a CLI option, a toggle of the explorer and a sweep, all checked here
against independent computations."""

import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from layerscope.analyses.compare import greedy_continuation
from layerscope.analyses.sweep import sweep_kinds
from layerscope.cli.lens import with_intervention_options
from layerscope.errors import InterventionError, LayerscopeError
from layerscope.interventions import (
    REGISTRY,
    DropBlocks,
    ModelShape,
    check_interventions,
    intervene,
    intervention_class,
)
from layerscope.interventions.core import cli_options, interventions_from_options
from layerscope.tui.state import Toggles, block_kinds
from tests.examples import blocks
from tests.manual import manual_logits
from tests.test_sweep import assert_points_equal_the_engine
from tests.tiny import random_ids, tiny_model

PAGE = "docs/contributing.md"
(EXAMPLE,) = blocks(PAGE, "## Adding an intervention kind", "python")


@pytest.fixture
def ScaleBlocks():
    """The page's class, defined as a user would; unregistered afterwards so other tests see the shipped kinds."""
    namespace = {"__name__": "docs_contributing"}
    exec(compile(EXAMPLE, PAGE, "exec"), namespace)
    yield namespace["ScaleBlocks"]
    del REGISTRY["scale"]


def _logits(lm, ids, interventions):
    with intervene(lm, interventions, seq_len=ids.shape[1]), torch.no_grad():
        return lm.model(ids).logits[0]


def test_the_class_is_registered_and_offered(ScaleBlocks):
    assert intervention_class("scale") is ScaleBlocks
    assert "scale" in sweep_kinds() and block_kinds()["scale"].title == "scale½"


def test_it_equals_blocks_run_by_hand(ScaleBlocks):
    lm = tiny_model("llama")
    ids = random_ids(9)

    def run_block(index, hidden, args, kwargs):
        out = lm.adapter.blocks[index](hidden, *args[1:], **{k: v for k, v in kwargs.items() if k != "hidden_states"})
        out = out[0] if isinstance(out, tuple) else out
        return hidden + 0.5 * (out - hidden) if index in (1, 3) else out

    expected = manual_logits(lm.adapter, ids, run_block=run_block)
    torch.testing.assert_close(_logits(lm, ids, [ScaleBlocks((1, 3))]), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        _logits(lm, ids, [ScaleBlocks((2,), 0.0)]), _logits(lm, ids, [DropBlocks((2,))]), rtol=0, atol=1e-5
    )


def test_every_pass_means_every_generation_step(ScaleBlocks):
    lm = tiny_model("llama")
    ids = random_ids(6)
    dropped = greedy_continuation(lm, ids, 6, [DropBlocks((2,))]).token_ids
    assert greedy_continuation(lm, ids, 6, [ScaleBlocks((2,), 0.0)]).token_ids == dropped


def test_range_and_conflict_checks_come_from_what_it_declares(ScaleBlocks):
    shape = ModelShape(4, 4)
    with pytest.raises(InterventionError, match="scale: block 9 is out of range 0..3"):
        check_interventions([ScaleBlocks((9,))], shape)
    with pytest.raises(InterventionError, match="scale: no blocks given"):
        check_interventions([ScaleBlocks(())], shape)
    with pytest.raises(InterventionError, match="block 1 is already scaled"):
        check_interventions([ScaleBlocks((1,)), ScaleBlocks((1, 2), 0.25)], shape)
    check_interventions([ScaleBlocks((1,)), ScaleBlocks((2,)), DropBlocks((3,))], shape)
    lm = tiny_model("llama")
    with pytest.raises(InterventionError, match="already scaled"):
        with intervene(lm, [ScaleBlocks((1,)), ScaleBlocks((1,))]):
            pass


def test_cli_option_parses_its_spec(ScaleBlocks):
    option = {o.flag: o for o in cli_options()}["--scale"]
    assert option.help.startswith("Blocks whose update is halved") and option.chooses
    assert interventions_from_options({"scale": "1,3-3"}, 4) == [ScaleBlocks((1, 3))]
    with pytest.raises(LayerscopeError, match="Bad block spec '1-'"):
        interventions_from_options({"scale": "1-"}, 4)
    seen = {}

    def command(prompt_file: str = "", **chosen):
        seen.update(chosen)

    app = typer.Typer()
    app.command()(with_intervention_options(command))
    result = CliRunner().invoke(app, ["--scale", "1,3"])
    assert result.exit_code == 0, result.output
    assert interventions_from_options(seen, 4) == [ScaleBlocks((1, 3))]


def test_explorer_toggle(ScaleBlocks):
    toggles = Toggles().toggle("scale", 1).toggle("scale", 3).toggle("drop", 0)
    assert toggles.interventions(4) == [DropBlocks((0,)), ScaleBlocks((1, 3))]
    assert [toggles.state_of("scale", b) for b in range(4)] == ["off", "on", "off", "on"]
    assert toggles.describe() == "drop 0 · scale 1,3"
    assert Toggles.from_dict(toggles.to_dict()) == toggles


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
def test_sweep_points_equal_the_engine_run_alone(ScaleBlocks, family):
    assert_points_equal_the_engine(tiny_model(family), "scale")


# the page's worked example of a new grid method in the explorer ------------------------------------------------
(METHOD_EXAMPLE,) = blocks(PAGE, "## Adding a grid method to the explorer", "python")


@pytest.fixture
def raw_lens():
    """The page's method, registered as a user would; unregistered afterwards."""
    from layerscope.tui.methods import REGISTRY

    exec(compile(METHOD_EXAMPLE, PAGE, "exec"), {"__name__": "docs_grid_method"})
    yield REGISTRY["raw_lens"]
    del REGISTRY["raw_lens"]


async def test_a_new_grid_method_runs_in_the_explorer(raw_lens, tmp_path):
    """`m` cycles to the page's method; its grid is each residual row, taken from blocks run by hand, through
    the unembedding alone; the side panel and the charts show it like any lens."""
    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.methods import cycled
    from layerscope.tui.themes import SHIPPED_THEMES
    from tests.manual import block_kwargs
    from tests.tui_synthetic import settle

    lm = tiny_model("llama")
    prompt = "the capital of france is"
    app = LayerscopeApp(
        lm=lm,
        prompt=prompt,
        theme_folders=[SHIPPED_THEMES],
        keymap_path=tmp_path / "keymap.toml",
        continuation_tokens=1,
    )
    assert cycled()[-1] == "raw_lens" and not raw_lens.intervenable
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        for _ in cycled():  # m reaches every method within one cycle
            if app.method == "raw_lens":
                break
            await pilot.press("m")
        await settle(pilot)
        grid = app.runs.results.baseline
        assert grid.method == "raw_lens" and app.grid.method is raw_lens and app.runs.results.intervened is None
        assert "raw lens rows" not in str(app.status.render())  # finished: the phase is gone from the status
        assert "KL→final" in app.charts(40, 30).plain and app.detail.plain.startswith("answer ")

    ids = lm.encode(prompt)
    hidden, calls = block_kwargs(lm.adapter, ids)
    states = [hidden]
    with torch.no_grad():
        for index, block in enumerate(lm.adapter.blocks):
            args, kwargs = calls[index]
            out = block(states[-1], *args[1:], **{k: v for k, v in kwargs.items() if k != "hidden_states"})
            states.append(out[0] if isinstance(out, tuple) else out)
        for row, state in enumerate(states):
            log_probs = torch.log_softmax(lm.model.lm_head(state)[0].float(), dim=-1)
            top = log_probs.topk(len(grid.cells[row][0].top), dim=-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1) / math.log(2)
            for position, cell in enumerate(grid.cells[row]):
                assert [t.id for t in cell.top] == top.indices[position].tolist()
                assert [t.prob for t in cell.top] == pytest.approx(top.values[position].exp().tolist(), abs=1e-5)
                assert cell.entropy_bits == pytest.approx(entropy[position].item(), abs=1e-4)
