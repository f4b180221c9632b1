"""The explorer's tuned and Jacobian lens methods on a tiny model, against the engine's lenses."""

from __future__ import annotations

import re

import pytest
import torch

from layerscope.analyses.grid import DecodeGrid, build_grid
from layerscope.analyses.jacobian_lens import JacobianLens, jacobian_lens
from layerscope.analyses.lens import lens_logits, logit_lens
from layerscope.analyses.lens_generate import lens_generate
from layerscope.analyses.residual import layer_labels
from layerscope.analyses.tuned_lens import TunedLens, tuned_lens
from layerscope.interventions import DropBlocks
from layerscope.tui.app import LayerscopeApp
from layerscope.tui.themes import SHIPPED_THEMES
from tests.tui_synthetic import notices, prompt_part, settle, tiny_llama

PROMPT = "the capital of france is paris"


@pytest.fixture(scope="module")
def lm():
    return tiny_llama()


def make_app(lm, tmp_path, **kwargs) -> LayerscopeApp:
    return LayerscopeApp(
        lm=lm,
        theme_folders=[SHIPPED_THEMES],
        keymap_path=tmp_path / "keymap.toml",
        continuation_tokens=1,
        prompt=PROMPT,
        **kwargs,
    )


def saved_lens(lm, folder, scale: float) -> TunedLens:
    """A lens with random translators of size `scale` (0: the untrained lens, which is the logit lens)."""
    lens = TunedLens(lm.adapter.config.hidden_size, lm.n_blocks, lm.name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in lens.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator))
    lens.save(folder)
    return lens


def assert_same_grid(shown: DecodeGrid, want: DecodeGrid) -> None:
    assert shown.layers == want.layers and shown.token_ids == want.token_ids
    for shown_row, want_row in zip(shown.cells, want.cells, strict=True):
        for a, b in zip(shown_row, want_row, strict=True):
            assert [t.id for t in a.top] == [t.id for t in b.top]
            assert [t.prob for t in a.top] == pytest.approx([t.prob for t in b.top], abs=1e-5)
            assert a.entropy_bits == pytest.approx(b.entropy_bits, abs=1e-4)
            assert a.kl_to_final == pytest.approx(b.kl_to_final, abs=1e-4)


async def test_identity_lens_grid_is_the_logit_lens(lm, tmp_path):
    saved_lens(lm, tmp_path / "lens", 0.0)
    app = make_app(lm, tmp_path, lens_dir=tmp_path / "lens")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "tuned_lens" and app.runs.results.baseline.method == "tuned_lens"
        assert_same_grid(prompt_part(app.runs.results.baseline), logit_lens(lm, lm.encode(PROMPT)))
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "patchscope"


def saved_jacobian_lens(lm, folder) -> JacobianLens:
    """A Jacobian lens of random matrices near the identity."""
    generator = torch.Generator().manual_seed(2)
    lens = JacobianLens(torch.eye(64) + 0.2 * torch.randn(lm.n_blocks, 64, 64, generator=generator), 1, lm.name)
    lens.save(folder)
    return lens


@pytest.mark.parametrize("method", ["tuned_lens", "jacobian_lens"])
async def test_fitted_lens_grid_is_the_engines_with_interventions(lm, tmp_path, method):
    """A perturbed tuned lens, or a Jacobian lens, from `--lens`: `m` goes to its method (the other lens method,
    not loaded, is skipped silently); the baseline is the engine's grid; with block 1 dropped the intervened grid
    is the engine's decoding of the dropped run through the same lens; detail and chart follow the cursor as for
    the logit lens; `m` then goes on to Patchscope."""
    save, engine = {
        "tuned_lens": (lambda folder: saved_lens(lm, folder, 0.05), tuned_lens),
        "jacobian_lens": (lambda folder: saved_jacobian_lens(lm, folder), jacobian_lens),
    }[method]
    lens = save(tmp_path / "lens")
    app = make_app(lm, tmp_path, lens_dir=tmp_path / "lens")
    ids = lm.encode(PROMPT)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert app.method == method and app.runs.results.baseline.method == method
        want = engine(lm, ids, lens)
        assert_same_grid(prompt_part(app.runs.results.baseline), want)
        grown = lens_generate(lm, ids, app.continuation_tokens, lens=lens)
        assert_same_grid(app.runs.results.baseline, grown)  # the grid grows over the continuation
        assert [c.top[0].id for c in want.cells[1]] != [c.top[0].id for c in logit_lens(lm, ids).cells[1]]
        app.apply_toggles(app.toggles.toggle("drop", 1))
        await settle(pilot)
        rows, final = lens_logits(lm, ids, [DropBlocks((1,))], translate=lens.translate_rows)
        dropped = build_grid(lm, method, ids, rows, final, layer_labels(lm.n_blocks), 5)
        assert_same_grid(prompt_part(app.runs.results.intervened), dropped)
        assert_same_grid(prompt_part(app.runs.results.baseline), want)
        await pilot.press("down", "right")
        await pilot.pause(0.3)
        layer, position = app.grid.cursor_layer, app.grid.cursor_position  # the first generated position
        cell = grown.cells[layer][position]
        entropy, kl = map(float, re.search(r"base H ([\d.]+) bits KL→final ([\d.]+)", app.detail.plain).groups())
        assert entropy == pytest.approx(cell.entropy_bits, abs=0.006) and kl == pytest.approx(
            cell.kl_to_final, abs=6e-4
        )
        assert f"KL→final @{position}" in app.charts(40, 30).plain
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "patchscope" and not any("m skips" in n for n in notices(app))


async def test_without_a_lens_m_skips_it_and_a_bad_folder_is_one_notice(lm, tmp_path):
    (tmp_path / "bad").mkdir()
    app = make_app(lm, tmp_path, lens_dir=tmp_path / "bad")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert sum("No tuned lens in" in n for n in notices(app)) == 1 and app.lens is None
        await pilot.press("m")
        await settle(pilot)
        await pilot.press("m", "m")
        await settle(pilot)
        assert app.method == "patchscope"
        assert sum("m skips the tuned and Jacobian lenses" in n for n in notices(app)) == 1
        saved_lens(lm, tmp_path / "good", 0.0)
        app.load_lens(tmp_path / "good")
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "logit_lens"
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "tuned_lens" and app.runs.results.baseline.method == "tuned_lens"
        saved_jacobian_lens(lm, tmp_path / "jacobian")
        app.load_lens(tmp_path / "jacobian")  # replaces the tuned lens: its method cannot run any more
        assert app.method == "logit_lens" and app.lens.kind == "jacobian"
        await pilot.press("m")
        await settle(pilot)
        assert app.method == "jacobian_lens" and app.runs.results.baseline.method == "jacobian_lens"
