"""A hand-written explorer session for snapshots (every number printed on screen is a literal here), and the
Pilot helpers the TUI tests share.

Snapshots of real model output differ between machines in the last printed digit (float noise),
so the snapshot tests show this session instead; the real numbers are checked in test_tui_app.py
with a tolerance. The model beside it is a tiny random llama with as many blocks as the grid has
rows, so the layer and head panes match the grid; it never runs while a snapshot is taken.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from layerscope.analyses.grid import DecodeGrid, GridCell, TopToken
from layerscope.tui.state import Results, Session, Toggles

PROMPT = "The capital of France is"
TOKENS = ["The", " capital", " of", " France", " is"]
N_BLOCKS = 12
LAYERS = ["emb", *map(str, range(N_BLOCKS))]
VOCAB = [
    " the",
    " city",
    " of",
    " capital",
    " France",
    " is",
    " Paris",
    " a",
    " Lyon",
    "\x1b[31mred",
    " in",
    " country",
    "[INST]",
]
"""Token texts by id; two are hostile on purpose: an ANSI escape (shown escaped) and Rich markup (shown as is)."""
FINAL = [3, 2, 4, 5, 6]  # the final row's top-1 per position: ' capital', ' of', ' France', ' is', ' Paris'
FIRST_FINAL = [9, 5, 11, 3, 7]  # the row where each position's final top-1 first appears (emb = 0)
WRONG = [0, 1, 7, 9, 10, 12]  # top-1 ids before the final one appears
TOGGLES = Toggles(drop=frozenset({2}))


def _cell(top_ids: list[int], probs: list[float], entropy_bits: float, kl_to_final: float) -> GridCell:
    return GridCell([TopToken(VOCAB[i], i, p) for i, p in zip(top_ids, probs)], entropy_bits, kl_to_final)


def _baseline_cell(row: int, position: int) -> GridCell:
    """Before its first-final row a position shows a wrong token; from there on the final one, growing surer.
    Every number is a multiple of 1/8 or a short decimal literal, so it prints the same everywhere."""
    final, first = FINAL[position], FIRST_FINAL[position]
    top1 = final if row >= first else WRONG[(position + row) % len(WRONG)]
    other = [i for i in (0, 1, 7) if i != top1][:2]
    prob = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)[min(6, max(0, row - first + 3))]
    kl = 96.0 if row == 0 else 0.0 if row == N_BLOCKS else (N_BLOCKS - row) * 0.75 + position * 0.125
    entropy = 12.5 if row == 0 else (N_BLOCKS - row) * 0.5 + 0.25
    return _cell([top1, *other], [prob, 0.0625, 0.03125], entropy, kl)


def _intervened_cell(row: int, position: int) -> GridCell:
    """Block 2 dropped: rows after it lose confidence, and the last position ends on ' Lyon'."""
    cell = _baseline_cell(row, position)
    if row <= 2:
        return cell
    top = [TopToken(t.token, t.id, t.prob / 2) for t in cell.top]
    if position == 4 and row >= 6:
        top[0] = TopToken(VOCAB[8], 8, 0.5)
    return GridCell(top, cell.entropy_bits + 1.0, cell.kl_to_final + 0.5)


def _grid(cell) -> DecodeGrid:
    return DecodeGrid(
        "tiny-llama-12",
        "logit_lens",
        list(TOKENS),
        [0, 3, 2, 4, 5],
        list(LAYERS),
        [[cell(row, position) for position in range(len(TOKENS))] for row in range(len(LAYERS))],
    )


def synthetic_results() -> Results:
    kl_base_int = [
        [0.0 if row <= 2 else row * 0.25 + position * 0.125 for position in range(len(TOKENS))]
        for row in range(len(LAYERS))
    ]
    return Results(
        _grid(_baseline_cell),
        _grid(_intervened_cell),
        kl_base_int,
        {"baseline": " Paris. It is the capital", "intervened": " Lyon. It is a city"},
    )


def write_session(path: Path) -> Path:
    Session("tiny-llama-12", PROMPT, "logit_lens", TOGGLES, synthetic_results()).save(path)
    return path


def tiny_llama(n_blocks: int = N_BLOCKS):
    """A random llama with n_blocks blocks and the tiny test vocabulary; built from a config, no download."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from layerscope.models.adapter import ModelAdapter
    from layerscope.models.loading import LoadedModel
    from tests.tiny import COMMON, CONFIGS, tiny_tokenizer

    torch.manual_seed(0)
    config = AutoConfig.for_model("llama", **{**COMMON, **CONFIGS["llama"], "num_hidden_layers": n_blocks})
    model = AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(
        name=f"tiny-llama-{n_blocks}", model=model, tokenizer=tiny_tokenizer(), adapter=ModelAdapter(model)
    )


async def settle(pilot) -> None:
    """Wait until no worker runs and every message they posted has been handled."""
    app = pilot.app
    for _ in range(2400):
        await pilot.pause(0.05)
        if not any(worker.is_running for worker in app.workers) and not app.runs.running:
            break
    await pilot.pause(0.1)


def notices(app) -> list[str]:
    return [n.message for n in app._notifications]


def screen_text(app) -> str:
    return "\n".join(strip.text for strip in app.screen._compositor.render_strips())


TINY_PROMPT = "the capital of france is paris"


def tiny_app(lm, tmp_path: Path, prompt: str = TINY_PROMPT):
    """The explorer on a tiny model with the shipped themes, a keymap of its own and one continuation token."""
    from layerscope.tui.app import LayerscopeApp
    from layerscope.tui.themes import SHIPPED_THEMES

    return LayerscopeApp(
        lm=lm,
        theme_folders=[SHIPPED_THEMES],
        keymap_path=tmp_path / "keymap.toml",
        continuation_tokens=1,
        prompt=prompt,
    )


def prompt_part(grid: DecodeGrid) -> DecodeGrid:
    """A grid the explorer grew over the continuation, cut back to the prompt's positions: what `logit_lens`
    (or `tuned_lens`, `jacobian_lens`) computes over the prompt alone."""
    end = grid.prompt_length if grid.prompt_length is not None else len(grid.tokens)
    return replace(
        grid,
        tokens=grid.tokens[:end],
        token_ids=grid.token_ids[:end],
        cells=[row[:end] for row in grid.cells],
        prompt_length=None,
    )
