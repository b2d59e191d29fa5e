"""Layers shared by the attention block (chapter 3) and the small language models (chapter 12):
RMSNorm, rotary position embeddings (RoPE) and the SwiGLU MLP. One source for each.

* **RMSNorm** (Zhang & Sennrich 2019): ``x / √(mean(x²) + ε) · g`` over the last dimension, no
  mean subtraction, no bias;
* **RoPE** (Su et al. 2021): rotate each channel pair ``(x_i, x_{i+D/2})`` of a head by the
  angle ``t·θ_i``, ``θ_i = base^(−2i/D)``, so that ``q_s·k_t`` after rotation depends on ``s − t``
  only — a KV cache stores rotated keys once and stays valid while decoding;
* **SwiGLU** (Shazeer 2020): ``W_down (SiLU(W_gate x) ⊙ W_up x)``, the gated MLP of Llama and Phi-3.

Half-precision inputs are computed in float32 (:func:`effsmall.runtime.compute_dtype`) and cast back.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from effsmall.runtime import compute_dtype

__all__ = ["RMSNorm", "rope_tables", "apply_rope", "rope", "swiglu", "SwiGLU"]


class RMSNorm(nn.Module):
    """``y = x / √(mean(x²) + ε) · g`` over the last dimension."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(compute_dtype(x.dtype))  # half inputs are normalized in float32
        rms = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)  # (..., 1)
        return (xf * rms).to(x.dtype) * self.weight


def rope_tables(pos: int | torch.Tensor, dim: int, base: float = 10000.0, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles ``t·θ_i``, ``θ_i = base^(−2i/dim)``, each ``(n, dim/2)`` in ``dtype``.

    ``pos``: the positions t, a 1-D tensor, or an int n for ``0 … n−1``. The angles are computed in
    float64 (large t·θ lose digits in float32) and rounded once.
    """
    if isinstance(pos, int):
        pos = torch.arange(pos, device=device)
    theta = base ** (-torch.arange(0, dim, 2, device=pos.device, dtype=torch.float64) / dim)  # (dim/2,)
    angles = pos.to(torch.float64)[:, None] * theta[None, :]  # (n, dim/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of ``x`` ``(B, H, n, dim)`` by the angles."""
    ct = torch.promote_types(compute_dtype(x.dtype), cos.dtype)
    x1, x2 = x.to(ct).chunk(2, dim=-1)  # (B, H, n, dim/2) each
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, H, n, dim)
    return out.to(x.dtype)


def rope(x: torch.Tensor, pos: int | torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE of ``x`` ``(B, H, n, D)`` at positions ``pos`` (``(n,)``, or an int n for 0 … n−1)."""
    cos, sin = rope_tables(pos, x.shape[-1], base, device=x.device, dtype=compute_dtype(x.dtype))  # (n, D/2)
    return apply_rope(x, cos, sin)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The SwiGLU gate ``SiLU(gate) ⊙ up`` (the hidden layer of the MLP)."""
    return F.silu(gate) * up


class SwiGLU(nn.Module):
    """MLP(x) = W_down (SiLU(W_gate x) ⊙ W_up x), the gated MLP of Llama/Phi-3 (Shazeer 2020)."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate = nn.Linear(d_model, d_ff, bias=False)
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(swiglu(self.gate(x), self.up(x)))

    def gate_up_weight(self) -> torch.Tensor:
        """``[W_gate; W_up]`` ``(2·d_ff, d_model)``, a copy: ``x Wᵀ = [W_gate x | W_up x]``, both
        hidden projections in one matrix product (a decoder builds it once, before decoding)."""
        return torch.cat([self.gate.weight, self.up.weight]).detach()
