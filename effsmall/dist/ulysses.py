"""Ulysses sequence parallelism for attention (DeepSpeed-Ulysses, Jacobs et al. 2023).

Attention mixes tokens but not heads; a Mamba or MLP layer mixes features but not tokens.
Ulysses keeps activations sharded by *tokens* and, around attention only, trades the token
shard for a *head* shard with one all-to-all: each rank then holds all ``p·n`` tokens of
``H/p`` heads, runs ordinary (flash) attention locally, and a second all-to-all trades back.

Per rank and attention call: 4 all-to-alls forward (q, k, v in; o out), each moving
``(p−1)/p`` of its tensor — a volume that stays constant as p grows with the sequence, unlike a
ring's. The limit: ``p`` must divide the number of (KV) heads.
"""
from __future__ import annotations

import torch

from effsmall.dist.comm import all_to_all, check_same_shape, world_and_rank

__all__ = ["ulysses_attention"]


def _default_attn(q: torch.Tensor):
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16, torch.float32):
        from effsmall.attention.flash_triton import flash_attention
        return flash_attention
    from effsmall.attention.naive import naive_attention
    return naive_attention


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None, causal: bool = True,
                      attn_fn=None, check_shapes: bool = True) -> torch.Tensor:
    """Attention over a sequence whose tokens are split contiguously over ``group``.

    q ``(B, Hq, n, D)``, k, v ``(B, Hk, n, D)`` — this rank's ``n`` tokens (rank order). Needs
    ``Hq % p == 0`` and ``Hk % p == 0``. ``attn_fn(q, k, v, causal=...)`` runs on the full
    sequence of ``H/p`` heads (default: FlashAttention on CUDA, naive attention elsewhere).
    Returns this rank's ``(B, Hq, n, D)``. Differentiable (the all-to-alls swap in backward).
    """
    world, _ = world_and_rank(group)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H, n, D) tensor")
    for name, h in (("query heads", q.shape[1]), ("KV heads", k.shape[1])):
        if h % world:
            raise ValueError(f"Ulysses needs the {name} ({h}) divisible by the world size {world}")
    if check_shapes:
        check_same_shape(q, group, "q")
    attn_fn = attn_fn or _default_attn(q)
    # (B, H, n, D) tokens-sharded  ->  (B, H/p, p·n, D) heads-sharded
    qh, kh, vh = (all_to_all(t, 1, 2, group) for t in (q, k, v))
    o = attn_fn(qh, kh, vh, causal=causal)                            # (B, Hq/p, p·n, D)
    return all_to_all(o, 2, 1, group)                                  # (B, Hq, n, D)
