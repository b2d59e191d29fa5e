"""Softmax three ways: naive (overflows), safe (subtract the max), online (one pass over blocks).

* naive:  softmax(x)ⱼ = e^{xⱼ} / Σₖ e^{xₖ} — ``exp`` overflows float32 for x > 88.7.
* safe:   subtract m = maxₖ xₖ first; same value, every exponent ≤ 0.
* online (Milakov & Gimelshein 2018): read x block by block, keeping a running max m and a
  running sum ℓ = Σₖ e^{xₖ − m}. When a block raises the max from m to m′,
  the old sum is rescaled: ℓ′ = ℓ · e^{m − m′} + Σ_{k ∈ block} e^{xₖ − m′}.
  After the last block, softmax(x)ⱼ = e^{xⱼ − m} / ℓ and lse(x) = m + log ℓ.

The same rescaling applied to a running *output* o = Σₖ e^{xₖ − m} vₖ gives
softmax(x)ᵀ V in one pass without ever holding the whole row of probabilities — the
idea behind FlashAttention (:func:`online_softmax_matmul`).
"""
from __future__ import annotations

import torch


def _check(x: torch.Tensor, dim: int) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if not isinstance(dim, int) or not -x.ndim <= dim < max(x.ndim, 1):
        raise ValueError(f"dim must be an int in [-{x.ndim}, {x.ndim}), got {dim!r}")
    return dim % x.ndim


def naive_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """e^{xⱼ} / Σₖ e^{xₖ} as written: overflows to inf/inf = NaN for large x."""
    _check(x, dim)
    e = torch.exp(x)
    return e / e.sum(dim=dim, keepdim=True)


def safe_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """e^{xⱼ − m} / Σₖ e^{xₖ − m} with m = maxₖ xₖ; an all ``-inf`` row gives zeros."""
    _check(x, dim)
    m = x.amax(dim=dim, keepdim=True)  # row max, size 1 along dim
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # all -inf row: shift by 0
    e = torch.exp(x - m)
    s = e.sum(dim=dim, keepdim=True)
    return e / torch.where(s > 0, s, torch.ones_like(s))


def online_softmax_stats(x: torch.Tensor, dim: int = -1, block: int = 64,
                         trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``x`` in blocks of ``block`` along ``dim``: the final running max m and sum l.

    Returns ``(m, l)`` with ``dim`` kept as size 1. If ``trace`` is a list, ``(m, l)`` after
    every block is appended to it (chapter 4 checks the recurrence block by block).
    """
    dim = _check(x, dim)
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    shape = list(x.shape)
    shape[dim] = 1
    m = torch.full(shape, float("-inf"), dtype=x.dtype, device=x.device)  # running max
    l = torch.zeros(shape, dtype=x.dtype, device=x.device)  # running sum of e^{x - m}
    for start in range(0, x.shape[dim], block):
        xb = x.narrow(dim, start, min(block, x.shape[dim] - start))  # one block
        m_new = torch.maximum(m, xb.amax(dim=dim, keepdim=True))
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        l = l * torch.exp(m - m_safe) + torch.exp(xb - m_safe).sum(dim=dim, keepdim=True)
        m = m_new
        if trace is not None:
            trace.append((m.clone(), l.clone()))
    return m, l


def online_softmax(x: torch.Tensor, dim: int = -1, block: int = 64) -> torch.Tensor:
    """Softmax from the one-pass statistics: e^{xⱼ − m} / ℓ (equal to ``torch.softmax``).

    The statistics need one read of x; producing the probabilities needs a second.
    Rows of all ``-inf`` give zeros.
    """
    m, l = online_softmax_stats(x, dim, block)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return torch.exp(x - m) / torch.where(l > 0, l, torch.ones_like(l))


def online_softmax_matmul(x: torch.Tensor, v: torch.Tensor, block: int = 64) -> torch.Tensor:
    """softmax(x) V in **one** pass over blocks of keys, never forming the probabilities.

    ``x``: ``(..., N)`` scores of one or more rows, ``v``: ``(N, D)``. Keeps the running max
    m, sum l and an unnormalized output o = Σₖ e^{xₖ − m} vₖ; each block rescales o by
    e^{m − m′} just like l. Returns ``o / l`` with shape ``(..., D)``.
    """
    _check(x, -1)
    if not isinstance(v, torch.Tensor) or v.ndim != 2 or v.shape[0] != x.shape[-1]:
        raise ValueError(f"v must be a tensor of shape (N={x.shape[-1]}, D), got "
                         f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    m = torch.full((*x.shape[:-1], 1), float("-inf"), dtype=x.dtype, device=x.device)  # (..., 1)
    l = torch.zeros_like(m)  # (..., 1)
    o = torch.zeros(*x.shape[:-1], v.shape[1], dtype=x.dtype, device=x.device)  # (..., D)
    for start in range(0, x.shape[-1], block):
        xb, vb = x[..., start:start + block], v[start:start + block]  # (..., b), (b, D)
        m_new = torch.maximum(m, xb.amax(dim=-1, keepdim=True))  # (..., 1)
        m_safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
        alpha = torch.exp(m - m_safe)  # (..., 1) rescales what was accumulated so far
        p = torch.exp(xb - m_safe)  # (..., b)
        l = alpha * l + p.sum(dim=-1, keepdim=True)
        o = alpha * o + p @ vb  # (..., D)
        m = m_new
    return o / torch.where(l > 0, l, torch.ones_like(l))
