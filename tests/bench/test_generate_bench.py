"""The generate suite: the CPU smoke run writes rows next to their floors; summary ratios and the
crossover; the chapter's plot."""
import json
import os
import subprocess
import sys

import pytest

from effsmall.bench.generate import plot_latency, summarize, table


def test_cli_generate_quick_cpu(tmp_path):
    out = tmp_path / "generate.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-m", "effsmall.bench", "generate", "--device", "cpu", "--quick", "--out", str(out)],
                   check=True, timeout=600, env=env, capture_output=True)
    res = json.loads(out.read_text())
    assert res["suite"] == "generate" and res["env"]["device"] == "cpu" and res["env"]["date"]
    kinds = {r["kind"] for r in res["rows"]}
    assert {"ceiling", "generate", "reference"} <= kinds
    gen = [r for r in res["rows"] if r["kind"] == "generate"]
    assert {r["arch"] for r in gen} == {"transformer", "mamba2", "hybrid"}
    for r in gen:
        assert not r.get("error") and r["eager_ms"] > 0 and r["floor_ms"] > 0
        assert r["eager_over_floor"] == pytest.approx(r["eager_ms"] / r["floor_ms"])
        assert r["floor_bytes"] == r["weight_bytes"] + r["kv_bytes"] + r["state_bytes"]
        assert (r["kv_bytes"] == 0) == (r["arch"] == "mamba2")
        assert r["ops_per_token"] > 0 and "cuda_kernels_per_token" not in r      # counted on any device
    assert set(res["summary"]["ops_per_token"]) == {"transformer", "mamba2", "hybrid"}
    assert "lines" not in res["summary"]            # measurements only, no verdicts
    assert res["summary"]["floor_crossover_context_batch1"] > 0


def _row(arch, B, L, floor, eager, graph):
    return dict(kind="generate", arch=arch, batch=B, context=L, floor_ms=floor, eager_ms=eager, graph_ms=graph,
                eager_over_floor=eager / floor, graph_over_floor=graph / floor, graph_tokens_per_s=B / graph * 1e3,
                weight_bytes=100, kv_bytes=0 if arch == "mamba2" else 10 * L, state_bytes=50 if arch != "transformer" else 0,
                floor_bytes=0, dtype="bfloat16")


def test_summary_ratios_and_crossover():
    rows = [dict(kind="ceiling", copy_Bps=4e12)]
    for L, tf in ((1024, 0.2), (16384, 0.3), (65536, 0.6)):
        rows += [_row("transformer", 1, L, 0.1, 2.5, tf), _row("mamba2", 1, L, 0.1, 2.5, 0.25),
                 _row("hybrid", 1, L, 0.1, 2.5, 0.2)]
    for r in rows[1:]:
        r["floor_bytes"] = r["weight_bytes"] + r["kv_bytes"] + r["state_bytes"]
    rows.append(_row("transformer", 16, 65536, 1.0, 9.0, 1.4))
    rows.append(dict(kind="skipped", arch="mamba2", batch=16, context=65536, reason="time budget"))
    s = summarize(rows)
    assert "lines" not in s
    assert s["graph_over_floor"]["transformer B=1 1K"] == pytest.approx(2.0)
    assert s["graph_over_floor"]["transformer B=1 64K"] == pytest.approx(6.0)    # 0.6 ms over a 0.1 ms floor
    assert s["graph_over_floor"]["transformer B=16 64K"] == pytest.approx(1.4)
    assert s["first_context_transformer_slower_graph_ms_batch1"] == 16384
    assert s["floor_crossover_context_batch1"] == pytest.approx(5.0)           # (150 - 100) / 10 bytes per token
    assert s["skipped"] == 1
    assert "transformer" in table(rows) and "skipped" in table(rows)


def test_plot_latency():
    import matplotlib

    matplotlib.use("Agg")
    rows = [_row(a, B, L, 0.1, 2.0, 0.3) for a in ("transformer", "mamba2", "hybrid") for B in (1, 16)
            for L in (1024, 16384)]
    fig = plot_latency({"rows": rows, "env": {"device_name": "GPU"}})
    assert len(fig.axes) == 2
    eager_only = [dict(r, graph_ms=None) for r in rows if r["batch"] == 1]
    assert len(plot_latency({"rows": eager_only, "env": {"device_name": "CPU"}}).axes) == 1
