"""A decoder Transformer block done right: pre-norm, residuals, causal GQA attention, SwiGLU.

    h = x + W_o · Attn(RMSNorm(x)),     y = h + MLP(RMSNorm(h))

* **pre-norm** (normalize the input of each sublayer, not its output) keeps the residual
  stream an identity path, so gradients reach early layers unscaled — the choice of
  Llama, TinyLlama and Phi-3;
* **RMSNorm**: x / √(mean(x²) + ε) · g (no mean subtraction, no bias);
  RMSNorm, RoPE and the SwiGLU gate come from :mod:`effsmall.nn`, shared with the models;
* **GQA** (Ainslie et al. 2023): ``n_heads`` query heads share ``n_kv_heads`` key/value heads,
  shrinking the KV cache by ``n_heads / n_kv_heads``;
* **RoPE** (optional): rotate each pair of channels of q and k by an angle proportional to the
  position, so qᵢᵀ kⱼ depends on i − j only;
* **SwiGLU** MLP W₂(silu(W₁ x) ∘ W₃ x), or a GELU MLP;
* ``attn_fn(q, k, v, causal=True)`` is pluggable: ``naive_attention`` by default,
  ``tiled_attention`` or ``flash_attention`` in later chapters — same numbers, less memory.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from effsmall.attention.naive import naive_attention
from effsmall.nn import RMSNorm, rope, swiglu

__all__ = ["TransformerBlock", "RMSNorm"]


class TransformerBlock(nn.Module):
    """Pre-norm decoder block with causal GQA attention and a SwiGLU (or GELU) MLP.

    ``x``: ``(B, N, d_model)`` -> ``(B, N, d_model)``. ``attn_fn(q, k, v, causal=...)`` takes q
    ``(B, n_heads, N, D)`` and k, v ``(B, n_kv_heads, N, D)``.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, *,
                 d_ff: int | None = None, mlp: str = "swiglu", rope: bool = True,
                 rope_base: float = 10000.0, causal: bool = True, eps: float = 1e-6,
                 attn_fn: Callable | None = None):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if not isinstance(d_model, int) or not isinstance(n_heads, int) or n_heads < 1 or d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be a multiple of n_heads ({n_heads})")
        if not isinstance(n_kv_heads, int) or n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        if mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {mlp!r}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dim, got d_model / n_heads = {self.head_dim}")
        self.rope, self.rope_base, self.causal = rope, rope_base, causal
        self.attn_fn = naive_attention if attn_fn is None else attn_fn
        self.attn_norm = RMSNorm(d_model, eps)
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wkv = nn.Linear(d_model, 2 * n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, d_model, bias=False)
        self.mlp_norm = RMSNorm(d_model, eps)
        self.mlp_kind = mlp
        if d_ff is None:  # SwiGLU keeps the parameter count of a 4·d GELU MLP with 2/3 of the width
            d_ff = 4 * d_model if mlp == "gelu" else 256 * ((8 * d_model // 3 + 255) // 256)
        self.w_up = nn.Linear(d_model, (2 if mlp == "swiglu" else 1) * d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        D, H, Hk = self.head_dim, self.n_heads, self.n_kv_heads
        q = self.wq(x).view(B, N, H, D).transpose(1, 2)  # (B, H, N, D)
        k, v = self.wkv(x).view(B, N, 2, Hk, D).permute(2, 0, 3, 1, 4)  # (B, Hk, N, D) each
        if self.rope:
            q, k = rope(q, N, self.rope_base), rope(k, N, self.rope_base)  # positions 0 … N−1
        o = self.attn_fn(q, k, v, causal=self.causal)  # (B, H, N, D)
        return self.wo(o.transpose(1, 2).reshape(B, N, H * D))  # (B, N, d_model)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        if self.mlp_kind == "swiglu":
            gate, up = self.w_up(x).chunk(2, dim=-1)  # (B, N, d_ff) each
            return self.w_down(swiglu(gate, up))  # (B, N, d_model)
        return self.w_down(F.gelu(self.w_up(x)))  # (B, N, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.wq.in_features:
            raise ValueError(f"x must have shape (B, N, d_model={self.wq.in_features}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        h = x + self.attention(self.attn_norm(x))  # residual around pre-normed attention
        return h + self.mlp(self.mlp_norm(h))  # residual around pre-normed MLP
