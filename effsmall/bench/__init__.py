"""The benchmark suites: ``python -m effsmall.bench <suite> [--device cpu|cuda] [--out FILE] [--quick]``.

A suite is a module ``effsmall.bench.<suite>`` with ``run(device: str, quick: bool) -> list[dict]``
returning rows (shape → time, FLOP/s, bytes/s, ratios against what a user would pick instead),
and optionally ``summarize(rows) -> dict``. The command wraps the rows with the environment
(device name, torch/triton versions, date) and writes JSON. Results that the book plots are
committed under ``effsmall/results/`` and read back with :func:`load_result`.
``python -m effsmall.bench.<suite> RESULT.json`` prints a saved result's table and summary.

The measuring itself — timing in eager, CUDA-graph and host time, the memory meter, saving,
loading and plotting results — is the small library :mod:`effsmall.measure`; the suites add
shapes, baselines and ratios. What they share is in :mod:`effsmall.bench.common`.

Settings, for runs on a machine lent for a limited time (all optional):

* ``EFFSMALL_BENCH_ROUNDS`` — interleaved timing rounds per comparison; each implementation
  keeps its fastest round (default 3; the ``rungs`` suite 2).
* ``EFFSMALL_BENCH_BUDGET_S`` — seconds a run may spend on its timed shapes; a shape that
  would not fit is recorded as ``kind="skipped"`` (defaults per suite, a few minutes).
* ``EFFSMALL_BENCH_PARTIAL=rows.jsonl`` — append every row to this file as soon as it is
  measured, so a run killed at its time limit keeps its numbers.
* ``EFFSMALL_BENCH_SIZES=512,1024`` — re-measure only these sizes: sequence lengths
  (``attention``, ``ssd``) or contexts (``decode``).
* ``EFFSMALL_BENCH_PARTS=a,b`` — run only these parts: ``ssd``: ``checks``, ``peers``, ``crossover``,
  ``long`` (one sequence of 64K and 256K tokens), ``mamba1`` (the selective scan vs SSD at equal
  state size); ``dist``: ``tp``, ``ssd``, ``ring``.
"""
from effsmall.measure import benchmark, environment, list_results, load_result, plot_rows, save_result

SUITES = ("ceilings", "attention", "ssd", "offload", "models", "dist", "decode", "rungs")

__all__ = ["SUITES", "benchmark", "environment", "load_result", "list_results", "plot_rows", "save_result"]
