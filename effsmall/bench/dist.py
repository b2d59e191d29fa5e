"""Benchmark suite ``dist``: tensor and context parallelism on two devices (chapter 15).

CUDA (``--device cuda``, two GPUs of one host, NCCL with NVLink multicast off —
``NCCL_NVLS_ENABLE=0``), bf16, one sequence unless stated:

* ``tp_mamba2`` / ``tp_attention`` — a Mamba-2 block and a Transformer block (GQA, SwiGLU) at
  d_model 4096, B·L = 8K tokens: fwd+bwd time of the unsharded block on one GPU and of the
  TP = 2 shards, with the collectives counted in one fwd+bwd (calls and bytes) next to the
  theory (Mamba-2: one all-reduce of (B, L, d_model) per forward; attention block: two);
* ``cp_ssd`` — SSD (H = 32, P = 64, N = 128, chunk 256) of one sequence of 256K–1M tokens:
  ``ssd_triton`` fwd+bwd on one GPU against :func:`effsmall.dist.context_parallel` with
  CP = 2, ``p2p`` and ``allgather``;
* ``ring`` — causal attention, H = 16, D = 128, 32K–256K tokens: our FlashAttention on one GPU,
  :func:`effsmall.dist.ring` (``zigzag`` and ``contiguous``) on two, against PyTorch's
  SDPA (flash backend) on one GPU and ``torch.distributed.tensor.experimental.context_parallel``
  over it on two, in the same run.

Distributed times are lockstep loops (both ranks, fixed iteration counts, barrier before,
the slowest rank's time; median of repeats); the one-GPU baselines run the same loop on rank 0.
Speed-ups are one-GPU time / two-GPU time. A run has three parts, ``tp``, ``ssd`` and ``ring``
(settings: :mod:`effsmall.bench`; the 256K-token attention rows dominate the time). ``--device cpu`` (gloo, two processes, fp32, tiny
sizes) only proves the harness; its times mean nothing.
"""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from effsmall.bench.common import parts as bench_parts

D_MODEL, TOKENS = 4096, 8192
SSD_LENGTHS = (262144, 524288, 1048576)
RING_LENGTHS = (32768, 65536, 131072, 262144)
SSD_H, SSD_P, SSD_N, SSD_CHUNK = 32, 64, 128, 256
ATT_H, ATT_D = 16, 128


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(fn, dev, *, local: bool = False, iters: int = 2, warmup: int = 1, repeats: int = 2) -> float:
    """Seconds per call of ``fn``. ``local``: rank 0 alone (the others skip); otherwise every rank
    runs the same fixed loop and the slowest rank's time counts."""
    if local and dist.get_rank() != 0:
        dist.barrier()
        return float("nan")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        if not local:
            dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        _sync(dev)
        t = torch.tensor([(time.perf_counter() - t0) / iters], dtype=torch.float64, device=dev)
        if not local:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        times.append(t.item())
    if local:
        dist.barrier()
    return statistics.median(times)


def _fwd_bwd(module, x, g):
    def run():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(g)
    return run


def _tp_rows(rank, world, dev, dtype, quick):
    from effsmall.attention.block import TransformerBlock
    from effsmall.dist.checks import theory
    from effsmall.dist.counting import count_collectives
    from effsmall.dist.tensor_parallel import shard_mamba2_block, shard_transformer_block
    from effsmall.ssm.mamba2_block import Mamba2Block
    d, b, l = (64, 2, 64) if quick else (D_MODEL, 4, TOKENS // 4)
    rows = []
    torch.manual_seed(0)
    attn_fn = None
    if dev.type == "cuda":
        from effsmall.attention.flash_triton import flash_attention
        attn_fn = flash_attention
    builds = {
        "tp_mamba2": (lambda: Mamba2Block(d, d_state=128 if not quick else 16, headdim=64 if not quick else 16,
                                          ngroups=8 if not quick else 2, norm_groups=8 if not quick else 2,
                                          chunk_size=256 if not quick else 32, dtype=dtype, device=dev),
                      shard_mamba2_block, "tp_mamba2"),
        "tp_attention": (lambda: TransformerBlock(d, 32 if not quick else 4, 8 if not quick else 2,
                                                  attn_fn=attn_fn).to(dev, dtype),
                         shard_transformer_block, "tp_transformer"),
    }
    for kind, (build, shard, th) in builds.items():
        block = build()
        x = torch.randn(b, l, d, dtype=dtype, device=dev, requires_grad=True)
        g = torch.randn(b, l, d, dtype=dtype, device=dev)
        one = _time(_fwd_bwd(block, x, g), dev, local=True)
        tp = shard(block)
        del block
        with count_collectives() as c:
            _fwd_bwd(tp, x, g)()
        two = _time(_fwd_bwd(tp, x, g), dev)
        n_calls, n_bytes = theory(th, world, b=b, l=l, d_model=d, elt=dtype.itemsize)["all_reduce"]
        rows.append(dict(kind=kind, d_model=d, batch=b, L=l, dtype=str(dtype).split(".")[-1], world=world,
                         one_gpu_s=one, tp_s=two, speedup=one / two, calls=dict(c.calls), bytes=dict(c.bytes),
                         theory_fwd_bwd={"all_reduce": [2 * n_calls, 2 * n_bytes]}))
        del tp, x, g
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _ssd_rows(rank, world, dev, dtype, quick):
    from effsmall.dist.context_parallel import _ssd_fn, context_parallel_ssd
    from effsmall.dist.counting import count_collectives
    H, P, N, Q = (4, 16, 16, 32) if quick else (SSD_H, SSD_P, SSD_N, SSD_CHUNK)
    rows = []
    for L in ((512, 1024) if quick else SSD_LENGTHS):
        torch.manual_seed(0)

        def make(length):
            x = torch.randn(1, length, H, P, dtype=dtype, device=dev, requires_grad=True)
            dt = F.softplus(torch.randn(1, length, H, device=dev) - 3).requires_grad_(True)
            B = torch.randn(1, length, 1, N, dtype=dtype, device=dev, requires_grad=True)
            C = torch.randn(1, length, 1, N, dtype=dtype, device=dev, requires_grad=True)
            return x, dt, B, C
        A = -torch.rand(H, device=dev) - 0.5
        row = dict(kind="cp_ssd", L=L, H=H, P=P, N=N, chunk=Q, world=world, dtype=str(dtype).split(".")[-1])
        if rank == 0:
            x, dt, B, C = make(L)
            ssd = _ssd_fn(x, None)
            gy = torch.randn_like(x)

            def one():
                y, _ = ssd(x * dt[..., None].to(x.dtype), dt * A, B, C, Q)
                y.backward(gy)
            row["one_gpu_s"] = _time(one, dev, local=True)
            del x, dt, B, C, gy
        else:
            _time(None, dev, local=True)
        x, dt, B, C = make(L // world)
        gy = torch.randn_like(x)
        for method in ("p2p", "allgather"):
            def two(method=method):
                y = context_parallel_ssd(x, dt, A, B, C, Q, method=method, check_shapes=False)
                y.backward(gy)
            with count_collectives() as c:
                two()
            row[f"{method}_s"] = _time(two, dev)
            row[f"{method}_calls"] = dict(c.calls)
            if rank == 0:
                row[f"speedup_{method}"] = row["one_gpu_s"] / row[f"{method}_s"]
        rows.append(row)
        del x, dt, B, C, gy
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _torch_cp(q, k, v, world, dev):
    """PyTorch's context parallel over SDPA (flash backend), or the reason it cannot run."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    mesh = init_device_mesh(dev.type, (world,))
    qb, kb, vb = (t.detach().clone() for t in (q, k, v))   # buffers must not require grad when the context opens
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), context_parallel(mesh, buffers=[qb, kb, vb],
                                                                  buffer_seq_dims=[2, 2, 2]):
        ql, kl, vl = (t.detach().requires_grad_(True) for t in (qb, kb, vb))
        go = torch.randn_like(ql)

        def run():
            for t in (ql, kl, vl):
                t.grad = None
            F.scaled_dot_product_attention(ql, kl, vl, is_causal=True).backward(go)
        return _time(run, dev)


def _ring_rows(rank, world, dev, dtype, quick):
    from effsmall.dist.ring import ring_attention, zigzag_shard, contiguous_shard
    H, D = (2, 16) if quick else (ATT_H, ATT_D)
    rows = []
    for L in ((256, 512) if quick else RING_LENGTHS):
        torch.manual_seed(0)
        row = dict(kind="ring", L=L, H=H, D=D, causal=True, world=world, dtype=str(dtype).split(".")[-1])
        q, k, v = (torch.randn(1, H, L, D, dtype=dtype, device=dev) for _ in range(3))
        if rank == 0:
            qf, kf, vf = (t.clone().requires_grad_(True) for t in (q, k, v))
            go = torch.randn_like(qf)

            def ours_one():
                from effsmall.attention.flash_triton import flash_attention
                fn = flash_attention if dev.type == "cuda" else None
                o = fn(qf, kf, vf, causal=True) if fn else F.scaled_dot_product_attention(qf, kf, vf, is_causal=True)
                o.backward(go)

            def torch_one():
                from torch.nn.attention import SDPBackend, sdpa_kernel
                backends = [SDPBackend.FLASH_ATTENTION] if dev.type == "cuda" else [SDPBackend.MATH]
                with sdpa_kernel(backends):
                    F.scaled_dot_product_attention(qf, kf, vf, is_causal=True).backward(go)
            row["ours_one_gpu_s"] = _time(ours_one, dev, local=True)
            row["torch_one_gpu_s"] = _time(torch_one, dev, local=True)
            del qf, kf, vf, go
        else:
            _time(None, dev, local=True)
            _time(None, dev, local=True)
        for layout, shard in (("zigzag", zigzag_shard), ("contiguous", contiguous_shard)):
            ql, kl, vl = (shard(t, rank, world).requires_grad_(True) for t in (q, k, v))
            go = torch.randn_like(ql)

            def ring(layout=layout, ql=ql, kl=kl, vl=vl, go=go):
                for t in (ql, kl, vl):
                    t.grad = None
                ring_attention(ql, kl, vl, causal=True, layout=layout, check_shapes=False).backward(go)
            row[f"ring_{layout}_s"] = _time(ring, dev)
        if dev.type == "cuda":
            try:
                row["torch_cp_s"] = _torch_cp(q, k, v, world, dev)
            except Exception as e:  # noqa: BLE001 - recorded in the row, the run goes on
                row["torch_cp_error"] = f"{type(e).__name__}: {e}"[:300]
        else:
            row["torch_cp_error"] = "needs CUDA"
        if rank == 0:
            for layout in ("zigzag", "contiguous"):
                row[f"speedup_{layout}"] = row["ours_one_gpu_s"] / row[f"ring_{layout}_s"]
            if "torch_cp_s" in row:
                row["speedup_torch_cp"] = row["torch_one_gpu_s"] / row["torch_cp_s"]
                row["zigzag_vs_torch_cp"] = row["torch_cp_s"] / row["ring_zigzag_s"]
        rows.append(row)
        del q, k, v
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _worker(rank: int, world: int, quick: bool, parts: tuple) -> list | None:
    from effsmall.dist.launcher import current_device
    dev = current_device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows = []
    for part, fn in (("tp", _tp_rows), ("ssd", _ssd_rows), ("ring", _ring_rows)):
        if part in parts:
            rows += fn(rank, world, dev, dtype, quick)
    return rows if rank == 0 else None


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    from effsmall.dist.launcher import launch
    parts = bench_parts(("tp", "ssd", "ring"))
    if str(device).startswith("cuda"):
        n = torch.cuda.device_count()
        if n < 2:
            raise RuntimeError(f"the dist suite on CUDA needs two GPUs of one host; {n} visible")
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (the measured anchor's setting)
        backend = "nccl"
    else:
        backend = "gloo"
    return launch(_worker, quick, parts, nprocs=2, backend=backend, timeout=900)[0]


def summarize(rows: list[dict]) -> dict:
    out = {}
    for r in rows:
        if r["kind"] in ("tp_mamba2", "tp_attention"):
            out[f"{r['kind']}_speedup"] = round(r["speedup"], 3)
            out[f"{r['kind']}_calls"] = r["calls"]
        elif r["kind"] == "cp_ssd":
            for m in ("p2p", "allgather"):
                out[f"cp_ssd_{m}_speedup_L{r['L']}"] = round(r[f"speedup_{m}"], 3)
        elif r["kind"] == "ring":
            for key in ("speedup_zigzag", "speedup_contiguous", "speedup_torch_cp", "zigzag_vs_torch_cp"):
                if key in r:
                    out[f"ring_{key}_L{r['L']}"] = round(r[key], 3)
    return out
