"""The SSD recurrence (Mamba-2, Dao & Gu 2024, §3) and stable segment sums.

One SSD head carries a state h_t ∈ R^{P×N}:

    h_t = exp(a_t) · h_{t-1} + x_t B_tᵀ,      y_t = h_t C_t,

with a_t ≤ 0 the per-step log decay (``A`` in the code, already Δ_t·A). Heads are grouped: head
i reads B and C of group ``i // (h // g)`` (the paper's multi-value / grouped pattern, §7).
This loop over time is the reference every faster form is tested against.
"""
from __future__ import annotations

import torch

from effsmall.ssm._ssd_checks import check_ssd_inputs
from effsmall.runtime import compute_dtype


def segsum(x: torch.Tensor) -> torch.Tensor:
    """Stable segment sums: ``out[..., i, j] = x[..., j+1] + ... + x[..., i]`` for i ≥ j, -inf above.

    exp(segsum(a)) is the decay matrix L of SSD (Mamba-2 §6). Computing it as
    ``cumsum[i] - cumsum[j]`` subtracts two large numbers and loses precision for long
    sequences with strong decay; instead repeat x along a new axis, zero everything on or
    above the diagonal and cumsum down the columns, so every entry is a direct sum.
    """
    T = x.shape[-1]
    xr = x[..., :, None].expand(*x.shape, T)  # (..., T, T): xr[..., i, j] = x[i]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)  # (T, T)
    xr = xr.masked_fill(~strict, 0)  # keep x[i] only for i > j
    out = torch.cumsum(xr, dim=-2)  # (..., T, T): out[i, j] = sum_{j < k <= i} x[k]
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device))  # (T, T)
    return out.masked_fill(~lower, float("-inf"))


def ssd_recurrent(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  initial_states: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the SSD recurrence step by step.

    X ``(b, l, h, p)``, A ``(b, l, h)`` log decays ≤ 0, B and C ``(b, l, g, n)`` with h % g == 0,
    initial_states ``(b, h, p, n)`` or None (zeros). Returns ``(Y (b, l, h, p), final_states
    (b, h, p, n))``; Y has X's dtype, the states the compute dtype (fp32, or fp64 for fp64 input).
    """
    b, l, h, p, g, n = check_ssd_inputs(X, A, B, C, initial_states)
    ct = compute_dtype(X, A, B, C)
    Bh = B.to(ct).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Ch = C.to(ct).repeat_interleave(h // g, dim=2)  # (b, l, h, n)
    Xc, decay = X.to(ct), torch.exp(A.to(ct))  # (b, l, h, p), (b, l, h)
    state = (torch.zeros(b, h, p, n, dtype=ct, device=X.device) if initial_states is None
             else initial_states.to(ct).clone())  # (b, h, p, n)
    ys = []
    for t in range(l):
        state = decay[:, t, :, None, None] * state + Xc[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))  # (b, h, p)
    Y = torch.stack(ys, dim=1)  # (b, l, h, p)
    return Y.to(X.dtype), state
