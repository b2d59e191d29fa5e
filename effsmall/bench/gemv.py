"""Suite ``gemv``: chapter 13's quantized GEMV against the fp16 matmul a user would call.

CUDA (``python -m effsmall.bench gemv --device cuda``), fp16 activations, for LLM layer shapes
``K × N`` ∈ {4096 × 4096, 4096 × 14336, 14336 × 4096, 8192 × 8192} and ``M`` ∈ {1, 4, 16}
rows of x (decode with a batch of M sequences):

* ``fp16`` — ``F.linear(x, W)`` with W in fp16 (cuBLAS), what users run;
* ``int8`` — :func:`effsmall.compress.quant_gemv` on ``quantize_int8(W)`` (per-channel scales);
* ``int4`` — the same kernel on ``quantize_int4(W, 64)`` (groups of 64, fp16 scales);
* ``int4_dequant`` — the naive rung: dequantize W to fp16 with torch, then ``F.linear``.

Every row has its eager time (``ms``, fastest of interleaved rounds of ``do_bench`` medians) and
CUDA-graph time (``graph_ms``, the GPU alone), the bytes a call must move (packed weights +
scales + x + y, :func:`effsmall.compress.dequant_gemv.gemv_bytes`), the achieved bandwidth as a
fraction of the device's copy rate (``pct_of_copy``, from the graph time, against
:func:`effsmall.hardware.measure_ceilings`' ``copy_bandwidth_Bps``, bytes read + written; the
``ceiling`` row also keeps the CUDA-graph copy rate as ``graph_copy_Bps``), the speed-up over
``fp16`` (``vs_fp16``, ``vs_fp16_graph``) and the accuracy cost: ``rel_err`` = ‖y − x·Wᵀ‖ / ‖x·Wᵀ‖
against the fp64 product with the *unquantized* W (W ~ N(0, 0.02²)). Timed calls cycle through
enough copies of each weight that together they exceed the L2 cache three times over, so every
call reads its weights from memory (a 32 MB fp16 layer would otherwise stay in an H200's 50 MB L2
and beat the copy rate). ``kind="check"`` rows compare each kernel with the fp64 naive rung of its
own quantized weights. First, ``kind="tune"`` rows time the launch configurations of
:data:`CONFIGS` at 4096 × 14336 for each format and M bucket (M = 1, 2–4, 5–16; timed at 1, 4
and 16), and the fastest of each is used for every shape. The run keeps to
``EFFSMALL_BENCH_BUDGET_S`` (default 100 s on CUDA); tuning stops early past half of it (the
defaults of :mod:`effsmall.compress.dequant_gemv` stand for buckets it did not reach).

CPU (``--device cpu``, ``--quick``): the kernels in the Triton interpreter at toy sizes — the
rows check the plumbing and correctness; their times say nothing about a GPU.

``python -m effsmall.bench.gemv FILE.json [--table]`` prints a short summary (and the table) of a saved result.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from effsmall.bench.common import budget_s, compare, record_partial, rounds_default
from effsmall.measure import benchmark, geomean
from effsmall.compress.dequant_gemv import dequant_matmul_reference

SHAPES = ((4096, 4096), (4096, 14336), (14336, 4096), (8192, 8192))     # (K, N)
BATCHES = (1, 4, 16)
GROUP = 64
IMPLS = ("fp16", "int8", "int4", "int4_dequant")
BITS = {"fp16": None, "int8": 8, "int4": 4, "int4_dequant": 4}
#: Launch configurations tried on the GPU before the sweep, per format and M bucket (``block_k`` is
#: capped by the group; M ≤ 4 runs the decode kernel, larger M the tensor-core kernel). Decode
#: candidates trade rows per program (``block_n``), K slices (``split_k``) and warps so that N=4096
#: gives 256–2048 programs, each streaming 256–1024 bytes of every row per step.
_C = lambda bn, bk, subs, sk, w, st=1: dict(block_n=bn, block_k=bk, subs=subs, split_k=sk,  # noqa: E731
                                           num_warps=w, num_stages=st)
CONFIGS = {(4, "M=1"): [_C(16, 128, 8, 2, 1), _C(16, 128, 8, 1, 1), _C(32, 128, 8, 2, 2),
                        _C(64, 128, 4, 4, 4), _C(16, 128, 16, 1, 1), _C(16, 128, 4, 2, 2)],
           (8, "M=1"): [_C(8, 256, 2, 2, 1), _C(16, 256, 2, 2, 2), _C(16, 512, 2, 1, 4),
                        _C(8, 512, 2, 4, 2), _C(32, 256, 2, 4, 4), _C(8, 128, 4, 2, 2)],
           (4, "M>4"): [_C(32, 128, 8, 1, 4, 3), _C(16, 128, 8, 1, 4, 4)],
           (8, "M>4"): [_C(32, 128, 2, 1, 4, 3), _C(16, 128, 2, 1, 4, 4)],
           (4, "M<=4"): [_C(16, 128, 4, 2, 2), _C(32, 128, 4, 4, 4), _C(16, 128, 8, 1, 2)],
           (8, "M<=4"): [_C(8, 128, 4, 2, 2), _C(16, 128, 2, 4, 4), _C(8, 256, 2, 1, 2)]}
#: The M each bucket is tuned at.
BUCKET_M = {"M=1": 1, "M<=4": 4, "M>4": 16}


def bucket(M: int) -> str:
    """The M bucket whose tuned configuration runs ``M`` rows of x."""
    return "M=1" if M == 1 else "M<=4" if M <= 4 else "M>4"


def copy_rate(device: str, mib: int) -> float:
    """Device-to-device copy rate in bytes/s (bytes read + bytes written), CUDA-graph timed on a GPU."""
    x = torch.randn(mib * 2**20 // 4, device=device)
    y = torch.empty_like(x)
    cuda = str(device).startswith("cuda")
    t = benchmark(lambda: y.copy_(x), device, cuda_graph=cuda, **(dict(rep_ms=100) if cuda else {}))
    return 2 * x.numel() * 4 / t


class Layer:
    """One weight matrix W ``(N, K)`` in fp16 and quantized, with the calls each implementation makes.
    On a GPU each format is kept in as many copies as it takes to exceed the L2 cache 3×, and the
    calls cycle through them (see the module docstring)."""

    def __init__(self, K: int, N: int, device: str, dtype: torch.dtype, seed: int):
        from effsmall.compress import quantize_int4, quantize_int8

        g = torch.Generator(device=device).manual_seed(seed)
        self.w = torch.randn(N, K, device=device, generator=g) * 0.02            # (N, K) fp32 master
        self.w16 = self.w.to(dtype)                                                # what users store
        self.q8 = quantize_int8(self.w, torch.float16)
        self.q4 = quantize_int4(self.w, GROUP, torch.float16)
        self.K, self.N, self.dtype, self.device = K, N, dtype, device
        self.w16s = self._copies(self.w16)
        self.q8s = self._copies(self.q8)
        self.q4s = self._copies(self.q4)

    def _copies(self, t) -> list:
        """``t`` (a tensor or a QuantizedTensor) and clones of it, together ≥ 3 × the L2 cache (GPU)."""
        if not str(self.device).startswith("cuda"):
            return [t]
        l2 = getattr(torch.cuda.get_device_properties(torch.device(self.device)), "L2_cache_size", 64 * 2**20)
        nbytes = t.numel() * t.element_size() if isinstance(t, torch.Tensor) else t.nbytes()
        n = max(1, math.ceil(3 * l2 / max(1, nbytes)))
        if isinstance(t, torch.Tensor):
            return [t] + [t.clone() for _ in range(n - 1)]
        return [t] + [dataclasses.replace(t, data=t.data.clone(), scale=t.scale.clone()) for _ in range(n - 1)]

    def calls(self, x: torch.Tensor, configs: dict) -> dict:
        from effsmall.compress.quant import dequantize
        from effsmall.compress.dequant_gemv import quant_gemv

        c8, c4 = configs.get((8, bucket(x.shape[0]))), configs.get((4, bucket(x.shape[0])))
        w16, q8, q4 = (itertools.cycle(c) for c in (self.w16s, self.q8s, self.q4s))
        q4d = itertools.cycle(self.q4s)

        def int8():
            q = next(q8)
            return quant_gemv(x, q.data, q.scale, 8, config=c8)

        def int4():
            q = next(q4)
            return quant_gemv(x, q.data, q.scale, 4, config=c4)

        return {"fp16": lambda: F.linear(x, next(w16)), "int8": int8, "int4": int4,
                "int4_dequant": lambda: F.linear(x, dequantize(next(q4d), x.dtype))}

    def nbytes(self, impl: str, M: int) -> int:
        from effsmall.compress.dequant_gemv import gemv_bytes

        bits = BITS[impl]
        groups = 1 if bits == 8 else self.K // GROUP
        return gemv_bytes(M, self.K, self.N, bits, groups=groups, x_bytes=self.w16.element_size())


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.double() - ref).norm() / ref.norm()).item()


def tune(layer: Layer, device: str, add, deadline: float) -> dict:
    """Time every configuration of :data:`CONFIGS` on ``layer`` (CUDA graph, cycling through the
    layer's copies) for each format and M bucket; return {(bits, bucket): fastest}. Past
    ``deadline`` (``time.time()``) the remaining candidates are skipped (the defaults stand)."""
    from effsmall.compress.dequant_gemv import quant_gemv

    best = {}
    for (bits, bk), cands in CONFIGS.items():
        x = torch.randn(BUCKET_M[bk], layer.K, device=device, dtype=layer.dtype)
        res = {}
        for i, c in enumerate(cands):
            if time.time() > deadline:
                add(dict(kind="tune", bits=bits, bucket=bk, K=layer.K, N=layer.N, M=x.shape[0], config=c,
                         graph_ms=None, error="skipped: time budget"))
                continue
            qs = itertools.cycle(layer.q8s if bits == 8 else layer.q4s)

            def fn(c=c, qs=qs):
                q = next(qs)
                return quant_gemv(x, q.data, q.scale, bits, config=c)
            try:
                fn()
                torch.cuda.synchronize()
                res[i] = benchmark(fn, device, cuda_graph=True, rep_ms=20)
            except Exception as e:  # noqa: BLE001 - a configuration may not fit; recorded
                res[i] = e
            t = res[i]
            add(dict(kind="tune", bits=bits, bucket=bk, K=layer.K, N=layer.N, M=x.shape[0], config=c,
                     graph_ms=None if isinstance(t, Exception) else t * 1e3,
                     error=f"{type(t).__name__}: {str(t)[:200]}" if isinstance(t, Exception) else None))
        ok = {i: t for i, t in res.items() if not isinstance(t, Exception)}
        if ok:
            best[bits, bk] = cands[min(ok, key=ok.get)]
    return best


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    cuda = str(device).startswith("cuda")
    budget = budget_s(100 if cuda else 60)
    rounds = rounds_default(2)
    t0 = time.time()
    rows: list[dict] = []

    def add(row):
        rows.append(row)
        record_partial(row)

    dtype = torch.float16 if cuda else torch.float32
    if cuda:
        shapes, batches = (SHAPES[:1], BATCHES[:1]) if quick else (SHAPES, BATCHES)
    else:
        shapes, batches = ((128, 96),) if quick else ((128, 96), (256, 160)), (1, 4)
    kw = dict(warmup_ms=10, rep_ms=50) if cuda else dict(min_run_time=0.02)

    from effsmall.hardware import measure_ceilings

    ceiling = measure_ceilings(device, quick=True)["copy_bandwidth_Bps"]     # read + write, as other suites
    add(dict(kind="ceiling", what="device-to-device copy (measure_ceilings)", bytes_per_s=ceiling,
             graph_copy_Bps=copy_rate(device, 1024 if cuda and not quick else 16)))

    configs: dict = {}
    if cuda:
        layer = Layer(4096, 14336, device, dtype, seed=0)
        configs = tune(layer, device, add, deadline=t0 + 0.5 * budget)
        for (b, bk), c in configs.items():
            add(dict(kind="config", bits=b, bucket=bk, config=c))
        del layer
        torch.cuda.empty_cache()

    for K, N in shapes:
        if time.time() - t0 > budget:
            add(dict(kind="skipped", K=K, N=N, reason="time budget"))
            continue
        layer = Layer(K, N, device, dtype, seed=K + N)
        for M in batches:
            g = torch.Generator(device=device).manual_seed(M)
            x = torch.randn(M, K, device=device, generator=g).to(dtype)                # (M, K)
            exact = x.double() @ layer.w.double().T                                     # (M, N) unquantized
            calls = layer.calls(x, configs)
            outs = {}
            for impl, fn in calls.items():                      # one output each; a failure is recorded, not fatal
                try:
                    outs[impl] = fn()
                except Exception as e:  # noqa: BLE001
                    outs[impl] = e
            for impl, bits, q in (("int8", 8, layer.q8s[-1]), ("int4", 4, layer.q4s[-1])):        # kernel vs its naive rung
                ref = dequant_matmul_reference(x, q.data, q.scale, bits, torch.float64)
                tol = 1e-2 if cuda else 1e-5
                if isinstance(outs[impl], Exception):
                    add(dict(kind="check", impl=impl, K=K, N=N, M=M, rel_err=float("inf"), tol=tol, ok=False,
                             error=f"{type(outs[impl]).__name__}: {str(outs[impl])[:200]}"))
                    continue
                err = ((outs[impl].double() - ref).abs().max() / ref.abs().max()).item()
                add(dict(kind="check", impl=impl, K=K, N=N, M=M, rel_err=err, tol=tol, ok=bool(err < tol)))
            res = compare(calls, device, detail=tuple(calls), host=False, rounds=rounds, **kw)
            shape_rows = {}
            for impl in IMPLS:
                r, nbytes = res[impl], layer.nbytes(impl, M)
                row = dict(kind="gemv", impl=impl, K=K, N=N, M=M, dtype=str(dtype)[6:], bytes=nbytes,
                           config=configs.get((BITS[impl], bucket(M))) if impl in ("int8", "int4") else None,
                           rel_err=None if isinstance(outs[impl], Exception) else _rel(outs[impl], exact))
                if isinstance(r, Exception):
                    row.update(ms=None, error=f"{type(r).__name__}: {str(r)[:200]}")
                else:
                    t, gt = r["s"], r["graph"]
                    best = gt or t
                    row.update(ms=t * 1e3, graph_ms=gt * 1e3 if gt else None, GBps=nbytes / best / 1e9,
                               pct_of_copy=100 * nbytes / best / ceiling)
                shape_rows[impl] = row
            base = shape_rows["fp16"]
            for impl in IMPLS:
                row = shape_rows[impl]
                if row.get("ms") and base.get("ms"):
                    row["vs_fp16"] = base["ms"] / row["ms"]
                if row.get("graph_ms") and base.get("graph_ms"):
                    row["vs_fp16_graph"] = base["graph_ms"] / row["graph_ms"]
                add(row)
            del x, exact, calls, outs
        del layer
        if cuda:
            torch.cuda.empty_cache()
    print(table(rows), flush=True)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Checks, the copy rate, and per implementation and M the geomean speed-up over fp16 (eager and
    graph), the mean fraction of the copy rate and the worst relative error."""
    out: dict = {}
    chk = [r for r in rows if r.get("kind") == "check"]
    if chk:
        out["checks_passed"] = all(r["ok"] for r in chk)
        out["checks_worst_rel_err"] = max(r["rel_err"] for r in chk)
    ceil = [r for r in rows if r.get("kind") == "ceiling"]
    if ceil:
        out["copy_GBps"] = ceil[0]["bytes_per_s"] / 1e9
        if ceil[0].get("graph_copy_Bps"):
            out["graph_copy_GBps"] = ceil[0]["graph_copy_Bps"] / 1e9
    out["configs"] = {f"{r['bits']} {r.get('bucket', '')}".strip(): r["config"] for r in rows if r.get("kind") == "config"}
    gemv = [r for r in rows if r.get("kind") == "gemv"]
    per = {}
    for impl in IMPLS:
        for M in sorted({r["M"] for r in gemv}):
            rs = [r for r in gemv if r["impl"] == impl and r["M"] == M]
            if not rs:
                continue
            per[f"{impl} M={M}"] = {
                "vs_fp16_geomean": geomean([r.get("vs_fp16") for r in rs]),
                "vs_fp16_graph_geomean": geomean([r.get("vs_fp16_graph") for r in rs]),
                "pct_of_copy_mean": (sum(r["pct_of_copy"] for r in rs if r.get("pct_of_copy")) /
                                     max(1, sum(1 for r in rs if r.get("pct_of_copy")))),
                "rel_err_max": max((r["rel_err"] for r in rs if r.get("rel_err") is not None), default=None)}
    out["per_impl"] = per
    out["skipped_shapes"] = sum(r.get("kind") == "skipped" for r in rows)
    return out


def table(rows: list[dict]) -> str:
    """One line per timed row."""
    lines = [f"{'impl':13s} {'K x N':>12s} {'M':>3s} {'ms':>8s} {'graph_ms':>9s} {'GB/s':>7s} {'%copy':>6s} "
             f"{'vs_fp16':>8s} {'graph':>6s} {'rel_err':>8s}"]
    num = lambda v, f: format(v, f) if v else "-"  # noqa: E731
    for r in rows:
        if r.get("kind") != "gemv":
            continue
        lines.append(f"{r['impl']:13s} {str(r['K']) + 'x' + str(r['N']):>12s} {r['M']:3d} {num(r.get('ms'), '8.4f')} "
                     f"{num(r.get('graph_ms'), '9.4f')} {num(r.get('GBps'), '7.0f')} {num(r.get('pct_of_copy'), '6.1f')} "
                     f"{num(r.get('vs_fp16'), '8.2f')} {num(r.get('vs_fp16_graph'), '6.2f')} {num(r.get('rel_err'), '8.1e')}")
    return "\n".join(lines)


def brief(result: dict) -> str:
    """A few lines: device, checks, copy rate, and per implementation and M the speed-ups and error."""
    s = result.get("summary") or summarize(result["rows"])
    num = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
    lines = [f"{result['env']['device_name']} {result['env']['date'][:10]}: checks_passed={s.get('checks_passed')} "
             f"(worst {num(s.get('checks_worst_rel_err'), '.1e')}), copy {num(s.get('copy_GBps'), ',.0f')} GB/s "
             f"(graph-timed {num(s.get('graph_copy_GBps'), ',.0f')}), "
             f"configs {s.get('configs')}, skipped shapes {s.get('skipped_shapes')}"]
    for key, r in s.get("per_impl", {}).items():
        lines.append(f"  {key:18s} vs fp16 graph {num(r['vs_fp16_graph_geomean'], '5.2f')}x  eager "
                     f"{num(r['vs_fp16_geomean'], '5.2f')}x  {num(r['pct_of_copy_mean'], '5.1f')}% of copy  "
                     f"rel_err <= {num(r['rel_err_max'], '.2e')}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m effsmall.bench.gemv RESULT.json [--table]
    with open(sys.argv[1]) as f:
        res = json.load(f)
    if "--table" in sys.argv:
        print(table(res["rows"]))
    print(brief(res))
