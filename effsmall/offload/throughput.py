"""Read throughput of this machine's disk vs chunk size and parallelism (LLM in a Flash, §2.2, Fig. 2).

Flash (and virtio) storage serves large, parallel reads far faster than small, serial ones:
each read pays a latency, and the device has many queues. ``measure_read_throughput`` reads
random ``chunk``-aligned chunks of a scratch file with ``threads`` threads, with the page
cache cold (``O_DIRECT`` where the filesystem allows it, ``F_NOCACHE`` on macOS, else
``posix_fadvise(DONTNEED)`` before each point) and again warm (same offsets, buffered, pages
just read), and reports GB/s. Where none of these exists (Windows) the reads are buffered and
each row's ``mode`` says the page cache was not bypassed (see :mod:`effsmall.offload.fileio`).
"""
from __future__ import annotations

import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from effsmall.offload import fileio


def scratch_file(size_bytes: int = 256 << 20, path: str | Path | None = None) -> Path:
    """A file of ``size_bytes`` random bytes under the cache dir (created once, reused)."""
    from effsmall.offload.flash_store import cache_dir

    path = Path(path) if path is not None else cache_dir() / f"read_throughput_{size_bytes >> 20}MiB.bin"
    if not path.exists() or path.stat().st_size != size_bytes:
        rng = np.random.default_rng(0)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            for s in range(0, size_bytes, 16 << 20):
                f.write(rng.integers(0, 256, min(16 << 20, size_bytes - s), dtype=np.uint8).tobytes())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    return path


def _open_direct(path: Path):
    """``(fd, mode)`` for reads that bypass the page cache (O_DIRECT or F_NOCACHE), or None."""
    return fileio.open_uncached(path, mmap.mmap(-1, 4096))   # page-aligned, as O_DIRECT requires


def _timed_reads(fd: int, offsets: np.ndarray, chunk: int, threads: int) -> float:
    bufs = [mmap.mmap(-1, chunk) for _ in range(threads)]      # one aligned buffer per thread

    def work(t):
        b = bufs[t]
        for off in offsets[t::threads]:
            if fileio.pread_into(fd, b, int(off)) != chunk:
                raise OSError(f"short read at {off}")

    t0 = time.perf_counter()
    if threads == 1:
        work(0)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
    return time.perf_counter() - t0


def measure_read_throughput(path: str | Path | None = None, chunk_sizes=(4096, 16384, 65536, 262144, 1 << 20),
                            threads=(1, 2, 4, 8, 16), bytes_per_point: int = 32 << 20, seed: int = 0,
                            direct: str = "auto") -> list[dict]:
    """Rows ``{chunk, threads, cold_GBps, warm_GBps, mode}`` for random chunk-aligned reads of ``path``.

    ``direct``: ``"auto"`` (O_DIRECT / F_NOCACHE if supported), ``"never"`` (buffered + fadvise
    DONTNEED where it exists). Each row's ``mode`` names how the cold reads avoided the cache.
    Each point reads ``bytes_per_point`` bytes (≥ one chunk per thread) from random offsets.
    """
    if direct not in ("auto", "never"):
        raise ValueError(f"direct must be 'auto' or 'never', got {direct!r}")
    path = scratch_file() if path is None else Path(path)
    size = path.stat().st_size
    for c in chunk_sizes:
        if c < 4096 or c % 4096 or c > size:
            raise ValueError(f"chunk_sizes must be multiples of 4096 no larger than the file, got {c}")
    for t in threads:
        if t < 1:
            raise ValueError(f"threads must be >= 1, got {t}")
    rng = np.random.default_rng(seed)
    uncached = _open_direct(path) if direct == "auto" else None
    dfd, dmode = uncached if uncached is not None else (None, None)
    bfd = fileio.open_read(path)
    fileio.advise(bfd, 0, 0, "RANDOM")
    mode = dmode or fileio.cache_control()
    rows = []
    try:
        for chunk in chunk_sizes:
            for t in threads:
                n = max(t, bytes_per_point // chunk)
                offsets = rng.choice(size // chunk, size=min(n, size // chunk), replace=False) * chunk
                if dfd is None:
                    fileio.advise(bfd, 0, 0, "DONTNEED")               # cold: nothing in RAM
                cold = _timed_reads(dfd if dfd is not None else bfd, offsets, chunk, t)
                if dfd is not None:                                       # fill the page cache for "warm"
                    _timed_reads(bfd, offsets, chunk, t)
                warm = _timed_reads(bfd, offsets, chunk, t)               # same pages, now in RAM
                nbytes = len(offsets) * chunk
                rows.append({"chunk": chunk, "threads": t, "bytes": nbytes,
                             "cold_GBps": nbytes / cold / 1e9, "warm_GBps": nbytes / warm / 1e9,
                             "mode": mode})
        fileio.advise(bfd, 0, 0, "DONTNEED")
    finally:
        os.close(bfd)
        if dfd is not None:
            os.close(dfd)
    return rows


def plot_read_throughput(rows: list[dict], ax=None, key: str = "cold_GBps"):
    """Throughput vs chunk size, one line per thread count (the paper's Fig. 2)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    for t in sorted({r["threads"] for r in rows}):
        rs = sorted((r for r in rows if r["threads"] == t), key=lambda r: r["chunk"])
        ax.plot([r["chunk"] / 1024 for r in rs], [r[key] for r in rs], marker="o", label=f"{t} threads")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chunk size (KiB)")
    ax.set_ylabel(f"read throughput, {key.split('_')[0]} cache (GB/s)")
    ax.legend()
    return ax
