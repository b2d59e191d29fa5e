import pytest

from effsmall.offload.cost_model import offload_cost, random_read_throughput
from effsmall.offload.throughput import measure_read_throughput, scratch_file


def test_random_read_model_hits_both_ends():
    assert random_read_throughput(4096, 6.1e9, 1.25e9) == pytest.approx(1.25e9)
    assert random_read_throughput(1 << 30, 6.1e9, 1.25e9) == pytest.approx(6.1e9, rel=1e-3)


def test_cost_model_orders_strategies():
    c = offload_cost("OPT-6.7B", f_new=0.02, f_compute=0.1)
    s = c["strategies"]
    assert s["predictor+window+bundle"]["s_per_token"] < s["predictor+window"]["s_per_token"] < s["naive"]["s_per_token"]
    assert 12 < c["weights_GB"] < 15
    with pytest.raises(ValueError, match="f_new"):
        offload_cost(f_new=2)


def test_measure_read_throughput_small(tmp_path):
    path = scratch_file(1 << 20, tmp_path / "scratch.bin")
    rows = measure_read_throughput(path, chunk_sizes=(4096, 65536), threads=(1, 2), bytes_per_point=256 << 10)
    assert len(rows) == 4 and all(r["cold_GBps"] > 0 and r["warm_GBps"] > 0 for r in rows)
    with pytest.raises(ValueError, match="chunk_sizes"):
        measure_read_throughput(path, chunk_sizes=(1000,))
    with pytest.raises(ValueError, match="threads"):
        measure_read_throughput(path, chunk_sizes=(4096,), threads=(0,))
