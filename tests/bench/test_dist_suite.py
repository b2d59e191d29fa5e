"""The dist benchmark's harness on CPU (gloo, two processes, tiny sizes): rows and summary are well formed."""
from effsmall.bench import dist as suite


def test_dist_suite_quick_cpu():
    rows = suite.run(device="cpu", quick=True)
    kinds = [r["kind"] for r in rows]
    assert kinds.count("tp_mamba2") == 1 and kinds.count("tp_attention") == 1
    assert kinds.count("cp_ssd") == 2 and kinds.count("ring") == 2
    tp = {r["kind"]: r for r in rows if r["kind"].startswith("tp_")}
    # fwd+bwd: one all-reduce each way per sublayer (Mamba-2: 1 sublayer; attention block: 2)
    assert tp["tp_mamba2"]["calls"] == {"all_reduce": 2}
    assert tp["tp_attention"]["calls"] == {"all_reduce": 4}
    for kind, r in tp.items():
        assert [r["calls"]["all_reduce"], r["bytes"]["all_reduce"]] == r["theory_fwd_bwd"]["all_reduce"]
    for r in rows:
        if r["kind"] == "cp_ssd":
            assert r["allgather_calls"] == {"all_gather": 1, "reduce_scatter": 1}
            assert r["p2p_s"] > 0 and r["one_gpu_s"] > 0
        if r["kind"] == "ring":
            assert r["ring_zigzag_s"] > 0 and r["torch_cp_error"] == "needs CUDA"
    summary = suite.summarize(rows)
    assert "tp_mamba2_speedup" in summary and "ring_speedup_zigzag_L512" in summary
