"""The store and the throughput probe on an OS without posix_fadvise, O_DIRECT or preadv.

macOS has no posix_fadvise or O_DIRECT; Windows has none of the three (nor pread). Deleting
them from ``os`` here makes Linux behave like those systems for the code under test.
"""
import mmap
import os

import numpy as np
import pytest
import torch

from effsmall.offload import fileio
from effsmall.offload.flash_store import FlashStore, write_store
from effsmall.offload.throughput import measure_read_throughput


@pytest.fixture(params=["macos", "windows"])
def bare_os(request, monkeypatch):
    """Remove what the platform lacks: macOS keeps preadv/pread, Windows has none of them."""
    for name in ("posix_fadvise", "O_DIRECT"):
        monkeypatch.delattr(os, name, raising=False)
    if request.param == "windows":
        for name in ("preadv", "pread"):
            monkeypatch.delattr(os, name, raising=False)
    monkeypatch.setattr(fileio, "HAVE_FADVISE", False)
    return request.param


def test_pread_into_reads_at_offsets_without_preadv(tmp_path, bare_os):
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fd = fileio.open_read(path)
    try:
        for off, n in [(0, 10), (4093, 4096), (9990, 10), (9995, 50)]:
            buf = bytearray(n)
            got = fileio.pread_into(fd, buf, off)
            assert got == min(n, len(data) - off) and bytes(buf[:got]) == data[off:off + n]
        assert fileio.advise(fd, 0, 0, "DONTNEED") is False     # a hint that is skipped, not an error
    finally:
        os.close(fd)


@pytest.mark.parametrize("layout", ["bundled", "unbundled"])
def test_store_round_trip_without_fadvise_odirect_preadv(tmp_path, bare_os, layout):
    g = torch.Generator().manual_seed(1)
    ffn = [(torch.randn(37, 8, generator=g), torch.randn(8, 37, generator=g)) for _ in range(2)]
    path = write_store(tmp_path / "m.ffn", ffn, layout, block_neurons=16)
    for queue in ("threads", "kernel"):
        with FlashStore(path, threads=3, queue=queue, max_gap_bytes=64) as s:
            assert s.cache_mode in ("F_NOCACHE", "buffered (page cache not bypassed)")
            s.drop_page_cache()
            for l, (u, w) in enumerate(ffn):
                ids = np.random.default_rng(l).choice(37, 20, replace=False)
                got, up, down_t = s.read_neurons(l, ids)
                assert (got == np.sort(ids)).all()
                assert torch.equal(torch.from_numpy(up.copy()), u[got].half())
                assert torch.equal(torch.from_numpy(down_t.copy()), w.T[got].half())


def test_chapter14_sized_read_throughput_without_them(tmp_path, bare_os):
    path = tmp_path / "scratch.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes())
    rows = measure_read_throughput(path, chunk_sizes=(4096, 65536), threads=(1, 4), bytes_per_point=1 << 20)
    assert len(rows) == 4
    for r in rows:
        assert r["cold_GBps"] > 0 and r["warm_GBps"] > 0
        assert r["mode"] in ("F_NOCACHE", "buffered (page cache not bypassed)")


def test_open_uncached_on_linux_reports_how():
    path = os.path.abspath(__file__)
    got = fileio.open_uncached(path, mmap.mmap(-1, 4096))
    if got is not None:
        fd, mode = got
        os.close(fd)
        assert mode in ("O_DIRECT", "F_NOCACHE")
