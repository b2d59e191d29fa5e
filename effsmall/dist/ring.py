"""Ring attention: exact attention over a sequence split across ranks (Liu et al. 2023).

Rank r holds a shard of the queries and of the keys/values. The key/value shards travel round
the ring (rank r sends to r+1, receives from r−1); at step s rank r holds the KV shard of rank
``r − s``, computes attention of its queries over it — a partial output and its log-sum-exp —
and merges it into its running result with :func:`effsmall.attention.merge_attention_states`
(the online softmax's rescaling, applied to finished partials). After p steps every query has
seen every key; the sending of the next shard overlaps the computing of the current one.

The backward runs the ring again. A partial's gradients need the *global* output O and LSE of
its rows (``P = exp(S − LSE)``, ``Delta = rowsum(dO ∘ O)``, FlashAttention-2 §3.2), which
the forward saved; dQ stays home, while dK and dV accumulate on the travelling shard and
arrive back at their owner after p steps. (The KV shards' transfer overlaps each step's compute;
the dK/dV accumulators move after it, since the next rank needs them complete.)

**Causal load balance.** With contiguous shards rank 0's queries see one KV shard and rank
p−1's see p: the last rank works p times longer. The *zigzag* layout cuts the sequence into 2p
pieces and gives rank r pieces r and 2p−1−r; then at every step each rank computes exactly one
half-shard block (or the causal diagonal), whatever r and s.

Kernels: on CUDA the book's Triton FlashAttention (``flash_attention_forward`` for (O, LSE),
its backward kernels for a block's dQ, dK, dV given the global O and LSE); elsewhere the same
block maths in plain PyTorch. Layout helpers :func:`zigzag_shard`/:func:`zigzag_unshard`
cut and reassemble a full sequence.
"""
from __future__ import annotations

import torch

from effsmall.attention.merge import merge_attention_states
from effsmall.dist.comm import check_same_shape, exchange, world_and_rank

__all__ = ["ring_attention", "zigzag_shard", "zigzag_unshard", "contiguous_shard", "block_tasks"]

_LAYOUTS = ("contiguous", "zigzag")


# ---------------------------------------------------------------- layouts
def contiguous_shard(x: torch.Tensor, rank: int, world: int, dim: int = 2) -> torch.Tensor:
    """Tokens ``[r·n, (r+1)·n)`` of ``x`` along ``dim``."""
    if x.shape[dim] % world:
        raise ValueError(f"the sequence length {x.shape[dim]} must be divisible by the world size {world}")
    return x.chunk(world, dim)[rank].contiguous()


def zigzag_shard(x: torch.Tensor, rank: int, world: int, dim: int = 2) -> torch.Tensor:
    """Pieces ``r`` and ``2p−1−r`` of ``x`` cut into 2p equal pieces along ``dim``."""
    if x.shape[dim] % (2 * world):
        raise ValueError(f"the zigzag layout needs the sequence length {x.shape[dim]} divisible by "
                         f"2 × the world size {world}")
    pieces = x.chunk(2 * world, dim)
    return torch.cat([pieces[rank], pieces[2 * world - 1 - rank]], dim).contiguous()


def zigzag_unshard(shards: list[torch.Tensor], dim: int = 2) -> torch.Tensor:
    """Reassemble the full sequence from every rank's zigzag shard (rank order)."""
    world = len(shards)
    halves = [s.chunk(2, dim) for s in shards]
    return torch.cat([halves[i][0] for i in range(world)] + [halves[i][1] for i in reversed(range(world))], dim)


def block_tasks(layout: str, causal: bool, rank: int, src: int, n: int) -> list[tuple[slice, slice, bool]]:
    """What rank ``rank``'s queries compute against the KV shard of rank ``src`` (each ``n``
    tokens): a list of ``(query rows, key rows, causal?)``; rows not listed see none of those keys.

    contiguous: own shard → causal diagonal; earlier shard → all of it; later → nothing.
    zigzag (pieces r, 2p−1−r): own → causal diagonal; src < r → all queries × the first KV half;
    src > r → the second query half × all keys. Equal work at every step."""
    every = slice(0, n)
    if not causal:
        return [(every, every, False)]
    if src == rank:
        return [(every, every, True)]
    if layout == "contiguous":
        return [(every, every, False)] if src < rank else []
    half = n // 2
    if src < rank:
        return [(every, slice(0, half), False)]
    return [(slice(half, n), every, False)]


# ---------------------------------------------------------------- block kernels
def _torch_scores(q, k, causal, scale):
    ct = torch.promote_types(q.dtype, torch.float32)
    rep = q.shape[1] // k.shape[1]
    kr = k.to(ct).repeat_interleave(rep, dim=1)                        # (B, Hq, m, D)
    s = torch.einsum("bhid,bhjd->bhij", q.to(ct), kr) * scale          # (B, Hq, n, m)
    if causal:  # bottom-right aligned; the diagonal blocks here are square
        n, m = s.shape[-2:]
        mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril(m - n)
        s = s.masked_fill(~mask, float("-inf"))
    return s, ct, rep


def _fwd_torch(q, k, v, causal, scale):
    """(O, LSE) of one block; LSE = -inf and O = 0 for a row that sees no key."""
    s, ct, rep = _torch_scores(q, k, causal, scale)
    lse = torch.logsumexp(s, dim=-1)                                   # (B, Hq, n)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])  # (B, Hq, n, m)
    o = torch.einsum("bhij,bhjd->bhid", p, v.to(ct).repeat_interleave(rep, dim=1))  # (B, Hq, n, D)
    return o, lse


def _group_sum(t, rep):
    return t.unflatten(1, (-1, rep)).sum(2) if rep > 1 else t          # (B, Hk, m, D)


def _bwd_torch(do, q, k, v, o, lse, causal, scale):
    """dQ, dK, dV of one block given the global O and LSE of its rows (FA2 §3.2)."""
    s, ct, rep = _torch_scores(q, k, causal, scale)
    lse_safe = torch.where(torch.isfinite(lse), lse, torch.full_like(lse, float("inf"))).to(ct)
    p = torch.exp(s - lse_safe[..., None])                             # (B, Hq, n, m) global softmax weights
    do, vr = do.to(ct), v.to(ct).repeat_interleave(rep, dim=1)
    dv = _group_sum(torch.einsum("bhij,bhid->bhjd", p, do), rep)       # (B, Hk, m, D)
    dp = torch.einsum("bhid,bhjd->bhij", do, vr)                       # (B, Hq, n, m)
    delta = (do * o.to(ct)).sum(-1, keepdim=True)                      # (B, Hq, n, 1) rowsum(dO ∘ O)
    ds = p * (dp - delta)                                              # (B, Hq, n, m)
    dq = torch.einsum("bhij,bhjd->bhid", ds, k.to(ct).repeat_interleave(rep, dim=1)) * scale  # (B, Hq, n, D)
    dk = _group_sum(torch.einsum("bhij,bhid->bhjd", ds, q.to(ct)), rep) * scale               # (B, Hk, m, D)
    return dq, dk, dv


def _fwd_triton(q, k, v, causal, scale):
    from effsmall.attention.flash_triton import flash_attention_forward
    return flash_attention_forward(q, k, v, causal=causal, scale=scale)


def _bwd_triton(do, q, k, v, o, lse, causal, scale):
    from effsmall.attention.flash_triton import flash_attention_backward
    return flash_attention_backward(do, q, k, v, o, lse, causal=causal, scale=scale)


_KERNELS = {"torch": (_fwd_torch, _bwd_torch), "triton": (_fwd_triton, _bwd_triton)}


# ---------------------------------------------------------------- the ring
def _ring_start(buf: torch.Tensor, group, world: int, rank: int):
    """Start sending ``buf`` to rank+1 and receiving rank−1's into a new buffer (cyclic);
    returns the buffer and the works to wait on."""
    recv = torch.empty_like(buf)
    return recv, exchange(buf, (rank + 1) % world, recv, (rank - 1) % world, group, wait=False)


def _ring_step(buf: torch.Tensor, group, world: int, rank: int) -> torch.Tensor:
    recv, works = _ring_start(buf, group, world, rank)
    for w in works:
        w.wait()
    return recv


def _finish(pending):
    if pending is None:
        return None
    recv, works = pending
    for w in works:
        w.wait()
    return recv


class _RingAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, group, causal, layout, scale, kernel):
        world, rank = world_and_rank(group)
        fwd, _ = _KERNELS[kernel]
        n = q.shape[2]
        ct = torch.promote_types(q.dtype, torch.float32)
        o = torch.zeros(q.shape, dtype=ct, device=q.device)            # (B, Hq, n, D) running output
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=ct, device=q.device)  # (B, Hq, n)
        kv = torch.stack([k, v])                                       # (2, B, Hk, n, D) the travelling shard
        for step in range(world):
            src = (rank - step) % world
            pending = _ring_start(kv, group, world, rank) if step < world - 1 else None  # overlaps the compute
            for qs, ks, c in block_tasks(layout, causal, rank, src, n):
                o_b, lse_b = fwd(q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks], c, scale)
                o[:, :, qs], lse[:, :, qs] = merge_attention_states(o[:, :, qs], lse[:, :, qs], o_b, lse_b)
            kv = _finish(pending)
        out = o.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.cfg = (group, causal, layout, scale, kernel)
        return out

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        group, causal, layout, scale, kernel = ctx.cfg
        world, rank = world_and_rank(group)
        _, bwd = _KERNELS[kernel]
        n = q.shape[2]
        ct = torch.promote_types(q.dtype, torch.float32)
        dq = torch.zeros(q.shape, dtype=ct, device=q.device)           # (B, Hq, n, D) stays home
        kv = torch.stack([k, v])                                       # (2, B, Hk, n, D)
        dkv = torch.zeros(kv.shape, dtype=ct, device=q.device)        # (2, B, Hk, n, D) travels with kv
        for step in range(world):
            src = (rank - step) % world
            pending = _ring_start(kv, group, world, rank) if step < world - 1 else None
            for qs, ks, c in block_tasks(layout, causal, rank, src, n):
                dq_b, dk_b, dv_b = bwd(do[:, :, qs], q[:, :, qs], kv[0][:, :, ks], kv[1][:, :, ks],
                                       o[:, :, qs], lse[:, :, qs], c, scale)
                dq[:, :, qs] += dq_b
                dkv[0][:, :, ks] += dk_b
                dkv[1][:, :, ks] += dv_b
            dkv = _ring_step(dkv, group, world, rank) if world > 1 else dkv  # after p moves: home
            kv = _finish(pending)
        return (dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None, None, None)


def _pick_kernel(q: torch.Tensor, kernel: str) -> str:
    if kernel not in ("auto", "torch", "triton"):
        raise ValueError(f"kernel must be 'auto', 'torch' or 'triton', got {kernel!r}")
    if kernel != "auto":
        return kernel
    if q.is_cuda:
        from effsmall.runtime import tensor_cores_in_triton
        if tensor_cores_in_triton(q.device.index or 0) and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
            return "triton"
    return "torch"


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None, causal: bool = True,
                   layout: str = "contiguous", scale: float | None = None, kernel: str = "auto",
                   check_shapes: bool = True) -> torch.Tensor:
    """Exact attention of this rank's queries over the keys of all ranks.

    q ``(B, Hq, n, D)``, k, v ``(B, Hk, n, D)``: this rank's shard of one sequence of ``p·n``
    tokens in ``layout`` (``"contiguous"``: tokens ``[r·n, (r+1)·n)``; ``"zigzag"``: pieces r
    and 2p−1−r of 2p, see :func:`zigzag_shard`). Returns this rank's rows of
    ``softmax(Q Kᵀ·scale + causal mask) V`` ``(B, Hq, n, D)``. Differentiable (ring backward).
    ``kernel``: ``"triton"`` (FlashAttention kernels; default on CUDA), ``"torch"`` (default
    elsewhere). p−1 KV exchanges forward; p−1 KV and p dKV exchanges backward.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H, n, D) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k, v {tuple(k.shape)}, {tuple(v.shape)} must agree in B, n and D")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"the query heads {q.shape[1]} must be a multiple of the KV heads {k.shape[1]}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if layout == "zigzag" and q.shape[2] % 2:
        raise ValueError(f"the zigzag layout needs an even shard length, got n={q.shape[2]}")
    if check_shapes:
        check_same_shape(q, group, "q")
        check_same_shape(k, group, "k")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, group, bool(causal), layout, scale, _pick_kernel(q, kernel))
