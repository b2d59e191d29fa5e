"""The attention ladder (chapters 3–7): quadratic attention → safe/online softmax → tiled
attention (FlashAttention loop orders) → recomputation backward → FlashAttention-2 style Triton.

Shapes: q ``(B, Hq, Nq, D)``, k and v ``(B, Hk, Nk, D)`` with ``Hq % Hk == 0`` (GQA/MQA);
``scale`` defaults to ``D**-0.5``; ``causal`` is aligned bottom-right when ``Nq != Nk``; a
query row that sees no key returns zeros (and a log-sum-exp of ``-inf``). Every rung checks its
arguments with :mod:`effsmall.attention.contract`, which states these rules once.
"""
from effsmall._lazy import install

_EXPORTS = {
    # naive.py — materializes S and P
    "naive_attention": "naive",
    "attention_mask": "naive",
    # softmax.py — softmax three ways
    "naive_softmax": "softmax",
    "safe_softmax": "softmax",
    "online_softmax": "softmax",
    # tiled.py — pure-torch tiling, both loop orders
    "tiled_attention": "tiled",
    # backward.py — recomputation-based backward
    "tiled_attention_backward": "backward",
    # io_complexity.py — counting HBM bytes
    "io_traffic": "io_complexity",
    # block.py — a Transformer block done right (pre-norm, residuals, causal, GQA)
    "TransformerBlock": "block",
    # triton_intro.py — first Triton kernels: vector add, row softmax, tiled matmul
    "matmul": "triton_intro",
    # flash_minimal.py — teaching forward kernels: FA2 loop order (~30 lines) and FA1 loop order
    "flash_attention_minimal": "flash_minimal",
    "flash_attention_fa1": "flash_minimal",
    # flash_triton.py — Triton forward + backward kernels in an autograd Function
    "flash_attention": "flash_triton",
    # flash_hopper.py — the Hopper (sm90) rung: TMA descriptors, warp specialisation, atomic-dQ backward
    "flash_attention_hopper": "flash_hopper",
    # varlen.py — packed sequences
    "flash_attention_varlen": "varlen",
    # merge.py — attention over disjoint key sets, combined (split-KV decoding, ring attention)
    "merge_attention_states": "merge",
    "merge_attention_states_many": "merge",
    # decode.py — one new token against a long (paged) KV cache: split-KV flash-decoding
    "flash_decode": "decode",
    "decode_attention_reference": "decode",
    # paged_cache.py — a KV cache in fixed-size pages (allocate, append, free, byte counter)
    "PagedKVCache": "paged_cache",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
