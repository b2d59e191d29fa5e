"""Helpers the chapters use to show package code instead of copying it."""
from __future__ import annotations

import inspect


def show(obj, *, lines: tuple[int, int] | None = None) -> None:
    """Print the source of a function, class or module from the package (optionally a line range)."""
    src = inspect.getsource(obj)
    if lines is not None:
        src = "\n".join(src.splitlines()[lines[0]:lines[1]])
    print(src)
