"""Quantized GEMV: ``y = x @ Ŵᵀ`` with W stored int8 or packed int4, dequantized in registers.

Decoding one token multiplies a few activation rows ``x (M, K)`` (M = batch, 1–16) by every
weight matrix ``W (N, K)`` of the model. Each weight is used M times per read — far below the
hundreds of FLOPs per byte a GPU needs to be compute-bound — so the time is the time to *read
W*: bytes, not FLOPs. Storing W in 8 or 4 bits instead of 16 cuts those bytes 2× or 4×, and a
kernel that reads the packed bytes and expands them in registers turns the saving into speed.
(Dequantizing W to fp16 in memory first, as :class:`~effsmall.compress.QuantLinear` does,
reads and writes the full fp16 matrix: slower than not quantizing at all.)

The weights come exactly as :mod:`effsmall.compress.quant` stores them — no repacking:

* int8: ``qdata`` int8 ``(N, K)``, ``scale`` ``(N, 1)`` (per output channel) or ``(N, K/G)``;
* int4: ``qdata`` uint8 ``(N, K/2)``, byte ``j`` of a row holding ``q[2j]`` in its low nibble
  and ``q[2j+1]`` in its high nibble (two's complement), ``scale`` ``(N, K/G)`` for groups of
  G consecutive inputs (or ``(N, 1)``: one group per row).

With Ŵ[n, k] = q[n, k] · s[n, k // G], the product splits over groups:

    y[m, n] = Σ_g s[n, g] · Σ_{k ∈ group g} x[m, k] · q[n, k]

The inner sums multiply x by *integers* — exactly representable in fp16/bf16 (|q| ≤ 127) — on
tensor cores with fp32 accumulation; each group's partial sum is scaled once, in fp32. So the
kernel walks K in blocks that lie inside one group, loads the packed bytes, splits each byte
into its two nibbles, sign-extends them and interleaves them back into K order, all in
registers. Per weight that is a shift, a mask, an xor, a subtract and a conversion; the scale
costs one multiply per group and output, not per weight.

**Decode (M ≤ 4): feed the memory system, skip the tensor cores.** With one row of x, a
tensor-core tile pads M to 16 (15/16 of its work is wasted) and the time is entirely the weight
stream — so what matters is how many bytes are *in flight*: a GPU needs tens of KB per SM of
outstanding loads to reach its bandwidth. :func:`_gemv_fma_kernel` therefore uses many small
programs — ``block_n`` rows of W each, and K cut into ``split_k`` slices whose partial sums meet
by atomic adds into an fp32 y — and plain fp32 multiply-adds: each thread multiplies the weights it
loaded by the matching x values and adds them into its own registers; the sum over K happens once,
at the end. And it never re-interleaves int4 weights. Since

    Σ_k x[k] q[k] = Σ_j x[2j] · lo[j] + x[2j+1] · hi[j]        (lo, hi: the nibbles of byte j)

it splits the *activations* into even and odd columns instead — x is a few KB, read from cache,
while the weights are the whole stream — and multiplies them with the nibbles where they lie.

:func:`dequant_matmul_reference` is the naive ladder rung (dequantize with torch, then matmul);
:func:`quant_gemv` runs the Triton kernels (decode path for M ≤ 4, tensor cores above). Both take the tensors of a
:class:`~effsmall.compress.QuantizedTensor` (:func:`quant_linear` takes the object itself).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.launch import launch_fitting
from effsmall.runtime import cdiv, interp_flag, interpreting, require_triton_device

__all__ = ["quant_gemv", "quant_linear", "dequant_matmul_reference", "gemv_bytes", "GemvConfig"]

_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _int_block(Q, rn, k, N, K, stride_qn, INT4: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The integers q[rn, k : k + BLOCK_K] as int32 ``(BLOCK_N, BLOCK_K)``, zero past the edges.
    ``EVEN_K``: BLOCK_K divides K, so a block is wholly inside or outside K and the mask along K is
    one scalar — which lets the compiler load 16 contiguous bytes at a time."""
    if INT4:
        rb = k // 2 + tl.arange(0, BLOCK_K // 2)                       # (BK/2,) byte columns
        if EVEN_K:
            mask = (rn[:, None] < N) & (k < K)
        else:
            mask = (rn[:, None] < N) & (rb[None, :] < K // 2)
        b = tl.load(Q + rn[:, None] * stride_qn + rb[None, :], mask=mask, other=0).to(tl.int32)  # (BN, BK/2)
        lo = ((b & 0xF) ^ 8) - 8                                       # low nibble, sign-extended: q[2j]
        hi = ((b >> 4) ^ 8) - 8                                        # high nibble: q[2j+1]
        q = tl.interleave(lo, hi)                                      # (BN, BK) back in K order
    else:
        rk = k + tl.arange(0, BLOCK_K)                                 # (BK,)
        if EVEN_K:
            mask = (rn[:, None] < N) & (k < K)
        else:
            mask = (rn[:, None] < N) & (rk[None, :] < K)
        q = tl.load(Q + rn[:, None] * stride_qn + rk[None, :], mask=mask, other=0).to(tl.int32)  # (BN, BK)
    return q


@triton.jit
def _group_block(acc, X, Q, S, rm, rn, k, M, N, K, stride_xm, stride_qn, stride_sn,
                 INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                 PREC: tl.constexpr):
    """acc + s[:, group of k] · (x[:, k:k+BK] @ q[:, k:k+BK]ᵀ): one block of K inside one group."""
    rk = k + tl.arange(0, BLOCK_K)                                     # (BK,)
    if EVEN_K:
        xmask = (rm[:, None] < M) & (k < K)
    else:
        xmask = (rm[:, None] < M) & (rk[None, :] < K)
    x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=xmask, other=0.0)  # (BM, BK)
    q = _int_block(Q, rn, k, N, K, stride_qn, INT4, BLOCK_K, EVEN_K)   # (BN, BK) integers
    part = tl.dot(x, tl.trans(q.to(x.dtype)), input_precision=PREC)    # (BM, BN) fp32, q exact
    if GROUP != 0:                                                     # GROUP = 0: one scale per row, at the end
        s = tl.load(S + rn * stride_sn + k // GROUP, mask=(rn < N) & (k < K), other=0.0).to(tl.float32)  # (BN,)
        part = part * s[None, :]
    return acc + part


@triton.jit
def _quant_gemv_kernel(X, Q, S, Y, M, N, K, stride_xm, stride_qn, stride_sn, stride_ym,
                       INT4: tl.constexpr, GROUP: tl.constexpr, PREC: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       EVEN_K: tl.constexpr, SUBS: tl.constexpr, INTERP: tl.constexpr):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)                  # this program owns y[rm, rn]
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)                       # (BM,) rows of x and y
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                       # (BN,) rows of W = columns of y
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if INTERP:
        k0 = 0
        while k0 < K:
            for j in tl.static_range(SUBS):
                acc = _group_block(acc, X, Q, S, rm, rn, k0 + j * BLOCK_K, M, N, K, stride_xm, stride_qn,
                                   stride_sn, INT4, GROUP, BLOCK_K, EVEN_K, PREC)
            k0 += BLOCK_K * SUBS
    else:
        for k0 in tl.range(0, K, BLOCK_K * SUBS):                      # SUBS blocks a step, pipelined
            for j in tl.static_range(SUBS):
                acc = _group_block(acc, X, Q, S, rm, rn, k0 + j * BLOCK_K, M, N, K, stride_xm, stride_qn,
                                   stride_sn, INT4, GROUP, BLOCK_K, EVEN_K, PREC)
    if GROUP == 0:                                                     # per-channel: y[:, n] · s[n]
        acc = acc * tl.load(S + rn * stride_sn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rm[:, None] * stride_ym + rn[None, :], acc.to(Y.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


# ------------------------------------------------------------------------------------------------
# decode path (M ≤ 4): no tensor cores, no padding, many small programs, split K
# ------------------------------------------------------------------------------------------------
@triton.jit
def _exact_float(u, offset: tl.constexpr):
    """``float(u - offset)`` for int32 ``0 ≤ u < 2²³``, without an int→float conversion (a
    quarter-rate instruction on recent GPUs): OR-ed into the mantissa of 2²³ (fp32 bits
    0x4B000000), u makes the float 2²³ + u exactly; one subtraction of 2²³ + offset leaves u − offset."""
    return (u | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + offset)


@triton.jit
def _nibbles(Q, rn, k, k_end, N, K, stride_qn, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """The int4 weights q[rn, k : k + BLOCK_K] as two fp32 ``(BLOCK_N, BLOCK_K/2)`` halves, *not*
    interleaved: ``lo[:, j] = q[:, k + 2j]`` and ``hi[:, j] = q[:, k + 2j + 1]`` (zero past the edges).
    A nibble u (0..15) holds q = u − 16·[u ≥ 8], which is (u xor 8) − 8: bit operations and one
    subtraction (:func:`_exact_float`)."""
    rb = k // 2 + tl.arange(0, BLOCK_K // 2)                           # (BK/2,) byte columns
    if EVEN_K:
        mask = (rn[:, None] < N) & (k < k_end)
    else:
        mask = (rn[:, None] < N) & (rb[None, :] < K // 2) & (k < k_end)
    b = tl.load(Q + rn[:, None] * stride_qn + rb[None, :], mask=mask, other=0).to(tl.int32)       # (BN, BK/2) bytes
    return _exact_float((b & 0xF) ^ 8, 8), _exact_float((b >> 4) ^ 8, 8)   # lo = q[2j], hi = q[2j+1]


@triton.jit
def _outer(x, q):
    """Products not yet summed over K: ``x (BM, BK)`` times ``q (BN, BK)`` as ``(BN, BK)`` when BM = 1
    (decode; 2-D keeps the weights in the registers they were loaded into), else ``(BM, BN, BK)``."""
    if x.shape[0] == 1:
        return tl.reshape(x, (x.shape[1],))[None, :] * q
    else:
        return x[:, None, :] * q[None, :, :]


@triton.jit
def _fma_block(acc, X, Q, S, rm, rn, k, k_end, M, N, K, stride_xm, stride_qn, stride_sn,
               INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr):
    """acc + s[:, group of k] · x[:, k] q[:, k] for one block of K inside one group, in fp32 and *not
    yet summed over k* (see :func:`_outer` for acc's shape): every thread adds into its own registers
    and the sum over K happens once, after the loop. For int4, x's even and odd columns meet the low
    and high nibbles ("shuffle the activations, not the weights")."""
    rk = k + tl.arange(0, BLOCK_K)                                     # (BK,)
    xmask = (rm[:, None] < M) & (rk[None, :] < K) & (k < k_end)
    x = tl.load(X + rm[:, None] * stride_xm + rk[None, :], mask=xmask, other=0.0).to(tl.float32)       # (BM, BK)
    if INT4:
        xe, xo = tl.split(tl.reshape(x, (x.shape[0], BLOCK_K // 2, 2)))  # (BM, BK/2) twice: x[:, 2j], x[:, 2j+1]
        lo, hi = _nibbles(Q, rn, k, k_end, N, K, stride_qn, BLOCK_K, EVEN_K)                               # (BN, BK/2)
        prod = _outer(xe, lo) + _outer(xo, hi)
    else:
        if EVEN_K:
            qmask = (rn[:, None] < N) & (k < k_end)
        else:
            qmask = (rn[:, None] < N) & (rk[None, :] < K) & (k < k_end)
        q = tl.load(Q + rn[:, None] * stride_qn + rk[None, :], mask=qmask, other=0)                       # (BN, BK) int8
        u = q.to(tl.uint8, bitcast=True).to(tl.int32) ^ 0x80           # q + 128, in 0..255
        prod = _outer(x, _exact_float(u, 128))
    if GROUP != 0:
        s = tl.load(S + rn * stride_sn + k // GROUP, mask=(rn < N) & (k < k_end), other=0.0).to(tl.float32)  # (BN,)
        if x.shape[0] == 1:
            prod = prod * s[:, None]
        else:
            prod = prod * s[None, :, None]
    return acc + prod


@triton.jit
def _gemv_fma_kernel(X, Q, S, Y, M, N, K, K_SPLIT, stride_xm, stride_qn, stride_sn, stride_ym,
                     INT4: tl.constexpr, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, SUBS: tl.constexpr, SPLIT: tl.constexpr,
                     INTERP: tl.constexpr):
    """Program (pid_n, pid_k) adds x[:, K-slice] @ Ŵ[rn, K-slice]ᵀ to y[:, rn]: all M ≤ BLOCK_M rows
    of x at once (each weight is read once), K_SPLIT inputs of K. With SPLIT (more than one slice)
    the partial sums meet in an fp32 ``Y`` by atomic adds."""
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)                                         # (BM,) all rows of x
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)                       # (BN,) rows of W
    k_start = pid_k * K_SPLIT                                          # this program's slice of K
    k_end = tl.minimum(k_start + K_SPLIT, K)
    BK: tl.constexpr = BLOCK_K // 2 if INT4 else BLOCK_K              # products per row of W and block
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BK), dtype=tl.float32)                # (BN, BK)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N, BK), dtype=tl.float32)       # (BM, BN, BK)
    if INTERP:
        k0 = k_start
        while k0 < k_end:
            for j in tl.static_range(SUBS):
                acc = _fma_block(acc, X, Q, S, rm, rn, k0 + j * BLOCK_K, k_end, M, N, K, stride_xm, stride_qn,
                                 stride_sn, INT4, GROUP, BLOCK_K, EVEN_K)
            k0 += BLOCK_K * SUBS
    else:
        for k0 in tl.range(k_start, k_end, BLOCK_K * SUBS):           # SUBS blocks a step, loads in flight together
            for j in tl.static_range(SUBS):
                acc = _fma_block(acc, X, Q, S, rm, rn, k0 + j * BLOCK_K, k_end, M, N, K, stride_xm, stride_qn,
                                 stride_sn, INT4, GROUP, BLOCK_K, EVEN_K)
    if BLOCK_M == 1:                                                   # the one sum over K: (BM, BN)
        acc = tl.sum(acc, axis=1)[None, :]
    else:
        acc = tl.sum(acc, axis=2)
    if GROUP == 0:                                                     # per-channel: y[:, n] · s[n]
        acc = acc * tl.load(S + rn * stride_sn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    ptrs = Y + rm[:, None] * stride_ym + rn[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if SPLIT:
        tl.atomic_add(ptrs, acc, mask=mask, sem="relaxed")             # Y is fp32, zeroed by the host
    else:
        tl.store(ptrs, acc.to(Y.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# host side: checks, the naive reference, launch
# ------------------------------------------------------------------------------------------------
def _check(x, qdata, scale, bits, kernel: bool = True) -> tuple[int, int, int, int]:
    """Validate the arguments (and, for the ``kernel``, the device); return (M, K, N, group size G)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits!r}")
    for name, t in (("x", x), ("qdata", qdata), ("scale", scale)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
    if x.dtype not in _X_DTYPES + (() if kernel else (torch.float64,)):
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    want = torch.int8 if bits == 8 else torch.uint8
    if qdata.dtype != want:
        raise TypeError(f"qdata must be {want} for bits={bits} (as quantize_int{bits} stores it), got {qdata.dtype}")
    if scale.dtype not in _SCALE_DTYPES:
        raise TypeError(f"scale must be float16, bfloat16 or float32, got {scale.dtype}")
    M, K = x.shape
    N = qdata.shape[0]
    if K == 0 or N == 0:
        raise ValueError(f"x and qdata must be non-empty, got x {tuple(x.shape)} and qdata {tuple(qdata.shape)}")
    k_stored = qdata.shape[1] * (2 if bits == 4 else 1)
    if k_stored != K:
        raise ValueError(f"qdata {tuple(qdata.shape)} holds {k_stored} inputs per row "
                         f"({'two per byte' if bits == 4 else 'one per byte'}), but x has K={K} columns")
    if scale.shape[0] != N or scale.shape[1] == 0 or K % scale.shape[1]:
        raise ValueError(f"scale must be (N, groups) = ({N}, g) with g dividing K={K}, got {tuple(scale.shape)}")
    groups = scale.shape[1]
    G = K // groups
    if kernel and groups > 1 and G % 16:
        raise ValueError(f"the group size K / scale.shape[1] = {G} must be a multiple of 16 (a tensor-core "
                         f"block of K lies inside one group); formats use 32, 64 or 128")
    if bits == 4 and G % 2:
        raise ValueError(f"int4 groups must have an even size (two values per byte), got {G}")
    for name, t in (("x", x), ("qdata", qdata), ("scale", scale)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: put all on one device")
        if kernel:
            require_triton_device(name, t, "quant_gemv")
    return M, K, N, G


def dequant_matmul_reference(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int,
                             dtype: torch.dtype | None = None) -> torch.Tensor:
    """The naive rung: Ŵ = q · s as a dense matrix in fp32 (fp64 if ``dtype`` is float64), then
    ``x @ Ŵᵀ``. Returns ``dtype`` (default ``x.dtype``)."""
    from effsmall.compress.quant import unpack_int4

    M, K, N, G = _check(x, qdata, scale, bits, kernel=False)
    ct = torch.float64 if dtype == torch.float64 or x.dtype == torch.float64 else torch.float32
    q = (qdata if bits == 8 else unpack_int4(qdata)).to(ct)                 # (N, K)
    w = (q.view(N, K // G, G) * scale.to(ct)[..., None]).view(N, K)        # (N, K) Ŵ
    return (x.to(ct) @ w.T).to(dtype or x.dtype)                            # (M, N)


class GemvConfig(dict):
    """Launch parameters of :func:`quant_gemv`: ``block_n`` (outputs per program), ``block_k``
    (largest K block inside one group), ``subs`` (blocks per loop step), ``split_k`` (slices of K
    summed by atomic adds; decode path only), ``num_warps``, ``num_stages``. A dict, so it is saved
    in benchmark JSON as it is."""


#: Up to this many rows of x take the decode path (:func:`_gemv_fma_kernel`); more take tensor cores.
FMA_MAX_M = 4
#: GPU defaults, tensor-core path (M > 4): 32 outputs per program; K walked 256 int8 inputs per
#: step, or 8 blocks of up to 128 int4 inputs. ``python -m effsmall.bench gemv`` times a few others.
GPU_CONFIG = {8: GemvConfig(block_n=32, block_k=128, subs=2, split_k=1, num_warps=4, num_stages=3),
              4: GemvConfig(block_n=32, block_k=128, subs=8, split_k=1, num_warps=4, num_stages=3)}
#: GPU defaults, decode path (M ≤ 4): 8 (int8) or 16 (int4) rows of W per program and K cut in two
#: slices (N/4 or N/8 programs: many per SM), each step 512 int8 or 4 × 64 int4 inputs (512 or 128
#: bytes of every row), two warps.
GPU_FMA_CONFIG = {8: GemvConfig(block_n=8, block_k=128, subs=4, split_k=2, num_warps=2, num_stages=1),
                  4: GemvConfig(block_n=16, block_k=128, subs=4, split_k=2, num_warps=2, num_stages=1)}
#: Interpreter defaults: small blocks, two per step, so both loops run at toy sizes.
CPU_CONFIG = GemvConfig(block_n=16, block_k=16, subs=2, split_k=1, num_warps=1, num_stages=1)


def _block_k(G: int, groups: int, K: int, cap: int) -> int:
    """The largest power of two ≤ ``cap`` (and ≥ 16) that keeps every K block inside one group."""
    if groups == 1:                      # one group per row: any block does; do not exceed K much
        b = 16
        while b * 2 <= min(cap, max(16, K)):
            b *= 2
        return b
    b = 16
    while b * 2 <= cap and G % (b * 2) == 0:
        b *= 2
    return b


def _config(M: int, bits: int, config: dict | None) -> dict:
    """The launch parameters for ``M`` rows: the path's defaults updated by ``config``, checked."""
    fma = M <= FMA_MAX_M
    cfg = dict(CPU_CONFIG if interpreting() else (GPU_FMA_CONFIG if fma else GPU_CONFIG)[bits])
    cfg.update(config or {})
    unknown = set(cfg) - set(CPU_CONFIG)
    if unknown:
        raise ValueError(f"config has unknown keys {sorted(unknown)}; known: {sorted(CPU_CONFIG)}")
    for key, lo in (("block_n", 1), ("block_k", 16), ("subs", 1), ("split_k", 1)):
        v = cfg[key]
        if not isinstance(v, int) or v < lo or (key.startswith("block") and v & (v - 1)):
            raise ValueError(f"config[{key!r}] must be {'a power of two' if key.startswith('block') else 'an integer'}"
                             f" >= {lo}, got {v!r}")
    if not fma:
        cfg["block_n"] = max(16, cfg["block_n"])        # a tensor-core tile has at least 16 columns
    return cfg


def quant_gemv(x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor, bits: int, *,
               config: dict | None = None) -> torch.Tensor:
    """``y = x @ Ŵᵀ`` ``(M, N)`` in ``x.dtype`` for ``x (M, K)`` and a weight stored as
    :func:`~effsmall.compress.quantize_int8` / :func:`~effsmall.compress.quantize_int4` store it
    (``qdata``, ``scale``, ``bits``; see the module docstring); fp32 accumulation, the group scales
    applied to each group's partial sum. Decode (M ≤ :data:`FMA_MAX_M`): :func:`_gemv_fma_kernel`,
    ``block_n`` outputs × one of ``split_k`` slices of K per program. Larger M:
    :func:`_quant_gemv_kernel` on tensor cores, one program per 16 rows of x and ``block_n`` outputs.
    ``config`` overrides the launch parameters (:class:`GemvConfig` keys).
    Runs compiled on CUDA tensors, interpreted on CPU tensors under ``TRITON_INTERPRET=1``.
    Forward only: an ``x`` that requires grad is refused (outside ``torch.no_grad()``)."""
    M, K, N, G = _check(x, qdata, scale, bits)
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError("quant_gemv is forward-only (decoding): x requires grad, but no gradient would flow "
                         "through the kernel; call it under torch.no_grad() or pass x.detach()")
    groups = scale.shape[1]
    cfg = _config(M, bits, config)
    block_k = _block_k(G, groups, K, cfg["block_k"])
    out_dtype = x.dtype
    if interpreting() and x.dtype == torch.bfloat16:     # numpy has no bfloat16: compute in fp32
        x = x.float()
    x = x if x.stride(-1) == 1 else x.contiguous()
    qdata, scale = qdata.contiguous(), scale.contiguous()
    if M <= FMA_MAX_M:
        return _launch_fma(x, qdata, scale, bits, M, K, N, G, groups, block_k, cfg).to(out_dtype)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    block_m = 16 if M <= 16 else 32
    grid = (cdiv(N, cfg["block_n"]), cdiv(M, block_m))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"   # fp32 exact; for fp16/bf16 the flag is unused

    def launch(subs, num_stages):
        _quant_gemv_kernel[grid](x, qdata, scale, y, M, N, K, x.stride(0), qdata.stride(0), scale.stride(0),
                                 y.stride(0), INT4=bits == 4, GROUP=0 if groups == 1 else G, PREC=prec,
                                 BLOCK_M=block_m, BLOCK_N=cfg["block_n"], BLOCK_K=block_k, EVEN_K=K % block_k == 0,
                                 SUBS=subs, num_warps=cfg["num_warps"], num_stages=num_stages, **interp_flag())
    launch_fitting(launch, _tries(cfg), f"quant_gemv (M={M}, K={K}, N={N}, {x.dtype})")
    return y.to(out_dtype)


def _tries(cfg: dict) -> list[dict]:
    """A GPU with less shared memory (a T4 has 64 KB) gets fewer pipeline stages, then fewer blocks per step."""
    tries, subs, stages = [], cfg["subs"], cfg["num_stages"]
    for st in sorted({stages, min(stages, 2), 1}, reverse=True):
        tries.append(dict(subs=subs, num_stages=st))
    while subs > 1:
        subs //= 2
        tries.append(dict(subs=subs, num_stages=1))
    return tries


def _launch_fma(x, qdata, scale, bits, M, K, N, G, groups, block_k, cfg) -> torch.Tensor:
    """The decode path: grid (N / block_n, slices of K); with more than one slice y is an fp32 sum."""
    block_m = triton.next_power_of_2(M)

    def launch(subs, num_stages):
        step = block_k * subs                            # a slice is whole steps, so no block straddles two
        k_split = cdiv(cdiv(K, cfg["split_k"]), step) * step
        splits = cdiv(K, k_split)
        y = (torch.zeros(M, N, device=x.device, dtype=torch.float32) if splits > 1 else
             torch.empty(M, N, device=x.device, dtype=x.dtype))
        _gemv_fma_kernel[(cdiv(N, cfg["block_n"]), splits)](
            x, qdata, scale, y, M, N, K, k_split, x.stride(0), qdata.stride(0), scale.stride(0), y.stride(0),
            INT4=bits == 4, GROUP=0 if groups == 1 else G, BLOCK_M=block_m, BLOCK_N=cfg["block_n"],
            BLOCK_K=block_k, EVEN_K=K % block_k == 0, SUBS=subs, SPLIT=splits > 1,
            num_warps=cfg["num_warps"], num_stages=num_stages, **interp_flag())
        out.append(y)
    out: list = []
    launch_fitting(launch, _tries(cfg), f"quant_gemv (M={M}, K={K}, N={N}, {x.dtype})")
    return out[-1]


def quant_linear(x: torch.Tensor, qt, *, config: dict | None = None) -> torch.Tensor:
    """:func:`quant_gemv` on a :class:`~effsmall.compress.QuantizedTensor`; ``x (..., K)`` → ``(..., N)``."""
    from effsmall.compress.quant import QuantizedTensor

    if not isinstance(qt, QuantizedTensor):
        raise TypeError(f"qt must be a QuantizedTensor (from quantize_int8/quantize_int4), got {type(qt).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    lead = x.shape[:-1]
    y = quant_gemv(x.reshape(-1, x.shape[-1]), qt.data, qt.scale, qt.bits, config=config)   # (M, N)
    return y.view(*lead, y.shape[-1])


def gemv_bytes(M: int, K: int, N: int, bits: int | None, groups: int = 1, x_bytes: int = 2,
               scale_bytes: int = 2) -> int:
    """Bytes one call must move at least: the weights (``bits`` per weight; None: unquantized, in
    x's dtype), their scales, x read and y written. The bandwidth a kernel achieves is this over its time."""
    w = K * N * x_bytes if bits is None else K * N * bits // 8 + N * groups * scale_bytes
    return w + M * K * x_bytes + M * N * x_bytes
