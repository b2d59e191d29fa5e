"""Fused element-wise kernels for the decoding step (chapter 16, "the whole model decodes").

In PyTorch an RMSNorm of a half-precision row is eight kernels (cast up, square, mean, add ε,
rsqrt, scale, cast down, times the weight), and the residual add before it one more. At batch 1
each kernel moves a few kilobytes, so in a decoding step — even replayed as a CUDA graph — what
costs is their number. Here each is one Triton program per row:

* :func:`add_rmsnorm`: ``s = x + r`` (rounded to x's dtype, as PyTorch's add) and
  ``RMSNorm(s) = (s / √(mean(s²) + ε)).to(dtype) · g`` — the residual stream and the next
  layer's input in one pass (optionally into preallocated buffers, the stream in place);
* :func:`gated_rmsnorm`: Mamba-2's ``RMSNorm(y ⊙ SiLU(z)) · w`` over groups of channels
  (:class:`effsmall.ssm.mamba2_block.GatedRMSNorm`);
* :func:`swiglu_packed`: the SwiGLU gate ``SiLU(a) ⊙ b`` of a row ``[a | b]`` — the output of the
  gate and up projections multiplied as one matrix (two kernels in PyTorch);
* :func:`rope_append`: RoPE of the new token's queries and keys and the write of its key and value
  into a fixed-capacity cache at each row's position (PyTorch: a dozen kernels).

Each rounds where the PyTorch modules round, so in fp32 they agree to ~1e-6 and in bf16 to
the last bit but for rare ties (the sum of squares is added in another order). They run in the
Triton interpreter on CPU (fp32/fp16).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, next_power_of_2, require_triton_tensor

__all__ = ["add_rmsnorm", "gated_rmsnorm", "swiglu_packed", "rope_append"]


@triton.jit
def _add_rmsnorm_kernel(X, R, W, Y, S, stride_x, stride_r, stride_y, stride_s, N, eps,
                        HAS_RES: tl.constexpr, WRITE_S: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    ok = cols < N
    x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0)
    if HAS_RES:
        r = tl.load(R + row * stride_r + cols, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)                 # s = x + r, rounded as torch's add
    if WRITE_S:                                   # the row was read above: S may be X itself (in place)
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
        raise TypeError(f"{name}: the fused kernels run float16, bfloat16 or float32, got {t.dtype}")
    t2 = t.reshape(-1, n)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def add_rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None,
                out: tuple[torch.Tensor, torch.Tensor] | None = None):
    """``(s, RMSNorm(s))`` with ``s = x + residual`` (``s = x`` when ``residual`` is None), over the
    last dimension of x ``(..., N)``; equal to ``s = x + residual; norm(s)`` with an
    :class:`effsmall.nn.RMSNorm` of weight ``weight`` in x's dtype.

    ``out = (s_out, y_out)``: contiguous tensors of x's shape to write s and the norm into
    (a decoder's preallocated buffers); ``s_out`` may be x itself — the residual stream updated in
    place, each row read before it is written. Without ``out`` both are new tensors (s is x
    itself when there is no residual)."""
    n = weight.shape[0]
    x2 = _rows(x, "x", n)                                                          # (rows, N)
    require_triton_tensor("x", x2, "add_rmsnorm")
    if residual is not None:
        if residual.shape != x.shape or residual.dtype != x.dtype:
            raise ValueError(f"residual must match x ({tuple(x.shape)}, {x.dtype}), got "
                             f"({tuple(residual.shape)}, {residual.dtype})")
        r2 = _rows(residual, "residual", n)
    else:
        r2 = x2
    y_dtype = torch.promote_types(x.dtype, weight.dtype)
    if out is None:
        s2 = torch.empty_like(x2) if residual is not None else x2                  # (rows, N)
        y2 = torch.empty(x2.shape, dtype=y_dtype, device=x.device)                 # (rows, N)
        s, y = (s2.view(x.shape) if residual is not None else x), y2.view(x.shape)
    else:
        s, y = out
        for name, t, dtype in (("out[0]", s, x.dtype), ("out[1]", y, y_dtype)):
            if not isinstance(t, torch.Tensor) or t.shape != x.shape or t.dtype != dtype or not t.is_contiguous():
                raise ValueError(f"{name} must be a contiguous {dtype} tensor of x's shape {tuple(x.shape)}")
        s2, y2 = s.view(-1, n), y.view(-1, n)                                      # (rows, N) each
    if x2.shape[0]:
        _add_rmsnorm_kernel[(x2.shape[0],)](x2, r2, weight, y2, s2, x2.stride(0), r2.stride(0), y2.stride(0),
                                            s2.stride(0), n, float(eps), HAS_RES=residual is not None,
                                            WRITE_S=residual is not None or s2.data_ptr() != x2.data_ptr(),
                                            BLOCK=next_power_of_2(n))
    return s, y


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


@triton.jit
def _swiglu_kernel(H, O, stride_h, stride_o, F, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < F
    a = tl.load(H + row * stride_h + cols, mask=ok, other=0.0)                    # gate
    b = tl.load(H + row * stride_h + F + cols, mask=ok, other=0.0).to(tl.float32)  # up
    af = a.to(tl.float32)
    gate = (af / (1.0 + tl.exp(-af))).to(a.dtype).to(tl.float32)                 # SiLU(a), rounded as F.silu
    tl.store(O + row * stride_o + cols, (gate * b).to(O.dtype.element_ty), mask=ok)


def swiglu_packed(h: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``effsmall.nn.swiglu(a, b) = SiLU(a) ⊙ b`` of ``h = [a | b]`` ``(..., 2·F)`` → ``(..., F)``
    in h's dtype, one kernel (one program per row and block of F columns)."""
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"h must be a torch.Tensor, got {type(h).__name__}")
    if h.dim() < 1 or h.shape[-1] % 2:
        raise ValueError(f"h must end in an even dimension [gate | up], got shape {tuple(h.shape)}")
    F = h.shape[-1] // 2
    h2 = _rows(h, "h", 2 * F)                                                      # (rows, 2F)
    require_triton_tensor("h", h2, "swiglu_packed")
    out = torch.empty(h2.shape[0], F, dtype=h.dtype, device=h.device)             # (rows, F)
    if out.numel():
        blk = min(next_power_of_2(F), block)
        _swiglu_kernel[(h2.shape[0], cdiv(F, blk))](h2, out, h2.stride(0), out.stride(0), F, BLOCK=blk)
    return out.view(*h.shape[:-1], F)


@triton.jit
def _rope_append_kernel(Q, KV, COS, SIN, LENS, QO, KC, VC,
                        stride_qb, stride_kvb, stride_cn, stride_qob, stride_qoh,
                        stride_kcb, stride_kch, stride_kcn, stride_vcb, stride_vch, stride_vcn,
                        H: tl.constexpr, HK: tl.constexpr, HALF: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    j = tl.program_id(1)                      # query heads 0..H-1, then key heads, then value heads
    offs = tl.arange(0, BLOCK)
    ok = offs < HALF
    pos = tl.load(LENS + b).to(tl.int64) - 1  # the new token is the lens[b]-th of its row
    if j < H + HK:                            # rotate: (x1, x2) → (x1·c − x2·s, x1·s + x2·c)
        if j < H:
            src = Q + b * stride_qb + j * 2 * HALF
        else:
            src = KV + b * stride_kvb + (j - H) * 2 * HALF
        x1 = tl.load(src + offs, mask=ok, other=0.0)
        x2 = tl.load(src + HALF + offs, mask=ok, other=0.0).to(tl.float32)
        c = tl.load(COS + pos * stride_cn + offs, mask=ok, other=0.0)        # the tables' row at pos
        s = tl.load(SIN + pos * stride_cn + offs, mask=ok, other=0.0)
        x1f = x1.to(tl.float32)
        o1 = (x1f * c - x2 * s).to(x1.dtype)
        o2 = (x1f * s + x2 * c).to(x1.dtype)
        if j < H:
            dst = QO + b * stride_qob + j * stride_qoh
        else:
            dst = KC + b * stride_kcb + (j - H) * stride_kch + pos * stride_kcn
        tl.store(dst + offs, o1, mask=ok)
        tl.store(dst + HALF + offs, o2, mask=ok)
    else:                                     # values: copied into the cache as they are
        src = KV + b * stride_kvb + (j - H) * 2 * HALF
        dst = VC + b * stride_vcb + (j - H - HK) * stride_vch + pos * stride_vcn
        tl.store(dst + offs, tl.load(src + offs, mask=ok), mask=ok)
        tl.store(dst + HALF + offs, tl.load(src + HALF + offs, mask=ok), mask=ok)


def rope_append(q: torch.Tensor, kv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, lens: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    """One new token per row, the ``lens[b]``-th of row b (its position ``p = lens[b] − 1``):
    returns RoPE(q) ``(B, h, D)`` at p and writes RoPE(k) and v into ``k_cache, v_cache (B, hk,
    capacity, D)`` at slot p of row b.

    q ``(B, h·D)`` and kv ``(B, 2·hk·D)`` are the projections' outputs (kv: the hk keys, then
    the hk values; row-strided views of one product are fine); cos, sin: the RoPE tables of
    every position, ``(n, D/2)`` float32 (:func:`effsmall.nn.rope_tables`), read at row p in the
    kernel; lens ``(B,)`` integer — the row lengths *after* this token, as ``flash_decode`` takes
    them, so one device tensor serves both. Equal to ``effsmall.nn.apply_rope`` on q and k at p
    followed by writing the cache slots. Lengths are not checked against the capacity on the
    device (:class:`~effsmall.models.static_decode.DecodeState` checks on the host).
    """
    B, hk, cap, D = k_cache.shape
    if v_cache.shape != k_cache.shape or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise ValueError("k_cache and v_cache must have one shape and q's dtype")
    if D % 2 or q.shape[0] != B or q.shape[-1] % D or kv.shape != (B, 2 * hk * D):
        raise ValueError(f"q must be (B={B}, h·{D}) and kv (B, 2·{hk}·{D}), got {tuple(q.shape)} and {tuple(kv.shape)}")
    if not isinstance(lens, torch.Tensor) or lens.shape != (B,) or lens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"lens must be an int32/int64 tensor of shape ({B},)")
    h = q.shape[-1] // D
    for name, t in (("q", q), ("kv", kv), ("k_cache", k_cache), ("v_cache", v_cache)):
        require_triton_tensor(name, t, "rope_append")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dimension")
    if (cos.dim() != 2 or cos.shape[1] != D // 2 or cos.dtype != torch.float32 or cos.stride(-1) != 1
            or sin.shape != cos.shape or sin.stride() != cos.stride() or sin.dtype != cos.dtype):
        raise ValueError(f"cos and sin must be float32 tables (n, D/2 = {D // 2}) with one layout")
    out = torch.empty(B, h, D, dtype=q.dtype, device=q.device)                     # (B, h, D)
    _rope_append_kernel[(B, h + 2 * hk)](
        q, kv, cos, sin, lens, out, k_cache, v_cache,
        q.stride(0), kv.stride(0), cos.stride(0), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), H=h, HK=hk, HALF=D // 2, BLOCK=next_power_of_2(D // 2))
    return out
