"""The decode suite: the CPU smoke run writes rows and a summary; the summary's ratios and the table."""
import json
import os
import subprocess
import sys

from effsmall.bench import SUITES
from effsmall.bench.decode import _ratios, kv_bytes, summarize, table


def test_cli_decode_quick_cpu(tmp_path):
    out = tmp_path / "decode.json"
    env = dict(os.environ, TRITON_INTERPRET="1")   # --device cpu: the interpreter, GPU or not
    subprocess.run([sys.executable, "-m", "effsmall.bench", "decode", "--device", "cpu", "--quick", "--out", str(out)],
                   check=True, timeout=600, env=env, capture_output=True)
    res = json.loads(out.read_text())
    assert "decode" in SUITES and res["suite"] == "decode"
    kinds = {r["kind"] for r in res["rows"]}
    assert {"ceiling", "decode"} <= kinds
    mine = [r for r in res["rows"] if r["kind"] == "decode" and r["impl"] == "effsmall"]
    assert mine and all(r["ms"] > 0 for r in mine) and "lm_decode" not in kinds
    assert res["summary"]["vs_best_sdpa_geomean"] > 0


def _row(impl, B, L, ms, graph):
    return dict(kind="decode", impl=impl, B=B, L=L, ms=ms, graph_ms=graph, pct_of_read_ceiling=90.0)


def test_ratios_summary_and_table():
    rows = []
    for L in (4096, 65536):
        shape = {"effsmall": _row("effsmall", 1, L, 0.02, 0.010),
                 "effsmall_paged": _row("effsmall_paged", 1, L, 0.02, 0.0104),
                 "sdpa_flash": _row("sdpa_flash", 1, L, 0.03, 0.015),
                 "sdpa_cudnn": _row("sdpa_cudnn", 1, L, 0.03, 0.014),
                 "sdpa_efficient": dict(kind="decode", impl="sdpa_efficient", B=1, L=L, ms=None, error="refused"),
                 "flex": _row("flex", 1, L, 0.1, 0.05)}
        _ratios(shape)
        assert abs(shape["effsmall"]["vs_best_sdpa_graph"] - 1.4) < 1e-9
        assert abs(shape["effsmall"]["paged_over_contiguous_graph"] - 1.04) < 1e-9
        rows += list(shape.values())
    s = summarize(rows)
    assert abs(s["vs_best_sdpa_graph_geomean"] - 1.4) < 1e-9 and abs(s["paged_over_contiguous_graph_max"] - 1.04) < 1e-9
    text = table(rows)
    assert "effsmall" in text and "1.40" in text and len(text.splitlines()) == 3   # header + one line per (B, L)
    assert kv_bytes(1, 1024) == 2 * 8 * 1024 * 128 * 2


def test_plot_decode_from_a_cpu_result(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from effsmall.bench.decode import plot_decode

    rows = [dict(kind="decode", impl=i, B=B, L=L, ms=1.0, graph_ms=None, pct_of_read_ceiling=50.0)
            for i in ("effsmall", "sdpa_cpu") for B in (1, 2) for L in (128, 512)]
    rows += [dict(kind="lm_decode", arch="mamba2", context=64, ms_per_token_kernels=2.0)]   # old results: ignored
    fig = plot_decode({"rows": rows, "env": {"device_name": "CPU"}})
    assert len(fig.axes) == 2
