"""The benchmark harness: ``python -m effsmall.bench <suite> [--device cpu|cuda] [--out FILE]``.

A suite is a module ``effsmall.bench.<suite>`` with ``run(device: str, quick: bool) -> list[dict]``
returning rows (shape → time, FLOP/s, bytes/s, ratios vs baselines). The harness wraps the rows
with the environment (device name, torch/triton versions, date) and writes JSON. Results that
the book plots are committed under ``effsmall/results/`` and read back with :func:`load_result`.
"""
from effsmall.bench.results import environment, load_result, list_results, plot_rows, save_result
from effsmall.bench.timing import benchmark

SUITES = ("ceilings", "attention", "ssd", "offload", "models", "dist", "decode", "rungs")

__all__ = ["SUITES", "benchmark", "environment", "load_result", "list_results", "plot_rows", "save_result"]
