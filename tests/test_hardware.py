"""effsmall.hardware: the specs are sane, the roofline math is right, ceilings are measured."""
import math

import pytest

from effsmall import costs, hardware
from effsmall.hardware import DEVICES, get_device, roofline, roofline_time


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_spec_sanity(name):
    spec = DEVICES[name]
    assert spec.sources, "every spec cites its sources"
    assert all(v > 0 for v in spec.peak_flops.values())
    caps = [lv.capacity_bytes for lv in spec.levels]
    bws = [lv.bandwidth_Bps for lv in spec.levels]
    lats = [lv.latency_ns for lv in spec.levels]
    # down the hierarchy: bigger, slower, farther. Registers are the exception on GPUs: an SM's
    # register file (256 KiB) is larger than its shared memory, and a T4's registers outsize its L2.
    # The host's DRAM is off to the side of a GPU's hierarchy: a Colab VM has 13 GB next to a 16 GB T4.
    caps = [lv.capacity_bytes for lv in spec.levels if lv.name != "host DRAM (PCIe)"]
    assert caps[1:] == sorted(caps[1:]), f"{name}: capacities must grow down the hierarchy"
    assert bws == sorted(bws, reverse=True), f"{name}: bandwidths must shrink down the hierarchy"
    assert lats == sorted(lats), f"{name}: latencies must grow down the hierarchy"
    assert spec.main_memory.bandwidth_Bps > 0 and spec.sram.capacity_bytes < spec.main_memory.capacity_bytes


def test_known_datasheet_values():
    h100 = get_device("H100 SXM")
    assert h100.peak("bf16") == pytest.approx(989.4e12)
    assert h100.main_memory.bandwidth_Bps == pytest.approx(3.35e12)
    assert h100.ridge_point("bf16") == pytest.approx(989.4 / 3.35, rel=1e-6)
    t4 = get_device("T4 (Colab)")
    assert "bf16" not in t4.peak_flops  # Turing has no bf16
    with pytest.raises(ValueError, match="bf16"):
        t4.peak("bf16")
    with pytest.raises(ValueError, match="unknown device"):
        get_device("H1000")


def test_roofline_math():
    peak, bw = 100e12, 1e12  # ridge point at 100 FLOP/byte
    assert roofline(1.0, peak, bw) == pytest.approx(1e12)          # memory-bound: I * beta
    assert roofline(100.0, peak, bw) == pytest.approx(peak)        # at the ridge
    assert roofline(1e4, peak, bw) == pytest.approx(peak)          # compute-bound: flat
    c = costs.Cost(flops=2e12, bytes=1e9)
    assert roofline_time(c, peak, bw) == pytest.approx(max(2e12 / peak, 1e9 / bw))
    with pytest.raises(ValueError):
        roofline(-1, peak, bw)


def test_cost_counters():
    mm = costs.matmul(64, 32, 16, dtype_bytes=2)
    assert mm.flops == 2 * 64 * 32 * 16 and mm.bytes == (64 * 16 + 16 * 32 + 64 * 32) * 2
    add = costs.elementwise_add(1000, 4)
    assert add.intensity == pytest.approx(1 / 12)
    n, d = 1024, 64
    naive = costs.attention(n, d)
    fused = costs.attention(n, d, fused=True)
    assert naive.flops == fused.flops
    assert naive.bytes - fused.bytes == 4 * n * n * 2        # S and P round trips
    assert naive.extra_memory == n * n * 2
    # doubling N: attention FLOPs x4, SSD FLOPs x2 (linear), MLP x2
    r = lambda f: f(2 * n).flops / f(n).flops
    assert r(lambda m: costs.attention(m, d)) == pytest.approx(4, rel=1e-6)
    assert r(lambda m: costs.ssd_layer(m, 256, chunk=64)) == pytest.approx(2, rel=1e-6)
    assert r(lambda m: costs.mlp_layer(m, 256)) == pytest.approx(2, rel=1e-6)


def test_layer_costs_rows():
    rows = costs.layer_costs([256, 512], d_model=128, heads=4)
    assert {r["layer"] for r in rows} == {"attention (naive)", "attention (fused)", "MLP", "SSD (Mamba-2)"}
    assert all(r["flops"] > 0 and r["bytes"] > 0 for r in rows)


def test_roofline_ops_order():
    ops = hardware.roofline_ops(4096)
    i = {k: v.intensity for k, v in ops.items()}
    assert i["elementwise add"] < i["softmax"] < i["naive attention"] < i["fused attention"]
    assert i["matmul"] > 100


def test_measure_ceilings_cpu_quick():
    rec = hardware.measure_ceilings("cpu", quick=True)
    assert rec["copy_bandwidth_Bps"] > 1e8
    assert rec["matmul_flops"]["fp32"] > 1e8
    assert rec["ridge_point"] == pytest.approx(rec["peak_flops"] / rec["copy_bandwidth_Bps"])


def test_plots_draw(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = hardware.plot_roofline(get_device("A100 SXM"), "bf16", measured={"peak_flops": 2e14,
                                                                        "copy_bandwidth_Bps": 1.5e12})
    assert len(ax.lines) >= 7
    ax = hardware.plot_hierarchy()
    assert len(ax.lines) == len(DEVICES)
    plt.close("all")


def test_modelcards_param_counts():
    from effsmall.modelcards import get_card

    assert get_card("Phi-3-mini-4k").param_count() == pytest.approx(3.82e9, rel=0.01)
    assert get_card("TinyLlama-1.1B").param_count() == pytest.approx(1.10e9, rel=0.01)
    assert get_card("OPT-6.7B").param_count() == pytest.approx(6.66e9, rel=0.01)
    assert get_card("Falcon-7B").param_count() == pytest.approx(6.92e9, rel=0.01)
    tl = get_card("TinyLlama-1.1B")
    assert tl.kv_cache_bytes(2048) == 2 * 22 * 4 * 64 * 2048 * 2
    with pytest.raises(ValueError, match="unknown model card"):
        get_card("GPT-17")
    assert math.isclose(get_card("Phi-3-mini-4k").weight_bytes(4), get_card("Phi-3-mini-4k").param_count() / 2)


def test_one_count_for_the_ssd_layer_and_the_chunked_algorithm():
    # chapter 1's costs.ssd_layer and chapter 11's ssd_chunked_cost count the same scan FLOPs
    # (causal half of each Q×Q diagonal block, chunk states, state to output)
    from effsmall.ssm.ssd_chunkwise import ssd_chunked_cost
    n, d, P, N, Q = 4096, 256, 64, 128, 256
    heads = 2 * d // P
    proj = costs.matmul(n, 2 * 2 * d + 2 * N + heads, d) + costs.matmul(n, d, 2 * d)
    scan = costs.ssd_layer(n, d, head_dim=P, d_state=N, chunk=Q).flops - proj.flops
    c = ssd_chunked_cost(1, n, heads, P, N, Q)
    passing = heads * (n // Q) * 2 * P * N
    assert scan == c["flops"] - passing


def test_layer_costs_mlp_gating():
    gated = {r["layer"]: r["flops"] for r in costs.layer_costs([1024], d_model=256, heads=4)}
    plain = {r["layer"]: r["flops"] for r in costs.layer_costs([1024], d_model=256, heads=4, gated_mlp=False)}
    assert gated["MLP"] == costs.mlp_layer(1024, 256).flops
    assert plain["MLP"] == costs.mlp_layer(1024, 256, gated=False).flops < gated["MLP"]
    assert gated["attention (fused)"] == plain["attention (fused)"]


def test_lower_layers_never_import_the_bench():
    """hardware, runtime and the widgets sit below the benchmark suites: they measure and load
    results with effsmall.measure."""
    import ast
    from pathlib import Path

    import effsmall

    root = Path(effsmall.__file__).parent
    for name in ("hardware.py", "runtime.py", "measure.py", "widgets/roofline.py"):
        tree = ast.parse((root / name).read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("effsmall.bench")], name
