"""Linear probes per grid row: how well a logistic regression reads a label from the residual stream.

Stages of Inference names "a significant increase in probing accuracy" as the signature of its feature-
engineering stage. For each grid row r (`emb`, then each block's output: the states the logit lens decodes),
the state of each prompt's last token is the probe's input and the prompt's label its target. The accuracy is
held out: stratified k-fold cross-validation, the mean over the folds and its standard error. Beside it, the
control: the same probe, the same folds, on the labels shuffled once (a seeded permutation), which says how much
a probe of this size reads from noise; a row's accuracy means something only where it stands above its control
and above the majority class's share.

The fitting is scikit-learn's (`StandardScaler` then `LogisticRegression`), an optional extra
(`pip install 'layerscope[probe]'`): a well-kept trainer rather than a hand-written one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from layerscope.analyses.activations import capture
from layerscope.analyses.residual import layer_labels
from layerscope.arguments import check_lm
from layerscope.errors import ArgumentTypeError, ArgumentValueError, LayerscopeError
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure

INSTALL_HINT = "linear probes need scikit-learn: pip install 'layerscope[probe]'"


@dataclass(frozen=True)
class RowProbe:
    """One grid row's probe: held-out accuracy (mean over folds, standard error) and the shuffled control's."""

    row: str
    accuracy: float
    accuracy_se: float
    control: float
    control_se: float


@dataclass
class ProbeReport:
    model: str
    label: str  # the prompt set's field the probe reads
    classes: list[str]
    prompts: int
    folds: int
    seed: int
    majority: float  # the largest class's share: what always guessing it scores
    rows: list[RowProbe]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "label": self.label,
            "classes": self.classes,
            "prompts": self.prompts,
            "position": "last",
            "folds": self.folds,
            "seed": self.seed,
            "majority": self.majority,
            "rows": [vars(row) for row in self.rows],
        }

    def records(self) -> Records:
        return Records.of(
            ("row", "accuracy", "accuracy_se", "control", "control_se", "majority"),
            ((r.row, r.accuracy, r.accuracy_se, r.control, r.control_se, self.majority) for r in self.rows),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def plot(self) -> Figure:
        """Accuracy and control per grid row: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.studies import probe_figure

        return probe_figure(self)

    def first_row_above(self, margin: float) -> str | None:
        """The first row whose accuracy beats both its control and the majority share by `margin`."""
        return next((row.row for row in self.rows if row.accuracy - margin >= max(row.control, self.majority)), None)


def last_token_states(lm: LoadedModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Every grid row's residual state at each prompt's last real token: (rows, prompts, hidden), float32 on
    the CPU. Prompts run `batch_size` at a time; only the last token's states are kept."""
    parts = []
    for start in range(0, len(texts), batch_size):
        acts = capture(lm, list(texts[start : start + batch_size]), "resid")
        last = acts.attention_mask.sum(dim=1) - 1
        states = acts.stacked("resid")  # (rows, B, T, hidden)
        parts.append(states[:, torch.arange(states.shape[1]), last.to(states.device)].float().cpu())
    return torch.cat(parts, dim=1)


def check_classes(labels: Sequence[str], folds: int) -> Counter[str]:
    """The prompts per class, refused unless there are two classes or more, each with a prompt per fold."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ArgumentValueError(f"folds={folds!r} must be a whole number of at least 2.")
    counts = Counter(labels)
    if len(counts) < 2:
        raise ArgumentValueError(f"labels= has one class ({next(iter(counts), 'none')!r}): a probe needs two.")
    smallest, size = min(counts.items(), key=lambda item: item[1])
    if size < folds:
        raise ArgumentValueError(
            f"labels= has {size} prompt(s) of class {smallest!r}: each class needs at least "
            f"folds= ({folds}) prompts, one per held-out fold."
        )
    return counts


def probe_rows(
    lm: LoadedModel,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    label: str = "label",
    folds: int = 5,
    seed: int = 0,
    batch_size: int = 16,
) -> ProbeReport:
    """A logistic-regression probe per grid row on the last token's residual state (see the module docstring):
    `texts[i]` has the class `labels[i]`; `label` names the field in the report."""
    check_lm(lm)
    if not isinstance(texts, (list, tuple)) or not all(isinstance(text, str) and text for text in texts):
        raise ArgumentTypeError("texts= must be a list of non-empty texts.")
    if not isinstance(labels, (list, tuple)) or not all(isinstance(one, str) for one in labels):
        raise ArgumentTypeError("labels= must be a list of texts, one per prompt.")
    if len(texts) != len(labels):
        raise ArgumentValueError(f"labels= has {len(labels)} entries for {len(texts)} texts=; give one per text.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ArgumentValueError(f"batch_size={batch_size!r} must be a whole number of at least 1.")
    counts = check_classes(labels, folds)
    try:
        import numpy as np
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise LayerscopeError(INSTALL_HINT) from None

    states = last_token_states(lm, texts, batch_size).numpy()
    classes = sorted(counts)
    target = np.array([classes.index(one) for one in labels])
    shuffled = np.random.default_rng(seed).permutation(target)
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(states[0], target))

    def held_out(features: np.ndarray, answers: np.ndarray) -> tuple[float, float]:
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores = cross_val_score(probe, features, answers, cv=splits)
        return float(scores.mean()), float(scores.std(ddof=1) / math.sqrt(len(scores)))

    rows = [
        RowProbe(name, *held_out(features, target), *held_out(features, shuffled))
        for name, features in zip(layer_labels(lm.adapter.n_blocks), states)
    ]
    return ProbeReport(lm.name, label, classes, len(texts), folds, seed, max(counts.values()) / len(labels), rows)
