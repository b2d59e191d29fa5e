"""Fused element-wise kernels for the decoding step (chapter 16, "the whole model decodes").

In PyTorch an RMSNorm of a half-precision row is eight kernels (cast up, square, mean, add ε,
rsqrt, scale, cast down, times the weight), and the residual add before it one more. At batch 1
each kernel moves a few kilobytes, so in a decoding step — even replayed as a CUDA graph — what
costs is their number. Here each is one Triton program per row:

* :func:`add_rmsnorm`: ``s = x + r`` (rounded to x's dtype, as PyTorch's add) and
  ``RMSNorm(s) = (s / √(mean(s²) + ε)).to(dtype) · g`` — the residual stream and the next
  layer's input in one pass;
* :func:`gated_rmsnorm`: Mamba-2's ``RMSNorm(y ⊙ SiLU(z)) · w`` over groups of channels
  (:class:`effsmall.ssm.mamba2_block.GatedRMSNorm`).

Each rounds where the PyTorch modules round, so in fp32 they agree to ~1e-6 and in bf16 to
the last bit but for rare ties (the sum of squares is added in another order). They run in the
Triton interpreter on CPU (fp32/fp16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.runtime import next_power_of_2, require_triton_tensor

__all__ = ["add_rmsnorm", "gated_rmsnorm"]


@triton.jit
def _add_rmsnorm_kernel(X, R, W, Y, S, stride_x, stride_r, stride_y, stride_s, N, eps,
                        HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(R + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)                 # s = x + r, rounded as torch's add
        tl.store(S + row * stride_s + cols, x, mask=ok)
    xf = x.to(tl.float32)
    rms = 1.0 / tl.sqrt(tl.sum(xf * xf, 0) / N + eps)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    y = (xf * rms).to(x.dtype).to(tl.float32) * w                              # (s·rms).to(dtype) · g
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=ok)


def _rows(t: torch.Tensor, name: str, n: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape[-1] != n:
        raise ValueError(f"{name} must end in a dimension of {n}, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"{name}: the fused norms run float16, bfloat16 or float32, got {t.dtype}")
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None):
    """``(s, RMSNorm(s))`` with ``s = x + residual`` (``s = x`` when ``residual`` is None), over the
    last dimension of x ``(..., N)``; equal to ``s = x + residual; norm(s)`` with an
    :class:`effsmall.nn.RMSNorm` of weight ``weight`` in x's dtype."""
    n = weight.shape[0]
    x2 = _rows(x, "x", n)
    require_triton_tensor("x", x2, "add_rmsnorm")
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual must match x ({tuple(x.shape)}, {x.dtype}), got "
                             f"({tuple(residual.shape)}, {residual.dtype})")
        r2 = _rows(residual, "residual", n)
        s2 = torch.empty_like(x2)
    else:
        r2 = s2 = x2
    y2 = torch.empty(x2.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    if x2.shape[0]:
        _add_rmsnorm_kernel[(x2.shape[0],)](x2, r2, weight, y2, s2, x2.stride(0), r2.stride(0), y2.stride(0),
                                            s2.stride(0), n, float(eps), HAS_RES=residual is not None,
                                            BLOCK=next_power_of_2(n))
    s = s2.view(x.shape) if residual is not None else x
    return s, y2.view(*x.shape[:-1], n)


@triton.jit
def _gated_rmsnorm_kernel(Y, Z, W, O, stride_y, stride_z, stride_o, GS, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    grp = tl.program_id(1)
    cols = grp * GS + tl.arange(0, BLOCK)
    ok = tl.arange(0, BLOCK) < GS
    y = tl.load(Y + row * stride_y + cols, mask=ok, other=0.0)
    z = tl.load(Z + row * stride_z + cols, mask=ok, other=0.0).to(tl.float32)
    gate = (z / (1.0 + tl.exp(-z))).to(y.dtype)                                   # SiLU(z), rounded
    g = (y.to(tl.float32) * gate.to(tl.float32)).to(y.dtype).to(tl.float32)      # y ⊙ SiLU(z), rounded
    rms = 1.0 / tl.sqrt(tl.sum(g * g, 0) / GS + eps)
    w = tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
    tl.store(O + row * stride_o + cols, (g * rms * w).to(O.dtype.element_ty), mask=ok)


def gated_rmsnorm(norm, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``norm(y, z)`` for a :class:`~effsmall.ssm.mamba2_block.GatedRMSNorm` ``norm``, in one kernel:
    y, z ``(..., dim)`` → ``(..., dim)`` in y's dtype."""
    dim = norm.weight.shape[0]
    y2, z2 = _rows(y, "y", dim), _rows(z, "z", dim)
    require_triton_tensor("y", y2, "gated_rmsnorm")
    if y2.shape != z2.shape:
        raise ValueError(f"y and z must have one shape, got {tuple(y.shape)} and {tuple(z.shape)}")
    out = torch.empty(y2.shape, dtype=y.dtype, device=y.device)
    gs = norm.group_size
    if y2.shape[0]:
        _gated_rmsnorm_kernel[(y2.shape[0], dim // gs)](y2, z2, norm.weight, out, y2.stride(0), z2.stride(0),
                                                        out.stride(0), gs, float(norm.eps),
                                                        BLOCK=next_power_of_2(gs))
    return out.view(y.shape)
