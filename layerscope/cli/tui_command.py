"""`layerscope tui` (and `layerscope` alone): open the explorer. Imports no torch before the UI paints."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, PromptOption, Reads, TopKOption, with_option_groups


@with_option_groups
def tui(
    *,
    model: ModelOptions,
    prompt: PromptOption = None,
    theme: Annotated[
        str | None, typer.Option(help="Theme name (themes/ folder, user theme folder, or Textual's).")
    ] = None,
    keymap: Annotated[
        Path | None, typer.Option(help="Keymap TOML file (binding id = keys); default: user config."), Reads()
    ] = None,
    top_k: TopKOption = 5,
    lens: Annotated[
        Path | None,
        typer.Option(
            "--lens",
            help="A tuned or Jacobian lens folder (its config.json says which): m then cycles logit lens, that "
            "lens, Patchscope.",
        ),
        Reads(),
    ] = None,
    steer: Annotated[
        Path | None,
        typer.Option(help="A steering vector file (from 'layerscope steer vector'): the layer pane's steer column."),
        Reads(),
    ] = None,
    list_themes: Annotated[
        bool, typer.Option("--list-themes", help="Print the theme names --theme accepts and exit.")
    ] = False,
) -> None:
    """Open the explorer: decode grid, layer and head toggles, charts.

    Example: layerscope tui --prompt "The capital of France is" --theme layerscope-light
    """
    if list_themes:
        print_themes()
        return
    if sys.stdin is None or sys.stdin.closed or not sys.stdin.isatty():
        typer.echo(
            "error: The explorer reads keys from a terminal, and standard input is not one (closed or "
            "redirected). Run it in a terminal, or use the batch commands (layerscope lens --help).",
            err=True,
        )
        raise typer.Exit(1)
    from layerscope.tui.app import LayerscopeApp

    app = LayerscopeApp(
        model=model.model,
        prompt=prompt,
        theme=theme,
        device=model.device,
        dtype=model.dtype,
        device_map=model.device_map,
        trust_remote_code=model.trust_remote_code,
        keymap_path=keymap,
        top_k=top_k,
        lens_dir=lens,
        steer_file=steer,
    )
    app.run()
    # The terminal is restored and nothing is left to write (sessions and exports are saved when asked).
    # A worker thread may be inside a forward pass that cannot be interrupted, and tearing down torch takes
    # seconds more: end the process now, so quitting (or a closed terminal, SIGHUP) takes well under a second.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if app.hung_up else (app.return_code or 0))


def print_themes() -> None:
    """Theme files (shipped, then the user's) and Textual's own, one name a line; bad files on stderr."""
    from layerscope.tui.themes import SHIPPED_THEMES, theme_names, user_theme_folder

    names, problems = theme_names([SHIPPED_THEMES, user_theme_folder()])
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    typer.echo("\n".join(names))
