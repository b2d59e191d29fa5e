"""Helpers the chapters use to show package code instead of copying it."""
from __future__ import annotations

import inspect


def show(obj, *, lines: tuple[int, int] | None = None) -> None:
    """Print the source of a function, class or module from the package (optionally a line range)."""
    src = inspect.getsource(obj)
    if lines is not None:
        src = "\n".join(src.splitlines()[lines[0]:lines[1]])
    print(src)


def bound(label: str, value: float, tol: float, *, what: str = "max |error|") -> None:
    """Assert ``value < tol`` and print the claim as a bound, e.g. ``"fwd: max |error| < 1e-05"``.

    Chapters print bounds, not the measured value: a rounding-level error such as 4.2e-07 differs
    in its last digits between CPUs (vector width, thread count, BLAS), a bound does not.
    """
    value = float(value)
    if not value < tol:
        raise AssertionError(f"{label}: {what} = {value:.3g}, expected < {tol:.0e}")
    print(f"{label}: {what} < {tol:.0e}")
