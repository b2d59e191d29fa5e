"""Variable-length (packed) FlashAttention: many sequences, no padding.

A batch of sequences of lengths ``n_0, n_1, ...`` is stored back to back: q ``(total_q, Hq, D)``,
k and v ``(total_k, Hk, D)``, and ``cu_seqlens`` ``(batch + 1,)`` int32 holds the cumulative
lengths ``[0, n_0, n_0 + n_1, ...]`` — sequence b is rows ``cu[b]:cu[b+1]``. Padding to the
longest sequence would waste ``Σ (N_max − n_b)`` rows of work and memory; packing wastes none
({cite}`dao2023flashattention2`, the ``flash_attn_varlen_func`` interface).

The Triton kernels of :mod:`effsmall.attention.flash_triton` take the same code path with
``VARLEN=True``: each program reads its sequence's start and length from ``cu_seqlens``
(a plain load of an integer, not a pointer) and works exactly as on a dense sequence; causal
alignment is bottom-right *per sequence*. The grid is sized by ``max_seqlen``; programs past
the end of a shorter sequence return at once.
"""
from __future__ import annotations

import torch

from effsmall.attention.flash_triton import check_flash_inputs, fallback_reason, launch_backward, launch_forward
from effsmall.runtime import interpreting, warn_once

__all__ = ["flash_attention_varlen", "check_cu_seqlens"]


def check_cu_seqlens(cu: torch.Tensor, name: str, total: int, max_seqlen: int, device) -> list[int]:
    """Validate ``cu_seqlens`` and return it as a Python list (one host sync)."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 2:
        raise ValueError(f"{name} must be 1-D with batch + 1 >= 2 entries, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"{name} must be on q's device {device}, got {cu.device}")
    vals = cu.tolist()
    if vals[0] != 0:
        raise ValueError(f"{name} must start at 0, got {vals[0]}")
    lengths = [b - a for a, b in zip(vals[:-1], vals[1:])]
    if min(lengths) < 0:
        raise ValueError(f"{name} must be non-decreasing (cumulative lengths), got {vals}")
    if vals[-1] != total:
        raise ValueError(f"{name}[-1] = {vals[-1]} must equal the number of packed rows {total}")
    if max(lengths) > max_seqlen:
        raise ValueError(f"max_seqlen for {name} is {max_seqlen} but a sequence has {max(lengths)} rows")
    return vals


class _FlashAttentionVarlen(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, lo, hi, scale, autotune):
        o, lse = launch_forward(q, k, v, lo, hi, scale, cu_q, cu_k, max_q, max_k,
                                autotune=autotune)                          # o (total_q, Hq, D)
        ctx.save_for_backward(q, k, v, o, lse, cu_q, cu_k)
        ctx.args = (max_q, max_k, lo, hi, scale, autotune)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, cu_q, cu_k = ctx.saved_tensors
        max_q, max_k, lo, hi, scale, autotune = ctx.args
        dq, dk, dv = launch_backward(do, q, k, v, o, lse, lo, hi, scale, cu_q, cu_k, max_q, max_k, autotune=autotune)
        return dq, dk, dv, None, None, None, None, None, None, None, None


def flash_attention_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                           causal: bool = False, scale: float | None = None, window=None, autotune: bool = True):
    """Attention over packed sequences: q ``(total_q, Hq, D)``, k, v ``(total_k, Hk, D)``.

    Equal to calling :func:`effsmall.attention.flash_attention` on each sequence
    ``q[cu_q[b]:cu_q[b+1]]`` (as ``(1, Hq, n_b, D)``) and concatenating. ``cu_seqlens_*`` are int32
    ``(batch + 1,)``, start at 0, are non-decreasing and end at ``total``; ``max_seqlen_*`` bound
    the lengths (they size the grid). Returns ``(total_q, Hq, D)``; differentiable.
    ``autotune=False`` launches one safe configuration instead of timing the candidates.
    """
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal, scale=scale, window=window, rank=3)
    total_q, total_k = q.shape[0], k.shape[0]
    cq = check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", total_q, int(max_seqlen_q), q.device)
    ck = check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", total_k, int(max_seqlen_k), q.device)
    if len(cq) != len(ck):
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same batch, got "
                         f"{len(cq) - 1} and {len(ck) - 1} sequences")
    reason = fallback_reason(q)
    if reason is not None or (interpreting() and q.dtype == torch.bfloat16):
        # Documented fallback: one flash_attention call per sequence (which itself falls back).
        warn_once("flash_attention_varlen.fallback", reason or "bfloat16 in the interpreter: per-sequence calls")
        from effsmall.attention.flash_triton import flash_attention
        outs = []
        for b in range(len(cq) - 1):
            qb = q[cq[b]:cq[b + 1]].transpose(0, 1).unsqueeze(0)           # (1, Hq, n_b, D)
            kb = k[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)           # (1, Hk, m_b, D)
            vb = v[ck[b]:ck[b + 1]].transpose(0, 1).unsqueeze(0)
            ob = flash_attention(qb, kb, vb, causal=causal, scale=scale, window=window, autotune=autotune)
            outs.append(ob.squeeze(0).transpose(0, 1))                     # (n_b, Hq, D)
        return torch.cat(outs, 0)                                          # (total_q, Hq, D)
    return _FlashAttentionVarlen.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, int(max_seqlen_q),
                                       int(max_seqlen_k), lo, hi, scale, autotune)
