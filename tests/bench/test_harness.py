"""The benchmark suites' harness: the CLI writes valid JSON, committed results load, the suites'
shared settings, rows and table (the measuring itself: ``tests/test_measure.py``)."""
import json
import subprocess
import sys

import pytest

from effsmall.bench import list_results, load_result


def test_cli_ceilings_cpu(tmp_path):
    out = tmp_path / "c.json"
    subprocess.run([sys.executable, "-m", "effsmall.bench", "ceilings", "--device", "cpu", "--quick",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    data = json.loads(out.read_text())
    assert data["suite"] == "ceilings"
    for key in ("device_name", "torch", "triton", "date"):
        assert data["env"][key] is not None
    assert any(r["op"] == "copy" for r in data["rows"])
    assert data["summary"]["peak_flops"] > 0


def test_cli_rejects_unknown_suite():
    r = subprocess.run([sys.executable, "-m", "effsmall.bench", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "invalid choice" in r.stderr


def test_committed_h100_ceilings():
    assert any(n.startswith("ceilings-") for n in list_results())
    res = load_result("ceilings", device="H100")
    assert "H100" in res["env"]["device_name"]
    s = res["summary"]
    assert 1e12 < s["copy_bandwidth_Bps"] < 4e12          # HBM3, bytes read + written
    assert 2e14 < s["matmul_flops"]["bf16"] < 1e15         # below the 989 TFLOP/s datasheet peak
    with pytest.raises(FileNotFoundError):
        load_result("ceilings", device="no such device")


def test_names_the_suites_import_stay_importable():
    from effsmall import measure
    from effsmall.bench.results import environment, geomean, load_result, record_partial, save_result  # noqa: F401
    from effsmall.bench.timing import benchmark, benchmark_rounds, compare, host_time, rounds_default  # noqa: F401

    assert benchmark is measure.benchmark and geomean is measure.geomean and save_result is measure.save_result


def test_shared_table_one_line_per_shape():
    from effsmall.bench.common import table

    rows = [dict(impl=i, N=n, tflops=t) for n in (512, 1024) for i, t in (("a", 1.0 * n), ("b", None))]
    rows.append(dict(impl="a", N=None, tflops=3.0))                  # a row without the key sorts last
    text = table(rows, index=("N",), impls=("a", "b", "c"), cell=lambda r: r.get("tflops"), unit="TFLOP/s",
                 extras=[("a/1k", lambda rs: rs["a"]["tflops"] / 1024 if rs["a"].get("tflops") else None)])
    lines = text.splitlines()
    assert len(lines) == 4 and "c" not in lines[0].split() and lines[0].endswith("(TFLOP/s)")
    assert lines[1].split() == ["512", "512.0", "-", "0.50"] and lines[3].split()[0] == "None"


def test_geomean_and_partial_rows(tmp_path, monkeypatch):
    import json as _json
    import math as _math

    from effsmall.bench.results import geomean, record_partial

    assert geomean([2.0, 8.0]) == pytest.approx(4.0)
    assert geomean([None, 0, 9.0, 1.0]) == pytest.approx(3.0)   # missing entries are skipped
    assert geomean([]) is None and geomean([None]) is None
    assert _math.isclose(geomean([1.5]), 1.5)
    path = tmp_path / "partial.jsonl"
    monkeypatch.setenv("EFFSMALL_BENCH_PARTIAL", str(path))
    record_partial({"a": 1})
    record_partial({"b": 2.5})
    assert [_json.loads(line) for line in path.read_text().splitlines()] == [{"a": 1}, {"b": 2.5}]
    monkeypatch.delenv("EFFSMALL_BENCH_PARTIAL")
    record_partial({"c": 3})  # no file asked for: nothing written
    assert len(path.read_text().splitlines()) == 2


def test_suite_summaries_reproduce_committed_results():
    """The shared geomean gives the summaries stored with the committed GPU runs."""
    from effsmall.bench import attention, ssd

    att = load_result("attention", device="H100")
    assert attention.summarize(att["rows"])["fwd_vs_flex_geomean"] == pytest.approx(
        att["summary"]["fwd_vs_flex_geomean"])
    s = load_result("ssd", device="H100")
    again = ssd.summarize(s["rows"])
    for key in ("speedup_vs_mamba_ssm_fwd_geomean", "speedup_vs_mamba_ssm_fwdbwd_graph_geomean",
                "speedup_vs_attention_infer_L16384", "speedup_vs_attention_infer_graph_L2048"):
        assert again[key] == s["summary"][key]


def test_merge_results_keeps_one_ceiling_and_every_run():
    from effsmall.bench.results import merge_results

    env = {"date": "2026-01-01T00:00:00Z", "device_name": "X"}
    a = {"suite": "s", "env": env, "seconds": 2.0, "rows": [{"kind": "ceiling"}, {"kind": "r", "v": 1}]}
    b = {"suite": "s", "env": dict(env, date="2026-01-01T00:10:00Z"), "seconds": 3.0,
         "rows": [{"kind": "ceiling"}, {"kind": "r", "v": 2}]}
    m = merge_results([a, b], summarize=lambda rows: {"n": len(rows)}, note="two runs")
    assert [r["kind"] for r in m["rows"]] == ["ceiling", "r", "r"]
    assert m["summary"] == {"n": 3} and m["seconds"] == 5.0 and m["note"] == "two runs"
    assert [r["date"][-9:-4] for r in m["runs"]] == ["00:00", "00:10"]
