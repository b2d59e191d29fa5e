"""Attention the quadratic way: materialize the score matrix S and the probabilities P.

    S = Q Kᵀ / √D,     P = softmax(S + mask),     O = P V

(Vaswani et al. 2017, §3.2.1). For a sequence of N tokens, S and P are ``(N, N)`` per head:
memory and time grow as N². Every faster rung of the ladder is tested against this one.

The conventions every rung shares (shapes, bottom-right ``causal``, ``window``, ``scale``, rows that
see no key) and their checks live in :mod:`effsmall.attention.contract`.
"""
from __future__ import annotations

import torch

from effsmall.attention.contract import Window, check_attention, window_bounds
from effsmall.runtime import compute_dtype


def attention_mask(Nq: int, Nk: int, causal: bool = False, window: Window = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(Nq, Nk)`` mask, True where query i may attend to key j.

    Causal and window offsets are aligned bottom-right: the diagonal is ``j = i + Nk - Nq``.
    """
    left, right = window_bounds(window, causal)
    return band_mask(Nq, Nk, left, right, device=device)


def band_mask(Nq: int, Nk: int, left: int | None, right: int | None,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(Nq, Nk)`` mask of the band ``i + Nk - Nq - left <= j <= i + Nk - Nq + right``
    (``None`` = unbounded side), as :func:`~effsmall.attention.contract.window_bounds` returns it."""
    i = torch.arange(Nq, device=device)[:, None] + (Nk - Nq)  # (Nq, 1) query position in key coordinates
    j = torch.arange(Nk, device=device)[None, :]  # (1, Nk)
    mask = torch.ones(Nq, Nk, dtype=torch.bool, device=device)  # (Nq, Nk)
    if left is not None:
        mask &= j >= i - left
    if right is not None:
        mask &= j <= i + right
    return mask


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA: ``(B, Hk, N, D)`` -> ``(B, Hk * n_rep, N, D)``, kv head g serving query heads g*n_rep..."""
    if n_rep == 1:
        return x
    return x.repeat_interleave(n_rep, dim=1)  # (B, Hq, N, D)


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, window: Window = None) -> torch.Tensor:
    """Scaled dot-product attention that materializes S and P (``(B, Hq, Nq, Nk)`` each).

    ``O = softmax(scale · Q Kᵀ + mask) V`` with a safe softmax (subtract the row max) whose
    fully masked rows give P = 0, hence O = 0. Differentiable by autograd. Returns
    ``(B, Hq, Nq, D)`` in q's dtype (half inputs are computed in float32).
    """
    scale, left, right = check_attention(q, k, v, causal=causal, scale=scale, window=window)
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    if Nk == 0:  # no keys at all: every row is fully masked
        return torch.zeros_like(q)  # (B, Hq, Nq, D)
    ct = compute_dtype(q.dtype)
    k = repeat_kv(k, Hq // k.shape[1]).to(ct)  # (B, Hq, Nk, D)
    v = repeat_kv(v, Hq // v.shape[1]).to(ct)  # (B, Hq, Nk, D)
    S = scale * (q.to(ct) @ k.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    mask = band_mask(Nq, Nk, left, right, device=q.device)  # (Nq, Nk)
    S = S.masked_fill(~mask, float("-inf"))
    m = S.amax(dim=-1, keepdim=True).detach()  # (B, Hq, Nq, 1) row max
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no key: shift by 0
    E = torch.exp(S - m)  # (B, Hq, Nq, Nk), exactly 0 where masked
    l = E.sum(dim=-1, keepdim=True)  # (B, Hq, Nq, 1) row sum
    P = E / torch.where(l > 0, l, torch.ones_like(l))  # (B, Hq, Nq, Nk), zero rows stay zero
    return (P @ v).to(q.dtype)  # (B, Hq, Nq, D)
