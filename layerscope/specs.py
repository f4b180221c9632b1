"""Numbers, block specs and head specs as people type them ("12", "3,5,10-12", "4.2,7.1"); plain Python (no
torch), for the CLI, the explorer and the intervention kinds.

Digits are ASCII only: `str.isdigit` and `int()` also take '²' and '٣', and Python's `float()` takes 'nan',
'inf' and '1_0'."""

from __future__ import annotations

import math
import re

from layerscope.errors import LayerscopeError

_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_RANGE = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+))?\s*", re.ASCII)
_HEAD = re.compile(r"\s*([0-9]+)\.([0-9]+)\s*", re.ASCII)
SPEC_LIMIT = 100_000
"""The most numbers a spec may name when nothing else bounds it (before a model is loaded): expanding
'0-99999999999' would take all the memory there is."""


def parse_number(text: str, kind: type[int] | type[float]) -> int | float:
    """`text` as a whole number (`kind` int) or a finite decimal number (`kind` float); ValueError says why not."""
    if kind is int:
        if not _INTEGER.fullmatch(text.strip()):
            raise ValueError(f"'{text}' is not a whole number (digits 0-9)")
        return int(text)
    if not _DECIMAL.fullmatch(text.strip()):
        raise ValueError(f"'{text}' is not a finite decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is too large (not a finite number)")
    return value


def whole_number_in(text: str, low: int, high: int) -> int | None:
    """`text` as a whole number from `low` to `high`, or None when it is not one."""
    try:
        number = int(parse_number(text, int))
    except ValueError:
        return None
    return number if low <= number <= high else None


def parse_blocks(spec: str, what: str = "block", count: int | None = None) -> tuple[int, ...]:
    """'3,5,10-12' -> (3, 5, 10, 11, 12). With `count`, every number must be below it; without, the spec may
    name at most `SPEC_LIMIT` numbers. Both are checked on the ranges, before they are expanded."""
    ranges = []
    for part in spec.split(","):
        match = _RANGE.fullmatch(part)
        if not match:
            raise LayerscopeError(f"Bad {what} spec '{spec}': use numbers and ranges like 3,5,10-12.")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise LayerscopeError(f"Bad {what} range '{part.strip()}': the end is before the start.")
        if count is not None and last >= count:
            raise LayerscopeError(f"Bad {what} spec '{spec}': {last} is out of range 0..{count - 1}.")
        ranges.append(range(first, last + 1))
    if count is None and sum(map(len, ranges)) > SPEC_LIMIT:
        raise LayerscopeError(f"Bad {what} spec '{spec}': it names more than {SPEC_LIMIT:,} numbers.")
    return tuple(dict.fromkeys(number for numbers in ranges for number in numbers))


def parse_heads(spec: str) -> tuple[tuple[int, int], ...]:
    """'4.2,7.1' -> ((4, 2), (7, 1)): block.head pairs."""
    heads = []
    for part in spec.split(","):
        match = _HEAD.fullmatch(part)
        if not match:
            raise LayerscopeError(f"Bad head spec '{part.strip()}': use block.head pairs like 4.2,7.1.")
        heads.append((int(match[1]), int(match[2])))
    return tuple(heads)
