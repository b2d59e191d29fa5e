"""Suite ``decode``: one new token against a long KV cache.

CUDA (``python -m effsmall.bench decode --device cuda``), bf16, 32 query / 8 KV heads, D = 128,
one query token, batch B ∈ {1, 16}, context L ∈ {1K, 2K, …, 128K} (batch 16 without 2K and 8K):

* implementations, timed in the same interleaved rounds (:func:`effsmall.measure.compare`):
  ``effsmall`` (:func:`effsmall.attention.flash_decode`, contiguous cache), ``effsmall_paged``
  (the same cache in 64-token pages in shuffled order), ``sdpa_flash``, ``sdpa_cudnn``,
  ``sdpa_efficient`` (SDPA's backends with ``enable_gqa=True``; a backend that refuses the
  shape is recorded with its error) and ``flex`` (``torch.compile(flex_attention)`` with
  ``enable_gqa=True``). SDPA's math backend is left out: it materializes the scores and
  repeats K, V per query head (8 GiB → 32 GiB at B = 16, 128K);
* ``ms`` is eager time (host launch work included), ``graph_ms`` a CUDA-graph replay (the GPU's
  time alone), ``host_ms`` the host's time per call;
* bandwidth: bytes read are the K and V caches, ``2·B·Hk·L·D·2``; ``pct_of_read_ceiling`` divides
  the achieved rate (GPU time) by the read ceiling measured in the same run — the fastest of a
  streaming-read Triton kernel and a full-tensor ``torch.sum`` over 2 GiB (bytes read / time)
  and the copy rate (read + write bytes / time); ``pct_of_copy_rate`` is the same against the copy rate alone;
* ratios ``vs_best_sdpa`` (best SDPA backend's time / ours; > 1: ours faster), ``vs_flex`` and
  ``paged_over_contiguous`` — each in eager and graph time.

The whole models' per-token latency is the ``generate`` suite's (:mod:`effsmall.bench.generate`).

The run keeps to a time budget of 150 s (what would not fit is recorded as ``kind="skipped"``;
about three minutes in all on an H200); the contexts can be chosen (settings: :mod:`effsmall.bench`).
The kernel's correctness on a GPU is tested by the ``gpu``-marked tests of
``tests/attention/test_decode.py``.

CPU (``--device cpu``, ``--quick`` a smoke test): the same rows at interpreter sizes (8 / 2
heads, D = 32, contexts 128 and 512) against SDPA's CPU kernel — the shape of the code path,
not GPU speed.

``python -m effsmall.bench.decode FILE.json`` prints the table of a saved result.
"""
from __future__ import annotations

import time

import torch
import triton
import triton.language as tl

from effsmall.bench.common import Recorder, budget_s, compare, error_fields, print_saved, rounds_default, sizes
from effsmall.bench.common import table as _table
from effsmall.measure import benchmark, geomean

HQ, HK, D = 32, 8, 128
CONTEXTS = (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
BATCHES = (1, 16)
SKIP_AT_LARGE_BATCH = (2048, 8192)   # batch 16 is measured at 1K, 4K, 16K, 32K, 64K, 128K
PAGE = 64
SDPA = ("sdpa_flash", "sdpa_cudnn", "sdpa_efficient")
IMPLS = ("effsmall", "effsmall_paged", *SDPA, "flex")


def kv_bytes(B: int, L: int, hk: int = HK, d: int = D, elem: int = 2) -> int:
    """Bytes of K and V that one decode call must read."""
    return 2 * B * hk * L * d * elem


@triton.jit
def _read_kernel(X, OUT, n, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    """Sum ITERS·BLOCK contiguous elements of X into OUT[program]: a read-only stream."""
    base = tl.program_id(0).to(tl.int64) * BLOCK * ITERS
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(X + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(OUT + tl.program_id(0), tl.sum(acc, 0))


def _streaming_read_rate(x: torch.Tensor) -> float:
    """Bytes per second of a Triton kernel that only reads ``x`` (each program sums a contiguous
    slab in wide vector loads and writes one float): the best of a few tile shapes. A reduction
    through ``torch.sum`` stalls on its tree of partial sums and reads slower than the copy
    engine does, which would put decode kernels "above 100%" of a read ceiling."""
    import triton.testing as tt

    n, best = x.numel(), 0.0
    for block, iters, warps in ((4096, 8, 8), (8192, 4, 8), (2048, 16, 4), (4096, 16, 8)):
        grid = (triton.cdiv(n, block * iters),)
        out = torch.empty(grid[0], device=x.device, dtype=torch.float32)
        try:
            ms = tt.do_bench(lambda: _read_kernel[grid](x, out, n, BLOCK=block, ITERS=iters, num_warps=warps),
                             warmup=10, rep=50)
        except Exception:  # noqa: BLE001 - a shape that does not compile here is just not a candidate
            continue
        best = max(best, n * x.element_size() / (ms * 1e-3))
    return best


def read_ceiling(device: str, quick: bool = False) -> dict:
    """Measured memory ceilings: the copy rate (read + write bytes), a full-tensor ``torch.sum``
    and, on a GPU, a streaming-read Triton kernel over 2 GiB; ``read_Bps`` is the fastest."""
    from effsmall.hardware import measure_ceilings

    cuda = str(device).startswith("cuda")
    copy = measure_ceilings(device, quick=quick)["copy_bandwidth_Bps"]
    n = (1 << 30 if cuda else 1 << 24) if not quick else (1 << 27 if cuda else 1 << 22)
    x = torch.ones(n, device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    t = benchmark(lambda: x.sum(dtype=torch.float32), device)
    read = x.numel() * x.element_size() / t
    stream = _streaming_read_rate(x) if cuda else 0.0
    return dict(copy_Bps=copy, sum_read_Bps=read, stream_read_Bps=stream, read_Bps=max(copy, read, stream))


# ---------------------------------------------------------------------------------------------
# Implementations
# ---------------------------------------------------------------------------------------------
def _sdpa(backend):
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    def f(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return f


def _flex():
    from effsmall.bench.attention import compiled_flex_attention

    compiled = compiled_flex_attention()
    return lambda q, k, v: compiled(q, k, v, enable_gqa=True)


def _shuffled_pages(k, v, page: int, seed: int = 0):
    """The cache in pages of ``page`` tokens, in a random order in the pool (as after many
    allocations and frees): pools (P, Hk, page, D) and the block table (B, L/page)."""
    B, Hk, L, Dh = k.shape
    n = L // page
    g = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(B * n, generator=g).to(k.device)
    pools = []
    for x in (k, v):
        pool = torch.empty(B * n, Hk, page, Dh, dtype=x.dtype, device=x.device)
        pool[perm] = x.view(B, Hk, n, page, Dh).transpose(1, 2).flatten(0, 1)   # (B·n, Hk, page, D)
        pools.append(pool)
    return pools[0], pools[1], perm.view(B, n).to(torch.int32)


def _calls(q, k, v, lens, pk, pv, table, cuda: bool) -> dict:
    from torch.nn.attention import SDPBackend

    from effsmall.attention import flash_decode

    q3 = q[:, :, 0]                                                               # (B, Hq, D)
    calls = {"effsmall": lambda: flash_decode(q3, k, v, lens, validate=False),
             "effsmall_paged": lambda: flash_decode(q3, pk, pv, lens, block_table=table, validate=False)}
    if cuda:
        backends = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}
        for name, be in backends.items():
            f = _sdpa(be)
            calls[name] = lambda f=f: f(q, k, v)
        if "f" not in _FLEX:
            _FLEX["f"] = _flex()                                   # one compiled function for every shape
        flex = _FLEX["f"]
        calls["flex"] = lambda: flex(q, k, v)
    else:
        import torch.nn.functional as F

        calls["sdpa_cpu"] = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return calls


_FLEX: dict = {}


def _attention_rows(rec: Recorder, device: str, quick: bool, ceiling: dict) -> None:
    cuda = str(device).startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    hq, hk, d = (HQ, HK, D) if cuda else (8, 2, 32)
    default = ((1024, 16384) if quick else CONTEXTS) if cuda else ((128,) if quick else (128, 512))
    contexts = sizes(default)
    batches = BATCHES if cuda else (1, 2)
    shapes = [(B, L) for L in contexts for B in batches
              if not (cuda and B > 1 and L in SKIP_AT_LARGE_BATCH and contexts == default)]
    per_shape: list[float] = []
    for B, L in shapes:
        # the next shape's cost: the last two shapes' (the first one also paid for compiling)
        if per_shape and not rec.fits(max(per_shape[-2:])):
            rec.add(dict(kind="skipped", B=B, L=L, reason="time budget"))
            continue
        t_shape = time.time()
        g = torch.Generator(device=device).manual_seed(L + B)
        q = torch.randn(B, hq, 1, d, device=device, dtype=dtype, generator=g)
        k = torch.randn(B, hk, L, d, device=device, dtype=dtype, generator=g)
        v = torch.randn(B, hk, L, d, device=device, dtype=dtype, generator=g)
        lens = torch.full((B,), L, dtype=torch.int32, device=device)
        pk, pv, table = _shuffled_pages(k, v, PAGE)
        res = compare(_calls(q, k, v, lens, pk, pv, table, cuda), device, detail=IMPLS,
                      **(dict(warmup_ms=10, rep_ms=30) if cuda else dict(min_run_time=0.05)))
        nbytes = kv_bytes(B, L, hk, d, k.element_size())
        rows = {}
        for name, r in res.items():
            row = dict(kind="decode", impl=name, B=B, L=L, Hq=hq, Hk=hk, D=d, kv_bytes=nbytes)
            if isinstance(r, Exception):
                row.update(ms=None, **error_fields(r))
            else:
                best = r["graph"] or r["s"]
                row.update(ms=r["s"] * 1e3, graph_ms=r["graph"] * 1e3 if r["graph"] else None,
                           host_ms=r["host"] * 1e3 if r["host"] else None, GBps=nbytes / best / 1e9,
                           pct_of_read_ceiling=100 * nbytes / best / ceiling["read_Bps"],
                           pct_of_copy_rate=100 * nbytes / best / ceiling["copy_Bps"],
                           rounds=rounds_default())
            rows[name] = row
        _ratios(rows)
        for row in rows.values():
            rec.add(row)
        del q, k, v, pk, pv
        if cuda:
            torch.cuda.empty_cache()
        per_shape.append(time.time() - t_shape)


def _ratios(rows: dict) -> None:
    """vs_best_sdpa, vs_flex, paged_over_contiguous on the effsmall row (eager and graph)."""
    me = rows["effsmall"]
    for suffix, col in (("", "ms"), ("_graph", "graph_ms")):
        if not me.get(col):
            continue
        sdpa = [rows[n][col] for n in rows if n.startswith("sdpa") and rows[n].get(col)]
        if sdpa:
            me["vs_best_sdpa" + suffix] = min(sdpa) / me[col]
        if rows.get("flex", {}).get(col):
            me["vs_flex" + suffix] = rows["flex"][col] / me[col]
        if rows.get("effsmall_paged", {}).get(col):
            me["paged_over_contiguous" + suffix] = rows["effsmall_paged"][col] / me[col]


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    cuda = str(device).startswith("cuda")
    rec = Recorder(budget_s(150 if cuda else 120))
    ceiling = read_ceiling(device, quick=quick or not cuda)
    rec.add(dict(kind="ceiling", **ceiling))
    _attention_rows(rec, device, quick, ceiling)
    print(table(rec.rows), flush=True)
    return rec.rows


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    out: dict = {}
    mine = [r for r in rows if r.get("kind") == "decode" and r["impl"] == "effsmall" and r.get("ms")]
    if not mine:
        return out
    for col in ("vs_best_sdpa", "vs_flex", "paged_over_contiguous"):
        for suffix in ("", "_graph"):
            vals = [r[col + suffix] for r in mine if r.get(col + suffix)]
            if vals:
                out[f"{col}{suffix}_geomean"] = geomean(vals)
                out[f"{col}{suffix}_min"] = min(vals)
                out[f"{col}{suffix}_max"] = max(vals)
    out["skipped_shapes"] = sum(r.get("kind") == "skipped" for r in rows)
    out["per_shape"] = [{k: r.get(k) for k in ("B", "L", "graph_ms", "ms", "pct_of_read_ceiling", "vs_best_sdpa_graph",
                                               "vs_flex_graph", "paged_over_contiguous_graph")} for r in mine]
    return out


def table(rows: list[dict]) -> str:
    """One line per (B, L): microseconds of each implementation (GPU time where measured), then
    effsmall's share of the read ceiling and its speed ratios."""
    dec = [r for r in rows if r.get("kind") == "decode"]

    def mine(col):
        return lambda rs: rs.get("effsmall", {}).get(col + "_graph") or rs.get("effsmall", {}).get(col)
    us = lambda r: (r.get("graph_ms") or r.get("ms") or 0) * 1e3  # noqa: E731
    lines = [_table(dec, index=("B", "L"), impls=(*IMPLS, "sdpa_cpu"), cell=us, unit="µs", width=14,
                    extras=[("%read", mine("pct_of_read_ceiling")), ("vs_sdpa", mine("vs_best_sdpa")),
                            ("vs_flex", mine("vs_flex")), ("paged", mine("paged_over_contiguous"))])]
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots (chapter 16)
# ---------------------------------------------------------------------------------------------
LABELS = {"effsmall": "effsmall flash_decode", "effsmall_paged": "effsmall, paged (64)", "sdpa_flash": "SDPA flash",
          "sdpa_cudnn": "SDPA cuDNN", "sdpa_efficient": "SDPA mem-efficient", "flex": "FlexAttention",
          "sdpa_cpu": "SDPA (CPU)"}


def plot_decode(result: dict):
    """Achieved KV read bandwidth as a fraction of the measured read ceiling vs context, one panel
    per batch size (GPU time where measured), from a ``decode`` result. (Earlier results also hold
    ``lm_decode`` rows; the whole models' latency is plotted from the ``generate`` suite.)"""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    dec = [r for r in rows if r.get("kind") == "decode" and r.get("ms")]
    batches = sorted({r["B"] for r in dec})
    fig, axes = plt.subplots(1, len(batches), figsize=(min(7.2, 3.6 * len(batches)), 3.2), squeeze=False, sharey=True)
    for ax, B in zip(axes[0], batches):
        for impl in LABELS:
            rs = sorted((r for r in dec if r["B"] == B and r["impl"] == impl), key=lambda r: r["L"])
            if rs:
                ax.plot([r["L"] for r in rs], [r["pct_of_read_ceiling"] for r in rs], "o-", ms=3,
                        label=LABELS[impl], lw=2 if impl == "effsmall" else 1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context L (tokens)")
        ax.set_title(f"batch {B}")
        ax.axhline(100, color="gray", lw=0.8, ls=":")
    axes[0][0].set_ylabel("% of measured read bandwidth")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"Decode attention on {result['env']['device_name']}", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":  # python -m effsmall.bench.decode RESULT.json
    print_saved(table, summarize)
