"""`layerscope reproduce NAME`: a seed paper's figures on the user's model, one command per paper.

No `from __future__ import annotations` here: each command's options are built inside `_reproduce_command` for
its paper, so their annotations must be objects, not names to look up later."""

import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import ModelOptions, Output, Reads, StderrProgress, Writes, command
from layerscope.errors import LayerscopeError
from layerscope.locations import SAMPLE_PROMPTS
from layerscope.reproduce import FIGURE_FORMATS, PAPERS, Paper

reproduce_app = typer.Typer(
    help="The seed papers' figures on your model: stages, afcl, shortgpt, retrieval, rome.", no_args_is_help=True
)

FigureFormat = Enum("FigureFormat", {name: name for name in FIGURE_FORMATS}, type=str)  # type: ignore[misc]
QuickOption = Annotated[
    bool,
    typer.Option(
        "--quick",
        help="A small setting that runs the demo model in under two minutes on two CPU cores (see docs/reproduce.md).",
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of the random baselines (noise, random blocks or heads).")]
FormatOption = Annotated[FigureFormat, typer.Option("--figure-format", help="png, svg or pdf.")]


def _reproduce_command(paper: Paper) -> Callable:
    files = sorted({file for format in FIGURE_FORMATS for file in paper.files(format)})
    FolderOption = Annotated[
        Path,
        typer.Option(
            "--figure-dir", help="Folder for the figures, the JSON behind them and the summary (made if new)."
        ),
        Writes(folder=True, files=lambda: files),
    ]
    DataOption = Annotated[
        Path | None,
        typer.Option(
            "--data",
            help=f"A folder with the data sets in the shipped formats "
            f"and names ({', '.join(paper.data)}). Default: "
            "the shipped sample_prompts/.",
        ),
        Reads(tuple(SAMPLE_PROMPTS / name for name in paper.data)),
    ]

    def reproduce(
        *,
        model: ModelOptions,
        quick: QuickOption = False,
        seed: SeedOption = 0,
        data: DataOption = None,
        figure_dir: FolderOption = Path(f"reproduce-{paper.name}"),
        figure_format: FormatOption = FigureFormat["png"],
        output: Output,
    ) -> None:
        from layerscope.reproduce.common import check_plotting, write_files

        check_plotting()
        folder = data or SAMPLE_PROMPTS
        if not folder.is_dir():
            raise LayerscopeError(f"--data '{folder}' is not a folder.")
        for name in paper.data:
            if not (folder / name).is_file():
                raise LayerscopeError(
                    f"--data '{folder}' has no {name}: {paper.name} reads "
                    f"{', '.join(paper.data)} (formats: sample_prompts/README.md)."
                )
        lm = model.load()
        module = paper.module()
        with StderrProgress() as progress:
            result = module.run(lm, quick, seed, folder, progress)
        figures = module.draw(result)
        write_files(result, figures, figure_dir, figure_format.value)
        print(f"[layerscope] figures, JSON and summary written in {figure_dir}", file=sys.stderr)
        # --figure: the paper's first figure, also written (as every figure) in --figure-dir
        output.write(result.to_dict, result.records, lambda: result.summary, lambda: next(iter(figures.values())))

    reproduce.__doc__ = (
        f"{paper.title}: {paper.what}.\n\nWrites the figures, the JSON behind them and a summary "
        f"(also printed) in --figure-dir.\n\n"
        f"Example: layerscope reproduce {paper.name} --model demo --quick --figure-dir figures"
    )
    return command(reproduce)


for _paper in PAPERS.values():
    reproduce_app.command(_paper.name)(_reproduce_command(_paper))
