"""One decoding step of a Mamba-2 layer as one Triton kernel ({cite}`dao2024mamba2` §7).

:meth:`effsmall.ssm.Mamba2Block.step` does the recurrence in about twenty small torch ops
(shift the conv window, dot with the filter, SiLU, softplus, exp, the outer product, the
contraction with C, the skip). Each op is a kernel launch that reads and writes a few KB, so a
step is launch latency, not work. Here the part between the input projection and the gated
norm is one kernel, one program per (row b, head, block of P channels):

    window ← [conv_state[..., 1:], xBC_t]                         (conv inputs, oldest first)
    x, B, C = SiLU(Σ_k window[:, k] · w[:, k] + bias)             (causal depthwise conv)
    Δ = softplus(dt_t + dt_bias),   Ā = exp(Δ · A),  A = −exp(A_log)
    h_t = Ā · h_{t−1} + (Δ · x) ⊗ B                              (b, h, P, N) state
    y_t = h_t · C + D · x                                         (b, h, P)

The state update reads and writes h once: per step the layer moves 2·h·P·N·4 bytes, the
constant that replaces attention's growing KV cache. Heads of one group share B and C; each
program recomputes their (tiny) convolution instead of synchronizing with its neighbours.

**The conv window in place, as a ring.** Shifting the window left is not safe in place: the
program that writes a group's shifted B, C window may run before a neighbour has read the old
one. A decoder that keeps the window as a *ring* instead — input j of a row in slot j mod d_conv,
``ring_lens`` telling the kernel how many inputs each row holds with this token — writes only
slot (t mod d_conv) for the new input x_t, the slot of x_{t−d_conv}, which has just left the
window: no program reads it (each takes the newest column from xBC itself), so the whole step,
window and state, runs in place (:class:`~effsmall.models.static_decode.DecodeState`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, next_power_of_2, require_triton_tensor
from effsmall.ssm.selective_scan_kernel import SOFTPLUS_THRESHOLD

__all__ = ["mamba2_step", "mamba2_block_step", "ring_from_window", "window_from_ring"]


@triton.jit
def _softplus(x):
    """log(1 + eˣ) (x above ``SOFTPLUS_THRESHOLD``, as torch), with an accurate log1p for small eˣ."""
    u = tl.exp(-tl.abs(x))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(x > SOFTPLUS_THRESHOLD, x, tl.maximum(x, 0.0) + log1p)


@triton.jit
def _conv(XBC, STATE, W, BIAS, NEW_STATE, chan, chan_ok, stride_sc, WRITE, lens,
          DCONV: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr, RING: tl.constexpr):
    """Causal depthwise conv of channels ``chan`` for one step; returns SiLU(conv) in fp32 and,
    if WRITE, stores the new conv state: the shifted window, or (RING) the new input in its slot."""
    k = tl.arange(0, BLOCK_K)                                                        # window column, oldest first
    m2 = chan_ok[:, None] & (k[None, :] < DCONV)
    if RING:
        slot = (lens + k) % DCONV            # column k holds input lens − DCONV + k, in slot (that mod DCONV)
        src = slot
    else:
        slot = k                             # new window column k ← old column k + 1
        src = k + 1
    old = tl.load(STATE + chan[:, None] * stride_sc + src[None, :],
                  mask=chan_ok[:, None] & (k[None, :] + 1 < DCONV), other=0.0)      # (C, BLOCK_K) all but the newest
    new = tl.load(XBC + chan, mask=chan_ok, other=0.0)                               # (C,) this token's input
    window = tl.where(k[None, :] == DCONV - 1, new[:, None], old)                    # (C, BLOCK_K)
    w = tl.load(W + chan[:, None] * DCONV + k[None, :], mask=m2, other=0.0)
    acc = tl.sum(window.to(tl.float32) * w.to(tl.float32), 1)                        # (C,)
    if HAS_BIAS:
        acc += tl.load(BIAS + chan, mask=chan_ok, other=0.0).to(tl.float32)
    acc = acc.to(new.dtype).to(tl.float32)                                           # rounded as the torch step
    store = m2 & WRITE
    if RING:
        store = store & (k[None, :] == DCONV - 1)                                     # only the new input's slot
    tl.store(NEW_STATE + chan[:, None] * stride_sc + slot[None, :], window, mask=store)
    return (acc / (1.0 + tl.exp(-acc))).to(new.dtype).to(tl.float32)               # SiLU


@triton.jit
def _step_kernel(XBC, DT, STATE, W, BIAS, DT_BIAS, A_LOG, DSKIP, SSM, Y, NEW_STATE, NEW_SSM, LENS,
                 stride_xb, stride_db, stride_sb, stride_sc, stride_hb, stride_hh, stride_hp,
                 stride_yb, stride_yh,
                 P: tl.constexpr, N: tl.constexpr, REP: tl.constexpr, D_INNER: tl.constexpr,
                 GN: tl.constexpr, DCONV: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr, RING: tl.constexpr):
    b = tl.program_id(0)
    hh = tl.program_id(1)
    pb = tl.program_id(2)
    g = hh // REP
    offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N
    xbc = XBC + b * stride_xb
    st = STATE + b * stride_sb
    nst = NEW_STATE + b * stride_sb
    lens = 0
    if RING:
        lens = tl.load(LENS + b).to(tl.int32)    # inputs in row b's ring with this token
    # conv + SiLU of this head's x channels, and of its group's B and C channels
    x = _conv(xbc, st, W, BIAS, nst, hh * P + offs_p, p_ok, stride_sc, hh >= 0, lens, DCONV, BLOCK_K, HAS_BIAS,
              RING)
    first = (hh % REP == 0) & (pb == 0)            # one program writes the group's B, C conv state
    Bv = _conv(xbc, st, W, BIAS, nst, D_INNER + g * N + offs_n, n_ok, stride_sc, first, lens, DCONV, BLOCK_K,
               HAS_BIAS, RING)
    Cv = _conv(xbc, st, W, BIAS, nst, D_INNER + GN + g * N + offs_n, n_ok, stride_sc, first, lens, DCONV, BLOCK_K,
               HAS_BIAS, RING)
    # Δ, the decay and the state update
    dt_raw = tl.load(DT + b * stride_db + hh)
    dt = _softplus(dt_raw.to(tl.float32) + tl.load(DT_BIAS + hh).to(tl.float32))
    A = -tl.exp(tl.load(A_LOG + hh).to(tl.float32))
    decay = tl.exp(dt * A)
    xdt = (x * dt.to(dt_raw.dtype).to(tl.float32)).to(dt_raw.dtype).to(tl.float32)   # (BLOCK_P,) Δ·x rounded
    m2 = p_ok[:, None] & n_ok[None, :]
    h_ptr = b * stride_hb + hh * stride_hh + offs_p[:, None] * stride_hp + offs_n[None, :]
    h = tl.load(SSM + h_ptr, mask=m2, other=0.0).to(tl.float32)                      # (BLOCK_P, BLOCK_N)
    h = decay * h + xdt[:, None] * Bv[None, :]
    tl.store(NEW_SSM + h_ptr, h.to(NEW_SSM.dtype.element_ty), mask=m2)
    y = tl.sum(h * Cv[None, :], 1)                                                   # (BLOCK_P,) h·C
    y = y.to(dt_raw.dtype).to(tl.float32) + x * tl.load(DSKIP + hh).to(tl.float32)
    tl.store(Y + b * stride_yb + hh * stride_yh + offs_p, y.to(Y.dtype.element_ty), mask=p_ok)


def mamba2_step(xBC, dt, conv_state, ssm_state, conv_weight, conv_bias, dt_bias, A_log, D, *,
                nheads: int, headdim: int, ngroups: int, d_state: int, inplace_ssm: bool = False,
                ring_lens: torch.Tensor | None = None):
    """The fused recurrent step (see the module docstring).

    xBC ``(b, conv_dim)`` and dt ``(b, h)``: this token's slices of the input projection;
    conv_state ``(b, conv_dim, d_conv)``; ssm_state ``(b, h, P, N)`` (fp32); conv_weight
    ``(conv_dim, 1, d_conv)``; conv_bias ``(conv_dim,)`` or None; dt_bias, A_log, D ``(h,)``.
    Returns ``(y (b, h, P) in xBC's dtype, new conv_state, new ssm_state)`` — new tensors; the
    inputs are not modified. ``inplace_ssm=True`` writes the new state into ``ssm_state`` itself
    (and returns it): each state element is read and written by the same program, so this is
    safe, and a decoder with preallocated states saves a copy of h per step. The conv window in
    the layout above (oldest first) cannot be updated in place: every head of a group reads its
    B, C channels. ``ring_lens`` ``(b,)`` int: conv_state is a ring instead (input j of row b in
    slot j mod d_conv, this token the ``ring_lens[b]``-th input), updated in place and returned
    (see the module docstring); with ``inplace_ssm=True`` the step allocates only y.
    """
    for name, t in (("xBC", xBC), ("dt", dt), ("conv_state", conv_state), ("ssm_state", ssm_state)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        require_triton_tensor(name, t, "mamba2_step")
    b, conv_dim = xBC.shape
    d_conv = conv_state.shape[-1]
    d_inner = nheads * headdim
    if conv_dim != d_inner + 2 * ngroups * d_state or nheads % ngroups:
        raise ValueError(f"xBC has {conv_dim} channels; expected h·P + 2·g·N = {d_inner + 2 * ngroups * d_state} "
                         f"with h % g == 0")
    if conv_state.shape != (b, conv_dim, d_conv):
        raise ValueError(f"conv_state must be {(b, conv_dim, d_conv)}, got {tuple(conv_state.shape)}")
    if ssm_state.shape != (b, nheads, headdim, d_state):
        raise ValueError(f"ssm_state must be {(b, nheads, headdim, d_state)}, got {tuple(ssm_state.shape)}")
    if dt.shape != (b, nheads):
        raise ValueError(f"dt must be {(b, nheads)}, got {tuple(dt.shape)}")
    if xBC.dtype == torch.float64 or ssm_state.dtype == torch.float64:
        raise TypeError("mamba2_step runs float32/float16/bfloat16; Mamba2Block.step handles float64")
    # the kernel takes any row stride; only the last dimension must be contiguous (slices of the
    # input projection along it are taken as they are, without a copy)
    xBC, dt = (t if t.stride(-1) == 1 else t.contiguous() for t in (xBC, dt))
    if inplace_ssm and not ssm_state.is_contiguous():
        raise ValueError("inplace_ssm=True needs a contiguous ssm_state")
    ring = ring_lens is not None
    if ring and (not isinstance(ring_lens, torch.Tensor) or ring_lens.shape != (b,)
                 or ring_lens.dtype not in (torch.int32, torch.int64) or not conv_state.is_contiguous()):
        raise ValueError(f"ring_lens must be an int32/int64 tensor of shape ({b},), with a contiguous conv_state")
    conv_state = conv_state.contiguous()          # the new window is written with the same strides
    ssm_state = ssm_state.contiguous()
    w = conv_weight.reshape(conv_dim, d_conv).contiguous()
    new_conv = conv_state if ring else torch.empty_like(conv_state)
    new_ssm = ssm_state if inplace_ssm else torch.empty_like(ssm_state)
    y = torch.empty(b, nheads, headdim, dtype=xBC.dtype, device=xBC.device)
    block_n = next_power_of_2(d_state)
    block_p = min(next_power_of_2(headdim), max(1, 4096 // block_n))
    grid = (b, nheads, cdiv(headdim, block_p))
    _step_kernel[grid](xBC, dt, conv_state, w, conv_bias if conv_bias is not None else w, dt_bias, A_log, D,
                       ssm_state, y, new_conv, new_ssm, ring_lens if ring else dt,
                       xBC.stride(0), dt.stride(0), conv_state.stride(0), conv_state.stride(1),
                       ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2), y.stride(0), y.stride(1),
                       P=headdim, N=d_state, REP=nheads // ngroups, D_INNER=d_inner, GN=ngroups * d_state,
                       DCONV=d_conv, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=next_power_of_2(d_conv),
                       HAS_BIAS=conv_bias is not None, RING=ring, num_warps=4)
    return y, new_conv, new_ssm


def _ring_index(lens: torch.Tensor, shape) -> torch.Tensor:
    """``(b, conv_dim, d_conv)`` int64: the ring slot of each window column (oldest first) for rows
    holding ``lens[b]`` inputs — column k is input lens − d_conv + k, in slot (lens + k) mod d_conv."""
    d = shape[-1]
    slots = (lens.long()[:, None] + torch.arange(d, device=lens.device)) % d      # (b, d_conv)
    return slots[:, None, :].expand(shape)                                         # (b, conv_dim, d_conv)


def window_from_ring(ring: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """The conv window, oldest first ``(b, conv_dim, d_conv)`` (``Mamba2Cache``'s layout), of a
    ring that holds ``lens[b]`` inputs of row b, input j in slot j mod d_conv."""
    return ring.gather(-1, _ring_index(lens, ring.shape))


def ring_from_window(window: torch.Tensor, lens: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """The ring holding the window ``(b, conv_dim, d_conv)`` (oldest first; its last column the
    ``lens[b]``-th input of row b) — the inverse of :func:`window_from_ring` — written into
    ``out`` if given."""
    out = torch.empty_like(window) if out is None else out
    return out.scatter_(-1, _ring_index(lens, window.shape), window)


def mamba2_block_step(block, u_t: torch.Tensor, cache):
    """:meth:`Mamba2Block.step` with the fused kernel in the middle: u_t ``(b, d_model)`` →
    ``(out_t (b, d_model), new Mamba2Cache)``; equal to ``block.step(u_t, cache)``."""
    from effsmall.ssm.mamba2_block import Mamba2Cache

    block._check(u_t, 2, "(b, d_model)")
    z, xBC, dt = block._split_proj(block.in_proj(u_t))       # (b, d_inner), (b, conv_dim), (b, h)
    y, conv_state, ssm_state = mamba2_step(
        xBC, dt, cache.conv_state, cache.ssm_state, block.conv1d.weight, block.conv1d.bias, block.dt_bias,
        block.A_log, block.D, nheads=block.nheads, headdim=block.headdim, ngroups=block.ngroups,
        d_state=block.d_state)                                  # y (b, h, P)
    y = block.norm(y.flatten(-2), z)                            # (b, d_inner)
    return block.out_proj(y), Mamba2Cache(conv_state, ssm_state)
