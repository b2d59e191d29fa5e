"""Suite ``attention``: effsmall's FlashAttention kernels against PyTorch's, in one run.

CUDA (``python -m effsmall.bench attention --device cuda``): bf16, B·N = 16K tokens,
H = 2048 / D, N ∈ {512, …, 16K}, D ∈ {64, 128}, causal and not; implementations
``effsmall`` (:func:`effsmall.attention.flash_attention`), ``sdpa_flash`` (SDPA's
FlashAttention-2 backend), ``sdpa_cudnn`` (SDPA's cuDNN backend) and ``flex``
(``torch.compile(flex_attention)``, a block mask for causal); at shapes where
``flash_attention`` runs its Hopper forward (sm90), also ``effsmall_portable`` (the same call with
``hopper=False``: the portable kernel, timed in the same run; each ``effsmall`` row records the
``backend`` that ran and ``vs_portable``). Modes ``fwd`` and ``fwdbwd``
(forward + ``torch.autograd.grad``). FLOPs ``4·B·H·N²·D`` (halved when causal), fwd+bwd
``3.5×`` fwd. The same run measures the device ceilings (``measure_ceilings``) for the
``pct_of_matmul_ceiling`` column. (The kernels' correctness on a GPU is tested by the
``gpu``-marked tests in ``tests/test_kernels_gpu.py``.)

Timing: every implementation's eager time (``ms``: what a training loop sees, the host's
launch work included) is the fastest of a few interleaved rounds of ``triton.testing.do_bench``
medians (:func:`effsmall.measure.benchmark_rounds`).
``effsmall``, ``sdpa_flash`` and ``sdpa_cudnn`` also get ``graph_ms``: a CUDA-graph replay,
the GPU's time alone — at N ≤ 1K the host's work per call is of the order of the kernels' —
and ``host_ms``: the host's time per call when calls are issued back to back
(:func:`effsmall.measure.host_time`). The run keeps to a time budget of 480 s (settings:
:mod:`effsmall.bench`).

CPU (``--device cpu``): ``tiled_attention`` vs ``naive_attention`` peak tensor memory
(:func:`effsmall.measure.peak_memory`) and time at N = 8K (B = H = 1, causal) — the
O(N) vs O(N²) memory row — and a few interpreter-sized ``flash_attention`` timings for completeness.

``python -m effsmall.bench.attention FILE.json`` prints the summary table of a saved result.
"""
from __future__ import annotations

import time

import torch

from effsmall.bench.common import Recorder, budget_s, compare, error_fields, print_saved, rounds_default, sizes
from effsmall.bench.common import table as _table
from effsmall.measure import benchmark, geomean, peak_memory

TOKENS = 16 * 1024
HIDDEN = 2048
SEQ_LENS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
IMPLS = ("effsmall", "sdpa_flash", "sdpa_cudnn", "flex", "effsmall_portable")
BASELINES = {"flex": "vs_flex", "sdpa_flash": "vs_fa2", "sdpa_cudnn": "vs_cudnn", "effsmall_portable": "vs_portable"}


def attention_flops(B: int, H: int, N: int, D: int, causal: bool, mode: str, Nk: int | None = None) -> float:
    """4·B·H·Nq·Nk·D for the forward (two matmuls), halved when causal; fwd+bwd = 3.5× fwd."""
    f = 4.0 * B * H * N * (Nk or N) * D
    if causal:
        f /= 2
    return f * (3.5 if mode == "fwdbwd" else 1.0)


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


def _effsmall_impl(hopper: bool | None = None):
    from effsmall.attention import flash_attention

    return lambda q, k, v, causal: flash_attention(q, k, v, causal=causal, hopper=hopper)


def _impls() -> dict:
    """The implementations timed at every shape (``effsmall_portable`` is added per shape, where
    ``flash_attention`` dispatches its Hopper forward)."""
    from torch.nn.attention import SDPBackend

    return {"effsmall": _effsmall_impl(), "sdpa_flash": _sdpa(SDPBackend.FLASH_ATTENTION),
            "sdpa_cudnn": _sdpa(SDPBackend.CUDNN_ATTENTION), "flex": _flex_impl()}


def _call(fn, q, k, v, do, causal, mode):
    """The timed callable: forward, or forward + ``torch.autograd.grad``."""
    if mode == "fwd":
        return lambda: fn(q, k, v, causal)

    def call():
        o = fn(q, k, v, causal)
        return torch.autograd.grad(o, (q, k, v), do)
    return call


GRAPH_IMPLS = ("effsmall", "sdpa_flash", "sdpa_cudnn", "effsmall_portable")  # Flex is already a compiled graph of its own


def _time_shape(impls: dict, q, k, v, do, causal, mode) -> dict:
    """{name: exception or dict(s=eager, graph=CUDA-graph, host=host per call) seconds} for one
    shape and mode (:func:`effsmall.bench.timing.compare`)."""
    calls = {name: _call(fn, q, k, v, do, causal, mode) for name, fn in impls.items()}
    return compare(calls, "cuda", detail=GRAPH_IMPLS, warmup_ms=10, rep_ms=60)


def _run_cuda(quick: bool) -> list[dict]:
    from effsmall.attention import flash_triton
    from effsmall.hardware import measure_ceilings

    rec = Recorder(budget_s(480))
    ceil = measure_ceilings("cuda", quick=quick)
    peak = ceil["matmul_flops"].get("bf16", ceil["peak_flops"])
    rec.add(dict(kind="ceiling", matmul_bf16_flops=peak, copy_bandwidth_Bps=ceil["copy_bandwidth_Bps"],
                 matmul_n=ceil.get("matmul_n")))
    impls, portable = _impls(), _effsmall_impl(hopper=False)
    seq_lens = sizes(SEQ_LENS[:2] if quick else SEQ_LENS)
    shapes = [(N, D, causal) for N in seq_lens for D in HEAD_DIMS for causal in (False, True)]
    per_shape: list[float] = []
    for N, D, causal in shapes:
        if not rec.fits(max(per_shape, default=0.0)):
            rec.add(dict(kind="skipped", D=D, N=N, causal=causal, reason="time budget"))
            continue
        t_shape = time.time()
        B, H = TOKENS // N, HIDDEN // D
        g = torch.Generator(device="cuda").manual_seed(N + D)
        q, k, v, do = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        backend = flash_triton.backend(q, k, v, causal=causal)    # which forward runs: "triton", "triton-hopper"
        here = {**impls, "effsmall_portable": portable} if backend == "triton-hopper" else impls
        shape_rows = {}
        for mode in ("fwd", "fwdbwd"):
            fl = attention_flops(B, H, N, D, causal, mode)
            for name, r in _time_shape(here, q, k, v, do, causal, mode).items():
                row = dict(kind="attention", impl=name, D=D, N=N, B=B, H=H, causal=causal, mode=mode)
                if name == "effsmall":
                    row["backend"] = backend
                if isinstance(r, Exception):
                    row.update(ms=None, tflops=None, **error_fields(r))
                else:
                    t = r["s"]
                    row.update(ms=t * 1e3, tflops=fl / t / 1e12, pct_of_matmul_ceiling=100 * fl / t / peak,
                               graph_ms=r["graph"] * 1e3 if r["graph"] else None,
                               host_ms=r["host"] * 1e3 if r["host"] else None, rounds=rounds_default())
                shape_rows[(name, mode)] = row
        for mode in ("fwd", "fwdbwd"):
            mine = shape_rows[("effsmall", mode)]
            for base, col in BASELINES.items():
                other = shape_rows.get((base, mode), {})
                if mine.get("ms") and other.get("ms"):
                    mine[col] = other["ms"] / mine["ms"]  # > 1: effsmall is faster
                if mine.get("graph_ms") and other.get("graph_ms"):
                    mine[col + "_graph"] = other["graph_ms"] / mine["graph_ms"]  # GPU time alone
            for name in here:
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

    rec = Recorder()
    torch.manual_seed(0)
    N, D = (2048 if quick else 8192), 64
    q, k, v = (torch.randn(1, 1, N, D) for _ in range(3))
    for name, fn in (("naive", lambda: naive_attention(q, k, v, causal=True)),
                     ("tiled", lambda: tiled_attention(q, k, v, causal=True, block_m=512, block_n=512))):
        mem = peak_memory(fn)
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
    """Geomean and minimum speed ratios of effsmall vs Flex, FA2 and cuDNN (> 1: effsmall faster)."""
    out: dict = {}
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
        out["skipped_shapes"] = sum(r.get("kind") == "skipped" for r in rows)
    cpu = {r["impl"]: r for r in rows if r.get("kind") == "cpu_memory"}
    if "naive" in cpu and "tiled" in cpu:
        ratio = cpu["tiled"]["peak_bytes"] / max(cpu["naive"]["peak_bytes"], 1)
        out["cpu_tiled_over_naive_peak_memory"] = ratio
    return out


def table(rows: list[dict]) -> str:
    """One line per (D, causal, mode, N): TFLOP/s of each implementation, then effsmall's speed ratios."""
    att = [r for r in rows if r.get("kind") == "attention"]
    ratio = lambda col: lambda rs: rs.get("effsmall", {}).get(col)  # noqa: E731
    return _table(att, index=("D", "causal", "mode", "N"), impls=IMPLS, cell=lambda r: r.get("tflops"),
                  unit="TFLOP/s", extras=[(c, ratio(c)) for c in BASELINES.values()])


if __name__ == "__main__":  # python -m effsmall.bench.attention RESULT.json
    print_saved(table, summarize)
