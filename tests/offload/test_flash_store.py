import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.offload.flash_store import CorruptStoreError, FlashStore, coalesce, load_rest, write_store


def _ffn(L=2, d=8, d_ff=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(d_ff, d, generator=g), torch.randn(d, d_ff, generator=g)) for _ in range(L)]


@pytest.mark.parametrize("layout", ["bundled", "unbundled"])
def test_every_neuron_round_trips_exactly(tmp_path, layout):
    ffn = _ffn()
    path = write_store(tmp_path / "m.ffn", ffn, layout, block_neurons=16)
    with FlashStore(path, threads=3) as s:
        for l, (u, w) in enumerate(ffn):
            ids = np.random.default_rng(l).permutation(37)                 # every neuron, shuffled
            got, up, down_t = s.read_neurons(l, ids)
            assert (got == np.arange(37)).all()
            assert torch.equal(torch.from_numpy(up.copy()), u.half())
            assert torch.equal(torch.from_numpy(down_t.copy()), w.T.half())
            up2, down2 = s.read_range(l, 5, 30, chunk_bytes=64)
            assert torch.equal(torch.from_numpy(up2.copy()), u[5:30].half())
            assert torch.equal(torch.from_numpy(down2.copy()), w.T[5:30].half())


@pytest.mark.parametrize("layout,per_run", [("bundled", 1), ("unbundled", 2)])
def test_reads_are_coalesced_and_counted(tmp_path, layout, per_run):
    path = write_store(tmp_path / "m.ffn", _ffn(L=1, d=4, d_ff=20), layout)
    with FlashStore(path, threads=2) as s:
        ids = [3, 4, 5, 9, 12, 13]                                           # 3 runs
        s.read_neurons(0, ids)
        assert s.stats.read_calls == 3 * per_run
        assert s.stats.bytes_read == len(ids) * (2 * 4) * 2                  # 2d fp16 values per neuron
        _, up, _ = s.read_neurons(0, [])
        assert up.shape == (0, 4)
        with pytest.raises(ValueError, match="ids"):
            s.read_neurons(0, [20])
        with pytest.raises(ValueError, match="layer"):
            s.read_neurons(1, [0])


@given(st.sets(st.integers(0, 200)))
def test_coalesce_covers_ids_with_maximal_runs(ids):
    ids = np.array(sorted(ids), dtype=np.int64)
    runs = coalesce(ids)
    flat = [i for f, c in runs for i in range(f, f + c)]
    assert flat == ids.tolist()
    for (f1, c1), (f2, _) in zip(runs, runs[1:]):
        assert f2 > f1 + c1                                                  # runs are not adjacent


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = write_store(tmp_path / "m.ffn", _ffn(), "bundled")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 100])
    with pytest.raises(CorruptStoreError, match=r"m\.ffn.*truncated.*layers\.1\.bundle"):
        FlashStore(path)
    path.write_bytes(data[:20])
    with pytest.raises(CorruptStoreError, match=r"m\.ffn"):
        FlashStore(path)


@pytest.mark.parametrize("layout,tensor", [("bundled", "layers.0.bundle"), ("unbundled", "layers.1.down_t")])
def test_corrupted_byte_names_tensor_and_neurons(tmp_path, layout, tensor):
    path = write_store(tmp_path / "m.ffn", _ffn(), layout, block_neurons=16)
    with FlashStore(path, verify=False) as s:
        e = s.tensors[tensor]
        off = s.data_offset + e["offset"] + 20 * s.row_bytes + 3             # inside neuron 20
    raw = bytearray(path.read_bytes())
    raw[off] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=rf"m\.ffn.*{tensor}.*neurons 16\.\.31"):
        FlashStore(path)


def test_rest_safetensors_checksums(tmp_path):
    rest = {"a": torch.randn(5, 3), "b": torch.arange(7.0)}
    path = write_store(tmp_path / "m.ffn", _ffn(), "bundled", rest=rest)
    rpath = tmp_path / "m.ffn.rest.safetensors"
    got = load_rest(rpath)
    assert all(torch.equal(got[k], v) for k, v in rest.items())
    raw = bytearray(rpath.read_bytes())
    raw[-3] ^= 0xFF                                                          # inside tensor "b" (last)
    rpath.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match=r"rest\.safetensors.*'b'"):
        load_rest(rpath)
    rpath.write_bytes(bytes(raw[:40]))
    with pytest.raises(CorruptStoreError, match=r"rest\.safetensors"):
        load_rest(rpath)
    assert path.exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        write_store(tmp_path / "x.ffn", _ffn(), "striped")
    with pytest.raises(ValueError, match="ffn"):
        write_store(tmp_path / "x.ffn", [(torch.zeros(4, 2), torch.zeros(3, 4))])
    path = write_store(tmp_path / "x.ffn", _ffn(), "bundled")
    with pytest.raises(ValueError, match="threads"):
        FlashStore(path, threads=0)


@given(st.sets(st.integers(0, 200)), st.integers(0, 6))
def test_coalesce_with_gaps_covers_ids_and_bridges_only_small_gaps(ids, max_gap):
    ids = np.array(sorted(ids), dtype=np.int64)
    runs = coalesce(ids, max_gap=max_gap)
    covered = {i for f, c in runs for i in range(f, f + c)}
    assert set(ids.tolist()) <= covered
    for f, c in runs:                                                       # runs start and end on ids
        assert f in ids and f + c - 1 in ids
        inside = ids[(ids >= f) & (ids < f + c)]
        assert (np.diff(inside) <= max_gap + 1).all()                        # only small gaps bridged
    for (f1, c1), (f2, _) in zip(runs, runs[1:]):
        assert f2 - (f1 + c1) > max_gap                                      # larger gaps split runs
    if max_gap == 0:
        assert runs == coalesce(ids)


@pytest.mark.parametrize("queue", ["threads", "kernel"])
@pytest.mark.parametrize("layout,per_run", [("bundled", 1), ("unbundled", 2)])
def test_gap_reads_round_trip_exactly_and_count_bytes_and_calls(tmp_path, layout, per_run, queue):
    ffn = _ffn(L=2, d=8, d_ff=64)
    path = write_store(tmp_path / "m.ffn", ffn, layout)
    ids = [3, 4, 7, 20, 21, 22, 30, 63]              # 5 runs; gaps of 2, 12, 7, 32 missing neurons
    row = 4 * 8 // per_run                                                   # bytes per neuron per tensor
    for max_gap, runs, span in [(0, 5, 8), (2, 4, 10), (7, 3, 17), (12, 2, 29), (32, 1, 61)]:
        with FlashStore(path, threads=3, max_gap_bytes=max_gap * row, queue=queue) as s:
            for l, (u, w) in enumerate(ffn):
                got, up, down_t = s.read_neurons(l, ids[::-1])                 # any order in
                assert got.tolist() == ids
                assert torch.equal(torch.from_numpy(up.copy()), u[ids].half())
                assert torch.equal(torch.from_numpy(down_t.copy()), w.T[ids].half())
                assert s.read_neurons(l, ids, max_gap=0)[1].tobytes() == up.tobytes()   # per-call override
            assert s.stats.read_calls == 2 * (runs + 5) * per_run             # 2 layers, + the max_gap=0 reads
            assert s.stats.bytes_read == 2 * (span + 8) * row * per_run


def test_long_runs_are_split_into_max_read_bytes_reads(tmp_path):
    ffn = _ffn(L=1, d=8, d_ff=100)
    path = write_store(tmp_path / "m.ffn", ffn, "bundled")                 # 32-byte records
    with FlashStore(path, threads=3, max_gap_bytes=64, max_read_bytes=10 * 32) as s:
        ids = list(range(0, 50, 2)) + [99]                                   # one run 0..48 (49 neurons) + 99
        _, up, down_t = s.read_neurons(0, ids)
        assert torch.equal(torch.from_numpy(up.copy()), ffn[0][0][ids].half())
        assert torch.equal(torch.from_numpy(down_t.copy()), ffn[0][1].T[ids].half())
        assert s.stats.read_calls == 5 + 1                                   # ceil(49 / 10) + 1
        assert s.stats.bytes_read == (49 + 1) * 32


def test_async_reads_and_both_queues_equal_sync_threaded_reads(tmp_path):
    ffn = _ffn(L=1, d=8, d_ff=200)
    path = write_store(tmp_path / "m.ffn", ffn, "bundled")
    rng = np.random.default_rng(0)
    with FlashStore(path, threads=4, max_gap_bytes=64) as s, \
            FlashStore(path, threads=4, max_gap_bytes=64, queue="kernel") as k:
        for _ in range(10):
            ids = rng.choice(200, size=rng.integers(0, 40), replace=False)
            k.drop_page_cache()
            pending = k.read_neurons_async(0, ids)                           # reads announced, in flight
            a = pending.result()
            b = s.read_neurons(0, ids)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
        assert (k.stats.read_calls, k.stats.bytes_read) == (s.stats.read_calls, s.stats.bytes_read)
        up, down_t = k.read_range(0, 10, 190, chunk_bytes=256, queue="kernel")
        assert torch.equal(torch.from_numpy(up.copy()), ffn[0][0][10:190].half())
        assert torch.equal(torch.from_numpy(down_t.copy()), ffn[0][1].T[10:190].half())
    with pytest.raises(ValueError, match="max_gap"):
        FlashStore(path, max_gap_bytes=-1)
    with pytest.raises(ValueError, match="queue"):
        FlashStore(path, queue="io_uring")
