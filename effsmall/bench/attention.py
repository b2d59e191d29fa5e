"""Suite ``attention``: effsmall's FlashAttention kernels against PyTorch's, in one run.

CUDA (``python -m effsmall.bench attention --device cuda``): bf16, B·N = 16K tokens,
H = 2048 / D, N ∈ {512, …, 16K}, D ∈ {64, 128}, causal and not; implementations
``effsmall`` (:func:`effsmall.attention.flash_attention`), ``sdpa_flash`` (SDPA's
FlashAttention-2 backend), ``sdpa_cudnn`` (SDPA's cuDNN backend) and ``flex``
(``torch.compile(flex_attention)``, a block mask for causal). Modes ``fwd`` and ``fwdbwd``
(forward + ``torch.autograd.grad``). FLOPs ``4·B·H·N²·D`` (halved when causal), fwd+bwd
``3.5×`` fwd. The same run measures the device ceilings (``measure_ceilings``) for the
``pct_of_matmul_ceiling`` column and checks the kernels' correctness on the GPU (fp16, bf16,
fp32 and every supported head dim; rows of ``kind="check"``).

Timing: every implementation's eager time (``ms``: what a training loop sees, the host's
launch work included) is the fastest of ``EFFSMALL_BENCH_ROUNDS`` (default 3) interleaved
rounds of ``triton.testing.do_bench`` medians (:func:`effsmall.bench.timing.benchmark_rounds`).
``effsmall``, ``sdpa_flash`` and ``sdpa_cudnn`` also get ``graph_ms``: a CUDA-graph replay,
the GPU's time alone — at N ≤ 1K the host's work per call is of the order of the kernels' —
and ``host_ms``: the host's time per call when calls are issued back to back
(:func:`effsmall.bench.timing.host_time`).

The run limits itself: ``EFFSMALL_BENCH_BUDGET_S`` seconds (default 480) — a shape that would
not fit is recorded as ``kind="skipped"`` — and appends every row to the JSON-lines file
``EFFSMALL_BENCH_PARTIAL`` (if set) as it goes, so a killed run still leaves its numbers.

CPU (``--device cpu``): ``tiled_attention`` vs ``naive_attention`` peak tensor memory
(:func:`effsmall.bench.timing.tensor_peak_bytes`) and time at N = 8K (B = H = 1, causal) — the
O(N) vs O(N²) memory row — and a few interpreter-sized ``flash_attention`` timings for completeness.

``python -m effsmall.bench.attention FILE.json`` prints the summary table of a saved result.
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch

from effsmall.bench.results import geomean, record_partial
from effsmall.bench.timing import benchmark, compare, rounds_default, tensor_peak_bytes

TOKENS = 16 * 1024
HIDDEN = 2048
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
IMPLS = ("effsmall", "sdpa_flash", "sdpa_cudnn", "flex")
BASELINES = {"flex": "vs_flex", "sdpa_flash": "vs_fa2", "sdpa_cudnn": "vs_cudnn"}


def attention_flops(B: int, H: int, N: int, D: int, causal: bool, mode: str, Nk: int | None = None) -> float:
    """4·B·H·Nq·Nk·D for the forward (two matmuls), halved when causal; fwd+bwd = 3.5× fwd."""
    f = 4.0 * B * H * N * (Nk or N) * D
    if causal:
        f /= 2
    return f * (3.5 if mode == "fwdbwd" else 1.0)


class _Recorder:
    """Collects rows, appends each to the partial file, keeps the time budget."""

    def __init__(self, budget_s: float):
        self.rows: list[dict] = []
        self.t0 = time.time()
        self.budget_s = budget_s

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        record_partial(row)
        return row

    def elapsed(self) -> float:
        return time.time() - self.t0


# ---------------------------------------------------------------------------------------------
# CUDA
# ---------------------------------------------------------------------------------------------
def _sdpa(backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    def f(q, k, v, causal):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return f


def compiled_flex_attention():
    """``torch.compile(flex_attention)`` as a user would run it in a shape sweep: dynamo's
    recompile limits raised so that a new shape recompiles instead of silently running eager."""
    import torch._dynamo
    from torch.nn.attention.flex_attention import flex_attention

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 4096)
    return torch.compile(flex_attention, dynamic=False)


def _flex_impl():
    from torch.nn.attention.flex_attention import create_block_mask

    compiled = compiled_flex_attention()
    masks: dict = {}

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def f(q, k, v, causal):
        bm = None
        if causal:
            key = (q.shape[2], k.shape[2])
            if key not in masks:
                masks[key] = create_block_mask(causal_mod, None, None, key[0], key[1], device=q.device)
            bm = masks[key]
        return compiled(q, k, v, block_mask=bm)
    return f


def _effsmall_impl():
    from effsmall.attention import flash_attention

    return lambda q, k, v, causal: flash_attention(q, k, v, causal=causal)


def _impls() -> dict:
    from torch.nn.attention import SDPBackend

    return {"effsmall": _effsmall_impl(), "sdpa_flash": _sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa_cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION), "flex": _flex_impl()}


def gpu_correctness(rec: _Recorder) -> None:
    """Check flash_attention (output and gradients) against naive_attention in fp32 on the GPU,
    for fp16/bf16/fp32 (exact, and TF32 under ``set_float32_matmul_precision("high")``) and
    every supported head dim, with GQA, Nq ≠ Nk, causal and a window; and varlen against
    per-sequence calls. Errors are max |a − b| / max |b| per tensor."""
    import effsmall.attention.flash_triton as ft
    from effsmall.attention import flash_attention, flash_attention_varlen, naive_attention

    cases = [(torch.float16, D, "highest") for D in (16, 32, 64, 96, 128, 192, 256)]
    cases += [(torch.bfloat16, D, "highest") for D in (64, 128)]
    cases += [(torch.float32, D, "highest") for D in (32, 96)] + [(torch.float32, 64, "high")]
    tol = {"float16": 1e-2, "bfloat16": 2e-2, "float32": 1e-4, "tf32": 1e-2}
    ft.AUTOTUNE = False  # one safe configuration per dtype/D: the checks are about the math
    prev_prec = torch.get_float32_matmul_precision()
    try:
        for dtype, D, prec in cases:
            torch.set_float32_matmul_precision(prec)
            name = "tf32" if prec == "high" else str(dtype).replace("torch.", "")
            g = torch.Generator(device="cuda").manual_seed(D)
            t = time.time()
            q = torch.randn(2, 4, 203, D, device="cuda", generator=g).to(dtype).requires_grad_()
            k = torch.randn(2, 2, 250, D, device="cuda", generator=g).to(dtype).requires_grad_()
            v = torch.randn(2, 2, 250, D, device="cuda", generator=g).to(dtype).requires_grad_()
            do = torch.randn(2, 4, 203, D, device="cuda", generator=g).to(dtype)
            err_o = err_g = 0.0
            for causal, window in ((False, None), (True, None), (False, (40, 7))):
                o = flash_attention(q, k, v, causal=causal, window=window)
                grads = torch.autograd.grad(o, (q, k, v), do)
                q32, k32, v32 = (x.detach().float().requires_grad_() for x in (q, k, v))
                with _no_tf32():
                    r = naive_attention(q32, k32, v32, causal=causal, window=window)
                    rgrads = torch.autograd.grad(r, (q32, k32, v32), do.float())
                rel = lambda a, b: ((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-6)).item()  # noqa: E731
                err_o = max(err_o, rel(o, r))
                err_g = max(err_g, *(rel(a, b) for a, b in zip(grads, rgrads)))
            rec.add(dict(kind="check", dtype=name, D=D, rel_err=err_o, rel_err_grad=err_g, tol=tol[name],
                         ok=bool(max(err_o, err_g) <= tol[name]), seconds=round(time.time() - t, 2)))
        torch.set_float32_matmul_precision("highest")
        lens = [5, 170, 1, 300]
        cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
        q, k, v = (torch.randn(sum(lens), 4, 64, device="cuda", dtype=torch.float16) for _ in range(3))
        o = flash_attention_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True)
        ref = torch.cat([flash_attention(*(x[cu[b]:cu[b + 1]].transpose(0, 1)[None] for x in (q, k, v)),
                                         causal=True)[0].transpose(0, 1) for b in range(len(lens))])
        err = (o.float() - ref.float()).abs().max().item()
        rec.add(dict(kind="check", dtype="float16", D=64, what="varlen vs per-sequence", rel_err=err,
                     tol=1e-3, ok=bool(err <= 1e-3)))
    finally:
        ft.AUTOTUNE = True
        torch.set_float32_matmul_precision(prev_prec)


class _no_tf32:
    def __enter__(self):
        self.prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        torch.backends.cuda.matmul.allow_tf32 = self.prev


def _call(fn, q, k, v, do, causal, mode):
    """The timed callable: forward, or forward + ``torch.autograd.grad``."""
    if mode == "fwd":
        return lambda: fn(q, k, v, causal)

    def call():
        o = fn(q, k, v, causal)
        return torch.autograd.grad(o, (q, k, v), do)
    return call


GRAPH_IMPLS = ("effsmall", "sdpa_flash", "sdpa_cudnn")  # Flex is already a compiled graph of its own


def _time_shape(impls: dict, q, k, v, do, causal, mode) -> dict:
    """{name: exception or dict(s=eager, graph=CUDA-graph, host=host per call) seconds} for one
    shape and mode (:func:`effsmall.bench.timing.compare`)."""
    calls = {name: _call(fn, q, k, v, do, causal, mode) for name, fn in impls.items()}
    return compare(calls, "cuda", detail=GRAPH_IMPLS, warmup_ms=10, rep_ms=60)


def _run_cuda(quick: bool) -> list[dict]:
    from effsmall.hardware import measure_ceilings

    rec = _Recorder(float(os.environ.get("EFFSMALL_BENCH_BUDGET_S", 480)))
    ceil = measure_ceilings("cuda", quick=quick)
    peak = ceil["matmul_flops"].get("bf16", ceil["peak_flops"])
    rec.add(dict(kind="ceiling", matmul_bf16_flops=peak, copy_bandwidth_Bps=ceil["copy_bandwidth_Bps"],
                 matmul_n=ceil.get("matmul_n")))
    if os.environ.get("EFFSMALL_BENCH_SKIP_CHECKS") != "1":
        gpu_correctness(rec)
    impls = _impls()
    seq_lens = SEQ_LENS[:2] if quick else SEQ_LENS
    if os.environ.get("EFFSMALL_ATTN_SEQ_LENS"):  # e.g. "512,1024": re-measure some lengths in a short lease
        seq_lens = tuple(int(x) for x in os.environ["EFFSMALL_ATTN_SEQ_LENS"].split(","))
    shapes = [(N, D, causal) for N in seq_lens for D in HEAD_DIMS for causal in (False, True)]
    per_shape: list[float] = []
    for N, D, causal in shapes:
        est = max(per_shape) if per_shape else 0.0
        if rec.elapsed() + est > rec.budget_s:
            rec.add(dict(kind="skipped", D=D, N=N, causal=causal, reason="time budget"))
            continue
        t_shape = time.time()
        B, H = TOKENS // N, HIDDEN // D
        g = torch.Generator(device="cuda").manual_seed(N + D)
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        shape_rows = {}
        for mode in ("fwd", "fwdbwd"):
            fl = attention_flops(B, H, N, D, causal, mode)
            for name, r in _time_shape(impls, q, k, v, do, causal, mode).items():
                row = dict(kind="attention", impl=name, D=D, N=N, B=B, H=H, causal=causal, mode=mode)
                if isinstance(r, Exception):
                    row.update(ms=None, tflops=None, error=f"{type(r).__name__}: {str(r)[:200]}")
                else:
                    t = r["s"]
                    row.update(ms=t * 1e3, tflops=fl / t / 1e12, pct_of_matmul_ceiling=100 * fl / t / peak,
                               graph_ms=r["graph"] * 1e3 if r["graph"] else None,
                               host_ms=r["host"] * 1e3 if r["host"] else None, rounds=rounds_default())
                shape_rows[(name, mode)] = row
        for mode in ("fwd", "fwdbwd"):
            mine = shape_rows[("effsmall", mode)]
            for base, col in BASELINES.items():
                other = shape_rows[(base, mode)]
                if mine.get("ms") and other.get("ms"):
                    mine[col] = other["ms"] / mine["ms"]  # > 1: effsmall is faster
                if mine.get("graph_ms") and other.get("graph_ms"):
                    mine[col + "_graph"] = other["graph_ms"] / mine["graph_ms"]  # GPU time alone
            for name in impls:
                rec.add(shape_rows[(name, mode)])
        del q, k, v, do
        torch.cuda.empty_cache()
        per_shape.append(time.time() - t_shape)
    return rec.rows


# ---------------------------------------------------------------------------------------------
# CPU
# ---------------------------------------------------------------------------------------------
def _run_cpu(quick: bool) -> list[dict]:
    from effsmall.attention import flash_attention, naive_attention, tiled_attention

    rec = _Recorder(float(os.environ.get("EFFSMALL_BENCH_BUDGET_S", 300)))
    torch.manual_seed(0)
    N, D = (2048 if quick else 8192), 64
    q, k, v = (torch.randn(1, 1, N, D) for _ in range(3))
    for name, fn in (("naive", lambda: naive_attention(q, k, v, causal=True)),
                     ("tiled", lambda: tiled_attention(q, k, v, causal=True, block_m=512, block_n=512))):
        mem = tensor_peak_bytes(fn)
        s = benchmark(fn, "cpu", min_run_time=0.1)
        fl = attention_flops(1, 1, N, D, True, "fwd")
        rec.add(dict(kind="cpu_memory", impl=name, N=N, D=D, B=1, H=1, causal=True, mode="fwd",
                     peak_bytes=mem, ms=s * 1e3, tflops=fl / s / 1e12))
    for N in (16, 32, 64):
        q, k, v = (torch.randn(1, 2, N, 32) for _ in range(3))
        s = benchmark(lambda: flash_attention(q, k, v, causal=True), "cpu", min_run_time=0.1)
        rec.add(dict(kind="interpreter", impl="effsmall", N=N, D=32, B=1, H=2, causal=True, mode="fwd",
                     ms=s * 1e3))
    return rec.rows


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    rows = _run_cuda(quick) if str(device).startswith("cuda") else _run_cpu(quick)
    if any(r.get("kind") == "attention" for r in rows):
        print(table(rows), flush=True)  # the harness prints the summary lines after this
    return rows


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    """Geomean and minimum ratios of effsmall vs Flex, FA2 and cuDNN, and the pass/fail lines."""
    out: dict = {}
    checks = [r for r in rows if r.get("kind") == "check"]
    if checks:
        out["gpu_checks_passed"] = all(r["ok"] for r in checks)
        out["gpu_checks_worst_rel_err"] = max(r["rel_err"] for r in checks)
    mine = [r for r in rows if r.get("kind") == "attention" and r["impl"] == "effsmall" and r.get("ms")]
    for mode in ("fwd", "fwdbwd"):
        rs = [r for r in mine if r["mode"] == mode]
        if not rs:
            continue
        for col in [*BASELINES.values(), *(c + "_graph" for c in BASELINES.values())]:
            vals = [r[col] for r in rs if r.get(col)]
            if vals:
                out[f"{mode}_{col}_geomean"] = geomean(vals)
                out[f"{mode}_{col}_min"] = min(vals)
        out[f"{mode}_per_shape"] = [
            {k: r.get(k) for k in ("D", "N", "causal", "tflops", "pct_of_matmul_ceiling", *BASELINES.values(),
                                   "vs_fa2_graph")}
            for r in rs]
    if mine:
        g = out.get

        def line(v, bound):
            return None if v is None else bool(v >= bound)
        out["lines"] = {
            "fwd >= 1.0x Flex geomean": line(g("fwd_vs_flex_geomean"), 1.0),
            "fwd >= 0.9x Flex every shape": line(g("fwd_vs_flex_min"), 0.9),
            "fwd+bwd >= 1.0x FA2 every shape": line(g("fwdbwd_vs_fa2_min"), 1.0),
            "fwd+bwd >= 0.9x Flex geomean": line(g("fwdbwd_vs_flex_geomean"), 0.9),
            "stretch: fwd >= 0.85x cuDNN geomean": line(g("fwd_vs_cudnn_geomean"), 0.85),
        }
        out["skipped_shapes"] = sum(r.get("kind") == "skipped" for r in rows)
    cpu = {r["impl"]: r for r in rows if r.get("kind") == "cpu_memory"}
    if "naive" in cpu and "tiled" in cpu:
        ratio = cpu["tiled"]["peak_bytes"] / max(cpu["naive"]["peak_bytes"], 1)
        out["cpu_tiled_over_naive_peak_memory"] = ratio
        out["lines"] = {"tiled peak memory <= 10% of naive at N=8K": bool(ratio <= 0.10)}
    return out


def table(rows: list[dict]) -> str:
    """A plain-text table: one line per (D, causal, N, mode), TFLOP/s of each implementation."""
    att = [r for r in rows if r.get("kind") == "attention"]
    keys = sorted({(r["D"], r["causal"], r["mode"], r["N"]) for r in att})
    lines = [f"{'D':>4} {'causal':>6} {'mode':>6} {'N':>6} " + " ".join(f"{i:>10}" for i in IMPLS)
             + "  vs_flex vs_fa2 vs_cudnn"]
    for key in keys:
        rs = {r["impl"]: r for r in att if (r["D"], r["causal"], r["mode"], r["N"]) == key}
        cells = " ".join(f"{rs[i]['tflops']:10.1f}" if i in rs and rs[i].get("tflops") else f"{'-':>10}"
                         for i in IMPLS)
        me = rs.get("effsmall", {})
        ratios = " ".join(f"{me[c]:7.2f}" if me.get(c) else f"{'-':>7}" for c in BASELINES.values())
        lines.append(f"{key[0]:>4} {str(key[1]):>6} {key[2]:>6} {key[3]:>6} {cells}  {ratios}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m effsmall.bench.attention RESULT.json
    with open(sys.argv[1]) as f:
        res = json.load(f)
    print(table(res["rows"]))
    print(json.dumps(res.get("summary", summarize(res["rows"])).get("lines", {}), indent=1))
