"""The ``gemv`` suite: the CPU quick run goes through the CLI and writes JSON with the copy-rate
ceiling, correctness rows for both kernels, timed rows for every implementation with bytes,
speed-ups and accuracy, and a summary (the GPU numbers come from
``python -m effsmall.bench gemv --device cuda``)."""
import json
import os
import subprocess
import sys


def test_gemv_quick_cpu(tmp_path):
    out = tmp_path / "g.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-m", "effsmall.bench", "gemv", "--device", "cpu", "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=300, env=env)
    res = json.loads(out.read_text())
    assert res["suite"] == "gemv" and res["quick"] and res["env"]["date"]
    rows = res["rows"]
    assert [r["kind"] for r in rows].count("ceiling") == 1 and rows[0]["bytes_per_s"] > 0
    checks = [r for r in rows if r["kind"] == "check"]
    assert {r["impl"] for r in checks} == {"int8", "int4"} and all(r["ok"] for r in checks)
    gemv = [r for r in rows if r["kind"] == "gemv"]
    assert {r["impl"] for r in gemv} == {"fp16", "int8", "int4", "int4_dequant"}
    assert all(r["ms"] > 0 and r["bytes"] > 0 and r["pct_of_copy"] > 0 and r.get("vs_fp16") for r in gemv)
    by = {(r["impl"], r["M"]): r for r in gemv}
    assert by["int4", 1]["bytes"] < by["int8", 1]["bytes"] < by["fp16", 1]["bytes"]
    # the accuracy cost: int8 well below int4, and both are real errors of quantization
    assert by["int8", 1]["rel_err"] < 0.02 < by["int4", 1]["rel_err"] < 0.2
    s = res["summary"]
    assert s["checks_passed"] and s["copy_GBps"] > 0 and "int4 M=1" in s["per_impl"]
