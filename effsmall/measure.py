"""Measuring on any device: run times, peak memory, and results saved as JSON.

The small library the chapters, the benchmark suites (:mod:`effsmall.bench`) and
:func:`effsmall.hardware.measure_ceilings` share.

**Time** (all in seconds):

* :func:`benchmark` — the median run time of a call. GPU: ``triton.testing.do_bench`` (CUDA
  events, warm-up, median of many runs; with ``cuda_graph=True`` it replays a captured CUDA
  graph, which removes the host's launch gaps: the GPU's time alone). CPU:
  ``torch.utils.benchmark.Timer.blocked_autorange`` (median of blocks of runs).
* :func:`host_time` — the host's share of a call (Python, dispatch, launches).
* :func:`host_cost` — the same share measured without a GPU: torch operations and Triton launches
  counted, Python and dispatch timed with every Triton launch stubbed out (tensors on CPU or ``meta``).
* :func:`benchmark_rounds` and :func:`compare` — several implementations timed fairly against
  each other on a shared machine.

**Launches**: :func:`count_ops` — the tensor operations and Triton kernels a call issues (on a
GPU each is a kernel launch; counted on any device).

**Memory**: :func:`peak_memory` — the CUDA allocator's peak on a GPU; on a CPU the exact peak of
live tensor storage.

**Results**: :func:`environment` (who measured), :func:`save_result`, :func:`load_result` and
:func:`list_results` (the JSON files committed under ``effsmall/results/``), :func:`plot_rows`
and :func:`geomean`.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import platform
import statistics
import time
from importlib import resources
from pathlib import Path
from typing import Callable

__all__ = ["benchmark", "host_time", "host_cost", "benchmark_rounds", "compare", "count_ops", "peak_memory",
           "environment", "save_result", "load_result", "list_results", "plot_rows", "geomean"]

RESULTS_PACKAGE = "effsmall.results"


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------
def benchmark(fn: Callable[[], object], device: str = "cpu", *, cuda_graph: bool = False,
              warmup_ms: float = 25, rep_ms: float = 100, min_run_time: float = 0.2) -> float:
    """Median run time of ``fn()`` in seconds."""
    if str(device).startswith("cuda"):
        import triton.testing as tt

        if cuda_graph:
            import torch

            torch.cuda.synchronize(device)   # do_bench_cudagraph runs fn on its own stream, which does not wait for ours
            ms = tt.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
        else:
            ms = tt.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")
        return ms / 1e3
    import torch.utils.benchmark as tb

    fn()  # warm-up (allocations, lazy initialisation)
    m = tb.Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return m.median


def host_time(fn: Callable[[], object], device: str = "cuda", *, calls: int = 10, repeats: int = 5) -> float:
    """Host time per call, in seconds, in steady state: ``calls`` back-to-back ``fn()`` with no
    synchronization between them (the GPU queue absorbs them), timed until the host returns;
    median of ``repeats``. This is the Python, dispatch and launch work a call costs the host.
    When it exceeds the GPU time (``cuda_graph=True`` timing), eager time is host-bound.
    (The latency of one call issued to an idle GPU is larger: thread wake-ups, cold caches.)"""
    import torch

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    fn()  # warm-up
    per_call = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        per_call.append((time.perf_counter() - t0) / calls)
    sync()
    return statistics.median(per_call)


def host_cost(fn: Callable[[], object], *, calls: int = 20, repeats: int = 5) -> dict:
    """The host work of one ``fn()`` with every Triton launch stubbed out (a no-op that counts):
    ``{"torch": tensor operations dispatched (counted as :func:`count_ops` counts them),
    "triton": launches, "total": both, "host_us": Python and dispatch µs per call (the fastest of
    ``repeats`` rounds of ``calls``, without the counting mode: on a shared CPU other work only
    adds time)}``. With ``meta`` tensors no torch
    operation computes anything, so this is the host's share of a GPU call minus the launches'
    own cost (Triton's argument binding, the driver), which grows with ``triton``."""
    launched = [0]
    with _triton_launches(launched, run=False):
        fn()  # warm-up: caches, lazy initialisation
        counts = count_ops(fn, run_kernels=False)
        per_call = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            per_call.append((time.perf_counter() - t0) / calls)
    return dict(counts, host_us=min(per_call) * 1e6)


def benchmark_rounds(fns: dict, device: str = "cpu", *, rounds: int = 3, **kw) -> dict:
    """Time every ``fns[name]()`` in ``rounds`` interleaved rounds (a, b, c, a, b, c, ...) and
    return, per name, the fastest round's median in seconds — or the exception it raised.

    On a shared machine, host noise (another process, a garbage collection, a frequency dip)
    only ever adds time; interleaving and keeping each one's fastest round stops it from
    deciding a ratio depending on which implementation it happened to hit. ``kw`` goes to
    :func:`benchmark`."""
    best: dict = {}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            if isinstance(best.get(name), Exception):
                continue
            try:
                t = benchmark(fn, device, **kw)
            except Exception as e:  # noqa: BLE001 - a baseline may refuse a shape; the caller records it
                best[name] = e
                continue
            best[name] = min(best.get(name, t), t)
    return best


def compare(fns: dict, device: str = "cuda", *, detail=(), host: bool = True, **kw) -> dict:
    """Time competing implementations the same way. Each ``fns[key]()`` is warmed up once
    (compiles, autotunes; an exception becomes its result), then all are timed in interleaved
    rounds (:func:`benchmark_rounds`, ``kw`` passed on). Keys in ``detail`` also get, on CUDA,
    the CUDA-graph time (the GPU's time alone; None if capture fails) and, unless ``host=False``,
    the host time per call (:func:`host_time`).

    Returns ``{key: exception or dict(s=eager seconds, graph=seconds or None, host=seconds or None)}``.
    """
    cuda = str(device).startswith("cuda")
    calls, out = {}, {}
    for key, fn in fns.items():
        try:
            fn()
            calls[key] = fn
        except Exception as e:  # noqa: BLE001 - a baseline may refuse a shape; the caller records it
            out[key] = e
    if cuda:
        import torch

        torch.cuda.synchronize()
    for key, t in benchmark_rounds(calls, device, **kw).items():
        if isinstance(t, Exception):
            out[key] = t
            continue
        graph = host_s = None
        if cuda and key in detail:
            host_s = host_time(calls[key], device) if host else None
            try:
                graph = benchmark(calls[key], device, cuda_graph=True, rep_ms=40)
            except Exception:  # noqa: BLE001 - capture can fail; the eager time still stands
                graph = None
        out[key] = dict(s=t, graph=graph, host=host_s)
    return out


# ---------------------------------------------------------------------------------------------
# Launches
# ---------------------------------------------------------------------------------------------
def count_ops(fn: Callable[[], object], *, run_kernels: bool = True) -> dict:
    """What ``fn()`` launches: ``{"torch": tensor operations dispatched, "triton": Triton kernel
    launches, "total": both}``. On a GPU each is a kernel launch and several microseconds of host
    work; the count is the same on every device (on a CPU the Triton kernels run in the
    interpreter, whose own tensor operations are not counted). ``run_kernels=False`` counts the
    Triton launches without running them (:func:`host_cost`).

    Not counted, as they launch nothing: views, ``empty`` allocations and operations that return
    no tensor (``promote_types``). A matrix product counts once, whatever library kernel(s) it
    becomes on a GPU.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"torch": 0}
    launched, inside = [0], [0]      # inside > 0 while a Triton kernel runs (the interpreter's own torch calls)

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            launches = isinstance(out, torch.Tensor) or (
                isinstance(out, (tuple, list)) and any(isinstance(t, torch.Tensor) for t in out))
            if launches and not (func.is_view or inside[0] or func.__name__.startswith(("empty", "new_empty"))):
                counts["torch"] += 1
            return out

    with _triton_launches(launched, run=run_kernels, inside=inside), _Count():
        fn()
    return dict(counts, triton=launched[0], total=counts["torch"] + launched[0])


@contextlib.contextmanager
def _triton_launches(launched: list, *, run: bool = True, inside: list | None = None):
    """Count every ``kernel[grid](...)`` launch in ``launched[0]`` while the context is open; with
    ``run=False`` the launch does nothing else. ``inside[0]`` is > 0 while a kernel runs."""
    from triton.runtime.jit import KernelInterface

    inside = inside if inside is not None else [0]

    def launch(kernel, grid):
        def call(*args, **kwargs):
            launched[0] += 1
            if not run:
                return None
            inside[0] += 1
            try:
                return kernel.run(*args, grid=grid, warmup=False, **kwargs)
            finally:
                inside[0] -= 1
        return call

    original = KernelInterface.__getitem__
    KernelInterface.__getitem__ = launch
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------
def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before.

    CUDA: the caching allocator's peak counter (kernels' workspaces included). CPU: the exact
    peak of live tensor storage: every new storage an op returns adds
    its size, and it is subtracted when the last tensor using it dies. Views, in-place ops and
    ``out=`` writes into existing tensors add nothing; the Python heap is not counted.
    """
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    meter = _storage_peak_mode()()
    with meter:
        out = fn()
    del out
    return meter.peak


def _storage_peak_mode():
    """The ``TorchDispatchMode`` behind :func:`peak_memory` on a CPU (built on first use, so
    that importing this module does not import torch)."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def ptr_of(t):
        return t.untyped_storage().data_ptr()

    class StoragePeak(TorchDispatchMode):
        """Sees every op's outputs: a storage no live tensor held before adds its bytes, and a
        weak reference per output tensor subtracts them when the last user dies."""

        def __init__(self):
            super().__init__()
            self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
            self.cur = self.peak = 0

        def _release(self, ptr):
            entry = self.live.get(ptr)
            if entry is not None:
                entry[1] -= 1
                if entry[1] == 0:
                    self.cur -= entry[0]
                    del self.live[ptr]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = {ptr_of(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t._is_view():
                    continue
                ptr = ptr_of(t)
                if ptr == 0 or (ptr in inputs and ptr not in self.live):
                    continue  # empty, or written in place into a tensor from before fn()
                if ptr in self.live:
                    self.live[ptr][1] += 1
                else:
                    nbytes = t.untyped_storage().nbytes()
                    self.live[ptr] = [nbytes, 1]
                    self.cur += nbytes
                    self.peak = max(self.peak, self.cur)
                weakref.finalize(t, self._release, ptr)
            return out

    return StoragePeak


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
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
    """Write ``result`` as indented JSON (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, sort_keys=False, default=float) + "\n")
    return path


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


def geomean(xs) -> float | None:
    """Geometric mean of the positive entries of ``xs`` (None and 0 skipped); None if none are left."""
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


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
