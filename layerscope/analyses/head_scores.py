"""One score per query head, with its KV group: the result of every head analysis."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import torch

from layerscope.errors import LayerscopeError
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HeadKind = Literal["retrieval", "induction", "previous_token"]
KINDS = ("retrieval", "induction", "previous_token")
RETRIEVAL_THRESHOLD = 0.1
"""A head scoring above this is a retrieval head (Retrieval Head paper)."""


@dataclass
class HeadScore:
    layer: int
    head: int
    kv_group: int
    score: float


@dataclass
class HeadScores:
    model: str
    kind: HeadKind
    n_blocks: int
    n_heads: int
    heads: list[HeadScore]  # every head, layer-major
    meta: dict = field(default_factory=dict)  # kind-specific settings and per-test details

    @classmethod
    def from_matrix(cls, lm: LoadedModel, kind: HeadKind, scores: torch.Tensor, meta: dict | None = None) -> HeadScores:
        """From a (blocks, heads) tensor."""
        adapter = lm.adapter
        heads = [
            HeadScore(layer, head, adapter.kv_group(head), float(scores[layer, head]))
            for layer in range(adapter.n_blocks)
            for head in range(adapter.n_heads)
        ]
        return cls(lm.name, kind, adapter.n_blocks, adapter.n_heads, heads, meta or {})

    def matrix(self) -> torch.Tensor:
        scores = torch.zeros(self.n_blocks, self.n_heads)
        for head in self.heads:
            scores[head.layer, head.head] = head.score
        return scores

    def top(self, k: int) -> list[HeadScore]:
        """The k highest-scoring heads, ties broken by position."""
        return sorted(self.heads, key=lambda h: (-h.score, h.layer, h.head))[:k]

    def above(self, threshold: float = RETRIEVAL_THRESHOLD) -> list[HeadScore]:
        return [h for h in self.heads if h.score > threshold]

    def share_above(self, threshold: float = RETRIEVAL_THRESHOLD) -> float:
        return len(self.above(threshold)) / len(self.heads)

    def plot(self, threshold: float = RETRIEVAL_THRESHOLD) -> Figure:
        """The layer x head heatmap, the share of heads above `threshold` in its title:
        a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.heads import head_scores_figure

        return head_scores_figure([self], threshold)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "kind": self.kind,
            "n_blocks": self.n_blocks,
            "n_heads": self.n_heads,
            "share_above_0.1": self.share_above(),
            "heads": [asdict(h) for h in self.heads],
            "meta": self.meta,
        }

    def records(self) -> Records:
        return Records.of(
            ("kind", "layer", "head", "kv_group", "score"),
            ((self.kind, h.layer, h.head, h.kv_group, h.score) for h in self.heads),
        )

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()

    def _repr_html_(self) -> str:
        from layerscope.notebook import head_scores_html

        return head_scores_html(self)

    @classmethod
    def from_dict(cls, data: dict) -> HeadScores:
        """The scores `to_dict` wrote, every field of its type (a score "0.5" or a layer 1.7 is refused)."""
        if "kind" not in data:  # every layerscope version wrote it: without it, what the scores mean is unknown
            raise LayerscopeError(
                f"Not a head scores file: it does not say which kind of scores it holds "
                f'("kind": one of {", ".join(KINDS)}).'
            )
        if data["kind"] not in KINDS:
            raise LayerscopeError(
                f"Unknown head score kind {json.dumps(data['kind'])} (expected one of {', '.join(KINDS)})."
            )
        heads = _field(data, "heads", list)
        meta = data.get("meta") or {}
        if not isinstance(meta, dict):
            raise LayerscopeError('Not a head scores file: "meta" is not an object.')
        scores = cls(
            _field(data, "model", str),
            data["kind"],
            _field(data, "n_blocks", int),
            _field(data, "n_heads", int),
            [
                HeadScore(
                    _field(h, "layer", int),
                    _field(h, "head", int),
                    _field(h, "kv_group", int),
                    float(_field(h, "score", float)),
                )
                for h in heads
            ],
            meta,
        )
        scores.check_complete()
        return scores

    def check_complete(self) -> None:
        """Every head of the shape exactly once, with a finite score: the top of a partial list is not the top."""
        if self.n_blocks < 1 or self.n_heads < 1:
            raise LayerscopeError(f"The scores file gives a shape of {self.n_blocks} blocks x {self.n_heads} heads.")
        seen: set[tuple[int, int]] = set()
        for head in self.heads:
            name = f"{head.layer}.{head.head}"
            if not (0 <= head.layer < self.n_blocks and 0 <= head.head < self.n_heads):
                raise LayerscopeError(
                    f"The scores name head {name}, outside their own shape of {self.n_blocks} "
                    f"blocks x {self.n_heads} heads."
                )
            if (head.layer, head.head) in seen:
                raise LayerscopeError(f"The scores list head {name} twice.")
            if not math.isfinite(head.score):
                raise LayerscopeError(f"The score of head {name} is {head.score}, not a number.")
            seen.add((head.layer, head.head))
        total = self.n_blocks * self.n_heads
        if len(seen) < total:
            block, index = next((b, h) for b in range(self.n_blocks) for h in range(self.n_heads) if (b, h) not in seen)
            raise LayerscopeError(
                f"The scores list {len(seen)} of the {total} heads ({block}.{index} is missing): "
                f"a scores file must score every head, or its top heads are not the model's."
            )

    def check_model(self, lm: LoadedModel) -> None:
        """Scores from another model would name heads that do not exist or mean something else: the shape, the
        KV groups and the model's name must agree (the name by its last part, so 'org/name', a local folder
        'models/name' and the demo's own name are one model)."""
        shape = (lm.adapter.n_blocks, lm.adapter.n_heads)
        if (self.n_blocks, self.n_heads) != shape:
            raise LayerscopeError(
                f"The scores are for {self.model} ({self.n_blocks} blocks x {self.n_heads} heads), "
                f"but {lm.name} has {shape[0]} blocks x {shape[1]} heads."
            )
        for head in self.heads:
            if head.kv_group != lm.adapter.kv_group(head.head):
                raise LayerscopeError(
                    f"The scores put head {head.layer}.{head.head} in KV group {head.kv_group}, but in {lm.name} it "
                    f"reads KV head {lm.adapter.kv_group(head.head)}: they are for a model with other attention."
                )
        if _model_id(self.model) != _model_id(lm.name):
            raise LayerscopeError(
                f"The scores are for {self.model}, not {lm.name}: score this model first "
                "(heads of another model mean something else, even in the same shape)."
            )


FieldType = TypeVar("FieldType")


def _field(data: object, key: str, kind: type[FieldType]) -> FieldType:
    """`data[key]`, of type `kind` (a float field takes an int too; bool is no number), or one error."""
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
        where = "a head's" if key in ("layer", "head", "kv_group", "score") else "its"
        raise LayerscopeError(
            f'Not a head scores file: {where} "{key}" is {json.dumps(value)}, not '
            f"{ {str: 'text', int: 'a whole number', float: 'a number', list: 'a list'}[kind] }."
        )
    return value  # type: ignore[return-value]  # an int where a float is asked is one


def _model_id(name: str) -> str:
    return Path(name.rstrip("/\\")).name


def load_head_scores(path: Path, lm: LoadedModel | None = None, kind: HeadKind | None = None) -> HeadScores:
    """Read a scores JSON file written by a head command; with `lm`, check it fits that model; with `kind`,
    that it holds scores of that kind."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise LayerscopeError(f"Cannot read scores file '{path}': {error}") from error
    except json.JSONDecodeError as error:
        raise LayerscopeError(f"Scores file '{path}' is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise LayerscopeError(f"Scores file '{path}' does not hold a JSON object.")
    try:
        scores = HeadScores.from_dict(data)
    except LayerscopeError as error:
        raise LayerscopeError(f"Scores file '{path}': {error}") from None
    if kind is not None and scores.kind != kind:
        raise LayerscopeError(
            f"Scores file '{path}' holds {scores.kind} scores, not {kind} scores: write them with `heads {kind}`."
        )
    if lm is not None:
        try:
            scores.check_model(lm)
        except LayerscopeError as error:
            raise LayerscopeError(f"Scores file '{path}': {error}") from None
    return scores
