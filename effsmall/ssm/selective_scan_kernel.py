"""The selective scan as one fused Triton kernel ({cite}`gu2023mamba` §3.3, {cite}`tillet2019triton`).

Why fuse: ``selective_scan_parallel`` writes the (b, d, l, n) decays Ā, inputs B̄u and states h
to main memory and reads them back — n times the bytes of the inputs (``scan_bytes_moved``).
Here one program owns one batch element and a block of ``BLOCK_D`` channels; it walks the
sequence in tiles of ``BLOCK_L`` steps and, per tile:

1. loads u, Δ, z ``(BLOCK_D, BLOCK_L)`` and B, C ``(BLOCK_N, BLOCK_L)`` (per channel group),
2. forms Ā = exp(Δ A) and B̄u = Δ B u as ``(BLOCK_D, BLOCK_N, BLOCK_L)`` register tiles,
3. runs ``tl.associative_scan`` along l with (a₁, b₁) • (a₂, b₂) = (a₁a₂, a₂b₁ + b₂),
4. folds in the carried state: h_t = (Π_{s≤t} Ā_s) h_carry + scan_t,
5. contracts with C, adds D u, gates with silu(z), and stores only y ``(BLOCK_D, BLOCK_L)``.

The state (``BLOCK_D × BLOCK_N``) lives in registers between tiles; the (b, d, l, n) tensors
never exist in memory. Accumulation is fp32. The backward pass recomputes with the torch
parallel scan (the fused backward is the same idea run in reverse; this book's Triton
backward for SSD is in chapter 11).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, next_power_of_2, require_triton_tensor
from effsmall.ssm.selective_scan import check_selective_scan_inputs, selective_scan_parallel

__all__ = ["selective_scan_triton", "SOFTPLUS_THRESHOLD"]

#: softplus(x) = log(1 + eˣ) is taken as x above this (torch's ``F.softplus`` threshold: the
#: difference, log(1 + e⁻ˣ), is below fp32's resolution of x there).
SOFTPLUS_THRESHOLD = tl.constexpr(20.0)


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a₁, b₁) • (a₂, b₂): apply h ↦ a₁h + b₁, then h ↦ a₂h + b₂.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, last_ptr,
    d, seqlen, n, channels_per_group,
    s_ub, s_ud, s_ul,            # strides of u, delta, z, y (made identical by the wrapper)
    s_ad, s_an,                  # A
    s_bb, s_bg, s_bn, s_bl,      # B
    s_cb, s_cg, s_cn, s_cl,      # C
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)                  # (BLOCK_D,)
    offs_n = tl.arange(0, BLOCK_N)                                    # (BLOCK_N,)
    mask_d = offs_d < d
    mask_n = offs_n < n
    grp = offs_d // channels_per_group                                # (BLOCK_D,) group of each channel

    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an,
                mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)  # (BLOCK_D, BLOCK_N)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)        # (BLOCK_D,)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)   # (BLOCK_D,)

    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)                # the carried state
    row = pid_b * s_ub + offs_d[:, None] * s_ud                       # (BLOCK_D, 1)
    bc_row = grp[:, None, None]                                       # (BLOCK_D, 1, 1)
    # A while loop in both modes: the form the interpreter accepts (effsmall.runtime.INTERP_FLAG
    # explains why); compiled, such a loop is not software-pipelined.
    l0 = 0
    while l0 < seqlen:
        offs_l = l0 + tl.arange(0, BLOCK_L)                           # (BLOCK_L,)
        mask_l = offs_l < seqlen
        m_dl = mask_d[:, None] & mask_l[None, :]                      # (BLOCK_D, BLOCK_L)
        u = tl.load(u_ptr + row + offs_l[None, :] * s_ul, mask=m_dl, other=0.0).to(tl.float32)
        dt = tl.load(delta_ptr + row + offs_l[None, :] * s_ul, mask=m_dl, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = tl.where(dt > SOFTPLUS_THRESHOLD, dt, tl.log(1.0 + tl.exp(dt)))   # softplus(Δ)
        m_dnl = m_dl[:, None, :] & mask_n[None, :, None]              # (BLOCK_D, BLOCK_N, BLOCK_L)
        Bt = tl.load(B_ptr + pid_b * s_bb + bc_row * s_bg + offs_n[None, :, None] * s_bn
                     + offs_l[None, None, :] * s_bl, mask=m_dnl, other=0.0).to(tl.float32)
        Ct = tl.load(C_ptr + pid_b * s_cb + bc_row * s_cg + offs_n[None, :, None] * s_cn
                     + offs_l[None, None, :] * s_cl, mask=m_dnl, other=0.0).to(tl.float32)
        # Pairs (Ā_t, B̄_t u_t); padded steps are the identity map (1, 0).
        dA = tl.exp(dt[:, None, :] * A[:, :, None])                   # (BLOCK_D, BLOCK_N, BLOCK_L)
        dA = tl.where(m_dnl, dA, 1.0)
        dBu = (dt * u)[:, None, :] * Bt                               # (BLOCK_D, BLOCK_N, BLOCK_L)
        prod, hs = tl.associative_scan((dA, dBu), 2, _affine_combine)
        hs = prod * h[:, :, None] + hs                                # (BLOCK_D, BLOCK_N, BLOCK_L)
        y = tl.sum(hs * Ct, axis=1)                                   # (BLOCK_D, BLOCK_L)
        is_last = (tl.arange(0, BLOCK_L) == BLOCK_L - 1)[None, None, :]
        h = tl.sum(tl.where(is_last, hs, 0.0), axis=2)                # (BLOCK_D, BLOCK_N)
        if HAS_D:
            y = y + Dv[:, None] * u
        if HAS_Z:
            zt = tl.load(z_ptr + row + offs_l[None, :] * s_ul, mask=m_dl, other=0.0).to(tl.float32)
            y = y * zt * tl.sigmoid(zt)
        tl.store(y_ptr + row + offs_l[None, :] * s_ul, y.to(y_ptr.dtype.element_ty), mask=m_dl)
        l0 += BLOCK_L
    tl.store(last_ptr + pid_b * d * n + offs_d[:, None] * n + offs_n[None, :], h,
             mask=mask_d[:, None] & mask_n[None, :])


def _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_d, block_l):
    b, d, l, n, g = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    Bg = B if B.dim() == 4 else B[:, None]                            # (b, g, n, l)
    Cg = C if C.dim() == 4 else C[:, None]                            # (b, g, n, l)
    u, delta = u.contiguous(), delta.contiguous()
    z = z.contiguous() if z is not None else None
    y = torch.empty_like(u)                                           # (b, d, l)
    last = torch.empty(b, d, n, dtype=torch.float32, device=u.device)  # (b, d, n)
    if l == 0:
        return y, last.zero_()
    block_n = next_power_of_2(n)
    block_d = block_d or max(1, min(next_power_of_2(d), 4096 // (block_n * 16)))
    block_l = block_l or 16
    dummy = u
    grid = (b, cdiv(d, block_d))
    _selective_scan_fwd_kernel[grid](
        u, delta, A, Bg, Cg, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, y, last,
        d, l, n, d // g,
        u.stride(0), u.stride(1), u.stride(2),
        A.stride(0), A.stride(1),
        Bg.stride(0), Bg.stride(1), Bg.stride(2), Bg.stride(3),
        Cg.stride(0), Cg.stride(1), Cg.stride(2), Cg.stride(3),
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=bool(delta_softplus), BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l,
    )
    return y, last


class _SelectiveScanTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_d, block_l):
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.delta_softplus = delta_softplus
        y, last = _launch(u, delta, A, B, C, D, z, delta_bias, delta_softplus, block_d, block_l)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, dy, dlast):
        # Recompute with the torch parallel scan and differentiate that (same math, fp32).
        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                  for t in saved]
        with torch.enable_grad():
            y, _ = selective_scan_parallel(*inputs, delta_softplus=ctx.delta_softplus)
            wrt = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(y, wrt, dy, allow_unused=True)) if wrt else iter(())
        out = [next(grads) if (t is not None and t.requires_grad) else None for t in inputs]
        return (*out, None, None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                          delta_softplus=False, *, block_d: int | None = None,
                          block_l: int | None = None):
    """Fused selective scan: same arguments and results as ``selective_scan_sequential``.

    Returns ``(out (b, d, l) in u's dtype, last_state (b, d, n) fp32)``. Runs on CUDA tensors
    (compiled) or CPU tensors under ``TRITON_INTERPRET=1``. Gradients flow through a
    recomputation with ``selective_scan_parallel``; ``last_state`` is not differentiable.
    """
    if not isinstance(u, torch.Tensor):
        raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
    require_triton_tensor("u", u, "selective_scan_triton")
    return _SelectiveScanTriton.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                      block_d, block_l)
