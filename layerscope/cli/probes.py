"""`layerscope probe`: a linear probe per grid row on a labelled prompt set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from layerscope.cli.common import BosModelOptions, Output, Reads, command
from layerscope.cli.tables import probe_table
from layerscope.errors import ArgumentValueError, LayerscopeError
from layerscope.locations import sample_file

PROBE_FOLDS = 4
"""The probe's held-out folds by default (`stages --probe-data` uses it too)."""


@command
def probe(
    *,
    model: BosModelOptions,
    data: Annotated[
        Path | None,
        typer.Option(
            help='Labelled prompt set (.jsonl: "prompt", the label field, and '
            'optionally "answer", "subject"). Default: '
            "sample_prompts/continents.jsonl."
        ),
        Reads((sample_file("continents.jsonl"),)),
    ] = None,
    label: Annotated[str, typer.Option(help="The field of each record that holds its class.")] = "continent",
    folds: Annotated[
        int, typer.Option(min=2, max=100, help="Held-out folds (stratified cross-validation).")
    ] = PROBE_FOLDS,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the folds and the shuffled control.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, max=1024, help="Prompts per forward pass.")] = 16,
    output: Output,
) -> None:
    """Linear probes per grid row: a logistic regression reads each prompt's label from the last token's
    residual state at every row, held out by cross-validation, beside a shuffled-label control (needs
    scikit-learn, the `probe` extra of layerscope).

    Example: layerscope probe --model demo --data sample_prompts/continents.jsonl --label continent
    """
    from layerscope.analyses.probes import probe_rows

    texts, labels = labelled_prompts(data or sample_file("continents.jsonl"), label, "--label", folds)
    report = probe_rows(
        model.load(),
        texts,
        labels,
        label=label,
        folds=folds,
        seed=seed,
        batch_size=batch_size,
    )
    output.write(report.to_dict, report.records, lambda: probe_table(report), report.plot)


def labelled_prompts(path: Path, label: str, flag: str, folds: int) -> tuple[list[str], list[str]]:
    """The prompts of a labelled prompt set and their classes (field `label`, given by `flag`), checked before the
    model loads: a record without the field, too few prompts of a class for the folds, no records."""
    from layerscope.analyses.probes import check_classes
    from layerscope.textfiles import read_records

    if label in ("prompt", "answer", "subject"):
        raise LayerscopeError(f"{flag} '{label}': name the class field, not one of prompt, answer, subject.")
    records = [record for _, record in read_records(path, "probe data", ("prompt", label), ("answer", "subject"))]
    if not records:
        raise LayerscopeError(f"{path}: no records in the file.")
    labels = [record[label] for record in records]
    try:
        check_classes(labels, folds)
    except ArgumentValueError as error:
        raise LayerscopeError(f'{path}: field "{label}" ' + str(error).removeprefix("labels= ")) from None
    return [record["prompt"] for record in records], labels
