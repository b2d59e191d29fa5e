"""Workers that compare each parallel layer with its single-device reference.

Each ``check_*(rank, world_size, ...)`` runs on every rank (start it with
:func:`effsmall.dist.launcher`): every rank builds the same model and inputs from one seed,
computes the single-device reference on the whole problem, then the parallel version on its
shard, and returns plain numbers — the largest differences in the output and in every
gradient (relative to the reference's largest entry when that exceeds 1), and the collectives counted in forward and backward. Chapter 15 and the tests
assert on them.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F

from effsmall.dist.comm import all_gather_into, reduce_scatter_into
from effsmall.dist.counting import count_collectives
from effsmall.dist.launcher import current_device
from effsmall.runtime import compute_dtype

__all__ = ["check_tp_mamba2", "check_tp_transformer", "check_cp_ssd", "check_cp_mamba2", "check_ring",
           "check_ulysses", "check_bad_inputs", "check_all", "check_gpu",
           "collectives_demo", "chapter_tp", "chapter_cp", "chapter_attention", "fail_on_rank", "hang_on_rank", "theory"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| relative to the reference's scale: max |a − b| / max(1, max |b|)."""
    if not a.numel():
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().clone()
    dist.all_reduce(t)  # bookkeeping for the comparison, outside any count
    return t


def _grads_as_params(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose parameters hold its gradients: shard it like the module to get
    each rank's reference gradients."""
    g = copy.deepcopy(module)
    for pg, p in zip(g.parameters(), module.parameters()):
        pg.data = p.grad.detach().clone()
    return g


def theory(kind: str, world: int, **shape) -> dict:
    """Collective calls and payload bytes per forward that the theory predicts (per rank)."""
    elt = shape.get("elt", 8)
    if kind == "tp_mamba2":
        n = shape["b"] * shape["l"] * shape["d_model"] * elt
        return {"all_reduce": (1, n)}
    if kind == "sp_mamba2":
        n = shape["b"] * shape["l"] * shape["d_model"] * elt
        return {"all_gather": (1, n), "reduce_scatter": (1, n)}
    if kind == "tp_transformer":
        n = shape["b"] * shape["l"] * shape["d_model"] * elt
        return {"all_reduce": (2, 2 * n)}
    if kind == "sp_transformer":
        n = shape["b"] * shape["l"] * shape["d_model"] * elt
        return {"all_gather": (2, 2 * n), "reduce_scatter": (2, 2 * n)}
    raise ValueError(f"unknown kind {kind!r}")


# ---------------------------------------------------------------- tensor (and sequence) parallel
def _run_sharded(tp, x, gout, ref_out, world: int, rank: int, sequence_parallel: bool):
    """Forward and backward of the sharded block ``tp`` on this rank's input, counting the
    collectives of each. With sequence parallelism a rank holds a contiguous slice of the
    tokens (dim 1), and so do its expected output and input gradient. Returns ``(x_loc, out,
    want_out, want_dx, fwd_counts, bwd_counts)``; ``x_loc.grad`` holds the input gradient."""
    if sequence_parallel:
        x_loc, g_loc, want = (t.detach().chunk(world, 1)[rank].contiguous() for t in (x, gout, ref_out))
        want_dx = x.grad.chunk(world, 1)[rank]
    else:
        x_loc, g_loc, want, want_dx = x.detach().clone(), gout, ref_out, x.grad
    x_loc.requires_grad_(True)
    with count_collectives() as cf:
        out = tp(x_loc)
    with count_collectives() as cb:
        (out * g_loc).sum().backward()
    return x_loc, out, want, want_dx, cf, cb


def check_tp_mamba2(rank: int, world: int, dtype: str = "float64", sequence_parallel: bool = False,
                    b: int = 2, l: int = 12, d_model: int = 16, seed: int = 0, headdim: int = 8,
                    d_state: int = 8) -> dict:
    from effsmall.dist.tensor_parallel import _mamba2_shard, shard_mamba2_block
    from effsmall.ssm.mamba2_block import Mamba2Block
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    torch.manual_seed(seed)
    block = Mamba2Block(d_model, d_state=d_state, d_conv=4, expand=2, headdim=headdim, ngroups=world,
                        chunk_size=8 if dev.type == "cpu" else 64, norm_groups=world, dtype=torch_dtype, device=dev)
    u = torch.randn(b, l, d_model, dtype=torch_dtype, device=dev, requires_grad=True)  # (b, l, d_model)
    gout = torch.randn(b, l, d_model, dtype=torch_dtype, device=dev)
    (block(u) * gout).sum().backward()
    ref_out = block(u).detach()
    tp = shard_mamba2_block(block, sequence_parallel=sequence_parallel)
    u_loc, out, want, want_du, cf, cb = _run_sharded(tp, u, gout, ref_out, world, rank, sequence_parallel)
    ref_g = _mamba2_shard(_grads_as_params(block), world, rank)
    gerr = max(_err(p.grad, q) for (_, p), (_, q) in zip(tp.shard.named_parameters(), ref_g.named_parameters()))
    return {"out": _err(out, want), "grad_u": _err(u_loc.grad, want_du), "grad_params": gerr,
            "fwd": cf.as_dict(), "bwd": cb.as_dict(), "shape": dict(b=b, l=l, d_model=d_model, elt=torch_dtype.itemsize)}


def check_tp_transformer(rank: int, world: int, dtype: str = "float64", sequence_parallel: bool = False,
                         n_heads: int = 4, n_kv_heads: int = 2, b: int = 2, l: int = 8, d_model: int = 32,
                         seed: int = 0) -> dict:
    from effsmall.attention.block import TransformerBlock
    from effsmall.dist.tensor_parallel import _kv_plan, _transformer_shard, shard_transformer_block
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    torch.manual_seed(seed)
    block = TransformerBlock(d_model, n_heads, n_kv_heads, d_ff=64).to(dev, torch_dtype)
    with torch.no_grad():  # non-trivial norm weights
        block.attn_norm.weight.uniform_(0.5, 1.5)
        block.mlp_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(b, l, d_model, dtype=torch_dtype, device=dev, requires_grad=True)
    gout = torch.randn(b, l, d_model, dtype=torch_dtype, device=dev)
    ref_out = block(x)
    (ref_out * gout).sum().backward()
    tp = shard_transformer_block(block, sequence_parallel=sequence_parallel)
    x_loc, out, want, want_dx, cf, cb = _run_sharded(tp, x, gout, ref_out.detach(), world, rank, sequence_parallel)
    ref_g = _transformer_shard(_grads_as_params(block), world, rank)
    errs = {}
    for (name, p), (_, q) in zip(tp.shard.named_parameters(), ref_g.named_parameters()):
        g = p.grad
        if "norm" in name and sequence_parallel:
            g = _all_sum(g)  # each rank's norm saw only its tokens
        if name == "wkv.weight" and _kv_plan(n_kv_heads, world) == "replicate":
            g = _sum_over_replicas(g, world, rank, world // n_kv_heads)
        errs[name] = _err(g, q)
    return {"out": _err(out, want), "grad_x": _err(x_loc.grad, want_dx), "grad_params": max(errs.values()),
            "fwd": cf.as_dict(), "bwd": cb.as_dict(), "shape": dict(b=b, l=l, d_model=d_model, elt=torch_dtype.itemsize)}


def _sum_over_replicas(g: torch.Tensor, world: int, rank: int, replicas: int) -> torch.Tensor:
    """Sum a replicated KV head's gradient over the ranks that hold it."""
    everyone = torch.empty(world * g.shape[0], *g.shape[1:], dtype=g.dtype, device=g.device)  # (world·2D, d_model)
    all_gather_into(everyone, g.contiguous())
    everyone = everyone.unflatten(0, (world, -1))                                  # (world, 2D, d_model)
    first = rank // replicas * replicas
    return everyone[first:first + replicas].sum(0)


# ---------------------------------------------------------------- context parallel SSD
def _ssd_problem(world, dtype, dev, seed, b=2, l_loc=12, h=4, P=4, g=2, N=4):
    torch.manual_seed(seed)
    L = world * l_loc
    x = torch.randn(b, L, h, P, dtype=dtype, device=dev)
    dtv = F.softplus(torch.randn(b, L, h, dtype=dtype, device=dev) - 1)
    A = -torch.exp(torch.randn(h, dtype=dtype, device=dev) * 0.5)
    B = torch.randn(b, L, g, N, dtype=dtype, device=dev)
    C = torch.randn(b, L, g, N, dtype=dtype, device=dev)
    D = torch.randn(h, dtype=dtype, device=dev)
    return [t.requires_grad_(True) for t in (x, dtv, A, B, C, D)]


def check_cp_ssd(rank: int, world: int, method: str = "p2p", dtype: str = "float64", chunk_size: int = 8,
                 seed: int = 0, b: int = 2, l_loc: int = 12, h: int = 4, P: int = 4, g: int = 2, N: int = 4,
                 with_initial_states: bool = False, ssd: str = "auto") -> dict:
    """``ssd``: the rung each rank runs — ``"auto"`` (Triton on CUDA, torch on CPU), ``"triton"``
    (on CPU: the Triton interpreter) or ``"torch"``."""
    from effsmall.dist.context_parallel import context_parallel_ssd
    from effsmall.ssm.ssd_chunkwise import ssd_chunked
    ssd_fn = None
    if ssd == "triton":
        from effsmall.ssm.ssd_kernels import ssd_triton as ssd_fn
    elif ssd == "torch":
        ssd_fn = ssd_chunked
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    x, dtv, A, B, C, D = _ssd_problem(world, torch_dtype, dev, seed, b, l_loc, h, P, g, N)
    h0 = None
    if with_initial_states:
        h0 = torch.randn(b, h, P, N, dtype=compute_dtype(torch_dtype), device=dev)
        h0.requires_grad_(True)
    Y, final = ssd_chunked(x * dtv[..., None], dtv * A, B, C, chunk_size, initial_states=h0)  # the reference
    Y = Y + x * D[:, None]
    gy, gh = torch.randn_like(Y), torch.randn_like(final)
    ((Y * gy).sum() + (final * gh).sum() * (method != "alltoall")).backward()
    loc = [t.detach().chunk(world, 1)[rank].contiguous().requires_grad_(True) for t in (x, dtv, B, C)]
    A2, D2 = A.detach().clone().requires_grad_(True), D.detach().clone().requires_grad_(True)
    h0_2 = None if h0 is None else h0.detach().clone().requires_grad_(True)
    want_state = method != "alltoall"  # the head-parallel schedule computes no boundary states
    with count_collectives() as cf:
        out = context_parallel_ssd(loc[0], loc[1], A2, loc[2], loc[3], chunk_size, method=method, D=D2,
                                   initial_states=h0_2, return_final_states=want_state, ssd_fn=ssd_fn)
    y, h_end = out if want_state else (out, None)
    loss = (y * gy.chunk(world, 1)[rank]).sum()
    if rank == world - 1 and want_state:
        loss = loss + (h_end * gh).sum()
    with count_collectives() as cb:
        loss.backward()
    errs = {"out": _err(y, Y.chunk(world, 1)[rank])}
    if rank == world - 1 and want_state:
        errs["final_state"] = _err(h_end, final)
    if h0 is not None and rank == 0:
        errs["grad_initial_states"] = _err(h0_2.grad, h0.grad)
    for name, t, ref in zip(("x", "dt", "B", "C"), loc, (x, dtv, B, C)):
        errs["grad_" + name] = _err(t.grad, ref.grad.chunk(world, 1)[rank])
    errs["grad_A"], errs["grad_D"] = _err(_all_sum(A2.grad), A.grad), _err(_all_sum(D2.grad), D.grad)
    return {**errs, "fwd": cf.as_dict(), "bwd": cb.as_dict(), "state_bytes": final.numel() * final.element_size()}


def check_cp_mamba2(rank: int, world: int, method: str = "allgather", dtype: str = "float64",
                    b: int = 2, l_loc: int = 6, d_model: int = 16, seed: int = 0) -> dict:
    from effsmall.dist.context_parallel import context_parallel_mamba2
    from effsmall.ssm.mamba2_block import Mamba2Block
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    torch.manual_seed(seed)
    block = Mamba2Block(d_model, d_state=8, d_conv=4, headdim=8, ngroups=2, chunk_size=4, dtype=torch_dtype, device=dev)
    u = torch.randn(b, world * l_loc, d_model, dtype=torch_dtype, device=dev, requires_grad=True)
    gout = torch.randn_like(u)
    out_ref = block(u)
    (out_ref * gout).sum().backward()
    ref_grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    u_loc = u.detach().chunk(world, 1)[rank].contiguous().requires_grad_(True)
    with count_collectives() as cf:
        out = context_parallel_mamba2(block, u_loc, method=method)
    (out * gout.chunk(world, 1)[rank]).sum().backward()
    gerr = max(_err(_all_sum(p.grad), r) for p, r in zip(block.parameters(), ref_grads))
    return {"out": _err(out, out_ref.chunk(world, 1)[rank]), "grad_u": _err(u_loc.grad, u.grad.chunk(world, 1)[rank]),
            "grad_params": gerr, "fwd": cf.as_dict()}


# ---------------------------------------------------------------- attention
def _attn_problem(world, dtype, dev, seed, B=1, Hq=4, Hk=2, n=8, D=16):
    torch.manual_seed(seed)
    q = torch.randn(B, Hq, world * n, D, dtype=dtype, device=dev, requires_grad=True)
    k = torch.randn(B, Hk, world * n, D, dtype=dtype, device=dev, requires_grad=True)
    v = torch.randn(B, Hk, world * n, D, dtype=dtype, device=dev, requires_grad=True)
    return q, k, v


def check_ring(rank: int, world: int, layout: str = "zigzag", causal: bool = True, dtype: str = "float64",
               kernel: str = "torch", Hq: int = 4, Hk: int = 2, n: int = 8, D: int = 16, seed: int = 0) -> dict:
    from effsmall.attention.naive import naive_attention
    from effsmall.dist.ring import contiguous_shard, ring_attention, zigzag_shard
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    q, k, v = _attn_problem(world, torch_dtype, dev, seed, Hq=Hq, Hk=Hk, n=n, D=D)
    ref = naive_attention(q.double(), k.double(), v.double(), causal=causal)   # (B, Hq, p·n, D)
    go = torch.randn_like(ref)
    (ref * go).sum().backward()
    shard = zigzag_shard if layout == "zigzag" else contiguous_shard
    ql, kl, vl = (shard(t.detach(), rank, world).requires_grad_(True) for t in (q, k, v))
    with count_collectives() as cf:
        o = ring_attention(ql, kl, vl, causal=causal, layout=layout, kernel=kernel)
    with count_collectives() as cb:
        (o.double() * shard(go, rank, world)).sum().backward()
    return {"out": _err(o, shard(ref, rank, world)), "grad_q": _err(ql.grad, shard(q.grad, rank, world)),
            "grad_k": _err(kl.grad, shard(k.grad, rank, world)), "grad_v": _err(vl.grad, shard(v.grad, rank, world)),
            "fwd": cf.as_dict(), "bwd": cb.as_dict(), "kv_bytes": 2 * kl.numel() * kl.element_size()}


def check_ulysses(rank: int, world: int, dtype: str = "float64", Hq: int = 4, Hk: int = 4, n: int = 8,
                  D: int = 16, seed: int = 0) -> dict:
    from effsmall.attention.naive import naive_attention
    from effsmall.dist.ring import contiguous_shard
    from effsmall.dist.ulysses import ulysses_attention
    dev, torch_dtype = current_device(), _DTYPES[dtype]
    q, k, v = _attn_problem(world, torch_dtype, dev, seed, Hq=Hq, Hk=Hk, n=n, D=D)
    ref = naive_attention(q, k, v, causal=True)
    go = torch.randn_like(ref)
    (ref * go).sum().backward()
    ql, kl, vl = (contiguous_shard(t.detach(), rank, world).requires_grad_(True) for t in (q, k, v))
    with count_collectives() as cf:
        o = ulysses_attention(ql, kl, vl, causal=True)
    (o * contiguous_shard(go, rank, world)).sum().backward()
    s = lambda t: contiguous_shard(t, rank, world)  # noqa: E731
    return {"out": _err(o, s(ref)), "grad_q": _err(ql.grad, s(q.grad)), "grad_k": _err(kl.grad, s(k.grad)),
            "grad_v": _err(vl.grad, s(v.grad)), "fwd": cf.as_dict()}


# ---------------------------------------------------------------- errors
def check_bad_inputs(rank: int, world: int) -> dict:
    """The messages raised for shapes the world size does not divide, and for unequal shards."""
    from effsmall.attention.block import TransformerBlock
    from effsmall.dist.ring import ring_attention
    from effsmall.dist.tensor_parallel import shard_mamba2_block, shard_transformer_block
    from effsmall.dist.ulysses import ulysses_attention
    from effsmall.ssm.mamba2_block import Mamba2Block
    msgs = {}
    cases = {
        "mamba2_ngroups": lambda: shard_mamba2_block(Mamba2Block(16, d_state=4, headdim=8, ngroups=1)),
        "attention_heads": lambda: shard_transformer_block(TransformerBlock(24, 3, 1, d_ff=8 * world)),
        "ulysses_heads": lambda: ulysses_attention(*(torch.randn(1, world + 1, 4, 16) for _ in range(3))),
        "ring_unequal": lambda: ring_attention(*(torch.randn(1, 2, 4 + 2 * rank, 16) for _ in range(3))),
    }
    for name, fn in cases.items():
        try:
            fn()
            msgs[name] = None
        except ValueError as e:
            msgs[name] = str(e)
    return msgs


def collectives_demo(rank: int, world: int) -> dict:
    """The five collectives on tiny integer tensors, each rank's view, with the counts."""
    from effsmall.dist.counting import count_collectives
    dev = current_device()
    x = torch.arange(world, dtype=torch.float32, device=dev) + 10 * rank   # rank r holds [10r, 10r+1, ...]
    out = {"holds": x.tolist()}
    with count_collectives() as c:
        y = x.clone()
        dist.all_reduce(y)
        out["all_reduce"] = y.tolist()
        g = torch.empty(world * world, device=dev)
        all_gather_into(g, x)
        out["all_gather"] = g.tolist()
        s = torch.empty(1, device=dev)
        reduce_scatter_into(s, x)
        out["reduce_scatter"] = s.tolist()
        a = torch.empty(world, device=dev)
        dist.all_to_all_single(a, x)
        out["all_to_all"] = a.tolist()
    out["counts"] = c.as_dict()
    return out


def chapter_tp(rank: int, world: int) -> dict:
    """Chapter 15's tensor- and sequence-parallel checks in one launch."""
    return {"tp_mamba2": check_tp_mamba2(rank, world), "sp_mamba2": check_tp_mamba2(rank, world, sequence_parallel=True),
            "tp_transformer": check_tp_transformer(rank, world),
            "sp_transformer": check_tp_transformer(rank, world, sequence_parallel=True)}


def chapter_cp(rank: int, world: int) -> dict:
    """Chapter 15's context-parallel SSD checks in one launch."""
    return {"p2p": check_cp_ssd(rank, world, "p2p"), "allgather": check_cp_ssd(rank, world, "allgather"),
            "block": check_cp_mamba2(rank, world, "allgather")}


def chapter_attention(rank: int, world: int) -> dict:
    """Chapter 15's ring and Ulysses attention checks in one launch."""
    return {"contiguous": check_ring(rank, world, "contiguous"), "zigzag": check_ring(rank, world, "zigzag"),
            "ulysses": check_ulysses(rank, world)}


def fail_on_rank(rank: int, world: int, bad: int = 1) -> int:
    if rank == bad:
        raise ValueError(f"rank {rank} was told to fail")
    return rank


def hang_on_rank(rank: int, world: int, seconds: float = 3.0) -> int:
    """Rank 0 enters an all-reduce that the others never join: its group's timeout must fire.
    (A group of its own, so that start-up on a busy machine is not held to the short timeout.)"""
    import datetime
    group = dist.new_group(timeout=datetime.timedelta(seconds=seconds))
    if rank == 0:
        dist.all_reduce(torch.ones(1, device=current_device()), group=group)
    else:
        import time
        time.sleep(2 * seconds + 5)  # alive but absent: rank 0 waits on it until the timeout
    return rank


def check_all(rank: int, world: int) -> dict:
    """Every check above in one launch (spawning processes is the slow part)."""
    out = {"tp_mamba2": check_tp_mamba2(rank, world), "sp_mamba2": check_tp_mamba2(rank, world, sequence_parallel=True),
           "tp_mamba2_fp32": check_tp_mamba2(rank, world, dtype="float32"),
           "tp_transformer": check_tp_transformer(rank, world),
           "sp_transformer": check_tp_transformer(rank, world, sequence_parallel=True),
           "tp_transformer_kv1": check_tp_transformer(rank, world, n_kv_heads=1),
           "cp_ssd_p2p": check_cp_ssd(rank, world, "p2p"), "cp_ssd_allgather": check_cp_ssd(rank, world, "allgather"),
           "cp_ssd_fp32": check_cp_ssd(rank, world, "allgather", dtype="float32"),
           "cp_ssd_odd": check_cp_ssd(rank, world, "p2p", chunk_size=5, b=1, l_loc=7, h=3, P=5, g=1, N=3),
           "cp_ssd_h0_p2p": check_cp_ssd(rank, world, "p2p", with_initial_states=True),
           "cp_ssd_alltoall": check_cp_ssd(rank, world, "alltoall", h=world * 2, g=world),
           "cp_ssd_h0_allgather": check_cp_ssd(rank, world, "allgather", with_initial_states=True),
           "cp_ssd_triton": check_cp_ssd(rank, world, "p2p", dtype="float32", ssd="triton", b=1, l_loc=16,
                                         chunk_size=8, with_initial_states=True),
           "tp_mamba2_odd": check_tp_mamba2(rank, world, b=1, l=world * 5),
           "ring_odd": check_ring(rank, world, "contiguous", Hq=3, Hk=1, n=5, D=8),
           "cp_mamba2_p2p": check_cp_mamba2(rank, world, "p2p"),
           "cp_mamba2_allgather": check_cp_mamba2(rank, world, "allgather"),
           "ring_contiguous": check_ring(rank, world, "contiguous"), "ring_zigzag": check_ring(rank, world, "zigzag"),
           "ring_full": check_ring(rank, world, "contiguous", causal=False),
           "ring_fp32": check_ring(rank, world, "zigzag", dtype="float32"),
           "ulysses": check_ulysses(rank, world), "ulysses_gqa": check_ulysses(rank, world, Hq=8, Hk=4),
           "bad_inputs": check_bad_inputs(rank, world)}
    return out


def check_gpu(rank: int, world: int) -> dict:
    """The CUDA paths at realistic sizes (NCCL, one GPU per rank): ring attention on the Triton
    FlashAttention kernels in bf16, context-parallel SSD on the Triton SSD (fp32), TP Mamba-2 in bf16."""
    return {"ring_zigzag_bf16": check_ring(rank, world, "zigzag", dtype="bfloat16", kernel="triton",
                                           Hq=8, Hk=2, n=1024, D=64),
            "ring_contiguous_bf16": check_ring(rank, world, "contiguous", dtype="bfloat16", kernel="triton",
                                               Hq=8, Hk=8, n=512, D=128),
            "cp_ssd_triton_p2p": check_cp_ssd(rank, world, "p2p", dtype="float32", chunk_size=64,
                                              l_loc=1000, h=8, P=64, N=64),
            "cp_ssd_triton_allgather": check_cp_ssd(rank, world, "allgather", dtype="float32", chunk_size=64,
                                                    l_loc=1000, h=8, P=64, N=64),
            "tp_mamba2_bf16": check_tp_mamba2(rank, world, dtype="bfloat16", l=256, d_model=256, headdim=64,
                                              d_state=64)}
