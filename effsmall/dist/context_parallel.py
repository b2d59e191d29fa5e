"""Context parallelism for SSD: one long sequence cut into contiguous shards, one per rank.

The chunked SSD (chapter 11) already splits a sequence into pieces whose only coupling is the
state passed from one piece to the next:

    h_end(r) = e^{Λ_r} h_end(r−1) + s_r,     Λ_r = Σ_{t ∈ r} a_t,

where ``s_r`` is the state shard r reaches from a zero start and ``e^{Λ_r}`` the decay across
the shard. With rank r's incoming state ``h_in = h_end(r−1)`` the shard's true output is its
zero-start output plus a rank-one-per-token correction,

    y_t = y_t⁽⁰⁾ + e^{a_start + … + a_t} h_in C_t,

so devices exchange states of size ``h·P·N`` — never activations of size ``l·h·P``.
Two schedules (Dao & Gu 2024, §8.2):

* ``method="p2p"``: rank r waits for ``h_in`` from rank r−1, runs the SSD with
  ``initial_states=h_in`` and sends its final state to rank r+1 — p−1 sends, in a chain;
* ``method="allgather"``: every rank runs its SSD from zero at once, all-gathers the p pairs
  ``(s_j, Λ_j)`` (one collective, whatever p) and forms ``h_in`` locally as the scalar-decay
  prefix ``Σ_{j<r} e^{Λ_{j+1}+…+Λ_{r−1}} s_j`` (the SSD recurrence over ranks, evaluated with
  ``exp(segsum(Λ))`` like the chunk recurrence), then adds the correction above.

The depthwise causal conv of a Mamba block needs the previous ``d_conv − 1`` inputs: a halo
received from rank r−1 (:func:`context_parallel_conv1d`). Gradients flow through every
exchange (:mod:`effsmall.dist.comm`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from effsmall.dist.comm import all_to_all, check_same_shape, exchange, gather_sequence, shift_right, world_and_rank
from effsmall.ssm.mamba_api import check_mamba_shapes
from effsmall.ssm.ssd_recurrence import segsum

__all__ = ["context_parallel_ssd", "context_parallel_conv1d", "context_parallel_mamba2"]


def _ssd_fn(x: torch.Tensor, ssd_fn):
    if ssd_fn is not None:
        return ssd_fn
    if x.is_cuda and x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        from effsmall.ssm.ssd_kernels import ssd_triton
        return ssd_triton
    from effsmall.ssm.ssd_chunkwise import ssd_chunked
    return ssd_chunked


class _RecvState(torch.autograd.Function):
    """Forward: receive the incoming state from rank r−1. Backward: send its gradient back.
    ``anchor`` (any input that requires grad) only puts the received state into the graph."""

    @staticmethod
    def forward(ctx, anchor, like, group):
        world, rank = world_and_rank(group)
        ctx.group, ctx.rank = group, rank
        return exchange(None, None, torch.empty_like(like), rank - 1, group)

    @staticmethod
    def backward(ctx, g):
        exchange(g, ctx.rank - 1, None, None, ctx.group)
        return None, None, None


class _SendState(torch.autograd.Function):
    """Forward: send this shard's final state to rank r+1 and pass ``y`` through. Backward:
    receive the state's gradient from rank r+1 (tying it to ``y`` puts it in the graph)."""

    @staticmethod
    def forward(ctx, h_out, y, group):
        world, rank = world_and_rank(group)
        ctx.group, ctx.rank = group, rank
        exchange(h_out, rank + 1, None, None, group)
        ctx.save_for_backward(torch.empty(h_out.shape, dtype=h_out.dtype, device=h_out.device))
        return y.view_as(y)

    @staticmethod
    def backward(ctx, gy):
        (buf,) = ctx.saved_tensors
        gh = exchange(None, None, buf, ctx.rank + 1, ctx.group)
        return gh, gy, None


def _check(x, dt, A, B, C, chunk_size, method, D):
    b, l, h, p = check_mamba_shapes(x, dt, A, B, C)          # the same contract as mamba_chunk_scan_combined
    if B.dim() != 4 or B.shape[:2] != (b, l) or C.shape != B.shape:
        raise ValueError(f"B and C must be (b, l, g, n) with b, l = {b}, {l}, got {tuple(B.shape)} and {tuple(C.shape)}")
    if h % B.shape[2]:
        raise ValueError(f"the number of heads h={h} must be divisible by the number of groups g={B.shape[2]}")
    if D is not None and D.shape != (h,):
        raise ValueError(f"D must be (h,) = ({h},), got {tuple(D.shape)}")
    if method not in ("p2p", "allgather", "alltoall"):
        raise ValueError(f"method must be 'p2p', 'allgather' or 'alltoall', got {method!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def context_parallel_ssd(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                         chunk_size: int, group=None, method: str = "p2p", D: torch.Tensor | None = None,
                         initial_states: torch.Tensor | None = None, return_final_states: bool = False,
                         ssd_fn=None, check_shapes: bool = True):
    """SSD of one sequence whose tokens are split contiguously over the ranks of ``group``.

    This rank holds tokens ``[r·l, (r+1)·l)``: x ``(b, l, h, P)``, dt ``(b, l, h)`` (Δ > 0, after
    softplus), A ``(h,)`` (< 0), B, C ``(b, l, g, N)``; optional D ``(h,)`` (skip connection) and
    ``initial_states (b, h, P, N)`` (used by rank 0). Computes ``X = x·Δ``, ``a = Δ·A`` as the
    Mamba-2 block does and returns this rank's ``y (b, l, h, P)`` — equal to the single-device
    SSD's output on these tokens — and, with ``return_final_states``, the state after this
    rank's last token ``(b, h, P, N)`` (on the last rank: the sequence's final state).

    ``ssd_fn``: any rung with the ``(X, A, B, C, chunk_size, initial_states)`` signature;
    default ``ssd_triton`` on CUDA, ``ssd_chunked`` on CPU. Differentiable in every input.
    """
    _check(x, dt, A, B, C, chunk_size, method, D)
    world, rank = world_and_rank(group)
    if check_shapes:
        check_same_shape(x, group, "x")
    ssd = _ssd_fn(x, ssd_fn)
    if method == "alltoall":
        return _alltoall_ssd(x, dt, A, B, C, chunk_size, group, D, initial_states, return_final_states, ssd)
    X = x * dt[..., None].to(x.dtype)                          # (b, l, h, P)
    a = dt * A                                                 # (b, l, h) log decays ≤ 0
    b, l, h, P = x.shape
    N = B.shape[-1]
    h0 = initial_states if rank == 0 else None
    if method == "p2p":
        if rank > 0:
            like = x.new_empty(b, h, P, N, dtype=a.dtype if a.dtype == torch.float64 else torch.float32)
            h0 = _RecvState.apply(a, like, group)                 # (b, h, P, N) from rank r−1
        y, h_end = ssd(X, a, B, C, chunk_size, initial_states=h0)   # (b, l, h, P), (b, h, P, N)
        if rank < world - 1:
            y = _SendState.apply(h_end, y, group)              # h_end → rank r+1
    else:
        y, s = ssd(X, a, B, C, chunk_size, initial_states=h0)  # zero start (rank 0: the real start)
        lam = a.sum(dim=1).to(s.dtype)                         # (b, h) Λ_r: log decay across the shard
        pair = torch.cat([s.flatten(2), lam[..., None]], dim=-1)   # (b, h, P·N + 1)
        pairs = gather_sequence(pair[None], 0, group)          # (world, b, h, P·N + 1): one all-gather
        S, Lam = pairs[..., :-1].unflatten(-1, (P, N)), pairs[..., -1]  # (world, b, h, P, N), (world, b, h)
        # h_end(i) = Σ_{j ≤ i} exp(Λ_{j+1} + … + Λ_i) s_j: the state recurrence over ranks.
        decay = torch.exp(segsum(Lam.permute(1, 2, 0)))        # (b, h, world, world)
        h_ends = torch.einsum("bhij,jbhpn->ibhpn", decay, S)   # (world, b, h, P, N)
        h_end = h_ends[rank]                                   # (b, h, P, N)
        # Rank 0 starts at the true start (h_in = 0); its zero term is kept so that its backward,
        # like every rank's, joins the reduce-scatter that is the all-gather's dual.
        h_in = h_ends[rank - 1] if rank > 0 else 0 * h_ends[0]    # (b, h, P, N)
        g = B.shape[2]
        Ch = C.repeat_interleave(h // g, dim=2).to(h_in.dtype)      # (b, l, h, N)
        from_start = torch.exp(torch.cumsum(a, dim=1)).to(h_in.dtype)  # (b, l, h) decay from the shard start to t
        corr = torch.einsum("blhn,bhpn->blhp", Ch, h_in) * from_start[..., None]  # (b, l, h, P)
        y = (y.to(corr.dtype) + corr).to(y.dtype)
    if D is not None:
        y = y + x * D[:, None].to(x.dtype)                     # (b, l, h, P)
    return (y, h_end) if return_final_states else y


def _alltoall_ssd(x, dt, A, B, C, chunk_size, group, D, initial_states, return_final_states, ssd):
    world, rank = world_and_rank(group)
    h, g = x.shape[2], B.shape[2]
    for what, n in (("heads h", h), ("groups g", g)):
        if n % world:
            raise ValueError(f"method='alltoall' needs the {what}={n} divisible by the world size {world}")
    if initial_states is not None or return_final_states:
        raise ValueError("method='alltoall' computes no shard-boundary states: use 'p2p' or 'allgather' "
                         "for initial_states / return_final_states")
    # (b, l, heads, ...) tokens-sharded  ->  (b, world·l, heads/world, ...) heads-sharded
    xh, dth, Bh, Ch = (all_to_all(t, 2, 1, group) for t in (x, dt[..., None], B, C))
    dth = dth[..., 0]                                          # (b, L, h/p)
    Ah = A.chunk(world)[rank]                                  # (h/p,)
    y, _ = ssd(xh * dth[..., None].to(xh.dtype), dth * Ah, Bh, Ch, chunk_size)  # (b, L, h/p, P)
    if D is not None:
        y = y + xh * D.chunk(world)[rank][:, None].to(xh.dtype)
    return all_to_all(y, 1, 2, group)                          # (b, l, h, P)


def context_parallel_conv1d(x: torch.Tensor, conv: torch.nn.Conv1d, group=None) -> torch.Tensor:
    """Causal depthwise conv of this rank's tokens ``x (b, l, c)`` → ``(b, l, c)`` (no activation).

    The first ``d_conv − 1`` outputs need the previous shard's last ``d_conv − 1`` inputs: they
    arrive from rank r−1 in one exchange (rank 0 gets zeros, the sequence's left padding)."""
    w = conv.weight.shape[-1] - 1                              # halo width d_conv − 1
    if x.shape[1] < w:
        raise ValueError(f"each rank needs at least d_conv - 1 = {w} tokens for the conv halo, got {x.shape[1]}")
    halo = shift_right(x[:, x.shape[1] - w:].contiguous(), group)   # (b, w, c) from rank r−1
    xh = torch.cat([halo, x], dim=1).transpose(1, 2)           # (b, c, w + l)
    return F.conv1d(xh, conv.weight, conv.bias, groups=conv.groups).transpose(1, 2)  # (b, l, c)


def context_parallel_mamba2(block, u: torch.Tensor, group=None, method: str = "p2p") -> torch.Tensor:
    """A whole :class:`~effsmall.ssm.Mamba2Block` on this rank's tokens ``u (b, l, d_model)``:
    token-wise projections and norm run locally, the conv takes a halo, the SSD passes states."""
    block._check(u, 3, "(b, l, d_model)")
    z, xBC, dt = block._split_proj(block.in_proj(u))           # (b,l,d_inner), (b,l,conv_dim), (b,l,h)
    xBC = F.silu(context_parallel_conv1d(xBC, block.conv1d, group))  # (b, l, conv_dim)
    x, B, C = block._split_xbc(xBC)                            # (b,l,h,P), (b,l,g,N), (b,l,g,N)
    dt = F.softplus(block._fp32_or_64(dt + block.dt_bias))     # (b, l, h)
    A = -torch.exp(block._fp32_or_64(block.A_log))             # (h,)
    y = context_parallel_ssd(x, dt, A, B, C, block.chunk_size, group, method, D=block.D)  # (b, l, h, P)
    return block.out_proj(block.norm(y.flatten(-2), z))        # (b, l, d_model)
