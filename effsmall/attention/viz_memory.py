"""CPU peak-memory measurement for the attention chapters (a stand-in, see below).

``effsmall.bench.timing.peak_memory`` sums ``cpu_memory_usage`` over *all* profiler events;
that field includes the allocations of child ops, so an allocation inside ``aten::matmul ->
aten::bmm`` is counted twice while its free is counted once, and the running total drifts
upward with the number of ops (a tiled loop with a thousand tiles looks like it leaks). This
version sums ``self_cpu_memory_usage`` (each allocation and free exactly once). It is used by
chapters 3, 5 and 6 until the shared helper is corrected.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler backend's start/stop lines, which it writes to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def peak_memory(fn: Callable[[], object]) -> int:
    """Peak bytes torch allocated on the CPU while ``fn()`` ran, above what was allocated before."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if getattr(e, "self_cpu_memory_usage", 0)),
                    key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:  # allocations (+) and frees (-) in time order, each counted once
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak
