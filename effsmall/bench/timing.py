"""Comparing implementations fairly. The single measurements (:func:`benchmark`,
:func:`host_time`, :func:`peak_memory`, :func:`tensor_peak_bytes`) live in :mod:`effsmall.measure`
and are re-exported here.

When implementations are compared on a shared machine, :func:`benchmark_rounds` times them in
interleaved rounds and keeps each one's fastest round: host noise (another process, a
garbage collection, a frequency dip) only ever adds time, and it should not decide a ratio
depending on which implementation it happened to hit.
"""
from __future__ import annotations

import os

from effsmall.measure import benchmark, host_time, peak_memory, quiet_stderr, tensor_peak_bytes  # noqa: F401


def rounds_default() -> int:
    """Rounds per comparison: ``$EFFSMALL_BENCH_ROUNDS`` (default 3)."""
    return max(1, int(os.environ.get("EFFSMALL_BENCH_ROUNDS", "3")))


def benchmark_rounds(fns: dict, device: str = "cpu", *, rounds: int | None = None, **kw) -> dict:
    """Time every ``fns[name]()`` in ``rounds`` interleaved rounds (a, b, c, a, b, c, ...) and
    return, per name, the fastest round's median in seconds — or the exception it raised."""
    best: dict = {}
    for _ in range(rounds or rounds_default()):
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


def compare(fns: dict, device: str = "cuda", *, detail=(), **kw) -> dict:
    """Time competing implementations the same way. Each ``fns[key]()`` is warmed up once
    (compiles, autotunes; an exception becomes its result), then all are timed in interleaved
    rounds (:func:`benchmark_rounds`, ``kw`` passed on). Keys in ``detail`` also get, on CUDA,
    the CUDA-graph time (the GPU's time alone; None if capture fails) and the host time per
    call (:func:`host_time`).

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
        graph = host = None
        if cuda and key in detail:
            host = host_time(calls[key], device)
            try:
                graph = benchmark(calls[key], device, cuda_graph=True, rep_ms=40)
            except Exception:  # noqa: BLE001 - capture can fail; the eager time still stands
                graph = None
        out[key] = dict(s=t, graph=graph, host=host)
    return out
