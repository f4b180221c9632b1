"""`layerscope steer vector`: a steering vector from two prompt sets (applied with `run --steer FILE`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import BosModelOptions, Reads, Writes, command
from layerscope.errors import LayerscopeError

steer_app = typer.Typer(help="Steering vectors: make one from two prompt sets.", no_args_is_help=True)


def check_vector_path(flag: str, path: Path) -> None:
    """Before any work: the vector is a binary file, never standard output."""
    if str(path) == "-":
        raise LayerscopeError(f"{flag}: a steering vector is a safetensors file; name one, not '-' (standard output).")


PromptSetOption = Annotated[Path, typer.Option(help="Prompts, one a line (or .jsonl with a prompt field)."), Reads()]


@steer_app.command("vector")
@command
def vector(
    *,
    positive: PromptSetOption,
    negative: PromptSetOption,
    row: Annotated[int, typer.Option(min=0, help="Grid row of the residual states (the input of block ROW).")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="The vector file to write (.safetensors)."),
        Writes(check=check_vector_path),
    ],
    model: BosModelOptions,
) -> None:
    """The mean last-token residual state at a row over the positive prompts minus that over the negative ones.

    Example: layerscope steer vector --positive love.txt --negative hate.txt --row 6 --out love.safetensors
    """
    from layerscope.analyses.prompt_sets import load_prompt_set
    from layerscope.analyses.steering import steering_vector

    texts = {name: [item.text for item in load_prompt_set(path)] for name, path in (("+", positive), ("-", negative))}
    lm = model.load()
    saved = steering_vector(lm, texts["+"], texts["-"], row)
    saved.save(out)
    typer.echo(f"{out}: row {row}, norm {float(saved.vector.norm()):.4g}, {len(saved.vector)} entries ({lm.name})")
