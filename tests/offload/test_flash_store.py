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
