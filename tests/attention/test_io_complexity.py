"""io_traffic equals the bytes tiled_attention moves, and reproduces Theorem 2's scaling."""
import matplotlib
import pytest
import torch

from effsmall.attention import io_traffic, tiled_attention
from effsmall.attention.io_complexity import default_blocks, plot_io_theorem
from effsmall.attention.tiled import HBMCounter

matplotlib.use("Agg")


@pytest.mark.parametrize("N,D,bm,bn", [(1, 8, 4, 4), (17, 8, 4, 5), (64, 16, 16, 16), (100, 8, 32, 7)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("order", ["fa1", "fa2"])
def test_formula_equals_counted_bytes(N, D, bm, bn, causal, order):
    q = torch.randn(1, 1, N, D, dtype=torch.float16)
    c = HBMCounter()
    tiled_attention(q, q, q, causal=causal, block_m=bm, block_n=bn, order=order, counter=c)
    f = io_traffic(N, D, 4096, algorithm=order, block_m=bm, block_n=bn, causal=causal, dtype_bytes=2)
    assert f["terms"] == c.bytes
    assert (f["reads"], f["writes"], f["total"]) == (c.reads, c.writes, c.total)


@pytest.mark.parametrize("N,bm,bn", [(64, 16, 16), (50, 8, 12), (33, 16, 4)])
@pytest.mark.parametrize("window", [(0, 0), (5, None), (20, 3), (None, 7), (9, -1)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("order", ["fa1", "fa2"])
def test_formula_equals_counted_bytes_with_window(N, bm, bn, window, causal, order):
    q = torch.randn(1, 1, N, 8, dtype=torch.float16)
    c = HBMCounter()
    tiled_attention(q, q, q, causal=causal, block_m=bm, block_n=bn, order=order, window=window, counter=c)
    f = io_traffic(N, 8, 4096, algorithm=order, block_m=bm, block_n=bn, causal=causal, window=window)
    assert f["terms"] == c.bytes
    assert f["total"] == c.total


def test_standard():
    f = io_traffic(1024, 64, 10 ** 5, algorithm="standard", dtype_bytes=2)
    assert f["total"] == 2 * (4 * 1024 * 64 + 4 * 1024 ** 2)


def test_default_blocks_algorithm1():
    assert default_blocks(4096, 64, 100 * 1024, dtype_bytes=2) == (64, 200)
    assert default_blocks(4096, 128, 1024, dtype_bytes=2) == (1, 1)
    assert default_blocks(10, 64, 10 ** 7) == (10, 10)


def test_theorem2_scaling():
    N, D = 8192, 64
    a = io_traffic(N, D, 64 * 1024, algorithm="fa1")["total"]
    b = io_traffic(N, D, 256 * 1024, algorithm="fa1")["total"]
    assert 3.0 < a / b < 4.5  # Θ(N²D²/M): 4x the SRAM, ~4x fewer bytes
    for M in (16 * 1024, 64 * 1024, 256 * 1024):
        ratio = io_traffic(N, D, M, algorithm="fa1")["total"] / (N * N * D * D / (M / 2) * 2)
        assert 1.0 < ratio < 20.0
    std = io_traffic(N, D, 64 * 1024)["total"]
    assert std > 1.5 * io_traffic(N, D, 64 * 1024, algorithm="fa2")["total"]
    assert io_traffic(N, D, 1024 * 1024, algorithm="fa1")["total"] < std / 4


def test_plot():
    ax = plot_io_theorem(N=512, D=32, Ms=[1024, 4096, 16384])
    assert len(ax.lines) == 5


def test_bad_input():
    with pytest.raises(ValueError, match="algorithm"):
        io_traffic(16, 8, 1024, algorithm="fa3")
    with pytest.raises(ValueError, match="N"):
        io_traffic(0, 8, 1024)
    with pytest.raises(ValueError, match="block_m"):
        io_traffic(16, 8, 1024, algorithm="fa1", block_m=0)


def test_tile_trace_bytes_equal_formula():
    from effsmall.attention.viz import tile_trace

    for order in ("fa1", "fa2"):
        steps = tile_trace(48, 16, 16, 8, order, causal=True)
        f = io_traffic(48, 16, 4096, algorithm=order, block_m=16, block_n=8, causal=True)
        assert len(steps) == 12 and steps[-1]["bytes"] == f["total"]
        assert all(a["bytes"] <= b["bytes"] for a, b in zip(steps, steps[1:]))
