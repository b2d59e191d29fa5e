"""Suite ``rungs``: chapter 7's teaching kernels measured against what they lead up to.

CUDA (``python -m effsmall.bench rungs --device cuda``), bf16:

* attention forward, B·N = 16K tokens, H = 2048 / D, N ∈ {1K, 2K, 4K, 8K, 16K}, D ∈ {64, 128}:
  ``fa1`` (:func:`effsmall.attention.flash_attention_fa1`, FlashAttention-1's loop order),
  ``fa2_minimal`` (:func:`effsmall.attention.flash_attention_minimal`, FA2's order in ~30 lines)
  and ``production`` (:func:`effsmall.attention.flash_attention`, autotuned). FLOPs ``4·B·H·N²·D``.
  Ratios on the ``fa2_minimal`` row: ``vs_fa1`` (FA1 time / FA2 time, > 1: FA2 faster) and
  ``production_vs_minimal`` on the ``production`` row, in eager and CUDA-graph time.
* matmul ``M = N = K`` ∈ {1K, 2K, 4K, 8K}: the tiled Triton kernel
  (:func:`effsmall.attention.matmul`, 128 × 128 × 64 tiles) against ``torch.matmul`` (cuBLAS);
  ``vs_torch`` = torch time / Triton time.
* chunked SSD forward, H = 32, P = 64, N = 128, B·L = 16K tokens, L ∈ {2K, 8K, 16K}, Q = 64:
  ``ssd_minimal`` (:func:`effsmall.ssm.ssd_minimal`, chapter 11's ~25-line kernel, one program
  per (batch, head)) against ``ssd_triton`` (production: P-blocks, time segments, pipelining);
  ``vs_minimal`` on the ``ssd_triton`` row. FLOPs from :func:`effsmall.ssm.ssd_chunkwise.ssd_chunked_cost`.
* ``kind="check"`` rows: every kernel against ``naive_attention`` / fp64 matmul / fp64
  ``ssd_chunked`` on the device first.

Every implementation gets its eager time (``ms``: fastest of ``EFFSMALL_BENCH_ROUNDS``, default
2 here, interleaved rounds of ``triton.testing.do_bench`` medians) and its CUDA-graph time
(``graph_ms``: the GPU's time alone). TFLOP/s are also given as a percentage of the best
``torch.matmul`` rate measured in the same run (``pct_of_cublas``) — a measured ceiling, not a
datasheet one. The run keeps to ``EFFSMALL_BENCH_BUDGET_S`` seconds (default 240): shapes that
would not fit are recorded as ``kind="skipped"``; rows are appended to
``$EFFSMALL_BENCH_PARTIAL`` as they are measured.

CPU (``--device cpu``, ``--quick`` for the smoke test): the same kernels in the Triton
interpreter at toy sizes — correctness rows and times that say nothing about a GPU.

``python -m effsmall.bench.rungs FILE.json`` prints the table of a saved result.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from effsmall.bench.results import geomean, record_partial
from effsmall.bench.timing import benchmark, benchmark_rounds

TOKENS = 16 * 1024
HIDDEN = 2048
SEQ_LENS = (1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
MATMUL_SIZES = (1024, 2048, 4096, 8192)
SSD_LENGTHS = (2048, 8192, 16384)
SSD_H, SSD_P, SSD_N, SSD_Q = 32, 64, 128, 64
ATTN_IMPLS = ("fa1", "fa2_minimal", "production")
MATMUL_IMPLS = ("triton_tiled", "torch")
GPU_MATMUL_BLOCKS = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)


def _attn_impls() -> dict:
    from effsmall.attention import flash_attention, flash_attention_fa1, flash_attention_minimal

    return {"fa1": flash_attention_fa1, "fa2_minimal": flash_attention_minimal,
            "production": lambda q, k, v: flash_attention(q, k, v)}


def _matmul_impls(device: str) -> dict:
    from effsmall.attention import matmul

    blocks = GPU_MATMUL_BLOCKS if str(device).startswith("cuda") else dict(block_m=16, block_n=16, block_k=16)
    return {"triton_tiled": lambda a, b: matmul(a, b, **blocks), "torch": torch.matmul}


def _time(fns: dict, device: str, graph: bool, rounds: int, **kw) -> dict:
    """{name: exception or (eager s, graph s or None)}: warm-up once, interleaved eager rounds,
    then one CUDA-graph measurement each."""
    calls, out = {}, {}
    for name, fn in fns.items():
        try:
            fn()
            calls[name] = fn
        except Exception as e:  # noqa: BLE001 - recorded in the row
            out[name] = e
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    for name, t in benchmark_rounds(calls, device, rounds=rounds, **kw).items():
        if isinstance(t, Exception):
            out[name] = t
            continue
        g = None
        if graph:
            try:
                g = benchmark(calls[name], device, cuda_graph=True, rep_ms=40)
            except Exception:  # noqa: BLE001 - capture can fail; the eager time stands
                g = None
        out[name] = (t, g)
    return out


def _row(kind: str, name: str, r, flops: float, **shape) -> dict:
    row = dict(kind=kind, impl=name, **shape)
    if isinstance(r, Exception):
        row.update(ms=None, tflops=None, error=f"{type(r).__name__}: {str(r)[:200]}")
    else:
        t, g = r
        row.update(ms=t * 1e3, tflops=flops / t / 1e12, graph_ms=g * 1e3 if g else None,
                   graph_tflops=flops / g / 1e12 if g else None)
    return row


def _ratio(rows: dict, num: str, den: str, col: str) -> None:
    """rows[den][col] = rows[num].ms / rows[den].ms (and the graph ratio): > 1 means ``den`` is faster."""
    a, b = rows[num], rows[den]
    if a.get("ms") and b.get("ms"):
        b[col] = a["ms"] / b["ms"]
    if a.get("graph_ms") and b.get("graph_ms"):
        b[col + "_graph"] = a["graph_ms"] / b["graph_ms"]


def _ssd_impls() -> dict:
    from effsmall.ssm import ssd_minimal, ssd_triton

    return {"ssd_minimal": lambda X, A, B, C, Q: ssd_minimal(X, A, B, C, Q),
            "ssd_triton": lambda X, A, B, C, Q: ssd_triton(X, A, B, C, Q)}


def _ssd_data(b, l, h, p, n, dtype, device, seed=0):
    from effsmall.ssm._ssd_testing import ssd_inputs

    X, A, B, C, _ = ssd_inputs(b=b, l=l, h=h, g=1, p=p, n=n, dtype=torch.float32, seed=seed, device=device)
    return X.to(dtype), A, B.to(dtype), C.to(dtype)


def checks(device: str, dtype: torch.dtype, N: int, D: int, size: int) -> list[dict]:
    """Each kernel against the fp64 reference on ``device``; errors relative to max |reference|."""
    from effsmall.attention import naive_attention

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(2, 2, N, D, device=device, generator=g).to(dtype) for _ in range(3))
    ref = naive_attention(q.double(), k.double(), v.double())
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    rows = []
    for name, fn in _attn_impls().items():
        err = ((fn(q, k, v).double() - ref).abs().max() / ref.abs().max()).item()
        rows.append(dict(kind="check", impl=name, N=N, D=D, dtype=str(dtype)[6:], rel_err=err, tol=tol,
                         ok=bool(err < tol)))
    a = torch.randn(size, size + 3, device=device, generator=g).to(dtype)
    b = torch.randn(size + 3, size - 5, device=device, generator=g).to(dtype)
    ref = a.double() @ b.double()
    err = ((_matmul_impls(device)["triton_tiled"](a, b).double() - ref).abs().max() / ref.abs().max()).item()
    rows.append(dict(kind="check", impl="triton_tiled", M=size, dtype=str(dtype)[6:], rel_err=err, tol=tol,
                     ok=bool(err < tol)))
    from effsmall.ssm import ssd_chunked

    X, A, B, C = _ssd_data(2, 2 * D, 4, D, D, dtype, device)
    Yr, sr = ssd_chunked(X.double(), A.double(), B.double(), C.double(), 16)
    for name, fn in _ssd_impls().items():
        Y, s = fn(X, A, B, C, 16)
        err = max(((Y.double() - Yr).abs().max() / Yr.abs().max()).item(),
                  ((s.double() - sr).abs().max() / sr.abs().max()).item())
        rows.append(dict(kind="check", impl=name, L=2 * D, dtype=str(dtype)[6:], rel_err=err,
                         tol=max(tol, 1e-4), ok=bool(err < max(tol, 1e-4))))
    return rows


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    cuda = str(device).startswith("cuda")
    budget = float(os.environ.get("EFFSMALL_BENCH_BUDGET_S", 240 if cuda else 60))
    rounds = max(1, int(os.environ.get("EFFSMALL_BENCH_ROUNDS", "2")))
    t0 = time.time()
    rows: list[dict] = []

    def add(row):
        rows.append(row)
        record_partial(row)

    dtype = torch.bfloat16 if cuda else torch.float32
    for row in checks(device, dtype, N=1024 if cuda else 32, D=64 if cuda else 16, size=1000 if cuda else 40):
        add(row)
    kw = dict(warmup_ms=10, rep_ms=60) if cuda else dict(min_run_time=0.02)

    if cuda:
        seq_lens, dims, sizes = (SEQ_LENS[:2], (64,), MATMUL_SIZES[:2]) if quick else (SEQ_LENS, HEAD_DIMS, MATMUL_SIZES)
        shapes = [(TOKENS // N, HIDDEN // D, N, D) for N in seq_lens for D in dims]   # a tight budget drops the longest N
    else:
        sizes = (32,) if quick else (32, 64)
        shapes = [(1, 1, N, 16) for N in ((32,) if quick else (32, 64))]

    for M in sizes:   # matmul first: its best rate is the ceiling the attention rows are compared with; then
        # the (short) SSD rows; then attention, longest sequences last
        g = torch.Generator(device=device).manual_seed(M)
        a, b = (torch.randn(M, M, device=device, generator=g).to(dtype) for _ in range(2))
        res = _time({n: (lambda f=f: f(a, b)) for n, f in _matmul_impls(device).items()}, device, cuda, rounds, **kw)
        mm = {n: _row("matmul", n, r, 2.0 * M ** 3, M=M, N=M, K=M, dtype=str(dtype)[6:]) for n, r in res.items()}
        _ratio(mm, "torch", "triton_tiled", "vs_torch")
        for n in MATMUL_IMPLS:
            add(mm[n])
    ceiling = max((r.get("graph_tflops") or r.get("tflops") or 0) for r in rows
                  if r.get("kind") == "matmul" and r["impl"] == "torch")

    from effsmall.ssm.ssd_chunkwise import ssd_chunked_cost

    ssd_shapes = ([(TOKENS // L, L) for L in (SSD_LENGTHS[:1] if quick else SSD_LENGTHS)] if cuda else [(1, 32)])
    h_, p_, n_, Q = (SSD_H, SSD_P, SSD_N, SSD_Q) if cuda else (2, 16, 16, 16)
    for b_, L in ssd_shapes:
        if time.time() - t0 > budget:
            add(dict(kind="skipped", what="ssd", L=L, reason="time budget"))
            continue
        X, A, B, C = _ssd_data(b_, L, h_, p_, n_, dtype, device, seed=L)
        res = _time({n: (lambda f=f: f(X, A, B, C, Q)) for n, f in _ssd_impls().items()}, device, cuda, rounds, **kw)
        fl = ssd_chunked_cost(b_, L, h_, p_, n_, Q)["flops"]
        sr = {n: _row("ssd", n, r, fl, B=b_, L=L, H=h_, P=p_, N=n_, Q=Q, dtype=str(dtype)[6:]) for n, r in res.items()}
        _ratio(sr, "ssd_minimal", "ssd_triton", "vs_minimal")
        for n in ("ssd_minimal", "ssd_triton"):
            add(sr[n])
        del X, A, B, C

    per_shape: list[float] = []
    for B, H, N, D in shapes:
        if time.time() - t0 + (max(per_shape) if per_shape else 0) > budget:
            add(dict(kind="skipped", N=N, D=D, reason="time budget"))
            continue
        ts = time.time()
        g = torch.Generator(device=device).manual_seed(N + D)
        q, k, v = (torch.randn(B, H, N, D, device=device, generator=g).to(dtype) for _ in range(3))
        impls = _attn_impls()
        res = _time({n: (lambda f=f: f(q, k, v)) for n, f in impls.items()}, device, cuda, rounds, **kw)
        fl = 4.0 * B * H * N * N * D
        at = {n: _row("attention", n, r, fl, B=B, H=H, N=N, D=D, dtype=str(dtype)[6:]) for n, r in res.items()}
        _ratio(at, "fa1", "fa2_minimal", "vs_fa1")
        _ratio(at, "fa2_minimal", "production", "vs_minimal")
        for n in ATTN_IMPLS:
            r = at[n]
            if ceiling and r.get("tflops"):
                r["pct_of_cublas"] = 100 * (r.get("graph_tflops") or r["tflops"]) / ceiling
            add(r)
        del q, k, v
        if cuda:
            torch.cuda.empty_cache()
        per_shape.append(time.time() - ts)

    print(table(rows), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Geomean FA2/FA1 and production/minimal speed-ups (eager and GPU time), Triton matmul vs cuBLAS."""
    out: dict = {}
    chk = [r for r in rows if r.get("kind") == "check"]
    if chk:
        out["checks_passed"] = all(r["ok"] for r in chk)
        out["checks_worst_rel_err"] = max(r["rel_err"] for r in chk)
    att = [r for r in rows if r.get("kind") == "attention"]
    for impl, col in (("fa2_minimal", "vs_fa1"), ("production", "vs_minimal"), ):
        for suffix in ("", "_graph"):
            vals = [r.get(col + suffix) for r in att if r["impl"] == impl]
            if any(vals):
                out[f"{impl}_{col}{suffix}_geomean"] = geomean(vals)
                out[f"{impl}_{col}{suffix}_min"] = min(v for v in vals if v)
    ssd = [r for r in rows if r.get("kind") == "ssd" and r["impl"] == "ssd_triton"]
    for suffix in ("", "_graph"):
        vals = [r.get("vs_minimal" + suffix) for r in ssd]
        if any(vals):
            out[f"ssd_triton_vs_minimal{suffix}_geomean"] = geomean(vals)
    mm = [r for r in rows if r.get("kind") == "matmul" and r["impl"] == "triton_tiled"]
    for suffix in ("", "_graph"):
        vals = [r.get("vs_torch" + suffix) for r in mm]
        if any(vals):
            out[f"matmul_vs_torch{suffix}_geomean"] = geomean(vals)
    out["per_shape"] = [{k: r.get(k) for k in ("impl", "N", "D", "tflops", "graph_tflops", "vs_fa1", "vs_minimal")}
                        for r in att]
    out["skipped_shapes"] = sum(r.get("kind") == "skipped" for r in rows)
    return out


def table(rows: list[dict]) -> str:
    """One line per timed row: kind, implementation, shape, eager and GPU-time TFLOP/s, ratios."""
    lines = [f"{'kind':9s} {'impl':13s} {'shape':22s} {'ms':>9s} {'graph_ms':>9s} {'TFLOP/s':>8s} {'graph':>7s}  ratios"]
    for r in rows:
        if r.get("kind") not in ("matmul", "attention", "ssd"):
            continue
        shape = {"matmul": lambda: f"M=N=K={r['M']}", "attention": lambda: f"B={r['B']} H={r['H']} N={r['N']} D={r['D']}",
                 "ssd": lambda: f"B={r['B']} L={r['L']} N={r['N']}"}[r["kind"]]()
        num = lambda v, f: format(v, f) if v else "-"  # noqa: E731
        ratios = " ".join(f"{k}={r[k]:.2f}" for k in r if k.startswith("vs_") and r.get(k))
        lines.append(f"{r['kind']:9s} {r['impl']:13s} {shape:22s} {num(r.get('ms'), '9.3f'):>9s} "
                     f"{num(r.get('graph_ms'), '9.3f'):>9s} {num(r.get('tflops'), '8.1f'):>8s} "
                     f"{num(r.get('graph_tflops'), '7.1f'):>7s}  {ratios}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m effsmall.bench.rungs RESULT.json
    with open(sys.argv[1]) as f:
        res = json.load(f)
    print(table(res["rows"]))
    print(json.dumps({k: v for k, v in res.get("summary", summarize(res["rows"])).items() if k != "per_shape"},
                     indent=1))
