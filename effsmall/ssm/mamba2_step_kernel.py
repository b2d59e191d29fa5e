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
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, next_power_of_2, require_triton_tensor
from effsmall.ssm.selective_scan_kernel import SOFTPLUS_THRESHOLD

__all__ = ["mamba2_step", "mamba2_block_step"]


@triton.jit
def _softplus(x):
    """log(1 + eˣ) (x above ``SOFTPLUS_THRESHOLD``, as torch), with an accurate log1p for small eˣ."""
    u = tl.exp(-tl.abs(x))
    w = 1.0 + u
    log1p = tl.where(w == 1.0, u, tl.log(w) * u / (w - 1.0))
    return tl.where(x > SOFTPLUS_THRESHOLD, x, tl.maximum(x, 0.0) + log1p)


@triton.jit
def _conv(XBC, STATE, W, BIAS, NEW_STATE, chan, chan_ok, stride_sc, WRITE,
          DCONV: tl.constexpr, BLOCK_K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Causal depthwise conv of channels ``chan`` for one step; returns SiLU(conv) in fp32 and,
    if WRITE, stores the shifted window as the new conv state."""
    k = tl.arange(0, BLOCK_K)
    m2 = chan_ok[:, None] & (k[None, :] < DCONV)
    old = tl.load(STATE + chan[:, None] * stride_sc + k[None, :] + 1,
                  mask=chan_ok[:, None] & (k[None, :] + 1 < DCONV), other=0.0)      # (C, BLOCK_K) shifted left
    new = tl.load(XBC + chan, mask=chan_ok, other=0.0)                               # (C,) this token's input
    window = tl.where(k[None, :] == DCONV - 1, new[:, None], old)                    # (C, BLOCK_K)
    w = tl.load(W + chan[:, None] * DCONV + k[None, :], mask=m2, other=0.0)
    acc = tl.sum(window.to(tl.float32) * w.to(tl.float32), 1)                        # (C,)
    if HAS_BIAS:
        acc += tl.load(BIAS + chan, mask=chan_ok, other=0.0).to(tl.float32)
    acc = acc.to(new.dtype).to(tl.float32)                                           # rounded as the torch step
    tl.store(NEW_STATE + chan[:, None] * stride_sc + k[None, :], window, mask=m2 & WRITE)
    return (acc / (1.0 + tl.exp(-acc))).to(new.dtype).to(tl.float32)               # SiLU


@triton.jit
def _step_kernel(XBC, DT, STATE, W, BIAS, DT_BIAS, A_LOG, DSKIP, SSM, Y, NEW_STATE, NEW_SSM,
                 stride_xb, stride_db, stride_sb, stride_sc, stride_hb, stride_hh, stride_hp,
                 stride_yb, stride_yh,
                 P: tl.constexpr, N: tl.constexpr, REP: tl.constexpr, D_INNER: tl.constexpr,
                 GN: tl.constexpr, DCONV: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr):
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
    # conv + SiLU of this head's x channels, and of its group's B and C channels
    x = _conv(xbc, st, W, BIAS, nst, hh * P + offs_p, p_ok, stride_sc, hh >= 0, DCONV, BLOCK_K, HAS_BIAS)
    first = (hh % REP == 0) & (pb == 0)            # one program writes the group's B, C conv state
    Bv = _conv(xbc, st, W, BIAS, nst, D_INNER + g * N + offs_n, n_ok, stride_sc, first, DCONV, BLOCK_K, HAS_BIAS)
    Cv = _conv(xbc, st, W, BIAS, nst, D_INNER + GN + g * N + offs_n, n_ok, stride_sc, first, DCONV, BLOCK_K,
               HAS_BIAS)
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
                nheads: int, headdim: int, ngroups: int, d_state: int, inplace_ssm: bool = False):
    """The fused recurrent step (see the module docstring).

    xBC ``(b, conv_dim)`` and dt ``(b, h)``: this token's slices of the input projection;
    conv_state ``(b, conv_dim, d_conv)``; ssm_state ``(b, h, P, N)`` (fp32); conv_weight
    ``(conv_dim, 1, d_conv)``; conv_bias ``(conv_dim,)`` or None; dt_bias, A_log, D ``(h,)``.
    Returns ``(y (b, h, P) in xBC's dtype, new conv_state, new ssm_state)`` — new tensors; the
    inputs are not modified. ``inplace_ssm=True`` writes the new state into ``ssm_state`` itself
    (and returns it): each state element is read and written by the same program, so this is
    safe, and a decoder with preallocated states saves a copy of h per step. The conv window
    cannot be updated in place: every head of a group reads its B, C channels.
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
    conv_state = conv_state.contiguous()          # the new window is written with the same strides
    if inplace_ssm and not ssm_state.is_contiguous():
        raise ValueError("inplace_ssm=True needs a contiguous ssm_state")
    ssm_state = ssm_state.contiguous()
    w = conv_weight.reshape(conv_dim, d_conv).contiguous()
    new_conv = torch.empty_like(conv_state)
    new_ssm = ssm_state if inplace_ssm else torch.empty_like(ssm_state)
    y = torch.empty(b, nheads, headdim, dtype=xBC.dtype, device=xBC.device)
    block_n = next_power_of_2(d_state)
    block_p = min(next_power_of_2(headdim), max(1, 4096 // block_n))
    grid = (b, nheads, cdiv(headdim, block_p))
    _step_kernel[grid](xBC, dt, conv_state, w, conv_bias if conv_bias is not None else w, dt_bias, A_log, D,
                       ssm_state, y, new_conv, new_ssm,
                       xBC.stride(0), dt.stride(0), conv_state.stride(0), conv_state.stride(1),
                       ssm_state.stride(0), ssm_state.stride(1), ssm_state.stride(2), y.stride(0), y.stride(1),
                       P=headdim, N=d_state, REP=nheads // ngroups, D_INNER=d_inner, GN=ngroups * d_state,
                       DCONV=d_conv, BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=next_power_of_2(d_conv),
                       HAS_BIAS=conv_bias is not None, num_warps=4)
    return y, new_conv, new_ssm


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
