"""Attention the quadratic way: materialize the score matrix S and the probabilities P.

$$ S = \\tfrac{1}{\\sqrt{D}}\\, Q K^\\top,\\qquad P = \\softmax(S + \\text{mask}),\\qquad O = P V $$
(Vaswani et al. 2017, §3.2.1). For a sequence of N tokens, S and P are ``(N, N)`` per head:
memory and time grow as N². Every faster rung of the ladder is tested against this one.

Conventions shared by the whole ``effsmall.attention`` package:

* shapes: q ``(B, Hq, Nq, D)``, k and v ``(B, Hk, Nk, D)``, ``Hq % Hk == 0``. Query head
  ``h`` uses key/value head ``h // (Hq // Hk)`` (grouped-query attention; MQA when Hk = 1);
* ``causal`` is aligned bottom-right: query i sees key j iff ``j <= i + Nk - Nq`` (as in
  FlashAttention >= 2.1), so the last query always sees the last key;
* ``window=(left, right)`` keeps keys with ``i + Nk - Nq - left <= j <= i + Nk - Nq + right``
  (``None`` or a negative entry = unbounded on that side);
* a query row that sees no key returns zeros (its log-sum-exp is ``-inf``), never NaN.
"""
from __future__ import annotations

import numbers

import torch

Window = tuple[int | None, int | None] | None


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           scale: float | None = None, window: Window = None, *, rank: int = 4) -> float:
    """Validate q, k, v (and scale, window) against the package contract; return the scale.

    ``rank=4``: ``(B, H, N, D)`` tensors; ``rank=3``: packed ``(total, H, D)`` sequences (varlen).
    Raises ``TypeError``/``ValueError`` whose message names the offending argument.
    """
    layout = "(B, H, N, D)" if rank == 4 else "(total, H, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != rank:
            raise ValueError(f"{name} must have rank {rank} {layout}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if rank == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim D, got {q.shape[-1]} and {k.shape[-1]}")
    Hq, Hk = q.shape[-3 if rank == 4 else -2], k.shape[-3 if rank == 4 else -2]
    if Hk == 0 or Hq % Hk != 0:
        raise ValueError(f"number of query heads of q ({Hq}) must be a multiple of the kv heads of k ({Hk})")
    if window is not None:
        if not (isinstance(window, (tuple, list)) and len(window) == 2
                and all(w is None or isinstance(w, numbers.Integral) for w in window)):
            raise TypeError(f"window must be None or a pair (left, right) of ints/None, got {window!r}")
    if scale is None:
        return q.shape[-1] ** -0.5
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    return float(scale)


def _bound(w: int | None) -> int | None:
    """A window side: None or negative means unbounded."""
    return None if w is None or w < 0 else int(w)


def attention_mask(Nq: int, Nk: int, causal: bool = False, window: Window = None,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(Nq, Nk)`` mask, True where query i may attend to key j.

    Causal and window offsets are aligned bottom-right: the diagonal is ``j = i + Nk - Nq``.
    """
    i = torch.arange(Nq, device=device)[:, None] + (Nk - Nq)  # (Nq, 1) query position in key coordinates
    j = torch.arange(Nk, device=device)[None, :]  # (1, Nk)
    mask = torch.ones(Nq, Nk, dtype=torch.bool, device=device)  # (Nq, Nk)
    if causal:
        mask &= j <= i
    if window is not None:
        left, right = _bound(window[0]), _bound(window[1])
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


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half-precision inputs are accumulated in float32 (as the GPU kernels do)."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, window: Window = None) -> torch.Tensor:
    """Scaled dot-product attention that materializes S and P (``(B, Hq, Nq, Nk)`` each).

    ``O = softmax(scale · Q Kᵀ + mask) V`` with a safe softmax (subtract the row max) whose
    fully masked rows give P = 0, hence O = 0. Differentiable by autograd. Returns
    ``(B, Hq, Nq, D)`` in q's dtype (half inputs are computed in float32).
    """
    scale = check_attention_inputs(q, k, v, scale, window)
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    if Nk == 0:  # no keys at all: every row is fully masked
        return torch.zeros_like(q)  # (B, Hq, Nq, D)
    ct = compute_dtype(q.dtype)
    k = repeat_kv(k, Hq // k.shape[1]).to(ct)  # (B, Hq, Nk, D)
    v = repeat_kv(v, Hq // v.shape[1]).to(ct)  # (B, Hq, Nk, D)
    S = scale * (q.to(ct) @ k.transpose(-1, -2))  # (B, Hq, Nq, Nk)
    mask = attention_mask(Nq, Nk, causal, window, device=q.device)  # (Nq, Nk)
    S = S.masked_fill(~mask, float("-inf"))
    m = S.amax(dim=-1, keepdim=True).detach()  # (B, Hq, Nq, 1) row max
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no key: shift by 0
    E = torch.exp(S - m)  # (B, Hq, Nq, Nk), exactly 0 where masked
    l = E.sum(dim=-1, keepdim=True)  # (B, Hq, Nq, 1) row sum
    P = E / torch.where(l > 0, l, torch.ones_like(l))  # (B, Hq, Nq, Nk), zero rows stay zero
    return (P @ v).to(q.dtype)  # (B, Hq, Nq, D)
