"""FlashAttention-2 in Triton: forward and backward kernels in a ``torch.autograd.Function``.

References: {cite}`dao2022flashattention` (tiling + recomputation), {cite}`dao2023flashattention2`
(§3.1 forward with the outer loop over query blocks, §3.2 backward, §3.3 parallelism),
{cite}`tillet2019triton` (the language).

Notation (book/notation.md): for a block of ``BLOCK_M`` query rows the forward keeps, per row,
the running maximum ``m_i`` and running sum ``l_i`` of the online softmax and an unnormalized
output ``acc``; after the last key block ``O_i = acc / l_i`` and ``lse_i = m_i + log l_i``.
Scores are kept in base 2: ``s = (q·k) · scale · log2(e)`` so each exponential is one ``exp2``.

Masking: key ``j`` is visible from query ``i`` iff ``j < Nk`` and
``i + off + lo <= j <= i + off + hi`` with ``off = Nk - Nq`` (bottom-right alignment),
``(lo, hi) = (-left, right)`` from ``window`` (±∞ when absent) and ``hi <= 0`` when causal.
Each program splits its key range into blocks that are *fully visible* (no mask arithmetic at
all) and *boundary* blocks (diagonal, window edge, last partial block) where the mask is built;
invisible blocks are never visited (causal block skipping). A query row that sees no key
returns zeros (``l_i = 0``), and stores ``lse = +inf`` internally so the backward's
``P = exp(S - lse)`` is 0 for it; the public functions return the package's ``-inf``
(:mod:`effsmall.attention.contract`).

Backward (FA2 §3.2): a preprocess kernel computes ``Delta_i = rowsum(dO_i ∘ O_i)``; one
kernel per key block loops over the query blocks (and over the ``Hq/Hk`` query heads of its
GQA group, so dK and dV are reduced in registers without atomics) and accumulates
``dV += Pᵀ dO`` and ``dK += dSᵀ Q``; another per query block accumulates ``dQ += dS K``, with
``dS = P ∘ (dP − Delta)``, ``dP = dO Vᵀ``.

Where it runs: CUDA tensors on GPUs of compute capability ≥ 8.0 (autotuned); CPU tensors under
the Triton interpreter (``TRITON_INTERPRET=1``, one fixed configuration, fp32/fp16 — bfloat16
inputs are computed in fp32 there and cast back, with a one-time warning). On older GPUs
(Turing T4, sm75) Triton ≥ 3.3 has no tensor-core ``tl.dot``; there the function warns once
and computes with the pure-torch :func:`effsmall.attention.tiled_attention` (autograd
through it gives the gradients) — correct, not fast.
Head dims 16..256 are supported; non-powers of two (96, 192) are padded to the next power of
two inside the kernels with masked loads. On Hopper GPUs (sm90) :func:`flash_attention` runs the
forward of :mod:`effsmall.attention.flash_hopper` where that rung was measured to be faster
(:func:`~effsmall.attention.flash_hopper.dispatch_reason`) and this module's backward on its
outputs; ``hopper=False`` or ``EFFSMALL_HOPPER=0`` keep this module's forward.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from effsmall.attention.contract import check_attention, check_kernel_tensors, window_bounds
from effsmall.runtime import (cdiv, interp_flag, interpreting, next_power_of_2, require_triton_device,
                              tensor_cores_in_triton, warn_once)

__all__ = ["flash_attention", "flash_attention_forward", "flash_attention_backward", "check_flash_inputs",
           "block_schedule", "backend", "launch_forward", "launch_backward", "fallback_reason", "KernelBand",
           "LaunchPlan", "LOG2E", "SUPPORTED_HEAD_DIMS"]

#: log₂ e: ``e^x = 2^(x · LOG2E)``. Scores and running maxima live in base 2 inside the kernels,
#: the log-sum-exp they store in base e (``lse = m₂ / LOG2E``). ``LOG2E.value`` on the host.
LOG2E = tl.constexpr(1.4426950408889634)
_BIG = 1 << 30  # "no window edge": far beyond any sequence length, still safe in int32


# ---------------------------------------------------------------------------------------------
# Index arithmetic (shared by the forward and backward kernels)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _visible(offs_m, offs_n, n_len, OFF, LO, HI):
    """Boolean (BLOCK_M, BLOCK_N): query offs_m sees key offs_n."""
    rel = offs_n[None, :] - offs_m[:, None] - OFF                     # (BLOCK_M, BLOCK_N) j - i - off
    return (offs_n[None, :] < n_len) & (rel >= LO) & (rel <= HI)


@triton.jit
def _key_ranges(m0, m_last, n_len, OFF, LO, HI, BLOCK_N: tl.constexpr):
    """Key blocks a query block [m0, m_last] visits: [start, full_lo) boundary, [full_lo, full_hi)
    fully visible, [full_hi, end) boundary. All multiples of BLOCK_N except ``end``."""
    k_lo = tl.maximum(m0 + OFF + LO, 0)
    k_hi = tl.minimum(m_last + OFF + HI + 1, n_len)
    k_hi = tl.maximum(k_hi, k_lo)
    start = (k_lo // BLOCK_N) * BLOCK_N
    full_lo = tl.cdiv(tl.maximum(m_last + OFF + LO, k_lo), BLOCK_N) * BLOCK_N
    full_hi = (tl.minimum(m0 + OFF + HI + 1, k_hi) // BLOCK_N) * BLOCK_N
    end_blk = tl.cdiv(k_hi, BLOCK_N) * BLOCK_N
    no_full = full_hi <= full_lo
    full_lo = tl.where(no_full, end_blk, full_lo)
    full_hi = tl.where(no_full, end_blk, full_hi)
    return start, full_lo, full_hi, k_hi


@triton.jit
def _query_ranges(n0, n_last, m_len, OFF, LO, HI, BLOCK_M: tl.constexpr):
    """Query blocks a key block [n0, n_last] is seen from (the transpose of ``_key_ranges``)."""
    q_lo = tl.maximum(n0 - OFF - HI, 0)
    q_hi = tl.minimum(n_last - OFF - LO + 1, m_len)
    q_hi = tl.maximum(q_hi, q_lo)
    start = (q_lo // BLOCK_M) * BLOCK_M
    full_lo = tl.cdiv(tl.maximum(n_last - OFF - HI, q_lo), BLOCK_M) * BLOCK_M
    full_hi = (tl.minimum(n0 - OFF - LO + 1, q_hi) // BLOCK_M) * BLOCK_M
    end_blk = tl.cdiv(q_hi, BLOCK_M) * BLOCK_M
    no_full = full_hi <= full_lo
    full_lo = tl.where(no_full, end_blk, full_lo)
    full_hi = tl.where(no_full, end_blk, full_hi)
    return start, full_lo, full_hi, q_hi


@triton.jit
def _seq_bounds(cu_ptr, b, N, VARLEN: tl.constexpr):
    """(start row, length) of sequence b: packed (cu_seqlens) or dense (0, N)."""
    if VARLEN:
        start = tl.load(cu_ptr + b)
        length = tl.load(cu_ptr + b + 1) - start
    else:
        start = tl.full([], 0, tl.int32)
        length = N + start
    return start, length


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, n0,
              n_len, OFF, LO, HI, qk_scale,
              MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax (FA2 Algorithm 1, inner loop body)."""
    offs_n = n0 + tl.arange(0, BLOCK_N)                                # (BLOCK_N,) key rows
    d_ok = offs_d[None, :] < D                                         # (1, BLOCK_D)
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
    if MASKED:
        n_ok = offs_n[:, None] < n_len
        k = tl.load(k_ptrs, mask=n_ok & d_ok, other=0.0)              # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptrs, mask=n_ok & d_ok, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok, other=0.0)
        v = tl.load(v_ptrs, mask=d_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (BLOCK_M, BLOCK_N) fp32 q·k
    if MASKED:
        s = tl.where(_visible(offs_m, offs_n, n_len, OFF, LO, HI), s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                          # (BLOCK_M,)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)           # fully masked row: no NaN
        p = tl.math.exp2(s - m_use[:, None])                           # (BLOCK_M, BLOCK_N)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = m_new
        p = tl.math.exp2(s * qk_scale - m_use[:, None])                # one FMA + exp2 per score
    alpha = tl.math.exp2(m_i - m_use)                                  # (BLOCK_M,) rescale old stats
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)  # (BLOCK_M, BLOCK_D)
    return acc, l_i, m_new


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
               lo, hi, n_len, OFF, LO, HI, qk_scale,
               MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
               BLOCK_N: tl.constexpr, INTERP: tl.constexpr):
    """Key blocks lo, lo + BLOCK_N, ... < hi: a pipelined ``for`` loop compiled, a ``while`` loop
    interpreted (``INTERP``, :data:`effsmall.runtime.INTERP_FLAG`)."""
    if INTERP:
        n0 = lo
        while n0 < hi:
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                                      n0, n_len, OFF, LO, HI, qk_scale, MASKED, EVEN_D, D, PREC, BLOCK_N)
            n0 += BLOCK_N
    else:
        for n0 in tl.range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                                      n0, n_len, OFF, LO, HI, qk_scale, MASKED, EVEN_D, D, PREC, BLOCK_N)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["Nq", "Nk", "LO", "HI"])
def _fwd_kernel(Q, K, V, O, LSE, CU_Q, CU_K,
                stride_qb, stride_qh, stride_qn,
                stride_kb, stride_kh, stride_kn,
                stride_vb, stride_vh, stride_vn,
                stride_ob, stride_oh, stride_on,
                stride_lb, stride_lh,
                H, GROUP, Nq, Nk, LO, HI, qk_scale, N_BUCKET,
                D: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, INTERP: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP                                                    # GQA: index, never copy
    q_start, m_len = _seq_bounds(CU_Q, b, Nq, VARLEN)
    k_start, n_len = _seq_bounds(CU_K, b, Nk, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= m_len:
        return
    OFF = n_len - m_len                                                # bottom-right alignment
    m_last = tl.minimum(m0 + BLOCK_M, m_len) - 1
    EVEN_D: tl.constexpr = D == BLOCK_D

    b64 = b.to(tl.int64)
    q_base = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qn
    k_base = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    o_base = O + b64 * stride_ob + h.to(tl.int64) * stride_oh + q_start.to(tl.int64) * stride_on
    lse_base = LSE + b64 * stride_lb + h.to(tl.int64) * stride_lh + q_start

    offs_m = m0 + tl.arange(0, BLOCK_M)                                # (BLOCK_M,)
    offs_d = tl.arange(0, BLOCK_D)                                     # (BLOCK_D,) padded head dim
    qo_mask = (offs_m[:, None] < m_len) & (offs_d[None, :] < D)        # (BLOCK_M, BLOCK_D)
    q = tl.load(q_base + offs_m[:, None] * stride_qn + offs_d[None, :], mask=qo_mask, other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)                              # running sum
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)                     # unnormalized O

    start, full_lo, full_hi, end = _key_ranges(m0, m_last, n_len, OFF, LO, HI, BLOCK_N)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               start, full_lo, n_len, OFF, LO, HI, qk_scale,
                               True, EVEN_D, D, PREC, BLOCK_N, INTERP)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               full_lo, full_hi, n_len, OFF, LO, HI, qk_scale,
                               False, EVEN_D, D, PREC, BLOCK_N, INTERP)
    acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                               full_hi, end, n_len, OFF, LO, HI, qk_scale,
                               True, EVEN_D, D, PREC, BLOCK_N, INTERP)

    empty = l_i == 0.0                                                 # row saw no key
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]                                          # (BLOCK_M, BLOCK_D); zeros if empty
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)
    tl.store(o_base + offs_m[:, None] * stride_on + offs_d[None, :], o.to(O.dtype.element_ty), mask=qo_mask)
    tl.store(lse_base + offs_m, lse, mask=offs_m < m_len)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=["Nq"])
def _bwd_preprocess(O, DO, DELTA, CU_Q,
                    stride_ob, stride_oh, stride_on,
                    stride_dob, stride_doh, stride_don,
                    stride_lb, stride_lh, H, Nq,
                    D: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, BLOCK_M: tl.constexpr):
    """Delta_i = rowsum(dO_i ∘ O_i) (FA2 §3.2), fp32, laid out like lse."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    q_start, m_len = _seq_bounds(CU_Q, b, Nq, VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < m_len) & (offs_d[None, :] < D)
    b64 = b.to(tl.int64)
    rows = (q_start + offs_m).to(tl.int64)
    o = tl.load(O + b64 * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b64 * stride_dob + h * stride_doh + rows[:, None] * stride_don + offs_d[None, :],
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)            # (BLOCK_M,)
    tl.store(DELTA + b64 * stride_lb + h * stride_lh + q_start + offs_m, delta, mask=offs_m < m_len)


@triton.jit
def _bwd_dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                   offs_n, offs_d, m0, m_len, n_len, OFF, LO, HI, qk_scale,
                   MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr):
    """One query block's contribution to dK, dV of a key block (computed transposed: Sᵀ, Pᵀ)."""
    offs_m = m0 + tl.arange(0, BLOCK_M)                                # (BLOCK_M,) query rows
    d_ok = offs_d[None, :] < D
    q_ptrs = q_base + offs_m[:, None] * stride_qn + offs_d[None, :]
    do_ptrs = do_base + offs_m[:, None] * stride_don + offs_d[None, :]
    if MASKED:
        m_ok = offs_m < m_len
        q = tl.load(q_ptrs, mask=m_ok[:, None] & d_ok, other=0.0)       # (BLOCK_M, BLOCK_D)
        do = tl.load(do_ptrs, mask=m_ok[:, None] & d_ok, other=0.0)
        lse = tl.load(lse_base + offs_m, mask=m_ok, other=float("inf"))
        delta = tl.load(delta_base + offs_m, mask=m_ok, other=0.0)
    else:
        if EVEN_D:
            q = tl.load(q_ptrs)
            do = tl.load(do_ptrs)
        else:
            q = tl.load(q_ptrs, mask=d_ok, other=0.0)
            do = tl.load(do_ptrs, mask=d_ok, other=0.0)
        lse = tl.load(lse_base + offs_m)
        delta = tl.load(delta_base + offs_m)
    sT = tl.dot(k, tl.trans(q), input_precision=PREC)  # (BLOCK_N, BLOCK_M) Sᵀ unscaled
    pT = tl.math.exp2(sT * qk_scale - (lse * LOG2E)[None, :])  # Pᵀ
    if MASKED:
        vis = _visible(offs_m, offs_n, n_len, OFF, LO, HI)             # (BLOCK_M, BLOCK_N)
        pT = tl.where(tl.trans(vis), pT, 0.0)
    dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)  # (BLOCK_N, BLOCK_D)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)  # (BLOCK_N, BLOCK_M) dPᵀ
    dsT = pT * (dpT - delta[None, :])                                  # dSᵀ (without scale)
    dk += tl.dot(dsT.to(q.dtype), q, input_precision=PREC)  # (BLOCK_N, BLOCK_D)
    return dk, dv


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                    offs_n, offs_d, lo, hi, m_len, n_len, OFF, LO, HI, qk_scale,
                    MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                    BLOCK_M: tl.constexpr, INTERP: tl.constexpr):
    if INTERP:
        m0 = lo
        while m0 < hi:
            dk, dv = _bwd_dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                    offs_n, offs_d, m0, m_len, n_len, OFF, LO, HI, qk_scale,
                                    MASKED, EVEN_D, D, PREC, BLOCK_M)
            m0 += BLOCK_M
    else:
        for m0 in tl.range(lo, hi, BLOCK_M):
            dk, dv = _bwd_dkdv_step(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                    offs_n, offs_d, m0, m_len, n_len, OFF, LO, HI, qk_scale,
                                    MASKED, EVEN_D, D, PREC, BLOCK_M)
    return dk, dv


@triton.jit(do_not_specialize=["Nq", "Nk", "LO", "HI"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K,
                     stride_qb, stride_qh, stride_qn,
                     stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn,
                     stride_dob, stride_doh, stride_don,
                     stride_dkb, stride_dkh, stride_dkn,
                     stride_dvb, stride_dvh, stride_dvn,
                     stride_lb, stride_lh,
                     HK, GROUP, Nq, Nk, LO, HI, qk_scale, sm_scale, N_BUCKET,
                     D: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, INTERP: tl.constexpr,
                     PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, batch, kv head): loops over the GROUP query heads and the
    query blocks that see this key block; dK, dV accumulate in fp32 registers."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HK
    hk = pid_bh % HK
    q_start, m_len = _seq_bounds(CU_Q, b, Nq, VARLEN)
    k_start, n_len = _seq_bounds(CU_K, b, Nk, VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 >= n_len:
        return
    OFF = n_len - m_len
    n_last = tl.minimum(n0 + BLOCK_N, n_len) - 1
    EVEN_D: tl.constexpr = D == BLOCK_D
    b64 = b.to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (offs_n[:, None] < n_len) & (offs_d[None, :] < D)
    k_rows = k_start.to(tl.int64) + offs_n
    k = tl.load(K + b64 * stride_kb + hk.to(tl.int64) * stride_kh + k_rows[:, None] * stride_kn + offs_d[None, :],
                mask=kv_mask, other=0.0)                               # (BLOCK_N, BLOCK_D)
    v = tl.load(V + b64 * stride_vb + hk.to(tl.int64) * stride_vh + k_rows[:, None] * stride_vn + offs_d[None, :],
                mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    start, full_lo, full_hi, end = _query_ranges(n0, n_last, m_len, OFF, LO, HI, BLOCK_M)
    g = tl.full([], 0, tl.int32)
    while g < GROUP:                                                   # query heads of this kv head
        h = (hk * GROUP + g).to(tl.int64)
        q_base = Q + b64 * stride_qb + h * stride_qh + q_start.to(tl.int64) * stride_qn
        do_base = DO + b64 * stride_dob + h * stride_doh + q_start.to(tl.int64) * stride_don
        lse_base = LSE + b64 * stride_lb + h * stride_lh + q_start
        delta_base = DELTA + b64 * stride_lb + h * stride_lh + q_start
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, start, full_lo, m_len, n_len, OFF, LO, HI, qk_scale,
                                 True, EVEN_D, D, PREC, BLOCK_M, INTERP)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, full_lo, full_hi, m_len, n_len, OFF, LO, HI, qk_scale,
                                 False, EVEN_D, D, PREC, BLOCK_M, INTERP)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qn, stride_don,
                                 offs_n, offs_d, full_hi, end, m_len, n_len, OFF, LO, HI, qk_scale,
                                 True, EVEN_D, D, PREC, BLOCK_M, INTERP)
        g += 1
    dk = dk * sm_scale                                                 # dS was unscaled
    tl.store(DK + b64 * stride_dkb + hk.to(tl.int64) * stride_dkh + k_rows[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b64 * stride_dvb + hk.to(tl.int64) * stride_dvh + k_rows[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.jit
def _bwd_dq_step(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, n0,
                 n_len, OFF, LO, HI, qk_scale,
                 MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """One key block's contribution to dQ of a query block."""
    offs_n = n0 + tl.arange(0, BLOCK_N)
    d_ok = offs_d[None, :] < D
    k_ptrs = k_base + offs_n[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_base + offs_n[:, None] * stride_vn + offs_d[None, :]
    if MASKED:
        n_ok = offs_n[:, None] < n_len
        k = tl.load(k_ptrs, mask=n_ok & d_ok, other=0.0)              # (BLOCK_N, BLOCK_D)
        v = tl.load(v_ptrs, mask=n_ok & d_ok, other=0.0)
    elif EVEN_D:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    else:
        k = tl.load(k_ptrs, mask=d_ok, other=0.0)
        v = tl.load(v_ptrs, mask=d_ok, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
    p = tl.math.exp2(s * qk_scale - lse2[:, None])
    if MASKED:
        p = tl.where(_visible(offs_m, offs_n, n_len, OFF, LO, HI), p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)  # (BLOCK_M, BLOCK_N)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)  # (BLOCK_M, BLOCK_D)
    return dq


@triton.jit
def _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                  lo, hi, n_len, OFF, LO, HI, qk_scale,
                  MASKED: tl.constexpr, EVEN_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                  BLOCK_N: tl.constexpr, INTERP: tl.constexpr):
    if INTERP:
        n0 = lo
        while n0 < hi:
            dq = _bwd_dq_step(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, n0,
                              n_len, OFF, LO, HI, qk_scale, MASKED, EVEN_D, D, PREC, BLOCK_N)
            n0 += BLOCK_N
    else:
        for n0 in tl.range(lo, hi, BLOCK_N):
            dq = _bwd_dq_step(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d, n0,
                              n_len, OFF, LO, HI, qk_scale, MASKED, EVEN_D, D, PREC, BLOCK_N)
    return dq


@triton.jit(do_not_specialize=["Nq", "Nk", "LO", "HI"])
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K,
                   stride_qb, stride_qh, stride_qn,
                   stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn,
                   stride_dob, stride_doh, stride_don,
                   stride_dqb, stride_dqh, stride_dqn,
                   stride_lb, stride_lh,
                   H, GROUP, Nq, Nk, LO, HI, qk_scale, sm_scale, N_BUCKET,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr, INTERP: tl.constexpr,
                   PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    q_start, m_len = _seq_bounds(CU_Q, b, Nq, VARLEN)
    k_start, n_len = _seq_bounds(CU_K, b, Nk, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 >= m_len:
        return
    OFF = n_len - m_len
    m_last = tl.minimum(m0 + BLOCK_M, m_len) - 1
    EVEN_D: tl.constexpr = D == BLOCK_D
    b64 = b.to(tl.int64)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < m_len) & (offs_d[None, :] < D)
    rows = q_start.to(tl.int64) + offs_m
    q = tl.load(Q + b64 * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qn + offs_d[None, :],
                mask=mask, other=0.0)
    do = tl.load(DO + b64 * stride_dob + h.to(tl.int64) * stride_doh + rows[:, None] * stride_don + offs_d[None, :],
                 mask=mask, other=0.0)
    l_off = b64 * stride_lb + h.to(tl.int64) * stride_lh + q_start + offs_m
    lse2 = tl.load(LSE + l_off, mask=offs_m < m_len, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + l_off, mask=offs_m < m_len, other=0.0)
    k_base = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kn
    v_base = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vn
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    start, full_lo, full_hi, end = _key_ranges(m0, m_last, n_len, OFF, LO, HI, BLOCK_N)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       start, full_lo, n_len, OFF, LO, HI, qk_scale, True, EVEN_D, D, PREC, BLOCK_N, INTERP)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       full_lo, full_hi, n_len, OFF, LO, HI, qk_scale, False, EVEN_D, D, PREC, BLOCK_N, INTERP)
    dq = _bwd_dq_inner(dq, q, do, lse2, delta, k_base, v_base, stride_kn, stride_vn, offs_m, offs_d,
                       full_hi, end, n_len, OFF, LO, HI, qk_scale, True, EVEN_D, D, PREC, BLOCK_N, INTERP)
    dq = dq * sm_scale
    tl.store(DQ + b64 * stride_dqb + h.to(tl.int64) * stride_dqh + rows[:, None] * stride_dqn + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Configurations: autotuned on GPUs, one fixed configuration in the interpreter
# ---------------------------------------------------------------------------------------------
def _smem_bytes(cfg: triton.Config, block_d: int, elt: int, kind: str) -> int:
    """Rough shared-memory need of a config: pipelined K and V tiles (+ the resident tile)."""
    bm, bn, st = cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_N"], max(cfg.num_stages, 1)
    if kind == "fwd":
        return st * 2 * bn * block_d * elt + bm * block_d * elt
    if kind == "dq":
        return st * 2 * bn * block_d * elt + 2 * bm * block_d * elt
    return st * 2 * bm * block_d * elt + 2 * bn * block_d * elt      # dkdv streams Q and dO


def _smem_limit(t: torch.Tensor) -> int:
    try:
        return torch.cuda.get_device_properties(t.device).shared_memory_per_block_optin
    except Exception:  # pragma: no cover - no CUDA device
        return 100 * 1024


def _prune(kind: str):
    """Keep the configs that fit this GPU: the big-tile list on GPUs with >= 160 KB of shared
    memory per block (A100, H100), the small list (<= 100 KB: T4, consumer cards) otherwise."""
    def prune(configs, named_args, **kwargs):
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 128))
        elt = named_args["Q"].element_size()
        limit = _smem_limit(named_args["Q"])
        big = limit >= 160 * 1024
        kept = [c for c in configs if (c in _SMALL) != big and _smem_bytes(c, block_d, elt, kind) <= limit]
        if block_d >= 256 or elt == 4:  # big head dims / fp32: keep register pressure sane
            kept = [c for c in kept if c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64]
            kept = kept + [_SAFE[kind]] if _SAFE[kind] not in kept else kept  # one that surely fits
        return kept or [_SAFE[kind]]
    return prune


def _cfg(bm, bn, w, s):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)


# Big tiles for A100/H100 (FA2 on Hopper without TMA: BLOCK_M=128, BLOCK_N 64/128, 8 warps,
# 3-4 stages); small tiles for GPUs with <= 100 KB of shared memory per SM.
_FWD_BIG = [_cfg(128, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 128, 8, 2),
            _cfg(64, 64, 4, 3)]
_DKDV_BIG = [_cfg(64, 128, 8, 3), _cfg(32, 128, 4, 3), _cfg(64, 128, 8, 2), _cfg(64, 64, 4, 3)]
_DQ_BIG = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 2), _cfg(64, 64, 4, 3), _cfg(128, 32, 4, 3)]
_SAFE = {"fwd": _cfg(64, 32, 4, 2), "dkdv": _cfg(32, 32, 4, 2), "dq": _cfg(64, 32, 4, 2)}
_SMALL_FWD = [_SAFE["fwd"], _cfg(64, 64, 4, 2), _cfg(32, 32, 4, 1)]
_SMALL_DKDV = [_SAFE["dkdv"], _cfg(32, 64, 4, 2), _cfg(16, 32, 4, 1)]
_SMALL_DQ = [_SAFE["dq"], _cfg(64, 64, 4, 2), _cfg(32, 32, 4, 1)]
_SMALL = _SMALL_FWD + _SMALL_DKDV + _SMALL_DQ
FWD_CONFIGS, DKDV_CONFIGS, DQ_CONFIGS = _FWD_BIG + _SMALL_FWD, _DKDV_BIG + _SMALL_DKDV, _DQ_BIG + _SMALL_DQ
INTERPRETER_BLOCKS = dict(BLOCK_M=16, BLOCK_N=16)  # small tiles: tests exercise many blocks
_TUNE_KEY = ["N_BUCKET", "BLOCK_D", "LO", "HI", "GROUP"]


def _quick_bench(fn, quantiles=None):
    import triton.testing as tt
    return tt.do_bench(fn, warmup=5, rep=25, quantiles=quantiles)


def _tuned(configs, kind, kernel):
    return triton.autotune(configs, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune(kind)},
                           do_bench=_quick_bench)(kernel)


_fwd_tuned = _tuned(FWD_CONFIGS, "fwd", _fwd_kernel)
_dkdv_tuned = _tuned(DKDV_CONFIGS, "dkdv", _bwd_dkdv_kernel)
_dq_tuned = _tuned(DQ_CONFIGS, "dq", _bwd_dq_kernel)


def _dot_precision(q: torch.Tensor) -> str:
    """``tl.dot`` precision for fp32 inputs, following PyTorch's knob: exact fp32 ("ieee") under
    ``torch.set_float32_matmul_precision("highest")`` (the default) and in the interpreter,
    TF32 tensor cores ("tf32", ~1e-3 relative error) under "high"/"medium". fp16/bf16 inputs
    always multiply on tensor cores with fp32 accumulation."""
    if interpreting():
        return "ieee"
    if q.dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def _n_bucket(n: int) -> int:
    """Sequence-length bucket for autotuning keys: <= 1K or longer."""
    return 0 if n <= 1024 else 1


_KERNELS = {"fwd": _fwd_kernel, "dkdv": _bwd_dkdv_kernel, "dq": _bwd_dq_kernel}
_BEST: dict = {}  # (kind, tuning key) -> the config the autotuner picked, read once it has tuned


def _launch(tuned, kind, tune_key, autotune: bool, grid_fn, *args, **kwargs):
    """Launch kernel ``kind``: autotune the first time a tuning key is seen, afterwards launch the
    remembered best config directly. Triton's autotuner re-derives its key from every argument
    on every call; at short sequence lengths that host time is comparable to the kernel's
    (H100 machine, 2026-11-23: 0.64 -> 0.48 ms of host time per forward + backward at N = 1K).
    ``autotune=False`` launches the one safe configuration, which compiles once (correctness
    tests on many small, odd shapes)."""
    if interpreting():
        kw = dict(kwargs, **INTERPRETER_BLOCKS)
        _KERNELS[kind][grid_fn(kw)](*args, **kw)
        return
    cfg = _BEST.get((kind, tune_key)) if autotune else _SAFE[kind]
    if cfg is None:
        tuned[grid_fn](*args, **kwargs)  # times the configs that fit, then launches the best one
        _BEST[(kind, tune_key)] = tuned.best_config
        return
    kw = dict(kwargs, **cfg.kwargs)
    _KERNELS[kind][grid_fn(kw)](*args, **kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ---------------------------------------------------------------------------------------------
# Input checks and host wrappers
# ---------------------------------------------------------------------------------------------
SUPPORTED_HEAD_DIMS = (16, 256)


class KernelBand(NamedTuple):
    """The scale and the kernels' visible band ``lo ≤ j − i − off ≤ hi`` (``±_BIG`` = unbounded)."""
    scale: float
    lo: int
    hi: int


class LaunchPlan(NamedTuple):
    """What every launch of one call shares. Dense inputs are ``(B, H, N, D)``; varlen inputs
    are packed ``(total, H, D)`` with ``cu_seqlens`` (q itself stands in for them when dense)."""
    B: int
    Hq: int
    Hk: int
    Nq: int
    Nk: int
    cu_q: torch.Tensor
    cu_k: torch.Tensor
    consts: dict          # the kernels' constexprs: D, BLOCK_D, VARLEN, PREC, INTERP
    bucket: int           # sequence-length bucket (part of the autotuning key)
    tune_key: tuple       # what the remembered best configuration depends on


def check_flash_inputs(q, k, v, *, causal: bool = False, scale=None, window=None, rank: int = 4) -> KernelBand:
    """The package contract (:func:`effsmall.attention.contract.check_attention`) plus what the
    kernels need (fp16/bf16/fp32, a contiguous head dimension, 16 ≤ D ≤ 256)."""
    scale, left, right = check_attention(q, k, v, causal=causal, scale=scale, window=window, rank=rank)
    check_kernel_tensors("flash_attention", SUPPORTED_HEAD_DIMS[1], SUPPORTED_HEAD_DIMS[0], q=q, k=k, v=v)
    return KernelBand(scale, *_kernel_band(left, right))


def _kernel_band(left: int | None, right: int | None) -> tuple[int, int]:
    """(LO, HI) of the visible band ``LO <= j - i - off <= HI`` from the contract's (left, right)."""
    return (-_BIG if left is None else -left), (_BIG if right is None else right)


def _strides3(t: torch.Tensor, varlen: bool):
    """(batch, head, row) strides of a (B, H, N, D) tensor, or of a packed (total, H, D) one."""
    return (0, t.stride(1), t.stride(0)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _lse_strides(lse: torch.Tensor, varlen: bool):
    """(batch, head) strides of lse (B, H, N), or of a packed (H, total) one."""
    return (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def _plan(q, k, lo, hi, cu_q, cu_k, max_q, max_k) -> LaunchPlan:
    """The :class:`LaunchPlan` of one call. Dense: (B, H, N, D); varlen: packed (total, H, D) + cu_seqlens."""
    varlen = cu_q is not None
    if varlen:
        B, Nq, Nk = cu_q.numel() - 1, max_q, max_k
    else:
        B, Nq, Nk = q.shape[0], q.shape[2], k.shape[2]
        cu_q = cu_k = q  # unused placeholders (VARLEN=False)
    Hq, Hk = q.shape[1], k.shape[1]  # the head axis of both layouts
    block_d, prec, bucket = next_power_of_2(q.shape[-1], 16), _dot_precision(q), _n_bucket(max(Nq, Nk))
    consts = dict(D=q.shape[-1], BLOCK_D=block_d, VARLEN=varlen, PREC=prec, **interp_flag())
    tune_key = (bucket, block_d, lo, hi, Hq // Hk, q.dtype, varlen, prec)
    return LaunchPlan(B, Hq, Hk, Nq, Nk, cu_q, cu_k, consts, bucket, tune_key)


def launch_forward(q, k, v, lo, hi, scale, cu_q=None, cu_k=None, max_q=None, max_k=None, *, autotune: bool = True):
    """Launch the forward kernel on checked inputs (:func:`check_flash_inputs` gives ``scale, lo,
    hi``); returns ``(o, lse)`` with the kernels' ``+inf`` for rows that see no key.
    Dense: (B, H, N, D). Varlen: packed (total, H, D) + cu_seqlens."""
    tune_key, grid, args, consts, o, lse = forward_args(q, k, v, lo, hi, scale, cu_q, cu_k, max_q, max_k)
    _launch(_fwd_tuned, "fwd", tune_key, autotune, grid, *args, **consts)
    return o, lse


def forward_args(q, k, v, lo, hi, scale, cu_q=None, cu_k=None, max_q=None, max_k=None):
    """``(tune_key, grid, args, constexprs, o, lse)`` of one forward launch, bound but not launched
    (allocates ``o`` and ``lse``); the tile sizes and compiler settings come from the autotuner
    (:func:`launch_forward`) or a caller that compiles one configuration
    (:mod:`effsmall.attention.sm90_asm`)."""
    B, Hq, Hk, Nq, Nk, cu_q, cu_k, consts, bucket, tune_key = _plan(q, k, lo, hi, cu_q, cu_k, max_q, max_k)
    varlen = consts["VARLEN"]
    o = torch.empty_like(q)
    lse_shape = (Hq, q.shape[0]) if varlen else (B, Hq, Nq)  # (Hq, total_q) or (B, Hq, Nq)
    lse = torch.empty(lse_shape, device=q.device, dtype=torch.float32)
    grid = lambda meta: (cdiv(Nq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    args = (q, k, v, o, lse, cu_q, cu_k,
            *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(o, varlen),
            *_lse_strides(lse, varlen), Hq, Hq // Hk, Nq, Nk, lo, hi, scale * LOG2E.value, bucket)
    return tune_key, grid, args, consts, o, lse


def launch_backward(do, q, k, v, o, lse, lo, hi, scale, cu_q=None, cu_k=None, max_q=None, max_k=None, *,
                    autotune: bool = True):
    """Launch the backward kernels (Δ preprocess, dK/dV, dQ) on the forward's ``o`` and ``lse``
    (kernel convention); returns ``(dq, dk, dv)``."""
    B, Hq, Hk, Nq, Nk, cu_q, cu_k, consts, bucket, tune_key = _plan(q, k, lo, hi, cu_q, cu_k, max_q, max_k)
    varlen = consts["VARLEN"]
    do = do if do.stride(-1) == 1 else do.contiguous()
    lse_strides = _lse_strides(lse, varlen)
    delta = torch.empty_like(lse)
    pre_m = 16 if interpreting() else 64
    _bwd_preprocess[(cdiv(Nq, pre_m), B * Hq)](
        o, do, delta, cu_q, *_strides3(o, varlen), *_strides3(do, varlen), *lse_strides, Hq, Nq,
        D=consts["D"], BLOCK_D=consts["BLOCK_D"], VARLEN=varlen, BLOCK_M=pre_m)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    grid_kv = lambda meta: (cdiv(Nk, meta["BLOCK_N"]), B * Hk)  # noqa: E731
    _launch(_dkdv_tuned, "dkdv", tune_key, autotune, grid_kv,
            q, k, v, do, lse, delta, dk, dv, cu_q, cu_k,
            *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(do, varlen),
            *_strides3(dk, varlen), *_strides3(dv, varlen), *lse_strides,
            Hk, Hq // Hk, Nq, Nk, lo, hi, scale * LOG2E.value, scale, bucket, **consts)
    grid_q = lambda meta: (cdiv(Nq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    _launch(_dq_tuned, "dq", tune_key, autotune, grid_q,
            q, k, v, do, lse, delta, dq, cu_q, cu_k,
            *_strides3(q, varlen), *_strides3(k, varlen), *_strides3(v, varlen), *_strides3(do, varlen),
            *_strides3(dq, varlen), *lse_strides,
            Hq, Hq // Hk, Nq, Nk, lo, hi, scale * LOG2E.value, scale, bucket, **consts)
    return dq, dk, dv


def block_schedule(Nq: int, Nk: int, block_m: int, block_n: int, *, causal: bool = False, window=None):
    """What the forward kernel does with each (query block, key block) tile, as an int tensor
    ``(cdiv(Nq, block_m), cdiv(Nk, block_n))``: 0 skipped, 1 fully visible (no mask math),
    2 boundary (mask built). A host-side mirror of ``_key_ranges`` for pictures and tests."""
    lo, hi = _kernel_band(*window_bounds(window, causal))
    off = Nk - Nq
    nm, nn = cdiv(Nq, block_m), cdiv(Nk, block_n)
    sched = torch.zeros(nm, nn, dtype=torch.int64)                     # (query blocks, key blocks)
    for bm in range(nm):
        m0, m_last = bm * block_m, min(bm * block_m + block_m, Nq) - 1
        k_lo = max(m0 + off + lo, 0)
        k_hi = max(min(m_last + off + hi + 1, Nk), k_lo)
        start = k_lo // block_n * block_n
        full_lo = cdiv(max(m_last + off + lo, k_lo), block_n) * block_n
        full_hi = min(m0 + off + hi + 1, k_hi) // block_n * block_n
        end_blk = cdiv(k_hi, block_n) * block_n
        if full_hi <= full_lo:
            full_lo = full_hi = end_blk
        for n0 in range(start, end_blk, block_n):
            sched[bm, n0 // block_n] = 1 if full_lo <= n0 < full_hi else 2
    return sched


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lo, hi, scale, autotune):
        o, lse = launch_forward(q, k, v, lo, hi, scale, autotune=autotune)
        ctx.save_for_backward(q, k, v, o, lse)       # O(N) extra memory: lse, not P
        ctx.lo, ctx.hi, ctx.scale, ctx.autotune = lo, hi, scale, autotune
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = launch_backward(do, q, k, v, o, lse, ctx.lo, ctx.hi, ctx.scale, autotune=ctx.autotune)
        return dq, dk, dv, None, None, None, None


def fallback_reason(q: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot run on this GPU (None when they can). A tensor on the wrong
    device is not a fallback but an error (:func:`effsmall.runtime.require_triton_tensor`)."""
    require_triton_device("q", q, "flash_attention")
    if interpreting():
        return None
    if not tensor_cores_in_triton(q.device.index or 0):
        return ("this GPU has compute capability < 8.0: Triton >= 3.3 has no tensor-core tl.dot here, "
                "so flash_attention computes with the pure-torch tiled_attention (correct, not fast)")
    return None


def backend(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None, *,
            causal: bool = False, window=None, hopper: bool | None = None) -> str:
    """Which code :func:`flash_attention` runs for inputs like ``q`` here: ``"triton"`` (compiled
    for this GPU), ``"triton-interpreter"`` (CPU tensors, ``TRITON_INTERPRET=1``) or
    ``"pytorch-tiled"`` (a GPU without tensor-core ``tl.dot``, e.g. a T4). Given ``k`` and ``v``
    too (and the call's ``causal``, ``window``, ``hopper``), ``"triton-hopper"`` where the forward
    runs the Hopper rung (:func:`effsmall.attention.flash_hopper.dispatch_reason`). Raises
    ValueError for a tensor on the wrong device, as :func:`flash_attention` does."""
    if fallback_reason(q) is not None:
        return "pytorch-tiled"
    if interpreting():
        return "triton-interpreter"
    if k is not None and v is not None and _hopper_plan(q, k, v, *_kernel_band(*window_bounds(window, causal)),
                                                        hopper) is not None:
        return "triton-hopper"
    return "triton"


def _hopper_plan(q, k, v, lo: int, hi: int, hopper: bool | None):
    """The Hopper forward's plan for this call, None for the portable kernel (imported here:
    flash_hopper builds on this module)."""
    if hopper is False or interpreting():   # the common cases decided without the import
        return None
    from effsmall.attention import flash_hopper
    return flash_hopper.dispatch_plan(q, k, v, lo, hi, hopper=hopper)


def flash_attention(q, k, v, *, causal: bool = False, scale: float | None = None, window=None,
                    autotune: bool = True, hopper: bool | None = None):
    """Exact softmax attention ``softmax(Q Kᵀ · scale + mask) V`` with FlashAttention-2 kernels.

    q ``(B, Hq, Nq, D)``, k and v ``(B, Hk, Nk, D)`` with ``Hq % Hk == 0``; returns ``(B, Hq, Nq, D)``
    in q's dtype. ``causal`` is bottom-right aligned (query i sees keys ``j <= i + Nk - Nq``);
    ``window=(left, right)`` keeps keys ``i + off - left <= j <= i + off + right`` (a negative or
    None side is unlimited). Rows that see no key are zeros. Differentiable (Triton backward).
    ``autotune=False`` launches one safe configuration instead of timing the candidates.

    On a Hopper GPU (H100, H200) the forward of full and causal fp16/bf16 attention with
    D ∈ {64, 128} on contiguous inputs runs the Hopper rung
    (:data:`effsmall.attention.flash_hopper.DISPATCH_PLANS`: TMA descriptors, warp
    specialisation; 1.07x this module's forward on an H200) and the backward stays this module's.
    ``hopper=False`` or ``EFFSMALL_HOPPER=0`` in the environment keep this module's forward
    everywhere; :func:`backend` says which one runs.
    """
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal, scale=scale, window=window)
    if q.shape[2] == 0 or k.shape[2] == 0:  # nothing to launch: empty output / rows that see no key
        from effsmall.attention import naive_attention
        return naive_attention(q, k, v, causal=causal, scale=scale, window=window)
    reason = fallback_reason(q)
    if reason is not None:  # documented fallback: correct pure-torch attention, never a crash
        warn_once("flash_attention.fallback", reason)
        from effsmall.attention import tiled_attention
        return tiled_attention(q, k, v, causal=causal, scale=scale, window=window)
    plan = _hopper_plan(q, k, v, lo, hi, hopper)
    if plan is not None:  # same outputs and saved tensors: the backward below runs on them
        from effsmall.attention.flash_hopper import hopper_forward_fa2_backward
        return hopper_forward_fa2_backward(q, k, v, lo, hi, scale, plan, autotune)
    if interpreting() and q.dtype == torch.bfloat16:
        warn_once("flash_attention.bf16_interpreter",
                  "the Triton interpreter has no bfloat16: flash_attention computes in float32 and casts back")
        out = _FlashAttention.apply(q.float(), k.float(), v.float(), lo, hi, scale, autotune)
        return out.to(torch.bfloat16)
    return _FlashAttention.apply(q, k, v, lo, hi, scale, autotune)


def flash_attention_forward(q, k, v, *, causal: bool = False, scale: float | None = None, window=None,
                            autotune: bool = True):
    """Forward only, returning ``(O, lse)``; lse ``(B, Hq, Nq)`` fp32 (natural log).

    A row that sees no key has ``O = 0`` and ``lse = -inf``, the package-wide convention that
    :func:`effsmall.attention.merge_attention_states` relies on (the kernel stores ``+inf``
    internally so that its own backward's ``exp(S - lse)`` is 0; it is flipped here)."""
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal, scale=scale, window=window)
    reason = fallback_reason(q)
    if reason is not None:
        raise ValueError(f"q: {reason}")
    o, lse = launch_forward(q, k, v, lo, hi, scale, autotune=autotune)
    return o, lse.masked_fill(lse == float("inf"), float("-inf"))


def flash_attention_backward(do, q, k, v, o, lse, *, causal: bool = False, scale: float | None = None,
                             window=None, autotune: bool = True):
    """Gradients ``(dq, dk, dv)`` from the outputs of :func:`flash_attention_forward`: ``o`` and
    ``lse`` in the package convention (``-inf`` for a row that sees no key). Inputs need not be
    contiguous. For callers that keep O and lse themselves (ring attention)."""
    q, k, v, o, do = (t.contiguous() for t in (q, k, v, o, do))
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal, scale=scale, window=window)
    lse_k = lse.masked_fill(lse == float("-inf"), float("inf")).contiguous()  # the kernels' empty-row value
    return launch_backward(do, q, k, v, o, lse_k, lo, hi, scale, autotune=autotune)

