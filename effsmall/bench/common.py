"""What the suites share: the run's settings, a recorder of rows, and one table printer.

The settings (environment variables) are documented in :mod:`effsmall.bench`.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Callable, Sequence

from effsmall.measure import benchmark_rounds as _benchmark_rounds
from effsmall.measure import compare as _compare

# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------
PARTIAL = "EFFSMALL_BENCH_PARTIAL"


def rounds_default(default: int = 3) -> int:
    """Interleaved rounds per comparison: ``$EFFSMALL_BENCH_ROUNDS``."""
    return max(1, int(os.environ.get("EFFSMALL_BENCH_ROUNDS", default)))


def budget_s(default: float) -> float:
    """Seconds a run may spend on its timed shapes: ``$EFFSMALL_BENCH_BUDGET_S``."""
    return float(os.environ.get("EFFSMALL_BENCH_BUDGET_S", default))


def sizes(default: Sequence[int]) -> tuple[int, ...]:
    """The sizes a suite sweeps (sequence lengths, contexts): ``$EFFSMALL_BENCH_SIZES=512,1024``."""
    value = os.environ.get("EFFSMALL_BENCH_SIZES")
    return tuple(int(x) for x in value.split(",") if x) if value else tuple(default)


def parts(default: Sequence[str]) -> tuple[str, ...]:
    """The parts of a suite to run: ``$EFFSMALL_BENCH_PARTS=peers,crossover``."""
    value = os.environ.get("EFFSMALL_BENCH_PARTS")
    return tuple(x for x in value.split(",") if x) if value else tuple(default)


def benchmark_rounds(fns: dict, device: str = "cpu", *, rounds: int | None = None, **kw) -> dict:
    """:func:`effsmall.measure.benchmark_rounds` with the run's number of rounds."""
    return _benchmark_rounds(fns, device, rounds=rounds or rounds_default(), **kw)


def compare(fns: dict, device: str = "cuda", *, detail=(), rounds: int | None = None, **kw) -> dict:
    """:func:`effsmall.measure.compare` with the run's number of rounds."""
    return _compare(fns, device, detail=detail, rounds=rounds or rounds_default(), **kw)


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------
def record_partial(row: dict) -> None:
    """Append ``row`` to ``$EFFSMALL_BENCH_PARTIAL`` (JSON lines) if set.

    GPU leases end abruptly: a suite that records each row as it is measured keeps its numbers
    even when the run is killed at its time limit.
    """
    path = os.environ.get(PARTIAL)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


class Recorder:
    """Collects a run's rows (each also appended to the partial file) and keeps its time budget."""

    def __init__(self, budget_s: float = float("inf")):
        self.rows: list[dict] = []
        self.t0 = time.time()
        self.budget_s = budget_s

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        record_partial(row)
        return row

    def elapsed(self) -> float:
        return time.time() - self.t0

    def fits(self, seconds: float) -> bool:
        """Would ``seconds`` more stay within the budget?"""
        return self.elapsed() + seconds <= self.budget_s


def error_fields(e: Exception) -> dict:
    """What a row records of an implementation that refused a shape."""
    return {"error": f"{type(e).__name__}: {str(e)[:200]}"}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def table(rows: list[dict], *, index: Sequence[str], impls: Sequence[str], cell: Callable[[dict], float | None],
          unit: str, extras: Sequence[tuple[str, Callable[[dict], float | None]]] = (), width: int = 12,
          fmt: str = ".1f") -> str:
    """A plain-text table: one line per distinct ``index`` (row keys), one column per
    implementation holding ``cell(row)`` (in ``unit``), then ``extras``: ``(header, f)`` with
    ``f`` given the line's rows by implementation."""
    impls = [i for i in impls if any(r.get("impl") == i for r in rows)]
    keys = {tuple(r.get(k) for k in index) for r in rows}
    wide = [max(len(str(name)), *(len(str(key[j])) for key in keys)) for j, name in enumerate(index)]
    lines = [" ".join(f"{k:>{w}}" for k, w in zip(index, wide)) + " "
             + " ".join(f"{i[:width]:>{width}}" for i in impls) + "".join(f" {h:>8}" for h, _ in extras)
             + f"   ({unit})"]
    for key in sorted(keys, key=lambda t: tuple((v is None, 0 if v is None else v) for v in t)):
        by_impl = {r["impl"]: r for r in rows if tuple(r.get(k) for k in index) == key}
        vals = [cell(by_impl[i]) if i in by_impl else None for i in impls]
        more = [f(by_impl) for _, f in extras]
        lines.append(" ".join(f"{str(k):>{w}}" for k, w in zip(key, wide)) + " "
                     + " ".join(f"{v:>{width}{fmt}}" if v else f"{'-':>{width}}" for v in vals)
                     + "".join(f" {v:8.2f}" if v else f" {'-':>8}" for v in more))
    return "\n".join(lines)


def print_saved(table_fn: Callable[[list], str], summarize: Callable[[list], dict], argv=None) -> None:
    """``python -m effsmall.bench.<suite> RESULT.json``: the table and summary of a saved result."""
    path = (argv or sys.argv)[1]
    with open(path) as f:
        res = json.load(f)
    print(table_fn(res["rows"]))
    summary = res.get("summary") or summarize(res["rows"])
    print(json.dumps({k: v for k, v in summary.items() if k != "per_shape"}, indent=1, default=float))
