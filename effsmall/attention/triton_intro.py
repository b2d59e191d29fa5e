"""Two first Triton kernels for chapter 7: a vector add and a fused row softmax ({cite}`tillet2019triton`).

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

__all__ = ["vector_add", "softmax_rows"]


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
