"""Measuring on any device: run times and peak memory. The small library the chapters, the
benchmark suites (:mod:`effsmall.bench`) and :func:`effsmall.hardware.measure_ceilings` share.

Timing that is fair to each device — GPU: ``triton.testing.do_bench`` (CUDA events, warm-up,
median of many runs; with ``cuda_graph=True`` it replays a captured CUDA graph, which removes
launch gaps). CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (median of blocks of runs).
Both return **seconds**. :func:`host_time` is the host's share of a call.

Memory: :func:`peak_memory` (the CUDA allocator's peak, or torch's profiler on CPU) and
:func:`tensor_peak_bytes` (live tensor storages, exact on any device).
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

__all__ = ["benchmark", "host_time", "peak_memory", "tensor_peak_bytes", "quiet_stderr"]


def benchmark(fn: Callable[[], object], device: str = "cpu", *, cuda_graph: bool = False,
              warmup_ms: float = 25, rep_ms: float = 100, min_run_time: float = 0.2) -> float:
    """Median run time of ``fn()`` in seconds."""
    if str(device).startswith("cuda"):
        import triton.testing as tt

        if cuda_graph:
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
    import statistics
    import time

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


@contextlib.contextmanager
def quiet_stderr():
    """Silence C-level writes to stderr (fd 2) inside the ``with`` block.

    torch's CPU profiler, which :func:`peak_memory` uses, prints start/stop lines with
    timestamps straight to fd 2, below Python's ``sys.stderr``; in a notebook they would land
    in a cell's output. ``peak_memory`` wraps itself in this; other noisy C++ calls can too.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before.

    CUDA: the caching allocator's peak counter. CPU: torch's profiler memory events
    (what torch allocated for tensors; the Python heap is not counted). For loops of many small
    ops, :func:`tensor_peak_bytes` tracks live storages exactly.
    """
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # Walk allocations (+) and frees (-) in time order. ``self_cpu_memory_usage`` counts each
    # exactly once; ``cpu_memory_usage`` also includes child ops' allocations, so a nested op
    # (matmul -> bmm) would be counted twice and the running total would drift upward.
    events = sorted((e for e in prof.events() if getattr(e, "self_cpu_memory_usage", 0)),
                    key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


def tensor_peak_bytes(fn) -> int:
    """Peak bytes of tensor storage allocated by torch ops while ``fn()`` runs (CPU or GPU).

    A ``TorchDispatchMode`` sees every op's outputs: a new storage adds its size, and a weak
    reference per tensor subtracts it when the last tensor using it dies. Views add nothing.
    (The profiler's per-op memory numbers double-count nested ops and miss frees that happen
    outside an op, which overstates loops of small ops such as ``tiled_attention``.)
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Tracker(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
            self.cur = self.peak = 0

        def _release(self, ptr):
            ent = self.live.get(ptr)
            if ent is not None:
                ent[1] -= 1
                if ent[1] == 0:
                    self.cur -= ent[0]
                    del self.live[ptr]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and not t._is_view():
                    st = t.untyped_storage()
                    ptr = st.data_ptr()
                    if ptr == 0:
                        continue
                    if ptr in self.live:
                        self.live[ptr][1] += 1
                    else:
                        self.live[ptr] = [st.nbytes(), 1]
                        self.cur += st.nbytes()
                        self.peak = max(self.peak, self.cur)
                    weakref.finalize(t, self._release, ptr)
            return out

    with _Tracker() as tr:
        out = fn()
    del out
    return tr.peak
