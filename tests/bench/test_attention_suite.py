"""The attention suite's bookkeeping, run on a CPU with its GPU timings stubbed: which
implementations each shape times and which ratios its rows carry."""
import torch

from effsmall.bench import attention


def test_portable_kernel_is_timed_exactly_where_the_hopper_forward_runs(monkeypatch):
    import effsmall.hardware
    from effsmall.attention import flash_triton

    class CpuTorch:                                                     # the suite's torch, its "cuda" tensors on the CPU
        def __getattr__(self, name):
            return getattr(torch, name)

        randn = staticmethod(lambda *a, device=None, **k: torch.randn(*a, **k))
        Generator = staticmethod(lambda device=None: torch.Generator())

    monkeypatch.setattr(attention, "torch", CpuTorch())
    monkeypatch.setattr(effsmall.hardware, "measure_ceilings",
                        lambda *a, **k: {"matmul_flops": {"bf16": 1e15}, "peak_flops": 1e15, "copy_bandwidth_Bps": 1e12})
    # the Hopper forward "runs" at D = 128 only; every implementation takes 1 ms, the portable one 2 ms
    monkeypatch.setattr(flash_triton, "backend", lambda q, k, v, causal: "triton-hopper" if q.shape[-1] == 128 else "triton")
    timed = []

    def fake_time_shape(impls, q, k, v, do, causal, mode):
        timed.append((q.shape[-1], tuple(impls)))
        return {name: {"s": 2e-3 if name == "effsmall_portable" else 1e-3, "graph": 1e-3, "host": 1e-4}
                for name in impls}
    monkeypatch.setattr(attention, "_time_shape", fake_time_shape)
    monkeypatch.setenv("EFFSMALL_BENCH_SIZES", "64")

    rows = [r for r in attention._run_cuda(quick=True) if r["kind"] == "attention"]
    assert {D for D, impls in timed if "effsmall_portable" in impls} == {128}
    assert all(("effsmall_portable" in impls) == (D == 128) for D, impls in timed)
    mine = [r for r in rows if r["impl"] == "effsmall"]
    assert len(mine) == 2 * 2 * 2                                       # D × causal × mode
    for r in mine:
        assert r["backend"] == ("triton-hopper" if r["D"] == 128 else "triton")
        assert ("vs_portable" in r) == (r["D"] == 128)
        if r["D"] == 128:
            assert r["vs_portable"] == 2.0 and r["vs_portable_graph"] == 1.0
    assert {r["D"] for r in rows if r["impl"] == "effsmall_portable"} == {128}
