"""Progress reporting without any UI dependency: faces pass a callback."""

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]
"""progress(done, total, description)"""


def no_progress(done: int, total: int, description: str) -> None:
    return None
