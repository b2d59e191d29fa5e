"""Benchmark results as JSON: environment capture, saving, loading and one plotting helper."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from importlib import resources
from pathlib import Path

RESULTS_PACKAGE = "effsmall.results"


def environment(device: str = "cpu") -> dict:
    """Who measured: device name, versions, date. Stored with every result."""
    import torch

    env = {
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        env["triton"] = None
    if str(device).startswith("cuda"):
        env["device_name"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["sm_count"] = torch.cuda.get_device_properties(0).multi_processor_count
    else:
        env["device_name"] = _cpu_name()
        env["cpu_threads"] = torch.get_num_threads()
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_result(result: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False, default=float) + "\n")
    return path


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


def record_partial(row: dict) -> None:
    """Append ``row`` to ``$EFFSMALL_BENCH_PARTIAL`` (JSON lines) if set.

    GPU leases end abruptly: a suite that records each row as it is measured keeps its numbers
    even when the run is killed at its time limit.
    """
    path = os.environ.get("EFFSMALL_BENCH_PARTIAL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")


def geomean(xs) -> float | None:
    """Geometric mean of the positive entries of ``xs`` (None and 0 skipped); None if none are left."""
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def list_results() -> list[str]:
    """Names of the result files committed with the package."""
    return sorted(p.name for p in resources.files(RESULTS_PACKAGE).iterdir() if p.name.endswith(".json"))


def load_result(suite: str, device: str | None = None) -> dict:
    """Load the newest committed result of ``suite`` (optionally whose device name contains ``device``).

    Files are named ``<suite>-<device slug>-<YYYYMMDD>.json``; works from a wheel, a git
    checkout or Colab because results are package data.
    """
    cands = []
    for name in list_results():
        if not name.startswith(suite + "-"):
            continue
        data = json.loads(resources.files(RESULTS_PACKAGE).joinpath(name).read_text())
        dev = data.get("env", {}).get("device_name", "")
        if device is None or device.lower() in dev.lower():
            cands.append((data.get("env", {}).get("date", ""), name, data))
    if not cands:
        raise FileNotFoundError(f"no committed result for suite {suite!r} (device {device!r}); "
                                f"have: {list_results()}")
    return max(cands)[2]


def plot_rows(rows, x: str, y: str, hue: str | None = None, ax=None, logx: bool = True, logy: bool = False,
              title: str | None = None, **filters):
    """Line plot of ``rows`` (list of dicts): one line per value of ``hue``, rows filtered by ``filters``."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 4))[1]
    sel = [r for r in rows if all(r.get(k) == v for k, v in filters.items()) and y in r]
    groups: dict = {}
    for r in sel:
        groups.setdefault(r.get(hue) if hue else y, []).append(r)
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r[x])
        ax.plot([r[x] for r in rs], [r[y] for r in rs], "o-", label=str(key))
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    if hue:
        ax.legend(fontsize=8)
    return ax
