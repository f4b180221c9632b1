"""The explorer's plain parts: toggles, sessions, theme and keymap files, row-by-row compute, the overview."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from layerscope.analyses.grid import DecodeGrid
from layerscope.errors import LayerscopeError
from layerscope.tui.charts import SHADES, overview_text
from layerscope.tui.keymap import load_keymap
from layerscope.tui.state import Results, Session, Toggles
from layerscope.tui.themes import SHIPPED_THEMES, load_themes


def test_tui_and_cli_import_no_torch():
    """The first frame must not wait for torch: importing the app and the CLI pulls in no engine (nor plotext,
    whose import takes a fifth of a second: the charts import it when they first draw)."""
    code = (
        "import sys, layerscope.cli.app, layerscope.tui.app; "
        "print([m for m in ('torch', 'transformers', 'layerscope.models.loading', 'plotext') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_toggles_flip_and_become_interventions():
    from layerscope.interventions import DropBlocks, FreezeFrom, MaskHeads, RandomizeAt, SkipAttention, SwapBlocks

    toggles = Toggles().toggle("drop", 3).toggle("drop", 5).toggle("swap", 7).toggle("freeze", 10)
    toggles = toggles.toggle("random", 2).toggle("skip_attn", 20).toggle_head(4, 1)
    assert toggles.toggle("drop", 3).drop == {5}
    assert toggles.toggle("freeze", 12).freeze == 12 and toggles.toggle("freeze", 10).freeze is None
    assert [toggles.state_of("freeze", b) for b in (9, 10, 11)] == ["off", "on", "covered"]
    assert [toggles.state_of("random", b) for b in (2, 3)] == ["on", "off"]
    assert toggles.interventions(30) == [
        DropBlocks((3, 5)),
        SwapBlocks(7),
        FreezeFrom(10),
        RandomizeAt(2, 0),
        SkipAttention(tuple(range(20, 30))),
        MaskHeads(((4, 1),), "zero"),
    ]
    assert Toggles.from_dict(toggles.to_dict()) == toggles
    assert Toggles().is_empty and not toggles.is_empty
    assert "drop 3,5" in toggles.describe() and "seed 0" in toggles.describe()
    with pytest.raises(LayerscopeError):
        Toggles.from_dict({"drop": ["x"]})


def test_a_session_with_an_unknown_mask_mode_is_refused_when_read():
    # mypy found it: any string was kept as the mode, and the session only failed at its first run
    with pytest.raises(LayerscopeError, match="mask mode 'half'"):
        Toggles.from_dict({"masked_heads": [[4, 1]], "mask_mode": "half"})
    assert Toggles.from_dict({"masked_heads": [[4, 1]], "mask_mode": "uniform"}).mask_mode == "uniform"


def test_theme_files_load_and_bad_ones_are_reported(tmp_path):
    themes, problems = load_themes([SHIPPED_THEMES])
    assert {"layerscope-dark", "layerscope-light", "layerscope-high-contrast"} <= {t.name for t in themes}
    assert problems == []
    (tmp_path / "broken.toml").write_text("name = [unclosed", encoding="utf-8")
    (tmp_path / "badcolour.toml").write_text('primary = "not-a-colour"', encoding="utf-8")
    (tmp_path / "extra.toml").write_text('primary = "#ffffff"\nsparkle = true', encoding="utf-8")
    (tmp_path / "mine.toml").write_text('primary = "#ff0000"\ndark = false', encoding="utf-8")
    themes, problems = load_themes([tmp_path])
    assert [t.name for t in themes] == ["mine"]
    assert len(problems) == 3 and any("broken.toml" in p for p in problems)
    assert any("sparkle" in p for p in problems)


def test_keymap_file(tmp_path):
    path = tmp_path / "keymap.toml"
    assert load_keymap(path) == {}
    path.write_text('run = "f6"\nquit = "ctrl+x"', encoding="utf-8")
    assert load_keymap(path) == {"run": "f6", "quit": "ctrl+x"}
    path.write_text("run = 3", encoding="utf-8")
    with pytest.raises(LayerscopeError, match="key strings"):
        load_keymap(path)


def test_overview_fits_80_columns_and_bins_80_layers():
    tokens = [f" t{i}" for i in range(40)]
    for n_rows in (31, 81):
        values = [[float(r + p) for p in range(40)] for r in range(n_rows)]
        layers = ["emb", *map(str, range(n_rows - 1))]
        text = overview_text(values, tokens, layers, (n_rows - 1, 39), 80, 30, True, "blue").plain.splitlines()
        assert all(len(line) <= 80 for line in text)
        cells = text[1].split("│")[1]
        assert len(cells) == min(n_rows, 80 - 15)
        assert len(text) == 30 and "40 positions in 28 lines" in text[-1]  # positions binned to the height too
        assert text[-2].split("│")[1].endswith("◆")  # the cursor: last row, last position
        assert set(text[3].split("│")[1]) <= set(SHADES)
    grown = overview_text(values, tokens, layers, (0, 0), 80, 42, True, "blue", prompt_length=38).plain.splitlines()
    assert grown[38].startswith("  37 ·t37") and grown[39].startswith("  38+·t38")  # generated, marked as in the grid
    binned = overview_text(values, tokens, layers, (0, 9), 80, 22, True, "blue", prompt_length=10).plain.splitlines()
    lines = [line.split("│")[0] for line in binned[1:-1]]  # 40 positions in 20 lines: two per line
    assert lines[4] == "   9 ·t9      " and lines[5] == "  10+·t10     "  # the cursor's line names position 9
    assert lines[3] == "   6 ·t6      " and binned[5].split("│")[1][0] == "◆"


def _manual_drop_logits(lm, ids, block):
    """The model's logits with one block removed from its module list: plain surgery, no hooks."""
    model = lm.model.model
    original = model.layers
    model.layers = nn.ModuleList([layer for i, layer in enumerate(original) if i != block])
    try:
        with torch.no_grad():
            return lm.model(ids, use_cache=False).logits[0].float()
    finally:
        model.layers = original


@pytest.mark.demo
def test_rows_match_the_lens_and_kl_is_the_formula(demo_lm, tmp_path):
    """Row-by-row compute equals the whole-grid lens; the last row's KL(base‖int) is the formula on
    logits of a model with the block cut out by hand. Then a session with these results round-trips."""
    from layerscope.analyses.lens import logit_lens
    from layerscope.interventions import DropBlocks
    from layerscope.tui.compute import empty_grid, lens_rows

    ids = demo_lm.encode("Paris is the capital of")
    drop = [DropBlocks((3,))]
    rows = list(lens_rows(demo_lm, ids, drop, 3, lambda: False))
    assert [r.label for r in rows] == ["emb"] + [str(b) for b in range(demo_lm.n_blocks)]
    baseline, intervened = logit_lens(demo_lm, ids, top_k=3), logit_lens(demo_lm, ids, top_k=3, interventions=drop)
    for row in rows:
        for got, want in ((row.baseline, baseline.cells[row.row]), (row.intervened, intervened.cells[row.row])):
            assert [c.top[0].id for c in got] == [c.top[0].id for c in want]
            assert [c.entropy_bits for c in got] == pytest.approx([c.entropy_bits for c in want], abs=1e-4)

    with torch.no_grad():
        base = torch.log_softmax(demo_lm.model(ids, use_cache=False).logits[0].float(), -1)
    other = torch.log_softmax(_manual_drop_logits(demo_lm, ids, 3), -1)
    expected = (base.exp() * (base - other)).sum(-1)
    assert rows[-1].kl_base_int == pytest.approx(expected.tolist(), rel=1e-3, abs=1e-4)
    assert max(rows[-1].kl_base_int) > 0.01  # dropping block 3 does change the output

    assert list(lens_rows(demo_lm, ids, drop, 3, lambda: True)) == []  # cancelled before the first row

    grid = empty_grid(demo_lm, "logit_lens", ids)
    assert grid.tokens == demo_lm.token_texts(ids[0]) and grid.cells == []
    path = tmp_path / "session.json"
    Session(
        "demo",
        "Paris is the capital of",
        "logit_lens",
        Toggles(drop=frozenset({3})),
        Results(baseline, intervened, [r.kl_base_int for r in rows], {"baseline": " France"}),
    ).save(path)
    loaded = Session.load(path)
    assert loaded.toggles.drop == {3} and loaded.prompt == "Paris is the capital of"
    assert loaded.results.baseline == DecodeGrid.from_dict(baseline.to_dict()) == baseline
    assert loaded.results.intervened == intervened and loaded.results.continuation == {"baseline": " France"}


def test_bad_session_files(tmp_path):
    path = tmp_path / "s.json"
    with pytest.raises(LayerscopeError, match="Cannot read"):
        Session.load(path)
    path.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(LayerscopeError, match="not a layerscope session"):
        Session.load(path)
    path.write_text('{"layerscope_session": 1, "prompt": "x"}', encoding="utf-8")
    with pytest.raises(LayerscopeError, match="damaged"):
        Session.load(path)


def test_tui_command_is_registered():
    from typer.testing import CliRunner

    from layerscope.cli.app import app

    result = CliRunner().invoke(app, ["tui", "--help"])
    assert result.exit_code == 0 and "--theme" in result.output and "--prompt" in result.output


def test_sighup_ends_the_explorer(tmp_path):
    """In a real terminal (a pty), SIGHUP ends `layerscope tui` promptly with exit code 1."""
    import os
    import pty
    import select
    import signal

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm-256color", "XDG_CONFIG_HOME": str(tmp_path)}
    main, child = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from layerscope.cli.app import main; main()",
            "tui",
            "--model",
            str(tmp_path / "no-model"),
        ],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        start_new_session=True,
    )
    os.close(child)
    seen = b""
    try:
        while b"prompt" not in seen:  # the first frame has been written
            ready, _, _ = select.select([main], [], [], 30)
            assert ready, "the explorer wrote nothing"
            seen += os.read(main, 65536)
        process.send_signal(signal.SIGHUP)
        for _ in range(300):  # up to 30 s, keeping the pty drained so the app never blocks on a write
            if process.poll() is not None:
                break
            if select.select([main], [], [], 0.1)[0]:
                try:
                    os.read(main, 65536)
                except OSError:
                    break
        assert process.wait(timeout=30) == 1
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)


def test_every_binding_runs_an_action_of_its_pane_and_every_palette_help_names_one():
    from textual.binding import Binding

    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.grid_view import DecodeGridView
    from layerscope.tui.panes import HeadPane, LayerPane, OverviewPane, SidePane
    from layerscope.tui.screens import PALETTE_HELP

    actions = {
        (owner, binding.action.split("(")[0])
        for owner in (LayerscopeApp, DecodeGridView, SidePane, LayerPane, HeadPane, OverviewPane)
        for binding in owner.BINDINGS
        if isinstance(binding, Binding)
    }
    assert [(owner, name) for owner, name in actions if not callable(getattr(owner, f"action_{name}", None))] == []
    assert set(PALETTE_HELP) <= {name for owner, name in actions if owner is LayerscopeApp}


def test_choose_theme_falls_back_and_says_so_only_when_asked():
    from layerscope.tui.themes import DEFAULT_THEME, FALLBACK_THEME, choose_theme

    assert choose_theme("mine", ["mine", DEFAULT_THEME]) == ("mine", [])
    assert choose_theme(None, [DEFAULT_THEME]) == (DEFAULT_THEME, [])
    assert choose_theme(None, [FALLBACK_THEME]) == (FALLBACK_THEME, [])  # the shipped themes are missing: no notice
    assert choose_theme("nope", [DEFAULT_THEME]) == (FALLBACK_THEME, [f"Unknown theme 'nope'; using {FALLBACK_THEME}."])


def test_status_line_leads_with_what_is_stale_then_what_is_happening():
    from layerscope.tui.views import status_line

    line = status_line(["prompt", "interventions"], "ready\x1b", [], ["logit_lens", "demo"], 200)
    assert (
        line.plain == "STALE: prompt, interventions changed · Ctrl+R reruns · ready␛ · no interventions · "
        "logit_lens · demo"
    )
    assert status_line([], "done", ["drop 2"], ["demo"], 80).plain == "done · drop 2 · demo"


def test_status_line_shortens_the_interventions_that_do_not_fit():
    """At 80 columns the phase, time and Esc come first whole; the interventions shrink to the first and a count
    ('drop 2 +3 more') before anything else is cut."""
    from layerscope.tui.views import status_line

    activity, shown = "lens rows 12/31 · 1.4 s · Esc cancels", ["logit_lens", "view intervened", "demo"]
    parts = ["drop 2", "swap 5↔6", "freeze ≥20", "mask 17.3, 18.6 (uniform)"]
    line = status_line([], activity, parts, shown, 78).plain
    assert line == "lens rows 12/31 · 1.4 s · Esc cancels · drop 2 +3 more · logit_lens · view intervened · demo"
    assert status_line([], activity, parts, shown, 200).plain == " · ".join([activity, *parts, *shown])


def test_sessions_with_the_old_kind_spellings_still_load():
    """Sessions saved before one spelling per kind wrote `skip_attn`; they load, and are saved as `skip-attn`."""
    from layerscope.interventions import SkipAttention

    old = {
        "drop": [3],
        "swap": [],
        "freeze": None,
        "random": 2,
        "seed": 4,
        "skip_attn": 20,
        "masked_heads": [[4, 1]],
        "mask_mode": "uniform",
    }
    toggles = Toggles.from_dict(old)
    assert toggles.skip_attn == 20 and toggles.random == 2 and toggles.drop == {3} and toggles.seed == 4
    assert SkipAttention(tuple(range(20, 30))) in toggles.interventions(30)
    saved = toggles.to_dict()
    assert saved["skip-attn"] == 20 and "skip_attn" not in saved
    assert Toggles.from_dict(saved) == toggles
    with pytest.raises(LayerscopeError, match="Unknown intervention 'dropp'"):
        Toggles.from_dict({"dropp": [1]})
