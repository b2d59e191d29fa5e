"""The pieces of a small LM: causal self-attention with a KV cache and the fastest exact attention
kernel for the device. RMSNorm, the SwiGLU MLP and rotary positions come from :mod:`effsmall.nn`
(shared with the attention block of chapter 3).

Attention backend (``attention_backend(device)``):

- **CUDA**: ``effsmall.attention.flash_attention`` — the book's FlashAttention-2 style Triton
  kernel (chapter 7), forward and backward;
- **CPU**: ``torch.nn.functional.scaled_dot_product_attention`` — exact attention in fused C++
  (the same maths as ``effsmall.attention.naive_attention``, checked in the tests). The Triton
  interpreter would also be exact on CPU but is orders of magnitude too slow to train with.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from effsmall.attention.paged_cache import PagedKVCache
from effsmall.nn import RMSNorm, SwiGLU, rope  # noqa: F401  (one source, shared with the attention block)
from effsmall.runtime import tensor_cores_in_triton, warn_once


def attention_backend(device: torch.device | str) -> str:
    """``"flash_triton"`` on CUDA GPUs where Triton has tensor-core ``tl.dot`` (compute capability
    ≥ 8.0), else ``"sdpa"``: on a T4 (sm75) the Triton kernel would fall back to PyTorch's tiled
    attention, far slower than SDPA for training (``$EFFSMALL_ASSUME_CC=7.5`` forces this path)."""
    device = torch.device(device)
    if device.type == "cuda" and not tensor_cores_in_triton(device.index or 0):
        return "sdpa"
    if device.type == "cuda":
        try:
            from effsmall.attention import flash_attention  # noqa: F401
            return "flash_triton"
        except (ImportError, AttributeError):
            warn_once("models-flash-missing", "effsmall.attention.flash_attention is not available: "
                      "the models use torch SDPA on CUDA instead")
    return "sdpa"


def _triton_head_dim_ok(D: int) -> bool:
    """Head dims the FlashAttention kernel takes (16..256); other heads go to SDPA."""
    from effsmall.attention.flash_triton import SUPPORTED_HEAD_DIMS

    return SUPPORTED_HEAD_DIMS[0] <= D <= SUPPORTED_HEAD_DIMS[1]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
              backend: str | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √D + mask) v with q ``(b, h, nq, D)``, k, v ``(b, hk, nk, D)``, h % hk == 0.

    ``causal`` is aligned bottom-right: query i (of nq) sees keys 0 … nk − nq + i, which is what
    a decoding step with a KV cache needs (nq = 1 sees every cached key). ``backend`` overrides
    :func:`attention_backend` (``"flash_triton"`` or ``"sdpa"``; the tests run the Triton kernel
    under the interpreter on CPU to check both paths agree).
    """
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key heads {k.shape[1]}")
    backend = backend or attention_backend(q.device)
    if backend not in ("flash_triton", "sdpa"):
        raise ValueError(f"backend must be 'flash_triton' or 'sdpa', got {backend!r}")
    if backend == "flash_triton" and q.dtype != torch.float64 and _triton_head_dim_ok(q.shape[-1]):
        from effsmall.attention import flash_attention
        return flash_attention(q, k, v, causal=causal)
    # SDPA below: fp64, or a head dim the Triton kernel does not take (a toy model's D = 8, say)
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)                               # (b, h, nk, D)
        v = v.repeat_interleave(rep, dim=1)                               # (b, h, nk, D)
    nq, nk = q.shape[2], k.shape[2]
    if not causal or nq == 1 and nk >= 1:
        return F.scaled_dot_product_attention(q, k, v)
    if nq == nk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    i = torch.arange(nq, device=q.device)[:, None]
    j = torch.arange(nk, device=q.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=j <= i + (nk - nq))  # (b, h, nq, D)


@dataclass
class KVCache:
    """Rotated keys and values of every past token: ``k, v (b, hk, t, D)``. Grows by one column
    per decoded token — 2·hk·D numbers per layer per token."""
    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return self.k.shape[2]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with GQA ({cite}`ainslie2023gqa`), RoPE and a KV cache."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_base: float = 10000.0):
        super().__init__()
        self.h, self.hk, self.d = n_heads, n_kv_heads, d_model // n_heads
        self.rope_base = rope_base
        self.wq = nn.Linear(d_model, n_heads * self.d, bias=False)
        self.wkv = nn.Linear(d_model, 2 * n_kv_heads * self.d, bias=False)
        self.wo = nn.Linear(n_heads * self.d, d_model, bias=False)

    def qkv_weight(self) -> torch.Tensor:
        """``[W_q; W_kv]`` ``((h + 2·hk)·D, d_model)``, a copy: ``x Wᵀ = [q | k | v]`` (queries,
        then the keys and values as ``wkv`` lays them out) in one matrix product (a decoder builds
        it once, before decoding)."""
        return torch.cat([self.wq.weight, self.wkv.weight]).detach()

    def forward(self, x: torch.Tensor, cache: KVCache | PagedKVCache | None = None):
        """x ``(b, l, d_model)`` → ``(y (b, l, d_model), cache extended by l tokens)``.

        With ``cache`` the l new tokens sit at positions t … t+l−1 after the t cached ones.
        """
        b, l, _ = x.shape
        t = 0 if cache is None else cache.length
        pos = torch.arange(t, t + l, device=x.device)                             # (l,)
        q = self.wq(x).view(b, l, self.h, self.d).transpose(1, 2)                 # (b, h, l, D)
        k, v = self.wkv(x).view(b, l, 2, self.hk, self.d).permute(2, 0, 3, 1, 4)  # (b, hk, l, D) ×2
        q, k = rope(q, pos, self.rope_base), rope(k, pos, self.rope_base)
        if isinstance(cache, PagedKVCache):  # decoding on the GPU: paged cache + flash_decode
            from effsmall.attention import flash_decode

            cache.append(k, v)                                                     # pages hold t+l tokens
            y = flash_decode(q, cache.k_pages, cache.v_pages, cache.seqlens, block_table=cache.block_table,
                             validate=False)                                       # (b, h, l, D)
            return self.wo(y.transpose(1, 2).reshape(b, l, self.h * self.d)), cache
        if cache is not None:
            k = torch.cat([cache.k, k], dim=2)                                     # (b, hk, t+l, D)
            v = torch.cat([cache.v, v], dim=2)                                     # (b, hk, t+l, D)
        y = attention(q, k, v, causal=True)                                        # (b, h, l, D)
        y = self.wo(y.transpose(1, 2).reshape(b, l, self.h * self.d))              # (b, l, d_model)
        return y, KVCache(k, v)
