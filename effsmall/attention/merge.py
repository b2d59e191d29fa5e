"""Merging attention computed over disjoint key sets: the one rule behind split-KV decoding and
ring attention.

Split the keys of one query row into two disjoint sets a and b. Attention over each set alone
gives a normalized output and a log-sum-exp (chapter 4):

    O_a = Σ_{j ∈ a} e^{sⱼ} vⱼ / Σ_{j ∈ a} e^{sⱼ},     lse_a = log Σ_{j ∈ a} e^{sⱼ}.

Attention over a ∪ b is the two outputs weighted by their shares of the total mass:

    lse = log(e^{lse_a} + e^{lse_b}),     O = e^{lse_a − lse} O_a + e^{lse_b − lse} O_b.

This is the online softmax's rescaling step (FlashAttention, Dao et al. 2022, §3.1) applied to
two finished partial results instead of a running one. It is associative and commutative, so
any number of partials can be merged in any order: the splits of a flash-decoding kernel, the
ring steps of context parallelism, or the query blocks' key ranges.

Convention: a partial that saw no key has ``lse = -inf`` and an output of zeros (its weight is
0); merging two such partials gives ``lse = -inf`` and zeros, never NaN.
"""
from __future__ import annotations

import torch

__all__ = ["merge_attention_states", "merge_attention_states_many"]


def _combine_dtype(o: torch.Tensor, lse: torch.Tensor) -> torch.dtype:
    """fp32 for half inputs (as the kernels accumulate), fp64 when either input is fp64."""
    return torch.promote_types(torch.promote_types(o.dtype, lse.dtype), torch.float32)


def _check(o_a, lse_a, o_b, lse_b):
    for name, t in (("o_a", o_a), ("lse_a", lse_a), ("o_b", o_b), ("lse_b", lse_b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if o_a.shape != o_b.shape:
        raise ValueError(f"o_a and o_b must have the same shape, got {tuple(o_a.shape)} and {tuple(o_b.shape)}")
    if lse_a.shape != lse_b.shape:
        raise ValueError(f"lse_a and lse_b must have the same shape, got {tuple(lse_a.shape)} and {tuple(lse_b.shape)}")
    if tuple(o_a.shape[:-1]) != tuple(lse_a.shape):
        raise ValueError(f"lse must have the shape of o without its last dim: o {tuple(o_a.shape)}, lse {tuple(lse_a.shape)}")
    devices = {t.device for t in (o_a, lse_a, o_b, lse_b)}
    if len(devices) != 1:
        raise ValueError(f"o_a, lse_a, o_b, lse_b must be on one device, got {sorted(map(str, devices))}")


def merge_attention_states(o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor,
                           lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention over two disjoint key sets into attention over their union.

    o_a, o_b ``(..., D)`` (any dtype; combined in fp32), lse_a, lse_b ``(...)`` (natural log,
    ``-inf`` for a partial that saw no key). Combined in fp32 (fp64 if an input is fp64). Returns
    ``(o, lse)``: o in o_a's dtype, lse in the combine dtype.
    Differentiable in all four inputs.
    """
    _check(o_a, lse_a, o_b, lse_b)
    ct = _combine_dtype(o_a, lse_a)
    lse_a32, lse_b32 = lse_a.to(ct), lse_b.to(ct)
    m = torch.maximum(lse_a32, lse_b32)                                 # (...) larger partial mass
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))         # both empty: shift by 0
    w_a = torch.exp(lse_a32 - m)                                       # (...) e^{lse_a - m} ∈ [0, 1]
    w_b = torch.exp(lse_b32 - m)                                       # (...)
    total = w_a + w_b                                                  # (...) ≥ 1 unless both empty
    lse = m + torch.log(total)                                         # (...) -inf when both empty
    safe = torch.where(total > 0, total, torch.ones_like(total))
    o = (w_a / safe).unsqueeze(-1) * o_a.to(ct) + (w_b / safe).unsqueeze(-1) * o_b.to(ct)  # (..., D)
    return o.to(o_a.dtype), lse


def merge_attention_states_many(o: torch.Tensor, lse: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S partials stacked along ``dim`` in one step: o ``(..S.., D)``, lse ``(..S..)``.

    The same rule as :func:`merge_attention_states` for S parts at once (what a split-KV
    decoding kernel's second step computes): weights ``softmax(lse)`` over the parts.
    """
    if not isinstance(o, torch.Tensor) or not isinstance(lse, torch.Tensor):
        raise TypeError("o and lse must be torch.Tensors")
    if tuple(o.shape[:-1]) != tuple(lse.shape):
        raise ValueError(f"lse must have the shape of o without its last dim: o {tuple(o.shape)}, lse {tuple(lse.shape)}")
    dim = dim % lse.ndim
    ct = _combine_dtype(o, lse)
    lse32 = lse.to(ct)
    m = lse32.amax(dim=dim, keepdim=True)                              # (..1..)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(lse32 - m)                                           # (..S..) unnormalized weights
    total = w.sum(dim=dim, keepdim=True)                               # (..1..)
    out_lse = (m + torch.log(total)).squeeze(dim)                      # (...)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    out = ((w / safe).unsqueeze(-1) * o.to(ct)).sum(dim=dim)          # (..., D)
    return out.to(o.dtype), out_lse
