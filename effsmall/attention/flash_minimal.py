"""Two teaching FlashAttention forward kernels in Triton: FlashAttention-2's loop order in about
thirty lines, and FlashAttention-1's loop order for comparison (chapter 7).

Both compute ``O = softmax(Q Kᵀ · scale) V`` for ``q, k, v`` of one shape ``(B, H, N, D)``: no
masks, no GQA, no ``Nq ≠ Nk``, no backward — what remains is the online softmax
({cite}`milakov2018online`) inside one tiled loop. ``N`` must be a multiple of the block sizes
and ``D`` a power of two in 16..256; the production kernel
(:func:`effsmall.attention.flash_attention`) lifts all of these limits.

**FA2 order** (:func:`flash_attention_minimal`, {cite}`dao2023flashattention2` §3.1, Algorithm 1):
one program per (query block ``Q_i``, batch·head). ``Q_i`` is read once; the program walks every
key block ``K_j, V_j`` and keeps the running max ``m_i``, running sum ``ℓ_i`` and the
*unnormalized* output in registers; it divides by ``ℓ_i`` once at the end and writes ``O_i``
once.

**FA1 order** (:func:`flash_attention_fa1`, {cite}`dao2022flashattention` Algorithm 1): one
program per batch·head (FA1 parallelizes over batch and heads only). The outer loop walks the
key blocks ``K_j, V_j`` (each read once); the inner loop walks every query block and, for each
tile, re-reads ``Q_i, O_i, ℓ_i, m_i`` from HBM, updates them and writes them back — keeping
``O_i`` normalized after every tile. FA2's gains over it come from (1) fewer non-matmul FLOPs
(one division at the end instead of a rescale per tile), (2) parallelism over the sequence
(``N / BLOCK_M`` programs per head instead of one) and (3) a work split in which the
warps of a program share ``Q_i`` and never exchange partial results ("split-Q"; FA1's
"split-K" inner step has the warps of a block combine their partial ``P V`` products through
shared memory). Triton chooses how the warps of a program share a tile, so this kernel pair
reproduces (1), (2) and FA1's extra HBM traffic, not (3). ``O`` is kept in an fp32 buffer between tiles here, so the FA1 kernel is as
accurate as the FA2 one; the extra HBM traffic is part of what it costs.

Scores are kept in base 2 (``qk_scale = scale · log2 e``) so each exponential is one ``exp2``.
Both kernels run on CPU tensors under the Triton interpreter (bfloat16 is computed in fp32
there: numpy has none) and on CUDA tensors compiled. ``N`` and ``D`` are compile-time constants
(``tl.constexpr``): loops with a known trip count, one compilation per sequence length. There
is no autotuning: a GPU without the shared memory for the default tiles gets one pipeline stage,
then smaller tiles (:func:`effsmall.launch.launch_fitting`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.attention.contract import KERNEL_DTYPES, check_scale, check_tensors
from effsmall.attention.flash_triton import LOG2E
from effsmall.launch import launch_fitting, shrinking
from effsmall.runtime import interpreting, require_triton_device, tensor_cores_in_triton

__all__ = ["flash_attention_minimal", "flash_attention_fa1"]

@triton.jit
def _fa2_minimal_kernel(Q, K, V, O, qk_scale, N: tl.constexpr, D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)              # query block i, (batch, head)
    base = bh.to(tl.int64) * N * D                              # q, k, v, o: contiguous (B·H, N, D)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)            # (BLOCK_M,) query rows
    offs_n = tl.arange(0, BLOCK_N)                              # (BLOCK_N,) key rows of a block
    offs_d = tl.arange(0, D)                                    # (D,)
    q = tl.load(Q + base + offs_m[:, None] * D + offs_d[None, :])   # (BLOCK_M, D): read once
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)         # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)                       # running sum
    acc = tl.zeros([BLOCK_M, D], tl.float32)                    # unnormalized O_i
    for n0 in range(0, N, BLOCK_N):                             # every key block K_j, V_j
        kv = base + (n0 + offs_n)[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv)                                     # (BLOCK_N, D)
        v = tl.load(V + kv)                                     # (BLOCK_N, D)
        s = tl.dot(q, tl.trans(k)) * qk_scale                   # (BLOCK_M, BLOCK_N) scores
        m_new = tl.maximum(m_i, tl.max(s, 1))                   # (BLOCK_M,)
        p = tl.math.exp2(s - m_new[:, None])                    # (BLOCK_M, BLOCK_N)
        alpha = tl.math.exp2(m_i - m_new)                       # rescales what came before
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)   # (BLOCK_M, D)
        m_i = m_new
    o = acc / l_i[:, None]                                      # normalize once, at the end
    tl.store(O + base + offs_m[:, None] * D + offs_d[None, :], o.to(O.dtype.element_ty))


@triton.jit
def _fa1_kernel(Q, K, V, O, L, M, qk_scale, N: tl.constexpr, D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh = tl.program_id(0)                                       # one program per (batch, head)
    base = bh.to(tl.int64) * N * D                              # q, k, v, O: contiguous (B·H, N, D)
    offs_d = tl.arange(0, D)                                    # (D,)
    for n0 in range(0, N, BLOCK_N):                             # outer loop: K_j, V_j (Alg. 1 line 5)
        kv = base + (n0 + tl.arange(0, BLOCK_N))[:, None] * D + offs_d[None, :]
        k = tl.load(K + kv)                                     # (BLOCK_N, D): read once
        v = tl.load(V + kv)
        for m0 in range(0, N, BLOCK_M):                         # inner loop: every Q_i (line 7)
            offs_m = m0 + tl.arange(0, BLOCK_M)                 # (BLOCK_M,)
            qo = base + offs_m[:, None] * D + offs_d[None, :]
            q = tl.load(Q + qo)                                 # (BLOCK_M, D): re-read for every j
            o = tl.load(O + qo)                                 # (BLOCK_M, D) fp32 O_i from HBM (line 8)
            l_i = tl.load(L + bh * N + offs_m)                  # (BLOCK_M,) ℓ_i from HBM
            m_i = tl.load(M + bh * N + offs_m)                  # (BLOCK_M,) m_i from HBM
            s = tl.dot(q, tl.trans(k)) * qk_scale               # (BLOCK_M, BLOCK_N) (line 9)
            m_ij = tl.max(s, 1)                                 # (BLOCK_M,) block statistics (line 10)
            p = tl.math.exp2(s - m_ij[:, None])
            m_new = tl.maximum(m_i, m_ij)                       # (line 11)
            a = tl.math.exp2(m_i - m_new) * l_i                 # weight of the old O_i
            b = tl.math.exp2(m_ij - m_new)                      # weight of this tile
            l_new = a + b * tl.sum(p, 1)
            pv = tl.dot(p.to(v.dtype), v)                       # (BLOCK_M, D)
            o = (a[:, None] * o + b[:, None] * pv) / l_new[:, None]   # normalized every tile (line 12)
            tl.store(O + qo, o)                                 # O_i, ℓ_i, m_i back to HBM (lines 12-13)
            tl.store(L + bh * N + offs_m, l_new)
            tl.store(M + bh * N + offs_m, m_new)
        tl.debug_barrier()                                      # this j's writes before the next j's reads


def _check(q, k, v, block_m: int, block_n: int, fn: str):
    """The attention contract (:func:`effsmall.attention.contract.check_tensors`), then what these
    minimal kernels leave out: GQA, Nq ≠ Nk, masks (N a multiple of the blocks), odd head dims."""
    check_tensors(q, k, v)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        require_triton_device(name, t, fn)
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"{fn} needs q, k, v of one shape (no GQA, Nq = Nk), got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}; use flash_attention for the general case")
    N, D = q.shape[2], q.shape[3]
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"{fn} needs a head dim D that is a power of two in 16..256, got D={D}")
    for name, blk in (("block_m", block_m), ("block_n", block_n)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {blk}")
        if N % blk:
            raise ValueError(f"{fn} needs the sequence length N={N} to be a multiple of {name}={blk} "
                             f"(it has no masks); pad the sequence or use flash_attention")


def _prepare(q, k, v, scale):
    """Contiguous inputs (fp32 in the interpreter for bfloat16) and ``scale · log2 e``."""
    scale = check_scale(scale, q.shape[-1])
    if interpreting() and q.dtype == torch.bfloat16:    # numpy has no bfloat16
        q, k, v = q.float(), k.float(), v.float()
    return q.contiguous(), k.contiguous(), v.contiguous(), scale * LOG2E.value


def _stages(num_stages: int) -> int:
    """Software pipelining (``cp.async``) needs sm80+; older GPUs get one stage (less shared memory)."""
    return num_stages if interpreting() or tensor_cores_in_triton() else 1


def _default_block(N: int, big: int) -> int:
    """16 in the interpreter; on a GPU the largest of ``big``, 64, 32, 16 that divides N (no masks)."""
    if interpreting():
        return 16
    return next((b for b in (big, 64, 32) if N % b == 0), 16)


def flash_attention_minimal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                            block_m: int | None = None, block_n: int | None = None,
                            num_warps: int | None = None, num_stages: int = 3) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` with FlashAttention-2's loop order (``_fa2_minimal_kernel``).

    ``q, k, v``: ``(B, H, N, D)`` of one shape and dtype (fp16, bf16 or fp32); ``N`` a multiple of
    ``block_m`` and ``block_n`` (defaults 16 in the interpreter; 128 × 64 on a GPU, or the largest
    of 64, 32, 16 that divides N). Returns ``(B, H, N, D)`` in the inputs' dtype. Forward only.
    """
    B, H, N, D = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    block_m = block_m or _default_block(N, 128)
    block_n = block_n or _default_block(N, 64)
    _check(q, k, v, block_m, block_n, "flash_attention_minimal")
    dtype = q.dtype
    q, k, v, qk_scale = _prepare(q, k, v, scale)
    o = torch.empty_like(q)

    def launch(block_m, block_n, num_stages):    # one program per (query block, batch·head)
        _fa2_minimal_kernel[(N // block_m, B * H)](q, k, v, o, qk_scale, N=N, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                                                   num_warps=num_warps or (4 if D <= 64 else 8),
                                                   num_stages=_stages(num_stages))
    launch_fitting(launch, [dict(block_m=m, block_n=n, num_stages=st) for m, n, st in shrinking(block_m, block_n, num_stages)],
                   f"flash_attention_minimal (D={D}, {dtype})")
    return o.to(dtype)


def flash_attention_fa1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
                        block_m: int | None = None, block_n: int | None = None,
                        num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """``softmax(q kᵀ · scale) v`` with FlashAttention-1's loop order (``_fa1_kernel``): key blocks
    outer, query blocks inner, ``O``, ``ℓ``, ``m`` re-read and re-written in HBM for every tile.

    Same contract as :func:`flash_attention_minimal` (blocks default to 16 in the interpreter,
    64 × 64 on a GPU, or the largest of 32, 16 that divides N). Allocates an fp32 ``O`` buffer ``(B, H, N, D)`` and ``ℓ, m`` ``(B, H, N)``.
    """
    B, H, N, D = q.shape if isinstance(q, torch.Tensor) and q.dim() == 4 else (0, 0, 0, 0)
    block_m = block_m or _default_block(N, 64)
    block_n = block_n or _default_block(N, 64)
    _check(q, k, v, block_m, block_n, "flash_attention_fa1")
    dtype = q.dtype
    q, k, v, qk_scale = _prepare(q, k, v, scale)
    o = torch.zeros(B, H, N, D, device=q.device, dtype=torch.float32)           # O = 0 (line 2)
    l = torch.zeros(B, H, N, device=q.device, dtype=torch.float32)              # ℓ = 0
    m = torch.full((B, H, N), float("-inf"), device=q.device, dtype=torch.float32)  # m = -inf

    def launch(block_m, block_n, num_stages):    # one program per batch·head
        _fa1_kernel[(B * H,)](q, k, v, o, l, m, qk_scale, N=N, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                              num_warps=num_warps, num_stages=_stages(num_stages))
    launch_fitting(launch, [dict(block_m=bm, block_n=bn, num_stages=st) for bm, bn, st in shrinking(block_m, block_n, num_stages)],
                   f"flash_attention_fa1 (D={D}, {dtype})")
    return o.to(dtype)
