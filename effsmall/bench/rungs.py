"""Suite ``rungs``: chapter 7's teaching kernels measured against what they lead up to.

CUDA (``python -m effsmall.bench rungs --device cuda``), bf16:

* attention forward, B·N = 16K tokens, H = 2048 / D, N ∈ {1K, 2K, 4K, 8K, 16K}, D ∈ {64, 128}:
  ``fa1`` (:func:`effsmall.attention.flash_attention_fa1`, FlashAttention-1's loop order),
  ``fa2_minimal`` (:func:`effsmall.attention.flash_attention_minimal`, FA2's order in ~30 lines)
  and ``production`` (:func:`effsmall.attention.flash_attention`, autotuned). FLOPs ``4·B·H·N²·D``.
  Ratios on the ``fa2_minimal`` row: ``vs_fa1`` (FA1 time / FA2 time, > 1: FA2 faster) and
  ``vs_minimal`` on the ``production`` row, in eager and CUDA-graph time.
* matmul ``M = N = K`` ∈ {1K, 2K, 4K, 8K}: the tiled Triton kernel
  (:func:`effsmall.attention.matmul`, 128 × 128 × 64 tiles) against ``torch.matmul`` (cuBLAS);
  ``vs_torch`` = torch time / Triton time.
* chunked SSD forward, H = 32, P = 64, N = 128, B·L = 16K tokens, L ∈ {2K, 8K, 16K}, Q = 64:
  ``ssd_minimal`` (:func:`effsmall.ssm.ssd_minimal`, chapter 11's ~25-line kernel, one program
  per (batch, head)) against ``ssd_triton`` (production: P-blocks, time segments, pipelining);
  ``vs_minimal`` on the ``ssd_triton`` row. FLOPs from :func:`effsmall.ssm.ssd_chunkwise.ssd_chunked_cost`.

Every implementation gets its eager time (``ms``: the fastest of two interleaved rounds of
``triton.testing.do_bench`` medians), its CUDA-graph time (``graph_ms``: the GPU's time alone)
and its host time per call (``host_ms``). TFLOP/s are also given as a percentage of the best
``torch.matmul`` rate measured in the same run (``pct_of_cublas``) — a measured ceiling, not a
datasheet one. The run keeps to a time budget of 240 s (settings: :mod:`effsmall.bench`).
The kernels' correctness on a GPU is tested by ``tests/test_rungs_gpu.py``.

CPU (``--device cpu``, ``--quick`` for the smoke test): the same kernels in the Triton
interpreter at toy sizes — times that say nothing about a GPU.

``python -m effsmall.bench.rungs FILE.json`` prints the table of a saved result.
"""
from __future__ import annotations

import time

import torch

from effsmall.bench.common import Recorder, budget_s, compare, error_fields, print_saved, rounds_default
from effsmall.bench.common import table as _table
from effsmall.measure import geomean

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
            "production": lambda q, k, v: flash_attention(q, k, v, hopper=False)}  # the portable rung


def _matmul_impls(device: str) -> dict:
    from effsmall.attention import matmul

    blocks = GPU_MATMUL_BLOCKS if str(device).startswith("cuda") else dict(block_m=16, block_n=16, block_k=16)
    return {"triton_tiled": lambda a, b: matmul(a, b, **blocks), "torch": torch.matmul}


def _row(kind: str, name: str, r, flops: float, **shape) -> dict:
    """A timed row from :func:`effsmall.measure.compare`'s result ``r`` (or the exception it holds)."""
    row = dict(kind=kind, impl=name, **shape)
    if isinstance(r, Exception):
        row.update(ms=None, tflops=None, **error_fields(r))
    else:
        t, g, h = r["s"], r["graph"], r["host"]
        row.update(ms=t * 1e3, tflops=flops / t / 1e12, graph_ms=g * 1e3 if g else None,
                   graph_tflops=flops / g / 1e12 if g else None, host_ms=h * 1e3 if h else None)
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


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    cuda = str(device).startswith("cuda")
    rec = Recorder(budget_s(240 if cuda else 60))
    rows, add = rec.rows, rec.add

    def time_all(fns: dict) -> dict:
        return compare(fns, device, detail=fns, rounds=rounds_default(2),
                       **(dict(warmup_ms=10, rep_ms=60) if cuda else dict(min_run_time=0.02)))

    dtype = torch.bfloat16 if cuda else torch.float32

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
        res = time_all({n: (lambda f=f: f(a, b)) for n, f in _matmul_impls(device).items()})
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
        if not rec.fits(0):
            add(dict(kind="skipped", what="ssd", L=L, reason="time budget"))
            continue
        X, A, B, C = _ssd_data(b_, L, h_, p_, n_, dtype, device, seed=L)
        res = time_all({n: (lambda f=f: f(X, A, B, C, Q)) for n, f in _ssd_impls().items()})
        fl = ssd_chunked_cost(b_, L, h_, p_, n_, Q)["flops"]
        sr = {n: _row("ssd", n, r, fl, B=b_, L=L, H=h_, P=p_, N=n_, Q=Q, dtype=str(dtype)[6:]) for n, r in res.items()}
        _ratio(sr, "ssd_minimal", "ssd_triton", "vs_minimal")
        for n in ("ssd_minimal", "ssd_triton"):
            add(sr[n])
        del X, A, B, C

    per_shape: list[float] = []
    for B, H, N, D in shapes:
        if not rec.fits(max(per_shape, default=0)):
            add(dict(kind="skipped", N=N, D=D, reason="time budget"))
            continue
        ts = time.time()
        g = torch.Generator(device=device).manual_seed(N + D)
        q, k, v = (torch.randn(B, H, N, D, device=device, generator=g).to(dtype) for _ in range(3))
        impls = _attn_impls()
        res = time_all({n: (lambda f=f: f(q, k, v)) for n, f in impls.items()})
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
    """One table per kind (matmul, SSD, attention): TFLOP/s of each implementation (GPU time where
    measured), then the ratios of that kind."""
    tflops = lambda r: r.get("graph_tflops") or r.get("tflops")  # noqa: E731
    on = lambda impl, col: lambda rs: rs.get(impl, {}).get(col)  # noqa: E731
    kinds = [("matmul", ("M",), MATMUL_IMPLS, [("vs_torch", on("triton_tiled", "vs_torch"))]),
             ("ssd", ("B", "L", "N"), ("ssd_minimal", "ssd_triton"), [("vs_min", on("ssd_triton", "vs_minimal"))]),
             ("attention", ("B", "H", "N", "D"), ATTN_IMPLS,
              [("vs_fa1", on("fa2_minimal", "vs_fa1")), ("vs_min", on("production", "vs_minimal"))])]
    return "\n\n".join(_table([r for r in rows if r.get("kind") == kind], index=index, impls=impls, cell=tflops,
                               unit="TFLOP/s", extras=extras)
                        for kind, index, impls, extras in kinds if any(r.get("kind") == kind for r in rows))


if __name__ == "__main__":  # python -m effsmall.bench.rungs RESULT.json
    print_saved(table, summarize)
