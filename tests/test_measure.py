"""effsmall.measure: timing on any device, the exact CPU memory meter, result plots."""
import torch

from effsmall.measure import benchmark, peak_memory, plot_rows


def test_benchmark_and_peak_memory_cpu():
    t = benchmark(lambda: torch.ones(1000).sum(), device="cpu", min_run_time=0.01)
    assert 0 < t < 0.1
    n = 1 << 20
    peak = peak_memory(lambda: torch.empty(n, dtype=torch.float32).fill_(1.0), device="cpu")
    assert peak >= 4 * n


def test_plot_rows():
    import matplotlib
    matplotlib.use("Agg")
    rows = [dict(N=n, ms=n / 100, impl=i) for n in (1, 2, 4) for i in ("a", "b")]
    ax = plot_rows(rows, "N", "ms", hue="impl")
    assert len(ax.lines) == 2


def test_peak_memory_counts_nested_ops_once():
    """A loop of many small matmuls (nested aten ops) must not look like a leak."""
    a = torch.randn(64, 64)
    one = peak_memory(lambda: a @ a, device="cpu")
    many = peak_memory(lambda: [a @ a for _ in range(200)], device="cpu")
    loop_freeing = peak_memory(lambda: [(a @ a).sum() for _ in range(200)], device="cpu")
    assert one >= 64 * 64 * 4
    assert loop_freeing < 4 * one, "temporaries freed in a loop must not accumulate"
    assert many >= one


def test_peak_memory_counts_live_results():
    a = torch.randn(256, 256)
    got = peak_memory(lambda: (a @ a) @ a, device="cpu")  # two 256x256 float32 results alive at most
    assert 256 * 256 * 4 <= got <= 2 * 256 * 256 * 4 + 4096


def test_peak_memory_ignores_writes_into_existing_tensors():
    x = torch.zeros(1000)
    assert peak_memory(lambda: x.add_(1)) == 0                     # in place
    assert peak_memory(lambda: torch.add(x, 1, out=x)) == 0        # out=
    assert peak_memory(lambda: x.detach()) == 0                    # shares x's storage
    assert peak_memory(lambda: x + 1) == 4000
    assert peak_memory(lambda: torch.empty(1000).fill_(1.0)) == 4000   # new, then filled in place


def test_peak_memory_sees_the_backward():
    q = torch.randn(64, 16, requires_grad=True)

    def fwd_bwd():
        ((q @ q.T).softmax(-1) @ q).sum().backward()
    assert peak_memory(fwd_bwd) >= 64 * 64 * 4                     # P (64 x 64) is saved for the backward


def test_host_time_measures_the_call():
    import time

    from effsmall.measure import host_time

    t = host_time(lambda: time.sleep(0.002), "cpu", calls=3, repeats=3)
    assert 0.0015 < t < 0.05


def test_compare_warms_up_records_failures_and_times_the_rest():
    from effsmall.measure import compare

    seen = []

    def ok():
        seen.append(1)

    def bad():
        raise RuntimeError("refuses this shape")

    out = compare({"ok": ok, "bad": bad}, "cpu", detail=["ok"], rounds=2, min_run_time=0.01)
    assert isinstance(out["bad"], RuntimeError)
    assert out["ok"]["s"] > 0 and out["ok"]["graph"] is None and out["ok"]["host"] is None  # CUDA only
    assert list(out) == ["bad", "ok"] and len(seen) > 2  # warm-up + timed calls


def test_peak_memory_counts_live_storage():
    from effsmall.attention import naive_attention, tiled_attention

    assert peak_memory(lambda: torch.zeros(1000)) == 4000
    # two temporaries alive at once, then freed: peak is their sum, not the running total
    assert peak_memory(lambda: [torch.ones(250) + torch.ones(250) for _ in range(3)]) <= 3 * 1000 + 2000
    q, k, v = (torch.randn(1, 1, 512, 16) for _ in range(3))
    naive = peak_memory(lambda: naive_attention(q, k, v, causal=True))
    tiled = peak_memory(lambda: tiled_attention(q, k, v, causal=True, block_m=64, block_n=64))
    assert naive >= 512 * 512 * 4       # S alone is N² floats
    assert tiled < naive / 4
