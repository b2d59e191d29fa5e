"""Benchmark results as JSON: saving, loading and plotting come from :mod:`effsmall.measure`;
a suite's partial rows and the merging of several runs of one suite live here."""
from __future__ import annotations

from effsmall.bench.common import record_partial
from effsmall.measure import (RESULTS_PACKAGE, environment, geomean, list_results, load_result, plot_rows,
                              save_result)

__all__ = ["RESULTS_PACKAGE", "environment", "geomean", "list_results", "load_result", "merge_results",
           "plot_rows", "record_partial", "save_result"]


def merge_results(results: list[dict], summarize=None, note: str | None = None) -> dict:
    """One result from several invocations of a suite on the same machine lease (a GPU command
    has a time limit): rows concatenated (``ceiling`` rows kept from the first only), the first
    environment, each invocation's date and duration under ``runs``, the summary recomputed.
    Ratios stay within-invocation: every row compares implementations timed in the same rounds."""
    first = results[0]
    rows = list(first["rows"])
    for r in results[1:]:
        rows += [row for row in r["rows"] if row.get("kind") != "ceiling"]
    out = {"suite": first["suite"], "env": first["env"], "quick": any(r.get("quick") for r in results),
           "seconds": round(sum(r.get("seconds", 0) for r in results), 2),
           "runs": [{"date": r["env"]["date"], "seconds": r.get("seconds"), "rows": len(r["rows"])} for r in results],
           "rows": rows}
    if note:
        out["note"] = note
    if summarize is not None:
        out["summary"] = summarize(rows)
    return out
