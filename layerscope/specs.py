"""Block and head specs as people type them ("3,5,10-12", "4.2,7.1"); plain Python (no torch), for the CLI and
the intervention kinds."""

from __future__ import annotations

import re

from layerscope.errors import LayerscopeError

_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


def parse_blocks(spec: str, what: str = "block") -> tuple[int, ...]:
    """'3,5,10-12' -> (3, 5, 10, 11, 12)."""
    blocks: list[int] = []
    for part in spec.split(","):
        match = _RANGE.match(part)
        if not match:
            raise LayerscopeError(f"Bad {what} spec '{spec}': use numbers and ranges like 3,5,10-12.")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise LayerscopeError(f"Bad {what} range '{part.strip()}': the end is before the start.")
        blocks.extend(range(first, last + 1))
    return tuple(dict.fromkeys(blocks))


def parse_heads(spec: str) -> tuple[tuple[int, int], ...]:
    """'4.2,7.1' -> ((4, 2), (7, 1)): block.head pairs."""
    heads = []
    for part in spec.split(","):
        match = re.match(r"^\s*(\d+)\.(\d+)\s*$", part)
        if not match:
            raise LayerscopeError(f"Bad head spec '{part.strip()}': use block.head pairs like 4.2,7.1.")
        heads.append((int(match[1]), int(match[2])))
    return tuple(heads)
