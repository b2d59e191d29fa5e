"""FLOPs and bytes moved by the operations and layers of a sequence model.

Chapter 1 uses these counters to show where time and memory go as the sequence length N
grows; chapter 2 places the same operations on a roofline. Every count is for *one* forward
pass; ``dtype_bytes`` is the size of one stored element (2 for fp16/bf16).

Conventions (see the book's notation page): N = sequence length, d = model width,
H = heads, D = head dim, so d = H·D; a multiply-add counts as 2 FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cost:
    """Work of one operation: floating-point operations and bytes read + written in main memory."""

    flops: float
    bytes: float
    extra_memory: float = 0.0  # bytes of activations the op must hold besides inputs/outputs

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOP per byte (the roofline's x axis)."""
        return self.flops / self.bytes

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes,
                    max(self.extra_memory, other.extra_memory))


# ---------------------------------------------------------------- single operations
def elementwise_add(n: int, dtype_bytes: int = 2) -> Cost:
    """c = a + b on n elements: 1 FLOP per element, read 2 and write 1."""
    return Cost(flops=n, bytes=3 * n * dtype_bytes)


def softmax(rows: int, cols: int, dtype_bytes: int = 2) -> Cost:
    """Row softmax: max, subtract, exp, sum, divide ≈ 5 FLOPs per element; one read, one write."""
    n = rows * cols
    return Cost(flops=5 * n, bytes=2 * n * dtype_bytes)


def matmul(m: int, n: int, k: int, dtype_bytes: int = 2) -> Cost:
    """C (m×n) = A (m×k) · B (k×n): 2mnk FLOPs; reads A and B once, writes C once (the ideal)."""
    return Cost(flops=2 * m * n * k, bytes=(m * k + k * n + m * n) * dtype_bytes)


def attention(n: int, d_head: int, heads: int = 1, batch: int = 1, *, fused: bool = False,
              causal: bool = False, dtype_bytes: int = 2) -> Cost:
    """softmax(Q Kᵀ / √D) V for ``batch·heads`` heads of length ``n``.

    FLOPs: 2·N²·D for S = QKᵀ, 2·N²·D for O = PV, ≈5·N² for the softmax (halved if causal,
    as a kernel that skips masked blocks does).
    Bytes, standard (unfused) implementation: Q, K, V read and O written (4·N·D) plus
    S written, S read, P written, P read (4·N²). Fused (FlashAttention): only 4·N·D,
    S and P live in SRAM. The unfused version also holds N² scores in memory.
    """
    bh = batch * heads
    frac = 0.5 if causal else 1.0
    flops = bh * frac * (4 * n * n * d_head + 5 * n * n)
    qkvo = bh * 4 * n * d_head * dtype_bytes
    if fused:
        return Cost(flops, qkvo, extra_memory=bh * n * 4)  # the fp32 log-sum-exp per row
    scores = bh * 4 * n * n * dtype_bytes
    return Cost(flops, qkvo + scores, extra_memory=bh * n * n * dtype_bytes)


# ---------------------------------------------------------------- layers of a model
def attention_layer(n: int, d_model: int, heads: int, kv_heads: int | None = None, batch: int = 1, *,
                    fused: bool = False, causal: bool = True, dtype_bytes: int = 2) -> Cost:
    """A multi-head attention layer: Q/K/V/O projections (weights read once) plus attention itself."""
    kv_heads = kv_heads or heads
    d_head = d_model // heads
    tokens = batch * n
    d_kv = kv_heads * d_head
    proj = (matmul(tokens, d_model, d_model, dtype_bytes) + matmul(tokens, 2 * d_kv, d_model, dtype_bytes)
            + matmul(tokens, d_model, d_model, dtype_bytes))
    return proj + attention(n, d_head, heads, batch, fused=fused, causal=causal, dtype_bytes=dtype_bytes)


def mlp_layer(n: int, d_model: int, d_ff: int | None = None, batch: int = 1, *, gated: bool = True,
              dtype_bytes: int = 2) -> Cost:
    """A feed-forward layer: up (and gate) projection, nonlinearity, down projection."""
    d_ff = d_ff or 4 * d_model
    tokens = batch * n
    up = matmul(tokens, (2 if gated else 1) * d_ff, d_model, dtype_bytes)
    act = Cost(flops=4 * tokens * d_ff, bytes=(3 if gated else 2) * tokens * d_ff * dtype_bytes)
    down = matmul(tokens, d_model, d_ff, dtype_bytes)
    return up + act + down


def ssd_layer(n: int, d_model: int, *, head_dim: int = 64, d_state: int = 128, expand: int = 2,
              groups: int = 1, chunk: int = 256, batch: int = 1, dtype_bytes: int = 2) -> Cost:
    """A Mamba-2 (SSD) layer: projections plus the chunked scan, linear in ``n``.

    Inner width e·d split into H = e·d / P heads. Per head and chunk of Q tokens the chunked
    algorithm does C·Bᵀ and (L∘CBᵀ)·X on the causal half of the Q×Q diagonal block
    (Q²N + Q²P), the chunk state Bᵀ X (2QNP) and the state's output C·h (2QNP):
    ≈ n·(Q·(N+P) + 4·N·P) FLOPs per head — the count of ``effsmall.ssm.ssd_chunked_cost``
    (chapter 11), and the same causal halving as ``attention(causal=True)``.
    Bytes: X read, Y written, B and C read.
    """
    d_inner = expand * d_model
    heads = d_inner // head_dim
    tokens = batch * n
    q = min(chunk, n)
    d_in_proj = 2 * d_inner + 2 * groups * d_state + heads  # z, x, B, C, dt
    proj = matmul(tokens, d_in_proj, d_model, dtype_bytes) + matmul(tokens, d_model, d_inner, dtype_bytes)
    scan_flops = tokens * heads * (q * (d_state + head_dim) + 4 * d_state * head_dim)
    scan_bytes = tokens * (2 * d_inner + 2 * groups * d_state + heads) * dtype_bytes
    return proj + Cost(scan_flops, scan_bytes)


def layer_costs(ns, d_model: int = 768, heads: int = 12, *, d_state: int = 128, dtype_bytes: int = 2,
                batch: int = 1, gated_mlp: bool = True) -> list[dict]:
    """Rows of FLOPs, bytes and extra memory for attention (naive and fused), MLP and SSD layers.

    ``gated_mlp=False`` counts a GPT-2-style MLP (one up projection, 16·d² FLOPs per token with
    d_ff = 4d); the default counts a gated (SwiGLU) MLP with a gate and an up projection (24·d²).
    """
    rows = []
    for n in ns:
        for name, cost in (
            ("attention (naive)", attention_layer(n, d_model, heads, batch=batch, dtype_bytes=dtype_bytes)),
            ("attention (fused)", attention_layer(n, d_model, heads, batch=batch, fused=True,
                                                  dtype_bytes=dtype_bytes)),
            ("MLP", mlp_layer(n, d_model, batch=batch, gated=gated_mlp, dtype_bytes=dtype_bytes)),
            ("SSD (Mamba-2)", ssd_layer(n, d_model, d_state=d_state, batch=batch, dtype_bytes=dtype_bytes)),
        ):
            rows.append(dict(N=n, layer=name, flops=cost.flops, bytes=cost.bytes,
                             extra_memory=cost.extra_memory, intensity=cost.intensity))
    return rows
