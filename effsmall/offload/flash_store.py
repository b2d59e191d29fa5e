"""FlashStore: a model's FFN weights on disk, read a neuron at a time (LLM in a Flash §3.2–3.3).

File layout (one ``.ffn`` file; the non-FFN weights go to a ``.safetensors`` file beside it)::

    b"EFFSFFN1" | u64 header length | JSON header | zero padding to 4096 | data

The data of layer l is one tensor in one of two layouts:

- **bundled** (``layers.l.bundle``, ``(d_ff, 2d)``): record i = row i of ``W_up`` followed by
  column i of ``W_down`` — everything neuron i needs, one contiguous ``4d``-byte record (fp16),
  so one read fetches it (§3.3, "bundling columns and rows").
- **unbundled** (``layers.l.up`` ``(d_ff, d)`` then ``layers.l.down_t`` ``(d_ff, d)``): the
  usual matrices; neuron i costs two reads, ``d_ff · 2d`` bytes apart.

Data regions start at multiples of 4096 so ``O_DIRECT`` could read them. The header stores a
CRC-32 per tensor and per block of ``block_neurons`` neurons; :meth:`FlashStore.verify` checks
them and a truncated or corrupted file raises :class:`CorruptStoreError` naming the file, the
tensor and the neuron block — never garbage weights. The non-FFN safetensors file carries a
CRC-32 per tensor in its metadata.

Reads coalesce sorted neuron ids into runs of adjacent ids — or, with ``max_gap_bytes``, of ids
at most that many bytes apart, the gap read and dropped (one read instead of two costs less than
the gap's bytes on a latency-bound disk) — one ``os.preadv`` per run and per tensor, spread the
runs over a thread pool (``preadv`` releases the GIL, so reads overlap in the device queue) and
pick the wanted rows out. :meth:`FlashStore.read_neurons_async` returns at once so the caller
computes while the reads are in flight. ``bytes_read`` and ``read_calls`` count what was asked
of the device (gaps included). :meth:`FlashStore.drop_page_cache` calls
``posix_fadvise(POSIX_FADV_DONTNEED)`` so the next read comes from the disk, not from RAM;
readahead is turned off with ``POSIX_FADV_RANDOM``. On systems without these calls (macOS,
Windows) :mod:`effsmall.offload.fileio` falls back (``F_NOCACHE``, plain positioned reads) and
:attr:`FlashStore.cache_mode` says what the page cache did.
"""
from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from effsmall.offload import fileio

import numpy as np
import torch
from effsmall.runtime import cache_dir  # noqa: F401  (re-exported)
from effsmall.runtime import cdiv

MAGIC = b"EFFSFFN1"
ALIGN = 4096
LAYOUTS = ("bundled", "unbundled")


class CorruptStoreError(OSError):
    """A store file is truncated, corrupted or not a store; the message names file and tensor."""


def _crc(buf) -> int:
    return zlib.crc32(memoryview(buf).cast("B")) & 0xFFFFFFFF


def _bytes_view(arr: np.ndarray) -> memoryview:
    """A writable byte view of a C-contiguous array (works for empty arrays too)."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def _align(n: int) -> int:
    return cdiv(n, ALIGN) * ALIGN


def coalesce(ids: np.ndarray, max_gap: int = 0) -> list[tuple[int, int]]:
    """Sorted unique ids → runs ``(first_id, count)`` covering them: ``[1,2,3,7,8]`` → ``[(1,3),(7,2)]``.

    With ``max_gap > 0`` a run also bridges gaps of up to ``max_gap`` missing ids
    (``max_gap=3``: ``[1,2,3,7,8]`` → ``[(1,8)]``): one larger read instead of several small ones,
    at the price of the gap's bytes — worth it while a read costs more in latency than the gap
    costs in bandwidth (see :func:`~effsmall.offload.throughput.measure_read_throughput`).
    """
    if len(ids) == 0:
        return []
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap!r}")
    breaks = np.flatnonzero(np.diff(ids) > max_gap + 1) + 1        # (n_runs-1,)
    starts = np.concatenate([[0], breaks])                         # (n_runs,)
    ends = np.concatenate([breaks, [len(ids)]]) - 1                # (n_runs,) index of each run's last id
    return [(int(ids[s]), int(ids[e] - ids[s] + 1)) for s, e in zip(starts, ends)]


def _tensors_of(layout: str, W_up: torch.Tensor, W_down: torch.Tensor, l: int) -> dict[str, np.ndarray]:
    up = W_up.detach().to(torch.float16).contiguous().numpy()                # (d_ff, d)
    down_t = W_down.detach().T.to(torch.float16).contiguous().numpy()       # (d_ff, d)
    if layout == "bundled":
        return {f"layers.{l}.bundle": np.concatenate([up, down_t], axis=1)}  # (d_ff, 2d)
    return {f"layers.{l}.up": up, f"layers.{l}.down_t": down_t}


def write_store(path: str | Path, ffn: list[tuple[torch.Tensor, torch.Tensor]], layout: str = "bundled",
                block_neurons: int = 256, rest: dict[str, torch.Tensor] | None = None) -> Path:
    """Write FFN weights ``[(W_up (d_ff, d), W_down (d, d_ff)), ...]`` per layer as fp16 in ``layout``.

    ``rest`` (the non-FFN weights), if given, goes to ``<path>.rest.safetensors`` with a CRC-32
    per tensor in its metadata. Writes to a temporary name and renames (no half-written store).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not ffn:
        raise ValueError("ffn must list at least one layer")
    d_ff, d = ffn[0][0].shape
    for l, (u, w) in enumerate(ffn):
        if tuple(u.shape) != (d_ff, d) or tuple(w.shape) != (d, d_ff):
            raise ValueError(f"ffn[{l}] shapes {tuple(u.shape)}, {tuple(w.shape)}; expected {(d_ff, d)}, {(d, d_ff)}")
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    for l, (u, w) in enumerate(ffn):
        arrays.update(_tensors_of(layout, u, w, l))
    entries, offset = [], 0
    for name, a in arrays.items():
        blocks = [_crc(a[s:s + block_neurons]) for s in range(0, d_ff, block_neurons)]
        entries.append({"name": name, "offset": offset, "nbytes": a.nbytes, "shape": list(a.shape),
                        "crc32": _crc(a), "block_crc32": blocks})
        offset = _align(offset + a.nbytes)
    header = {"version": 1, "layout": layout, "dtype": "float16", "n_layers": len(ffn), "d_model": d,
              "d_ff": d_ff, "block_neurons": block_neurons, "tensors": entries}
    hjson = json.dumps(header).encode()
    data_offset = _align(len(MAGIC) + 8 + len(hjson))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(hjson)) + hjson)
        for e, a in zip(entries, arrays.values()):
            f.seek(data_offset + e["offset"])
            f.write(a.tobytes())
        f.truncate(data_offset + entries[-1]["offset"] + entries[-1]["nbytes"])
    tmp.replace(path)
    if rest is not None:
        _write_rest(Path(str(path) + ".rest.safetensors"), rest)
    return path


def _write_rest(path: Path, rest: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    rest = {k: v.detach().contiguous() for k, v in rest.items()}
    crcs = {k: _crc(v.view(-1).view(torch.uint8).numpy()) for k, v in rest.items()}
    save_file(rest, str(path), metadata={"crc32": json.dumps(crcs)})


def load_rest(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.rest.safetensors`` file and check every tensor's CRC-32."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            crcs = json.loads((f.metadata() or {}).get("crc32", "{}"))
            out = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # truncated or not safetensors
        raise CorruptStoreError(f"{path}: cannot read the non-FFN weights (truncated or corrupted): {e}") from e
    for k, v in out.items():
        if k not in crcs or crcs[k] != _crc(v.contiguous().view(-1).view(torch.uint8).numpy()):
            raise CorruptStoreError(f"{path}: tensor {k!r} fails its CRC-32 check (corrupted)")
    return out


@dataclass
class ReadStats:
    bytes_read: int = 0
    read_calls: int = 0

    def add(self, other: "ReadStats"):
        self.bytes_read += other.bytes_read
        self.read_calls += other.read_calls


QUEUES = ("threads", "kernel")


class _Deferred:
    """Reads announced to the kernel (``WILLNEED``); ``result()`` issues the ``preadv`` calls."""

    def __init__(self, do, jobs):
        self._do, self._jobs = do, jobs

    def result(self):
        self._do(self._jobs)


class PendingRead:
    """Reads in flight, from :meth:`FlashStore.read_neurons_async`; :meth:`result` waits for them."""

    def __init__(self, futures: list, finish):
        self._futures, self._finish = futures, finish

    def result(self):
        for f in self._futures:
            f.result()
        return self._finish()


class FlashStore:
    """Read neurons of a store written by :func:`write_store`.

    ``read_neurons(l, ids)`` returns ``(ids_sorted, up (n, d), down_t (n, d))`` fp16 numpy arrays,
    row j holding neuron ``ids_sorted[j]``'s row of ``W_up`` and column of ``W_down``;
    ``read_neurons_async`` starts the same reads and returns at once. ``max_gap_bytes``: runs of
    neurons at most this many bytes apart are read as one (the gap is read and dropped);
    ``max_read_bytes``: longer runs (a cold cache's first token) are split into reads of at most
    this size, spread over the threads like :meth:`read_range`'s chunks. ``queue``: how
    :meth:`read_neurons` keeps many reads in flight (``"threads"`` or ``"kernel"``, see
    :meth:`_submit`); :meth:`read_range` takes its own ``queue`` argument.
    """

    def __init__(self, path: str | Path, threads: int = 4, verify: bool = True, max_gap_bytes: int = 0,
                 max_read_bytes: int = 1 << 20, queue: str = "threads"):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads!r}")
        if max_gap_bytes < 0:
            raise ValueError(f"max_gap_bytes must be >= 0, got {max_gap_bytes!r}")
        self.path = Path(path)
        self.threads = threads
        self.max_gap_bytes = max_gap_bytes
        self.max_read_bytes = max_read_bytes
        if queue not in QUEUES:
            raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")
        self.queue = queue
        self.fd = fileio.open_read(self.path)
        self.cache_mode = fileio.cache_control()   # how drop_page_cache keeps reads off RAM here
        try:
            self._read_header()
            fileio.advise(self.fd, 0, 0, "RANDOM")   # no readahead: count what we ask for
            if verify:
                self.verify()
        except Exception:
            os.close(self.fd)
            raise
        self.stats = ReadStats()
        self._pool = None
        if threads > 1:              # start every I/O thread now, not during the first measured reads
            self._pool = ThreadPoolExecutor(threads)
            barrier = threading.Barrier(threads)
            for f in [self._pool.submit(barrier.wait) for _ in range(threads)]:
                f.result()

    # -- header, integrity ------------------------------------------------------------------
    def _read_header(self):
        size = os.fstat(self.fd).st_size
        head = fileio.pread(self.fd, len(MAGIC) + 8, 0)
        if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
            raise CorruptStoreError(f"{self.path}: not a FlashStore file (bad magic or truncated header)")
        (hlen,) = struct.unpack("<Q", head[len(MAGIC):])
        raw = fileio.pread(self.fd, hlen, len(MAGIC) + 8)
        try:
            h = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptStoreError(f"{self.path}: header is truncated or corrupted ({e})") from e
        self.header = h
        self.layout, self.n_layers, self.d, self.d_ff = h["layout"], h["n_layers"], h["d_model"], h["d_ff"]
        self.data_offset = _align(len(MAGIC) + 8 + hlen)
        self.tensors = {e["name"]: e for e in h["tensors"]}
        for e in h["tensors"]:
            end = self.data_offset + e["offset"] + e["nbytes"]
            if end > size:
                raise CorruptStoreError(f"{self.path}: truncated — tensor {e['name']!r} needs bytes up to {end}, "
                                        f"file has {size}")
        self.row_bytes = 2 * self.d if self.layout == "unbundled" else 4 * self.d   # bytes per neuron per tensor

    def verify(self):
        """Check every tensor's and neuron block's CRC-32; raise CorruptStoreError naming the first bad one."""
        bn = self.header["block_neurons"]
        for name, e in self.tensors.items():
            buf = fileio.pread(self.fd, e["nbytes"], self.data_offset + e["offset"])
            if len(buf) != e["nbytes"]:
                raise CorruptStoreError(f"{self.path}: truncated — short read of tensor {name!r}")
            if _crc(buf) == e["crc32"]:
                continue
            rb = e["nbytes"] // self.d_ff
            for b, want in enumerate(e["block_crc32"]):
                if _crc(buf[b * bn * rb:(b + 1) * bn * rb]) != want:
                    raise CorruptStoreError(f"{self.path}: tensor {name!r} is corrupted in neurons "
                                            f"{b * bn}..{min((b + 1) * bn, self.d_ff) - 1} (CRC-32 mismatch)")
            raise CorruptStoreError(f"{self.path}: tensor {name!r} fails its CRC-32 check (corrupted)")

    # -- page cache ---------------------------------------------------------------------------
    def drop_page_cache(self):
        """Evict this file's pages from the OS page cache so the next reads hit the device.

        Returns False where the OS offers no way (Windows): then reads may come from RAM."""
        return fileio.drop_cache(self.fd)

    def close(self):
        if self._pool is not None:
            self._pool.shutdown()
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reads -----------------------------------------------------------------------------------
    def _names(self, layer: int) -> list[str]:
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}), got {layer!r}")
        return [f"layers.{layer}.bundle"] if self.layout == "bundled" else [f"layers.{layer}.up", f"layers.{layer}.down_t"]

    def _submit(self, jobs: list[tuple[memoryview, int, str]], queue: str = "threads") -> list:
        """Start the reads: each job = (destination buffer, file offset, tensor name), one ``preadv``.

        ``queue="threads"``: the jobs are dealt round-robin to the thread pool (``preadv`` releases
        the GIL, so the reads overlap in the device queue). ``queue="kernel"``: every job is first
        announced with ``posix_fadvise(POSIX_FADV_WILLNEED)``, which queues its pages' reads in
        the kernel and returns at once — all of them in flight, no thread woken — and the
        ``preadv`` calls run when the result is asked for (copying pages that have arrived or
        waiting for them). Returns objects whose ``result()`` completes the reads.
        """
        if queue not in QUEUES:
            raise ValueError(f"queue must be one of {QUEUES}, got {queue!r}")

        def do(batch):
            for buf, off, name in batch:
                n = fileio.pread_into(self.fd, buf, off)
                if n != len(buf):
                    raise CorruptStoreError(f"{self.path}: truncated — short read in tensor {name!r} at byte {off}")
        self.stats.read_calls += len(jobs)
        self.stats.bytes_read += sum(len(b) for b, _, _ in jobs)
        if queue == "kernel":
            for buf, off, _ in jobs:      # without posix_fadvise: plain reads on result()
                fileio.advise(self.fd, off, len(buf), "WILLNEED")
            return [_Deferred(do, jobs)]
        if self._pool is None or len(jobs) <= 1:
            do(jobs)
            return []
        k = min(self.threads, len(jobs))
        return [self._pool.submit(do, jobs[i::k]) for i in range(k)]

    def _run_reads(self, jobs: list[tuple[memoryview, int, str]], queue: str = "threads"):
        for f in self._submit(jobs, queue):
            f.result()

    def read_neurons(self, layer: int, ids, max_gap: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Neurons ``ids`` of ``layer``: ``(ids_sorted (n,), up (n, d), down_t (n, d))`` in fp16."""
        return self.read_neurons_async(layer, ids, max_gap).result()

    def read_neurons_async(self, layer: int, ids, max_gap: int | None = None) -> "PendingRead":
        """Start reading neurons ``ids`` of ``layer``; ``.result()`` waits and returns what :meth:`read_neurons` does.

        Sorted ids are coalesced into runs (:func:`coalesce`), bridging gaps of up to ``max_gap``
        neurons (default: the store's ``max_gap_bytes`` worth of records): one ``preadv`` per run
        and per tensor, into a scratch buffer from which the wanted rows are picked. The caller
        can compute while the reads are in flight.
        """
        names = self._names(layer)
        ids = np.unique(np.asarray(ids, dtype=np.int64))                           # (n,)
        if len(ids) and (ids[0] < 0 or ids[-1] >= self.d_ff):
            raise ValueError(f"ids must be in [0, {self.d_ff}), got range [{ids[0]}, {ids[-1]}]")
        if max_gap is None:
            max_gap = self.max_gap_bytes // self.row_bytes
        n, d, rb = len(ids), self.d, self.row_bytes
        per = max(1, self.max_read_bytes // rb)
        runs = coalesce(ids, max_gap)
        firsts = np.array([f for f, _ in runs], dtype=np.int64)                   # (n_runs,)
        counts = np.array([c for _, c in runs], dtype=np.int64)                   # (n_runs,)
        span = int(counts.sum())
        bufs = [np.empty((span, rb // 2), dtype=np.float16) for _ in names]       # (span, 2d) or 2 × (span, d)
        jobs = []
        for buf, name in zip(bufs, names):
            mv, base, j = _bytes_view(buf), self.data_offset + self.tensors[name]["offset"], 0
            for first, cnt in runs:
                for c0 in range(0, cnt, per):         # a long run: chunks of <= max_read_bytes, in parallel
                    c = min(per, cnt - c0)
                    jobs.append((mv[(j + c0) * rb:(j + c0 + c) * rb], base + (first + c0) * rb, name))
                j += cnt
        futures = self._submit(jobs, self.queue)

        def finish():
            out = bufs
            if span != n:                                  # runs bridged gaps: keep the wanted rows
                r = np.searchsorted(firsts, ids, side="right") - 1                # run of each id
                pos = (np.cumsum(counts) - counts)[r] + ids - firsts[r]           # (n,) row in the scratch
                out = [b[pos] for b in bufs]
            if self.layout == "bundled":
                return ids, out[0][:, :d], out[0][:, d:]
            return ids, out[0], out[1]
        return PendingRead(futures, finish)

    def read_range(self, layer: int, start: int, stop: int, chunk_bytes: int = 1 << 20, queue: str = "threads"):
        """Neurons ``start..stop-1`` in chunks of ≈ ``chunk_bytes`` (what a memory-mapped model pages in)."""
        names = self._names(layer)
        n, d = stop - start, self.d
        per = max(1, chunk_bytes // self.row_bytes)
        arrays = []
        jobs = []
        for name in names:
            arr = np.empty((n, self.row_bytes // 2), dtype=np.float16)            # (n, row)
            mv, base = _bytes_view(arr), self.data_offset + self.tensors[name]["offset"]
            for s in range(0, n, per):
                c = min(per, n - s)
                jobs.append((mv[s * self.row_bytes:(s + c) * self.row_bytes], base + (start + s) * self.row_bytes, name))
            arrays.append(arr)
        self._run_reads(jobs, queue)
        if self.layout == "bundled":
            return arrays[0][:, :d], arrays[0][:, d:]
        return arrays[0], arrays[1]
