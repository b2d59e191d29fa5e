"""State space models are semiseparable matrices ({cite}`dao2024mamba2` §3–§5).

Unroll the SSD recurrence h_t = exp(a_t) h_{t−1} + x_t B_tᵀ, y_t = h_t C_t from h_{−1} = 0:

    y_i = Σ_{j ≤ i} C_iᵀ B_j · exp(a_{j+1} + … + a_i) · x_j  =  Σ_j M[i, j] x_j,

so for every head the whole sequence map is one lower-triangular l×l matrix

    M = L ∘ (C Bᵀ),        L[i, j] = exp(segsum(a)[i, j]) = exp(Σ_{k=j+1}^{i} a_k)  (0 above the diagonal).

M is **N-semiseparable** (Definition 3.1 of the Mamba-2 paper): every submatrix taken on or
below the diagonal has rank ≤ N. The largest such submatrices are the blocks M[j:, :j+1]
(rows j…l−1, columns 0…j, diagonal entry M[j, j] included); each factors through the state
h_j: M[j:, :j+1] = (rows C_i·decay) (columns decay·B_k)ᵀ, an inner dimension of N. Computing Y = M X directly
(``ssd_quadratic``) is the attention-like dual form: O(l² N) work, all matmuls.

The same computation in attention language is *structured masked attention*
(``structured_masked_attention``): queries C, keys B, values X, and the mask L applied to
Q Kᵀ before multiplying by V. With L = the causal all-ones mask it is (unnormalised) causal
linear attention {cite}`katharopoulos2020transformers` (``linear_attention``).
"""
from __future__ import annotations

import torch

from effsmall.ssm._ssd_checks import check_ssd_inputs
from effsmall.runtime import compute_dtype
from effsmall.ssm.ssd_recurrence import segsum

__all__ = ["ssm_matrix", "ssd_quadratic", "is_semiseparable", "offdiagonal_ranks",
           "linear_attention", "structured_masked_attention"]


# --------------------------------------------------------------------------- the matrix M
def ssm_matrix(A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """M (b, h, l, l) with M[i, j] = C_i · B_j · exp(segsum(a)[i, j]) (zero for j > i).

    A ``(b, l, h)`` log decays ≤ 0, B and C ``(b, l, g, n)``; head i uses group i // (h/g).
    """
    if not isinstance(A, torch.Tensor) or A.dim() != 3:
        raise ValueError(f"A must be a (b, l, h) tensor, got "
                         f"{tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__}")
    b, l, h = A.shape
    X_stub = A.new_empty(b, l, h, 1)                                   # shapes only
    _, _, _, _, g, n = check_ssd_inputs(X_stub, A, B, C)
    ct = compute_dtype(A, B, C)
    Lmask = torch.exp(segsum(A.to(ct).transpose(1, 2)))               # (b, h, l, l)
    CB = torch.einsum("bign,bjgn->bgij", C.to(ct), B.to(ct))          # (b, g, l, l)
    CB = CB.repeat_interleave(h // g, dim=1)                          # (b, h, l, l)
    return Lmask * CB                                                 # (b, h, l, l)


def ssd_quadratic(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """The quadratic (attention-like) form of SSD: Y = M X per head, Y (b, l, h, p) in X's dtype.

    Equals ``ssd_recurrent(X, A, B, C)[0]``; O(l² (N + P)) work and O(l²) memory per head.
    """
    check_ssd_inputs(X, A, B, C)
    M = ssm_matrix(A, B, C)                                           # (b, h, l, l)
    Y = torch.einsum("bhij,bjhp->bihp", M, X.to(M.dtype))             # (b, l, h, p)
    return Y.to(X.dtype)


# --------------------------------------------------------------------------- semiseparability
def _numerical_rank(S: torch.Tensor, tol: float) -> int:
    """Number of singular values above ``tol`` × the largest (0 for an all-zero block)."""
    if S.numel() == 0:
        return 0
    sv = torch.linalg.svdvals(S.to(torch.float64))
    if sv[0] == 0:
        return 0
    return int((sv > tol * sv[0]).sum())


def offdiagonal_ranks(M: torch.Tensor, tol: float = 1e-10, *, include_diagonal: bool = False) -> torch.Tensor:
    """Numerical ranks of the blocks below the diagonal.

    Default: the blocks strictly below, M[j:, :j] for j = 1 … l−1 (returns ``(l−1,)``).
    ``include_diagonal=True``: the blocks on or below it, M[j:, :j+1] for j = 0 … l−1 (returns
    ``(l,)``) — the submatrices of Definition 3.1 in the Mamba-2 paper, which contain all others.
    M ``(l, l)`` or ``(..., l, l)`` (the ranks are then the maximum over leading dims); rank is
    counted relative to each block's largest singular value. Returns int64.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"M must be square (..., l, l), got {tuple(M.shape)}")
    l = M.shape[-1]
    Ms = M.reshape(-1, l, l)                                          # (batch, l, l)
    if include_diagonal:
        ranks = [max(_numerical_rank(m[j:, :j + 1], tol) for m in Ms) for j in range(l)]
    else:
        ranks = [max(_numerical_rank(m[j:, :j], tol) for m in Ms) for j in range(1, l)]
    return torch.tensor(ranks, dtype=torch.int64)                     # (l−1,) or (l,)


def is_semiseparable(M: torch.Tensor, rank: int, tol: float = 1e-10) -> bool:
    """True when M is lower triangular and N-semiseparable with N = ``rank``.

    Definition 3.1 of the Mamba-2 paper: every submatrix on or below the diagonal has rank
    ≤ N. The blocks M[j:, :j+1] (diagonal entry included) contain all such submatrices, so
    their numerical ranks decide it.
    """
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"rank must be a non-negative int, got {rank!r}")
    ranks = offdiagonal_ranks(M, tol, include_diagonal=True)
    upper = torch.triu(M, diagonal=1)
    scale = M.abs().max() if M.numel() else 0
    lower_triangular = bool((upper.abs() <= tol * scale).all())
    return lower_triangular and bool((ranks <= rank).all())


# --------------------------------------------------------------------------- attention forms
def _check_qkv(Q, K, V):
    for name, t in (("Q", Q), ("K", K), ("V", V)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must be (..., l, dim), got {tuple(t.shape)}")
    if Q.shape != K.shape:
        raise ValueError(f"Q and K must have the same shape, got {tuple(Q.shape)} and {tuple(K.shape)}")
    if V.shape[:-1] != Q.shape[:-1]:
        raise ValueError(f"V must be (..., l, p) with Q's leading shape {tuple(Q.shape[:-1])}, "
                         f"got {tuple(V.shape)}")


def linear_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Causal linear attention without normalisation or decay: y_i = Σ_{j≤i} (q_i·k_j) v_j.

    Computed as a recurrence on the state S_i = Σ_{j≤i} k_j v_jᵀ (n × p): y_i = q_iᵀ S_i —
    O(l n p) instead of O(l² (n + p)) ({cite}`katharopoulos2020transformers` §3.4).
    Q, K ``(..., l, n)``, V ``(..., l, p)`` → ``(..., l, p)``.
    """
    _check_qkv(Q, K, V)
    KV = torch.einsum("...ln,...lp->...lnp", K, V)                    # (..., l, n, p)
    S = torch.cumsum(KV, dim=-3)                                      # (..., l, n, p)
    return torch.einsum("...ln,...lnp->...lp", Q, S)                  # (..., l, p)


def structured_masked_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor,
                                L_mask: torch.Tensor) -> torch.Tensor:
    """Structured masked attention (SMA): Y = (L ∘ Q Kᵀ) V ({cite}`dao2024mamba2` §4).

    Q, K ``(..., l, n)``, V ``(..., l, p)``, L_mask ``(..., l, l)`` broadcastable. With
    L = causal ones it is ``linear_attention``; with L = exp(segsum(a)), Q = C, K = B, V = X it
    is SSD (``ssd_quadratic``).
    """
    _check_qkv(Q, K, V)
    l = Q.shape[-2]
    if not isinstance(L_mask, torch.Tensor):
        raise TypeError(f"L_mask must be a torch.Tensor, got {type(L_mask).__name__}")
    if L_mask.shape[-2:] != (l, l):
        raise ValueError(f"L_mask must end in (l, l) = {(l, l)}, got {tuple(L_mask.shape)}")
    S = Q @ K.transpose(-1, -2)                                       # (..., l, l)
    return (L_mask * S) @ V                                           # (..., l, p)
