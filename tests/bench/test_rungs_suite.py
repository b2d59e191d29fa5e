"""The ``rungs`` suite: the CPU quick run goes through the CLI and writes JSON with matmul, SSD
and attention rows for every implementation, and a summary (the GPU numbers come
from ``python -m effsmall.bench rungs --device cuda``)."""
import json
import os
import subprocess
import sys
import time

from effsmall.bench import SUITES


def test_rungs_quick_cpu(tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, TRITON_INTERPRET="1")
    t = time.time()
    subprocess.run([sys.executable, "-m", "effsmall.bench", "rungs", "--device", "cpu", "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=300, env=env)
    assert time.time() - t < 120
    res = json.loads(out.read_text())
    assert "rungs" in SUITES and res["suite"] == "rungs" and res["quick"]
    rows = res["rows"]
    assert not [r for r in rows if r["kind"] == "check"]     # correctness is tests/test_rungs_gpu.py's
    att = [r for r in rows if r["kind"] == "attention"]
    assert {r["impl"] for r in att} == {"fa1", "fa2_minimal", "production"}
    assert all(r["ms"] > 0 and r["tflops"] > 0 for r in att)
    assert any(r.get("vs_fa1") for r in att) and "fa2_minimal_vs_fa1_geomean" in res["summary"]
    mm = [r for r in rows if r["kind"] == "matmul"]
    assert {r["impl"] for r in mm} == {"triton_tiled", "torch"} and all(r["ms"] > 0 for r in mm)
    ssd = [r for r in rows if r["kind"] == "ssd"]
    assert {r["impl"] for r in ssd} == {"ssd_minimal", "ssd_triton"} and all(r["ms"] > 0 for r in ssd)
    from effsmall.bench.rungs import table

    text = table(rows)
    assert all(impl in text for impl in ("fa1", "fa2_minimal", "production", "triton_tiled", "ssd_minimal"))
