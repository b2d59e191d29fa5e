"""A teaching chunked-SSD forward kernel in Triton (chapter 11): one chunk's four steps, in
about twenty-five lines, before the production :mod:`effsmall.ssm.ssd_kernels` kernel.

Mamba-2's SSD ({cite}`dao2024mamba2` §6) with the state ``h ∈ R^{P×N}`` of one (batch,
head) kept in registers while the program walks the chunks of ``Q`` steps in order. Per chunk,
with ``cs_t = a_0 + … + a_t`` the cumulative log decay inside the chunk:

1. **diagonal block** — ``Y = (L ∘ C Bᵀ) X`` with ``L[t, s] = exp(cs_t − cs_s)`` for ``s ≤ t``;
2. **chunk state** — ``Σ_t exp(cs_last − cs_t) x_t B_tᵀ``, what the chunk writes into the state;
3. **state passing** — ``h ← exp(cs_last) h + chunk state``, the recurrence over chunks;
4. **state to output** — ``Y += exp(cs_t) · C_t hᵀ`` with the state that entered the chunk.

Steps 2 and 3 are one line (one ``tl.dot``); step 4 runs before them because it needs the state
entering the chunk. Only ``Y`` and the final state are written to HBM. The production kernel
adds what this one refuses: any length (masked loads), sequence boundaries (``seq_idx``),
initial states, Mamba's ``x·Δ`` scaling folded in (``SCALE_ROLE``), the backward passes'
epilogues (``EPILOGUE``, ``STORE_Y_FP32``), 64-bit offsets (``TIME_OFFSETS_INT64``), exact fp32
dots (``IEEE_FP32``) and a split of the time axis into segments for parallelism.

Restrictions: contiguous inputs, ``l`` a multiple of ``chunk_size``, ``chunk_size``, ``p`` and
``n`` powers of two ≥ 16, fp32 or fp16 (bf16 is computed in fp32 under the interpreter). ``L``
is a compile-time constant (one compilation per length), as in chapter 7's minimal kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effsmall.launch import launch_fitting
from effsmall.runtime import interpreting, require_triton_device
from effsmall.ssm._ssd_checks import check_ssd_inputs

__all__ = ["ssd_minimal"]


@triton.jit
def _ssd_minimal_kernel(X, A, B, C, Y, HF, L: tl.constexpr, H: tl.constexpr, G: tl.constexpr,
                        P: tl.constexpr, N: tl.constexpr, Q: tl.constexpr):
    bi, hi = tl.program_id(0) // H, tl.program_id(0) % H           # one program per (batch, head)
    gi = hi // (H // G)                                             # B and C are shared by a group
    offs_q, offs_p, offs_n = tl.arange(0, Q), tl.arange(0, P), tl.arange(0, N)
    h = tl.zeros((P, N), dtype=tl.float32)                          # the state, in registers
    for c0 in range(0, L, Q):                                       # the chunks, in order
        row = bi * L + c0 + offs_q                                  # (Q,) rows of the (b·l) axis
        x_ptrs = ((row * H + hi) * P)[:, None] + offs_p[None, :]    # (Q, P)
        x = tl.load(X + x_ptrs)                                     # (Q, P)
        a = tl.load(A + row * H + hi)                               # (Q,) log decays
        bm = tl.load(B + ((row * G + gi) * N)[:, None] + offs_n[None, :])   # (Q, N)
        cm = tl.load(C + ((row * G + gi) * N)[:, None] + offs_n[None, :])   # (Q, N)
        cs = tl.cumsum(a, 0)                                        # (Q,) cs_t = a_0 + ... + a_t
        cs_last = tl.sum(a, 0)                                      # log decay across the chunk
        causal = offs_q[:, None] >= offs_q[None, :]
        lmat = tl.exp(tl.where(causal, cs[:, None] - cs[None, :], float("-inf")))   # (Q, Q) L block
        y = tl.dot((tl.dot(cm, tl.trans(bm)) * lmat).to(x.dtype), x)        # 1. diagonal block (Q, P)
        y += tl.dot(cm, tl.trans(h).to(cm.dtype)) * tl.exp(cs)[:, None]     # 4. state to output
        tl.store(Y + x_ptrs, y.to(Y.dtype.element_ty))
        xw = (x * tl.exp(cs_last - cs)[:, None]).to(bm.dtype)      # (Q, P) x_t decayed to the chunk's end
        h = h * tl.exp(cs_last) + tl.dot(tl.trans(xw), bm)          # 2. chunk state + 3. state passing
    tl.store(HF + tl.program_id(0) * P * N + offs_p[:, None] * N + offs_n[None, :], h)


def ssd_minimal(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                chunk_size: int = 16, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD forward with ``_ssd_minimal_kernel``: ``X (b, l, h, p)``, ``A (b, l, h)`` log
    decays ≤ 0, ``B, C (b, l, g, n)``. Returns ``(Y (b, l, h, p)`` in X's dtype,
    ``final_states (b, h, p, n)`` fp32), the same as :func:`effsmall.ssm.ssd_chunked` without
    initial states or ``seq_idx``. Forward only; see the module docstring for the restrictions.
    ``num_warps`` (GPU): warps per program, default 4, or 8 when the state has more than 4096 entries."""
    b, l, h, p, g, n = check_ssd_inputs(X, A, B, C, None, None, chunk_size)
    for name, t in (("X", X), ("A", A), ("B", B), ("C", C)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise TypeError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
        require_triton_device(name, t, "ssd_minimal")
    if not (X.dtype == B.dtype == C.dtype):
        raise TypeError(f"X, B, C must share a dtype, got X {X.dtype}, B {B.dtype}, C {C.dtype}")
    for name, v in (("chunk_size", chunk_size), ("the head dim p", p), ("the state size n", n)):
        if v < 16 or v & (v - 1):
            raise ValueError(f"ssd_minimal needs {name} to be a power of two >= 16, got {v}")
    if l % chunk_size:
        raise ValueError(f"ssd_minimal needs the length l={l} to be a multiple of chunk_size={chunk_size} "
                         f"(it has no masks); use ssd_triton for any length")
    dtype = X.dtype
    if interpreting() and dtype == torch.bfloat16:   # numpy has no bfloat16
        X, B, C = X.float(), B.float(), C.float()
    X, B, C, A = X.contiguous(), B.contiguous(), C.contiguous(), A.float().contiguous()
    Y = torch.empty_like(X)
    final = torch.empty(b, h, p, n, device=X.device, dtype=torch.float32)

    def launch(num_stages):    # one program per (batch, head)
        _ssd_minimal_kernel[(b * h,)](X, A, B, C, Y, final, L=l, H=h, G=g, P=p, N=n, Q=chunk_size,
                                      num_warps=num_warps or (4 if p * n <= 4096 else 8), num_stages=num_stages)
    launch_fitting(launch, [dict(num_stages=3), dict(num_stages=1)],
                   f"ssd_minimal (chunk_size={chunk_size}, p={p}, n={n}, {X.dtype}); a smaller chunk_size uses less")
    return Y.to(dtype), final
