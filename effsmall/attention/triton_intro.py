"""First Triton kernels for chapter 7: a vector add, a fused row softmax and a tiled matmul ({cite}`tillet2019triton`).

Triton's programming model: a kernel is a Python function decorated with ``@triton.jit``; it
is launched on a *grid* of programs (``kernel[grid](...)``), and each program works on whole
blocks — ``tl.arange(0, BLOCK)`` is a vector of offsets, ``tl.load``/``tl.store`` move a block
between main memory (HBM) and registers, masks guard the ragged end. The compiler maps a
block onto the threads of one thread block (``num_warps`` warps of 32 threads), vectorizes
the loads and, for ``tl.dot``, emits tensor-core instructions. Both kernels run on CPU under
``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.launch import launch_fitting, shrinking
from effsmall.runtime import interpreting, require_triton_device

__all__ = ["vector_add", "softmax_rows", "matmul"]


@triton.jit
def _add_kernel(X, Y, Z, n, BLOCK: tl.constexpr):
    pid = tl.program_id(0)                       # which block of the vector this program owns
    offs = pid * BLOCK + tl.arange(0, BLOCK)     # (BLOCK,) element offsets
    mask = offs < n                              # the last block may run past the end
    x = tl.load(X + offs, mask=mask)             # HBM -> registers (coalesced, vectorized)
    y = tl.load(Y + offs, mask=mask)
    tl.store(Z + offs, x + y, mask=mask)         # registers -> HBM


def vector_add(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``x + y`` for 1-D tensors, one program per ``block`` elements."""
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"x and y must be 1-D of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    z = torch.empty_like(x)
    _add_kernel[(triton.cdiv(x.numel(), block),)](x, y, z, x.numel(), BLOCK=block)
    return z


@triton.jit
def _softmax_kernel(X, Y, n_cols, stride_x, stride_y, BLOCK: tl.constexpr):
    row = tl.program_id(0)                                   # one program per row
    cols = tl.arange(0, BLOCK)                               # (BLOCK,) the whole row in registers
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, 0)                                     # safe softmax: subtract the row max
    e = tl.exp(x)                                            # -inf padding -> 0
    y = e / tl.sum(e, 0)                                     # reductions stay on chip
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """Row softmax of a 2-D tensor in one pass over HBM (read once, write once): the row
    lives in registers, so the max, the exponentials and the sum never touch main memory."""
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D, got shape {tuple(x.shape)}")
    x = x.contiguous()
    y = torch.empty_like(x)
    _softmax_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), y.stride(0),
                                   BLOCK=triton.next_power_of_2(x.shape[1]))
    return y


@triton.jit
def _matmul_kernel(A, B, C, M, N, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   K: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)        # this program owns C[pid_m, pid_n]
    a_blk = tl.make_block_ptr(A, shape=(M, K), strides=(stride_am, stride_ak), offsets=(pid_m * BLOCK_M, 0),
                              block_shape=(BLOCK_M, BLOCK_K), order=(1, 0))   # a row panel of A
    b_blk = tl.make_block_ptr(B, shape=(K, N), strides=(stride_bk, stride_bn), offsets=(0, pid_n * BLOCK_N),
                              block_shape=(BLOCK_K, BLOCK_N), order=(1, 0))   # a column panel of B
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)     # the C tile stays in registers
    for _ in range(0, K, BLOCK_K):
        a = tl.load(a_blk, boundary_check=(0, 1), padding_option="zero")   # (BLOCK_M, BLOCK_K)
        b = tl.load(b_blk, boundary_check=(0, 1), padding_option="zero")   # (BLOCK_K, BLOCK_N)
        acc += tl.dot(a, b, input_precision=PREC)            # tensor cores, fp32 accumulation
        a_blk = tl.advance(a_blk, (0, BLOCK_K))              # slide along K
        b_blk = tl.advance(b_blk, (BLOCK_K, 0))
    c_blk = tl.make_block_ptr(C, shape=(M, N), strides=(stride_cm, stride_cn), offsets=(pid_m * BLOCK_M, pid_n * BLOCK_N),
                              block_shape=(BLOCK_M, BLOCK_N), order=(1, 0))
    tl.store(c_blk, acc.to(C.dtype.element_ty), boundary_check=(0, 1))   # one write per C element


def matmul(a: torch.Tensor, b: torch.Tensor, *, block_m: int = 64, block_n: int = 64, block_k: int = 32,
           num_warps: int = 4, num_stages: int = 3) -> torch.Tensor:
    """``a @ b`` for 2-D ``a`` (M, K) and ``b`` (K, N) with one program per ``block_m × block_n`` tile of C.

    Why tiles: computed one element at a time, ``C[i, j] = Σ_k A[i, k] B[k, j]`` reads 2K numbers
    from HBM for 2K FLOPs — one FLOP per number loaded, far below what a GPU needs to keep its
    tensor cores busy (hundreds of FLOPs per number on an H100). A program that owns a
    ``BM × BN`` tile of C and walks K in steps of ``BK`` reads ``(BM + BN)·BK`` numbers per step
    and does ``2·BM·BN·BK`` FLOPs with them: the arithmetic intensity grows with the tile side
    (``2·BM·BN / (BM + BN)`` FLOPs per number, 64 for 64 × 64 tiles). The tile of C never leaves
    the registers until it is finished. Block pointers (``tl.make_block_ptr``/``tl.advance``)
    describe each panel as a 2-D window into a strided matrix; ``boundary_check`` zero-pads
    the ragged edges, so any M, N, K work. ``K`` is a compile-time constant (``tl.constexpr``):
    the loop has a known trip count, and one compiled kernel serves every M and N. fp16/bf16 multiply on tensor cores with fp32
    accumulation; fp32 follows ``torch.get_float32_matmul_precision`` (exact under "highest").
    ``num_warps``/``num_stages`` are the GPU launch's warps per program and software-pipeline depth;
    a configuration that needs more shared memory than the GPU has falls back to one stage, then
    to smaller tiles (:func:`effsmall.launch.launch_fitting`).
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        require_triton_device(name, t, "matmul")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a's columns ({a.shape[1]}) must equal b's rows ({b.shape[0]})")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must share a dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    for name, blk in (("block_m", block_m), ("block_n", block_n), ("block_k", block_k)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {blk}")
    out_dtype = a.dtype
    if interpreting() and a.dtype == torch.bfloat16:  # numpy has no bfloat16: compute in fp32
        a, b = a.float(), b.float()
    (M, K), N = a.shape, b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    # fp32: exact ("ieee") under precision "highest" and in the interpreter, else TF32; fp16/bf16 always
    # multiply on tensor cores (the flag only matters for fp32 inputs)
    exact = interpreting() or (a.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest")

    def launch(block_m, block_n, num_stages):    # one program per tile of C
        grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
        _matmul_kernel[grid](a, b, c, M, N, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                             c.stride(0), c.stride(1), K=K, PREC="ieee" if exact else "tf32",
                             BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                             num_warps=num_warps, num_stages=num_stages)
    launch_fitting(launch, [dict(block_m=m, block_n=n, num_stages=s) for m, n, s in shrinking(block_m, block_n, num_stages)],
                   f"matmul ({a.dtype})")
    return c.to(out_dtype)
