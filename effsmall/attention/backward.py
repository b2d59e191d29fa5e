"""The attention backward pass by recomputation: store only O and lse, rebuild P tile by tile.

With S = τ Q Kᵀ, P = softmax(S), O = P V and upstream gradient dO:

    dV = Pᵀ dO,   dP = dO Vᵀ,   dS = P ∘ (dP − Δ),   dQ = τ dS K,   dK = τ dSᵀ Q

where Δᵢ = rowsum(dO ∘ O)ᵢ = Σⱼ Pᵢⱼ dPᵢⱼ is the softmax Jacobian's
correction term (Dao et al. 2022, Appendix B.2; FlashAttention-2 §3.1.2). The forward pass
kept only lseᵢ = mᵢ + log ℓᵢ, enough to rebuild any tile exactly:
Pᵢⱼ = e^{Sᵢⱼ − lseᵢ}. So no N × N matrix is stored — memory stays O(N·D).

The loop order follows FlashAttention-2's backward: the outer loop over K/V blocks keeps
dKⱼ, dVⱼ on chip; the inner loop over Q blocks adds into dQᵢ in HBM.
"""
from __future__ import annotations

import math

import torch

from effsmall.attention.contract import Window, check_attention
from effsmall.attention.naive import repeat_kv
from effsmall.attention.tiled import _check_blocks, _tile_scores, kv_block_range
from effsmall.runtime import compute_dtype


def _check_same(name, t, like_shape, ref):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(like_shape):
        raise ValueError(f"{name} must have shape {tuple(like_shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref.device}, got {t.device}")


def tiled_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
                             do: torch.Tensor, lse: torch.Tensor, *, causal: bool = False,
                             scale: float | None = None, block_m: int = 64, block_n: int = 64,
                             window: Window = None):
    """Gradients ``(dq, dk, dv)`` of ``tiled_attention`` from O, dO and lse (no stored P).

    ``o``, ``do``: ``(B, Hq, Nq, D)``; ``lse``: ``(B, Hq, Nq)`` as returned by
    ``tiled_attention(..., return_lse=True)``. For GQA, dk and dv sum the contributions of all
    query heads of a group. Equal to autograd through ``naive_attention``.
    """
    scale = check_attention(q, k, v, causal=causal, scale=scale, window=window).scale
    _check_blocks(block_m, block_n, "fa2")
    _check_same("o", o, q.shape, q)
    _check_same("do", do, q.shape, q)
    _check_same("lse", lse, q.shape[:3], q)
    B, Hq, Nq, D = q.shape
    Hk, Nk = k.shape[1], k.shape[2]
    rep = Hq // Hk
    ct = compute_dtype(q.dtype)
    k_r = repeat_kv(k, rep)  # (B, Hq, Nk, D)
    v_r = repeat_kv(v, rep)  # (B, Hq, Nk, D)
    delta = (do.to(ct) * o.to(ct)).sum(-1, keepdim=True)  # (B, Hq, Nq, 1) Δ_i = rowsum(dO ∘ O)
    lse_c = lse.to(ct)[..., None]  # (B, Hq, Nq, 1)
    lse_c = torch.where(torch.isfinite(lse_c), lse_c, torch.full_like(lse_c, float("inf")))  # no key: P = 0
    dq = torch.zeros(B, Hq, Nq, D, dtype=ct, device=q.device)  # (B, Hq, Nq, D) accumulated in HBM
    dk = torch.zeros(B, Hq, Nk, D, dtype=ct, device=q.device)  # (B, Hq, Nk, D)
    dv = torch.zeros(B, Hq, Nk, D, dtype=ct, device=q.device)  # (B, Hq, Nk, D)
    jlo, jhi = kv_block_range(Nq, Nk, block_m, block_n, causal, window)
    jlo, jhi = jlo.tolist(), jhi.tolist()
    for j in range(math.ceil(Nk / block_n)):
        c0, c1 = j * block_n, min((j + 1) * block_n, Nk)
        k_j, v_j = k_r[:, :, c0:c1].to(ct), v_r[:, :, c0:c1].to(ct)  # (B, Hq, bc, D)
        dk_j = torch.zeros_like(k_j)  # (B, Hq, bc, D) on chip
        dv_j = torch.zeros_like(v_j)  # (B, Hq, bc, D) on chip
        for i in (i for i in range(len(jlo)) if jlo[i] <= j <= jhi[i]):
            r0, r1 = i * block_m, min((i + 1) * block_m, Nq)
            q_i, do_i = q[:, :, r0:r1].to(ct), do[:, :, r0:r1].to(ct)  # (B, Hq, br, D)
            S = _tile_scores(q_i, k_j, scale, r0, c0, Nq, Nk, causal, window)  # (B, Hq, br, bc)
            P = torch.exp(S - lse_c[:, :, r0:r1])  # (B, Hq, br, bc) recomputed probabilities
            dv_j += P.transpose(-1, -2) @ do_i  # (B, Hq, bc, D)
            dP = do_i @ v_j.transpose(-1, -2)  # (B, Hq, br, bc)
            dS = P * (dP - delta[:, :, r0:r1])  # (B, Hq, br, bc)
            dq[:, :, r0:r1] += scale * (dS @ k_j)  # (B, Hq, br, D)
            dk_j += scale * (dS.transpose(-1, -2) @ q_i)  # (B, Hq, bc, D)
        dk[:, :, c0:c1] = dk_j
        dv[:, :, c0:c1] = dv_j
    dk = dk.view(B, Hk, rep, Nk, D).sum(2)  # (B, Hk, Nk, D) sum over the query heads of a group
    dv = dv.view(B, Hk, rep, Nk, D).sum(2)  # (B, Hk, Nk, D)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
