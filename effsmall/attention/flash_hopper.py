"""FlashAttention for Hopper GPUs (sm90) in Triton: tensor-memory-accelerator loads, warp
specialisation, split causal loops and a scheduling-aware grid — each one a switch.

References: {cite}`dao2023flashattention2` (the algorithm: §3.1 forward, §3.2 backward),
{cite}`shah2024flashattention3` (what Hopper adds: §3.1 producer/consumer warp specialisation
fed by TMA, §3.2 overlapping softmax with the matrix products, the backward's dQ accumulated
with atomic adds), {cite}`tillet2019triton` (the language).

**The math** (the same function as :func:`effsmall.attention.flash_attention`). For a block of
``BLOCK_M`` query rows ``Q_i`` and the key/value blocks ``K_j, V_j`` it may see, the forward keeps
per row a running maximum ``m_i``, a running sum ``l_i`` and an unnormalised output ``acc``:

    S_j = Q_i K_jᵀ · scale · log₂e                  (scores in base 2: one exp2 per score)
    m_new = max(m_i, rowmax S_j),  α = 2^(m_i − m_new),  P_j = 2^(S_j − m_new)
    l_i ← α l_i + rowsum P_j,      acc ← α acc + P_j V_j,       m_i ← m_new

and after the last block ``O_i = acc / l_i``, ``lse_i = (m_i + log₂ l_i) / log₂e`` (natural
log). The backward (FA2 §3.2) recomputes ``P = exp(S − lse)`` per tile and, with
``Δ_i = rowsum(dO_i ∘ O_i)``, forms ``dV += Pᵀ dO``, ``dP = dO Vᵀ``, ``dS = P ∘ (dP − Δ)``,
``dK += dSᵀ Q · scale`` and ``dQ += dS K · scale``. Here one program owns a key block and
loops over the query blocks (and the ``Hq/Hk`` query heads of its GQA group): dK and dV stay in
registers, and each tile's ``dS K`` is added into an fp32 dQ buffer with atomic adds (TMA
reductions on Hopper) as in FA3 — five matrix products per tile instead of the seven of a
separate dQ kernel that recomputes ``P`` and ``dP``. The order of those fp32 additions varies
between runs, so dQ is not bitwise deterministic (the error stays at fp32 rounding).

Masking is the package contract (:mod:`effsmall.attention.contract`): key ``j`` is visible from
query ``i`` iff ``j < Nk`` and ``i + off + lo ≤ j ≤ i + off + hi`` with ``off = Nk − Nq``. Each
program visits only the key blocks it can see and splits them into fully visible blocks (no
mask arithmetic) and boundary blocks (the causal diagonal, window edges, a ragged last block).

**The switches** (each can be turned off to measure what it pays; ``tools/hopper_probe.py``
times them against each other, cuDNN and FlexAttention):

* ``tma`` — ``"host"``: ``TensorDescriptor`` objects built on the host and passed as kernel
  parameters; ``"device"``: ``tl.make_tensor_descriptor`` inside the kernel (needs the global
  scratch that :func:`triton.set_allocator` provides: this module installs a torch allocator
  when none is set); ``"off"``: pointer arithmetic, as the FA2 kernel does. ``True`` picks
  ``"device"`` with warp specialisation (as Triton's own tutorial does on Hopper) and ``"host"``
  without. Descriptors cover the tensor flattened to ``(B·H·N, D)`` rows, so the inputs must be
  contiguous (they are made so when they are not); a ragged last block reads rows of the next
  head, which the masks discard, and its output is stored with masked pointer stores.
* ``warp_specialize`` — ``tl.range(..., warp_specialize=True)`` on the key loop: Triton splits
  it into a producer partition (TMA loads) and consumer partitions (matrix products, softmax).
* ``causal_split`` — separate loops for the unmasked off-diagonal blocks and the masked
  diagonal / edge blocks; off: one loop that builds the mask on every block; None (the
  default): split unless warp-specialised (see below). The mask is built only from the
  conditions that can fail (one comparison per score under a plain causal mask).
* ``grid`` — ``"m"``: program (query block, head) with query blocks fastest, so the programs
  running together share one head's K and V in L2; ``"m_rev"``: the same with the query blocks
  reversed, so under a causal mask the longest rows start first (longest-processing-time
  order); ``"bh"``: heads fastest (an L2-unfriendly control); ``"persistent"`` /
  ``"persistent2"``: one (two) programs per multiprocessor looping over (head, query block)
  tiles in heads-major, longest-first order.

**What Triton 3.6 does with these on sm90** (read off its compiler for an sm90 target: the
warps, registers and instructions of the compiled kernels, not timings). Warp specialisation
turns the key loop into one TMA producer warp group and two consumer warp groups of 64 query
rows each (12 warps, ``setmaxnreg``, 168 registers, no spills at BLOCK_M = 128) only when all
of these hold: ``num_warps=4``; the function has a single key loop, so a causal or ragged
forward runs one loop that masks every block (``causal_split=None`` picks that); no ``else``
branch anywhere in the kernel; in-kernel (``"device"``) descriptors — host descriptors or
pointer loads fail to compile, and a persistent grid (nested loops) fails too. With
``num_warps=8`` the attribute is ignored and the loop is only software-pipelined. The backward
is not warp-specialised; with BLOCK_M < 64 it forms ``(dS K)ᵀ = Kᵀ dSᵀ`` so that every product
is a wgmma with 64-row warp groups.

**Where it runs**: CUDA tensors on compute capability 9.x with Triton ≥ 3.4
(:func:`hopper_supported` says whether the rung applies); fp16/bf16, head dim 64 or 128, dense
``(B, H, N, D)`` inputs. Elsewhere :func:`flash_attention_hopper` calls
:func:`effsmall.attention.flash_attention`. Conversely, :func:`~effsmall.attention.flash_attention`
itself runs one measured forward plan per (head dim, causal) group from this module on a Hopper
GPU (:data:`DISPATCH_PLANS`, :func:`dispatch_reason`) and its own FA2 backward on that forward's
outputs. Under the Triton interpreter (CPU tensors,
``TRITON_INTERPRET=1``) the same kernels run in fp32/fp16 with small tiles: tensor descriptors
are emulated there, warp specialisation and software pipelining do not exist (plain ``while``
loops), and the backward's dQ adds go through pointer atomics.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from effsmall.attention.flash_triton import (LOG2E, _BIG, _bwd_preprocess, _dot_precision, check_flash_inputs,
                                             flash_attention, launch_backward)
from effsmall.runtime import cdiv, compute_capability, interp_flag, interpreting, warn_once

__all__ = ["flash_attention_hopper", "flash_attention_hopper_forward", "hopper_supported", "hopper_unsupported_reason",
           "HopperConfig", "HopperPlan", "make_plan", "launch_hopper_forward", "launch_hopper_backward",
           "HEAD_DIMS", "GRIDS", "TMA_MODES", "BACKWARDS", "DISPATCH_PLANS", "dispatch_plan", "dispatch_reason",
           "ForwardLaunch", "forward_launch"]

HEAD_DIMS = (64, 128)
GRIDS = ("m", "m_rev", "bh", "persistent", "persistent2")
TMA_MODES = ("off", "host", "device")
BACKWARDS = ("atomic", "fa2")
_GRID_CODE = {"m": 0, "m_rev": 1, "bh": 2, "persistent": 3, "persistent2": 3}
_TMA_CODE = {"off": 0, "host": 1, "device": 2}


class HopperConfig(NamedTuple):
    """Tile sizes and compiler settings of one kernel launch."""
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


#: Launch settings when none is given: (kernel, head dim, warp specialised) -> config. Starting
#: points chosen from the sm90 compiler's resource report (fewest register spills: at D = 128
#: the backward spills 0.1-0.2 KB per thread at BLOCK_M = 32 and 0.2-0.8 KB at BLOCK_M = 64),
#: not measured optima: tools/hopper_probe.py times the alternatives. Warp specialisation on sm90 needs num_warps = 4 (Triton adds a producer and a
#: second consumer warp group: 12 warps run); with 8 it compiles as a plain pipelined loop.
DEFAULT_CONFIGS = {
    ("fwd", 64, False): HopperConfig(128, 128, 8, 2),
    ("fwd", 128, False): HopperConfig(128, 128, 8, 2),
    ("fwd", 64, True): HopperConfig(128, 128, 4, 2),
    ("fwd", 128, True): HopperConfig(128, 64, 4, 2),
    ("bwd", 64, False): HopperConfig(32, 128, 8, 2),
    ("bwd", 128, False): HopperConfig(32, 128, 8, 2),
    ("bwd", 64, True): HopperConfig(32, 128, 4, 2),
    ("bwd", 128, True): HopperConfig(32, 128, 4, 2),
}
#: The interpreter runs one program at a time in numpy: small tiles, so that tests on small
#: shapes cross several blocks, diagonals and ragged edges.
INTERPRETER_CONFIG = HopperConfig(16, 16, 4, 1)


# ---------------------------------------------------------------------------------------------
# Where the rung applies
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _triton_has_hopper_features() -> bool:
    """Triton ≥ 3.4: in-kernel tensor descriptors and ``tl.range(..., warp_specialize=)``."""
    return hasattr(tl, "make_tensor_descriptor") and \
        "warp_specialize" in inspect.signature(tl.range.__init__).parameters


def hopper_unsupported_reason(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> str | None:
    """Why the Hopper kernels do not apply to these inputs here (None when they do)."""
    tensors = [t for t in (q, k, v) if t is not None]
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return "q, k, v must be tensors"
    if q.ndim != 4:
        return f"q must be dense (B, H, N, D), got rank {q.ndim}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"head dim D={q.shape[-1]} is not one of {HEAD_DIMS}"
    if not _triton_has_hopper_features():
        return f"Triton {triton.__version__} has no tl.make_tensor_descriptor / warp_specialize (needs >= 3.4)"
    if interpreting():
        return None if q.device.type == "cpu" else "the Triton interpreter needs CPU tensors"
    if q.device.type != "cuda":
        return "q is not a CUDA tensor"
    cc = compute_capability(q.device.index or 0)
    if cc is None or cc[0] != 9:
        return f"compute capability {cc} is not Hopper (9.x)"
    if any(t.dtype not in (torch.float16, torch.bfloat16) for t in tensors):
        return "the Hopper kernels run float16 / bfloat16"
    return None


def hopper_supported(q: torch.Tensor, k: torch.Tensor | None = None, v: torch.Tensor | None = None) -> bool:
    """Whether :func:`flash_attention_hopper` runs its own kernels for inputs like these here:
    a Hopper GPU (compute capability 9.x), Triton ≥ 3.4, fp16/bf16, dense ``(B, H, N, D)`` with
    D ∈ {64, 128}; or CPU tensors under the Triton interpreter (tests). For a dispatcher."""
    return hopper_unsupported_reason(q, k, v) is None


# ---------------------------------------------------------------------------------------------
# Index arithmetic
# ---------------------------------------------------------------------------------------------
@triton.jit
def _key_split(m0, m_last, n_len, OFF, LO, HI, BLOCK_N: tl.constexpr, TO_PRE: tl.constexpr):
    """Key blocks of query rows [m0, m_last]: [start, full_lo) boundary (left window edge),
    [full_lo, full_hi) fully visible, [full_hi, end) boundary (diagonal, right edge, ragged
    end). With no fully visible block everything goes to the first range (``TO_PRE``, a kernel
    that has one) or to the last, so that a kernel compiles only the loops it needs."""
    k_lo = tl.maximum(m0 + OFF + LO, 0)
    k_hi = tl.maximum(tl.minimum(m_last + OFF + HI + 1, n_len), k_lo)
    start = (k_lo // BLOCK_N) * BLOCK_N
    full_lo = tl.cdiv(tl.maximum(m_last + OFF + LO, k_lo), BLOCK_N) * BLOCK_N
    full_hi = (tl.minimum(m0 + OFF + HI + 1, k_hi) // BLOCK_N) * BLOCK_N
    end = tl.cdiv(k_hi, BLOCK_N) * BLOCK_N
    no_full = full_hi <= full_lo
    empty_at = end if TO_PRE else start
    full_lo = tl.where(no_full, empty_at, full_lo)
    full_hi = tl.where(no_full, empty_at, full_hi)
    return start, full_lo, full_hi, end


@triton.jit
def _query_split(n0, n_last, m_len, OFF, LO, HI, BLOCK_M: tl.constexpr, TO_PRE: tl.constexpr):
    """Query blocks that see key rows [n0, n_last] (the transpose of ``_key_split``):
    [start, full_lo) boundary (the diagonal), [full_lo, full_hi) full, [full_hi, end) boundary
    (left window edge, ragged end). Query i sees key j iff i + OFF + LO ≤ j ≤ i + OFF + HI, i.e.
    j − OFF − HI ≤ i ≤ j − OFF − LO: the same band seen from the keys, with offset −OFF and edges
    (−HI, −LO) — so it is ``_key_split`` with those."""
    return _key_split(n0, n_last, m_len, -OFF, -HI, -LO, BLOCK_M, TO_PRE)


@triton.jit
def _load_rows(src, row0, r0, n_rows, stride_r, MASKED: tl.constexpr, TMA: tl.constexpr,
               BLOCK: tl.constexpr, D: tl.constexpr):
    """Rows ``r0 .. r0 + BLOCK`` of one head as a (BLOCK, D) tile: a TMA load from the descriptor
    ``src`` at flat row ``row0 + r0``, or a pointer load from the head's base pointer ``src``
    (rows ≥ n_rows zero-filled when MASKED)."""
    if TMA > 0:
        tile = src.load([row0 + r0, 0])                                # (BLOCK, D)
    else:
        offs_r = r0 + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, D)
        ptrs = src + offs_r[:, None] * stride_r + offs_d[None, :]      # (BLOCK, D)
        if MASKED:
            tile = tl.load(ptrs, mask=offs_r[:, None] < n_rows, other=0.0)
        else:
            tile = tl.load(ptrs)
    return tile


@triton.jit
def _mask(offs_m, offs_n, n_len, OFF, LO, HI, CHK: tl.constexpr):
    """Visible (query, key) pairs of a tile: ``j - i - off`` within [LO, HI] and ``j < n_len``.
    ``CHK`` says which of the three conditions can fail in this call (bits 1: LO, 2: HI, 4:
    n_len), so a causal tile costs one comparison per score; (BLOCK_M, BLOCK_N), or (1, BLOCK_N)
    when only the ragged end is checked."""
    if CHK & 3:
        rel = offs_n[None, :] - offs_m[:, None] - OFF                  # (BLOCK_M, BLOCK_N) j - i - off
        if (CHK & 3) == 3:
            vis = (rel >= LO) & (rel <= HI)
        elif CHK & 2:
            vis = rel <= HI
        else:
            vis = rel >= LO
        if CHK & 4:
            vis = vis & (offs_n[None, :] < n_len)
    else:
        vis = offs_n[None, :] < n_len                                  # (1, BLOCK_N)
    return vis


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _store_rows(head_ptr, tile, offs_m, n_rows, stride_r, D: tl.constexpr):
    """Pointer store of a (BLOCK, D) tile into rows ``offs_m < n_rows`` of one head."""
    offs_d = tl.arange(0, D)
    tl.store(head_ptr + offs_m[:, None] * stride_r + offs_d[None, :], tile, mask=offs_m[:, None] < n_rows)


@triton.jit
def _fwd_step(acc, l_i, m_i, q, K, V, k_row0, stride_kn, stride_vn, offs_m, n0, n_len, OFF, LO, HI, qk_scale,
              MASKED: tl.constexpr, CHK: tl.constexpr, TMA: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax (FA2 Algorithm 1, inner loop body)."""
    k = _load_rows(K, k_row0, n0, n_len, stride_kn, MASKED, TMA, BLOCK_N, D)  # (BLOCK_N, D)
    s = tl.dot(q, tl.trans(k), input_precision=PREC)                  # (BLOCK_M, BLOCK_N) q·k, fp32
    if MASKED:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = tl.where(_mask(offs_m, offs_n, n_len, OFF, LO, HI, CHK), s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))                          # (BLOCK_M,)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)           # a row with nothing visible yet
        p = tl.math.exp2(s - m_use[:, None])                           # (BLOCK_M, BLOCK_N)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = m_new
        p = tl.math.exp2(s * qk_scale - m_use[:, None])                # one FMA + exp2 per score
    alpha = tl.math.exp2(m_i - m_use)                                  # (BLOCK_M,) rescales the old state
    l_i = l_i * alpha + tl.sum(p, 1)
    v = _load_rows(V, k_row0, n0, n_len, stride_vn, MASKED, TMA, BLOCK_N, D)  # (BLOCK_N, D)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)          # (BLOCK_M, D)
    return acc, l_i, m_new


@triton.jit
def _fwd_loop(acc, l_i, m_i, q, K, V, k_row0, stride_kn, stride_vn, offs_m, lo, hi, n_len, OFF, LO, HI, qk_scale,
              MASKED: tl.constexpr, CHK: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
              BLOCK_N: tl.constexpr, INTERP: tl.constexpr):
    """Key blocks lo, lo + BLOCK_N, … < hi: a ``tl.range`` loop compiled (software-pipelined and,
    with WS, warp-specialised), a ``while`` loop interpreted."""
    if INTERP:
        n0 = lo
        while n0 < hi:
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, k_row0, stride_kn, stride_vn, offs_m, n0, n_len,
                                      OFF, LO, HI, qk_scale, MASKED, CHK, TMA, D, PREC, BLOCK_N)
            n0 += BLOCK_N
    else:
        for n0 in tl.range(lo, hi, BLOCK_N, warp_specialize=WS):
            n0 = tl.multiple_of(n0, BLOCK_N)
            acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, k_row0, stride_kn, stride_vn, offs_m, n0, n_len,
                                      OFF, LO, HI, qk_scale, MASKED, CHK, TMA, D, PREC, BLOCK_N)
    return acc, l_i, m_i


@triton.jit
def _fwd_tile(Q, K, V, O, O_ptr, LSE, mb, bh,
              stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
              stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
              H, HK, GROUP, Nq, Nk, LO, HI, qk_scale,
              D: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr, SPLIT: tl.constexpr, CHK: tl.constexpr,
              PREC: tl.constexpr, INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Query block ``mb`` of head ``bh = b·H + h``: O rows and their log-sum-exp. ``CHK`` (see
    ``_mask``) also says which loops can have work: before the fully visible blocks only with a
    left window edge, after them with a right edge (causal) or a ragged end."""
    HAS_PRE: tl.constexpr = (CHK & 1) != 0
    HAS_POST: tl.constexpr = (CHK & 6) != 0
    NEED_MASK: tl.constexpr = CHK != 0
    b = bh // H
    h = bh % H
    hk = h // GROUP                                                    # GQA: index, never copy
    m0 = mb * BLOCK_M
    OFF = Nk - Nq                                                      # bottom-right alignment
    m_last = tl.minimum(m0 + BLOCK_M, Nq) - 1
    offs_m = m0 + tl.arange(0, BLOCK_M)                                # (BLOCK_M,)
    b64 = b.to(tl.int64)
    if TMA > 0:   # descriptors over (rows, D): this head starts at flat row q_row0 / k_row0
        q_row0 = bh * Nq
        k_row0 = (b * HK + hk) * Nk
        Qh = Q
        Kh = K
        Vh = V
    else:         # pointers to this head's first row
        q_row0 = 0
        k_row0 = 0
        Qh = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
        Kh = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
        Vh = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    q = _load_rows(Qh, q_row0, m0, Nq, stride_qn, True, TMA, BLOCK_M, D)  # (BLOCK_M, D), resident

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)                # running max (base 2)
    l_i = tl.zeros([BLOCK_M], tl.float32)                              # running sum
    acc = tl.zeros([BLOCK_M, D], tl.float32)                           # unnormalised O
    start, full_lo, full_hi, end = _key_split(m0, m_last, Nk, OFF, LO, HI, BLOCK_N, HAS_PRE)
    if SPLIT:
        if HAS_PRE:   # left window edge
            acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, Kh, Vh, k_row0, stride_kn, stride_vn, offs_m, start, full_lo,
                                      Nk, OFF, LO, HI, qk_scale, True, CHK, TMA, False, D, PREC, BLOCK_N, INTERP)
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, Kh, Vh, k_row0, stride_kn, stride_vn, offs_m, full_lo, full_hi,
                                  Nk, OFF, LO, HI, qk_scale, False, CHK, TMA, WS, D, PREC, BLOCK_N, INTERP)
        if HAS_POST:  # diagonal, right window edge, ragged last block
            acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, Kh, Vh, k_row0, stride_kn, stride_vn, offs_m, full_hi, end,
                                      Nk, OFF, LO, HI, qk_scale, True, CHK, TMA, False, D, PREC, BLOCK_N, INTERP)
    else:             # one loop over every visible block, masked everywhere when any mask is needed
        acc, l_i, m_i = _fwd_loop(acc, l_i, m_i, q, Kh, Vh, k_row0, stride_kn, stride_vn, offs_m, start, end,
                                  Nk, OFF, LO, HI, qk_scale, NEED_MASK, CHK, TMA, WS, D, PREC, BLOCK_N, INTERP)

    empty = l_i == 0.0                                                 # a row that saw no key
    l_safe = tl.where(empty, 1.0, l_i)
    o = acc / l_safe[:, None]                                          # (BLOCK_M, D); zeros if empty
    lse = tl.where(empty, float("inf"), (m_i + tl.math.log2(l_safe)) / LOG2E)
    o = o.to(O_ptr.dtype.element_ty)
    o_head = O_ptr + b64 * stride_ob + h.to(tl.int64) * stride_oh
    if TMA > 0:   # two ifs, no else: Triton's Hopper warp specialisation skips functions with else blocks
        if m0 + BLOCK_M <= Nq:                                         # a full block: one TMA store
            O.store([q_row0 + m0, 0], o)
        if m0 + BLOCK_M > Nq:                                          # ragged: rows past Nq are another head's
            _store_rows(o_head, o, offs_m, Nq, stride_on, D)
    else:
        _store_rows(o_head, o, offs_m, Nq, stride_on, D)
    tl.store(LSE + bh.to(tl.int64) * Nq + offs_m, lse, mask=offs_m < Nq)


# Sizes are not specialised on (divisibility by 16, == 1): one compiled kernel serves every
# sequence length and batch of a sweep.
@triton.jit(do_not_specialize=["B", "H", "HK", "Nq", "Nk", "LO", "HI", "n_m", "NUM_PROGS"])
def _hopper_fwd_kernel(Q, K, V, O, O_ptr, LSE,
                       stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                       B, H, HK, GROUP, Nq, Nk, LO, HI, qk_scale, n_m, NUM_PROGS,
                       D: tl.constexpr, TMA: tl.constexpr, WS: tl.constexpr, SPLIT: tl.constexpr,
                       CHK: tl.constexpr, GRID: tl.constexpr, PREC: tl.constexpr,
                       INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    if TMA == 2:  # descriptors built on the device, over the flattened (rows, D) tensors
        Qd = tl.make_tensor_descriptor(Q, shape=[B * H * Nq, D], strides=[D, 1], block_shape=[BLOCK_M, D])
        Kd = tl.make_tensor_descriptor(K, shape=[B * HK * Nk, D], strides=[D, 1], block_shape=[BLOCK_N, D])
        Vd = tl.make_tensor_descriptor(V, shape=[B * HK * Nk, D], strides=[D, 1], block_shape=[BLOCK_N, D])
        Od = tl.make_tensor_descriptor(O, shape=[B * H * Nq, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    else:         # host descriptors (TMA == 1) or pointers (TMA == 0), as passed
        Qd = Q
        Kd = K
        Vd = V
        Od = O
    if GRID == 3:  # persistent: tiles in heads-major order, each head's longest query blocks first
        n_tiles = n_m * B * H
        if INTERP:
            tile = tl.program_id(0)
            while tile < n_tiles:
                _fwd_tile(Qd, Kd, Vd, Od, O_ptr, LSE, n_m - 1 - tile % n_m, tile // n_m,
                          stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                          H, HK, GROUP, Nq, Nk, LO, HI, qk_scale,
                          D, TMA, WS, SPLIT, CHK, PREC, INTERP, BLOCK_M, BLOCK_N)
                tile += NUM_PROGS
        else:
            for tile in tl.range(tl.program_id(0), n_tiles, NUM_PROGS):
                _fwd_tile(Qd, Kd, Vd, Od, O_ptr, LSE, n_m - 1 - tile % n_m, tile // n_m,
                          stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                          stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                          H, HK, GROUP, Nq, Nk, LO, HI, qk_scale,
                          D, TMA, WS, SPLIT, CHK, PREC, INTERP, BLOCK_M, BLOCK_N)
    else:
        if GRID == 0:    # (query block, head), query blocks fastest
            mb = tl.program_id(0)
            bh = tl.program_id(1)
        elif GRID == 1:  # the same, longest query blocks first
            mb = n_m - 1 - tl.program_id(0)
            bh = tl.program_id(1)
        else:            # (head, query block), heads fastest
            bh = tl.program_id(0)
            mb = n_m - 1 - tl.program_id(1)
        _fwd_tile(Qd, Kd, Vd, Od, O_ptr, LSE, mb, bh,
                  stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_on,
                  H, HK, GROUP, Nq, Nk, LO, HI, qk_scale,
                  D, TMA, WS, SPLIT, CHK, PREC, INTERP, BLOCK_M, BLOCK_N)


# ---------------------------------------------------------------------------------------------
# Backward: dK, dV in registers per key block; dQ by atomic adds into an fp32 buffer
# ---------------------------------------------------------------------------------------------
@triton.jit
def _bwd_step(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQA, DQA_ptr, stride_qn, stride_don,
              offs_n, m0, m_len, n_len, OFF, LO, HI, qk_scale, sm_scale,
              MASKED: tl.constexpr, CHK: tl.constexpr, TMA: tl.constexpr, ATOMIC_TMA: tl.constexpr,
              DQ_T: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr):
    """One query block's contribution to dK, dV (computed transposed: Sᵀ, Pᵀ) and to dQ."""
    offs_m = m0 + tl.arange(0, BLOCK_M)                                # (BLOCK_M,) query rows
    q = _load_rows(Qh, q_row0, m0, m_len, stride_qn, MASKED, TMA, BLOCK_M, D)     # (BLOCK_M, D)
    do = _load_rows(DOh, q_row0, m0, m_len, stride_don, MASKED, TMA, BLOCK_M, D)  # (BLOCK_M, D)
    if MASKED:   # rows past the end get lse = +inf, so P = 0 there whatever Q and dO hold
        lse2 = tl.load(lse_ptr + offs_m, mask=offs_m < m_len, other=float("inf")) * LOG2E
        delta = tl.load(delta_ptr + offs_m, mask=offs_m < m_len, other=0.0)
    else:
        lse2 = tl.load(lse_ptr + offs_m) * LOG2E
        delta = tl.load(delta_ptr + offs_m)
    sT = tl.dot(k, tl.trans(q), input_precision=PREC)                 # (BLOCK_N, BLOCK_M) Sᵀ unscaled
    pT = tl.math.exp2(sT * qk_scale - lse2[None, :])                   # Pᵀ
    if MASKED:
        pT = tl.where(tl.trans(_mask(offs_m, offs_n, n_len, OFF, LO, HI, CHK)), pT, 0.0)
    dv += tl.dot(pT.to(do.dtype), do, input_precision=PREC)            # (BLOCK_N, D)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)                # (BLOCK_N, BLOCK_M) dPᵀ
    dsT = (pT * (dpT - delta[None, :])).to(q.dtype)                    # dSᵀ (unscaled)
    dk += tl.dot(dsT, q, input_precision=PREC)                         # (BLOCK_N, D)
    if DQ_T:   # (dS K)ᵀ = Kᵀ dSᵀ: D rows, so a Hopper warp group's wgmma has its 64 rows when BLOCK_M < 64
        dq = tl.trans(tl.dot(tl.trans(k), dsT, input_precision=PREC)) * sm_scale  # (D, BLOCK_M) -> (BLOCK_M, D)
    else:
        dq = tl.dot(tl.trans(dsT), k, input_precision=PREC) * sm_scale  # (BLOCK_M, D) this tile's dS K
    if ATOMIC_TMA:   # a TMA reduction (rows past the end add zeros to the next head's rows)
        DQA.atomic_add([q_row0 + m0, 0], dq)
    else:
        offs_d = tl.arange(0, D)
        tl.atomic_add(DQA_ptr + offs_m[:, None] * D + offs_d[None, :], dq, mask=offs_m[:, None] < m_len,
                      sem="relaxed")
    return dk, dv


@triton.jit
def _bwd_loop(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQA, DQA_ptr, stride_qn, stride_don,
              offs_n, lo, hi, m_len, n_len, OFF, LO, HI, qk_scale, sm_scale,
              MASKED: tl.constexpr, CHK: tl.constexpr, TMA: tl.constexpr, ATOMIC_TMA: tl.constexpr,
              DQ_T: tl.constexpr, WS: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr,
              INTERP: tl.constexpr):
    if INTERP:
        m0 = lo
        while m0 < hi:
            dk, dv = _bwd_step(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQA, DQA_ptr, stride_qn,
                               stride_don, offs_n, m0, m_len, n_len, OFF, LO, HI, qk_scale, sm_scale,
                               MASKED, CHK, TMA, ATOMIC_TMA, DQ_T, D, PREC, BLOCK_M)
            m0 += BLOCK_M
    else:
        for m0 in tl.range(lo, hi, BLOCK_M, warp_specialize=WS):
            m0 = tl.multiple_of(m0, BLOCK_M)
            dk, dv = _bwd_step(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQA, DQA_ptr, stride_qn,
                               stride_don, offs_n, m0, m_len, n_len, OFF, LO, HI, qk_scale, sm_scale,
                               MASKED, CHK, TMA, ATOMIC_TMA, DQ_T, D, PREC, BLOCK_M)
    return dk, dv


@triton.jit(do_not_specialize=["B", "H", "HK", "Nq", "Nk", "LO", "HI"])
def _hopper_bwd_kernel(Q, K, V, DO, DQA, DQA_ptr, LSE, DELTA, DK, DV,
                       stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn,
                       stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_don,
                       stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                       B, H, HK, GROUP, Nq, Nk, LO, HI, qk_scale, sm_scale,
                       D: tl.constexpr, TMA: tl.constexpr, ATOMIC_TMA: tl.constexpr, DQ_T: tl.constexpr,
                       WS: tl.constexpr, CHK: tl.constexpr, RAGGED_Q: tl.constexpr, PREC: tl.constexpr,
                       INTERP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program per (key block, batch, kv head): loops over the GROUP query heads and the
    query blocks that see this key block. Masked loops: before the fully visible query blocks
    with a right edge (the causal diagonal), after them with a left edge or a ragged query end."""
    HAS_PRE: tl.constexpr = (CHK & 2) != 0
    HAS_POST: tl.constexpr = ((CHK & 1) != 0) or RAGGED_Q
    EVEN_N: tl.constexpr = (CHK & 4) == 0
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HK
    hk = pid_bh % HK
    n0 = pid_n * BLOCK_N
    OFF = Nk - Nq
    n_last = tl.minimum(n0 + BLOCK_N, Nk) - 1
    b64 = b.to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)                                # (BLOCK_N,)
    offs_d = tl.arange(0, D)
    if TMA == 2:
        Qd = tl.make_tensor_descriptor(Q, shape=[B * H * Nq, D], strides=[D, 1], block_shape=[BLOCK_M, D])
        DOd = tl.make_tensor_descriptor(DO, shape=[B * H * Nq, D], strides=[D, 1], block_shape=[BLOCK_M, D])
        Kd = tl.make_tensor_descriptor(K, shape=[B * HK * Nk, D], strides=[D, 1], block_shape=[BLOCK_N, D])
        Vd = tl.make_tensor_descriptor(V, shape=[B * HK * Nk, D], strides=[D, 1], block_shape=[BLOCK_N, D])
    else:
        Qd = Q
        DOd = DO
        Kd = K
        Vd = V
    if ATOMIC_TMA and TMA == 2:
        DQAd = tl.make_tensor_descriptor(DQA, shape=[B * H * Nq, D], strides=[D, 1], block_shape=[BLOCK_M, D])
    else:
        DQAd = DQA
    if TMA > 0:
        k_row0 = (b * HK + hk) * Nk
        Kh = Kd
        Vh = Vd
    else:
        k_row0 = 0
        Kh = K + b64 * stride_kb + hk.to(tl.int64) * stride_kh
        Vh = V + b64 * stride_vb + hk.to(tl.int64) * stride_vh
    k = _load_rows(Kh, k_row0, n0, Nk, stride_kn, True, TMA, BLOCK_N, D)  # (BLOCK_N, D), resident
    v = _load_rows(Vh, k_row0, n0, Nk, stride_vn, True, TMA, BLOCK_N, D)
    if not EVEN_N:   # a ragged last key block: rows past Nk must add nothing to dQ
        k = tl.where(offs_n[:, None] < Nk, k, 0.0)
        v = tl.where(offs_n[:, None] < Nk, v, 0.0)
    dk = tl.zeros([BLOCK_N, D], tl.float32)
    dv = tl.zeros([BLOCK_N, D], tl.float32)
    start, full_lo, full_hi, end = _query_split(n0, n_last, Nq, OFF, LO, HI, BLOCK_M, HAS_PRE)
    g = tl.full([], 0, tl.int32)
    while g < GROUP:                                                   # query heads of this kv head
        h = hk * GROUP + g
        bh = b * H + h
        lse_ptr = LSE + bh.to(tl.int64) * Nq
        delta_ptr = DELTA + bh.to(tl.int64) * Nq
        dqa_ptr = DQA_ptr + bh.to(tl.int64) * Nq * D
        if TMA > 0:
            q_row0 = bh * Nq
            Qh = Qd
            DOh = DOd
        else:
            q_row0 = 0
            Qh = Q + b64 * stride_qb + h.to(tl.int64) * stride_qh
            DOh = DO + b64 * stride_dob + h.to(tl.int64) * stride_doh
        if HAS_PRE:    # the diagonal (causal) / right window edge
            dk, dv = _bwd_loop(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQAd, dqa_ptr, stride_qn,
                               stride_don, offs_n, start, full_lo, Nq, Nk, OFF, LO, HI, qk_scale, sm_scale,
                               True, CHK, TMA, ATOMIC_TMA, DQ_T, WS, D, PREC, BLOCK_M, INTERP)
        dk, dv = _bwd_loop(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQAd, dqa_ptr, stride_qn,
                           stride_don, offs_n, full_lo, full_hi, Nq, Nk, OFF, LO, HI, qk_scale, sm_scale,
                           False, CHK, TMA, ATOMIC_TMA, DQ_T, WS, D, PREC, BLOCK_M, INTERP)
        if HAS_POST:   # left window edge, ragged last query block
            dk, dv = _bwd_loop(dk, dv, k, v, Qh, DOh, q_row0, lse_ptr, delta_ptr, DQAd, dqa_ptr, stride_qn,
                               stride_don, offs_n, full_hi, end, Nq, Nk, OFF, LO, HI, qk_scale, sm_scale,
                               True, CHK, TMA, ATOMIC_TMA, DQ_T, WS, D, PREC, BLOCK_M, INTERP)
        g += 1
    dk = dk * sm_scale                                                 # dS was unscaled
    kv_mask = offs_n[:, None] < Nk
    tl.store(DK + b64 * stride_dkb + hk.to(tl.int64) * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b64 * stride_dvb + hk.to(tl.int64) * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


# ---------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------
class HopperPlan(NamedTuple):
    """Every choice of one call, fixed before launching (see the module docstring)."""
    tma: str                  # "off" | "host" | "device"
    warp_specialize: bool
    causal_split: bool | None  # None: split unless warp-specialised
    grid: str                 # one of GRIDS
    config: HopperConfig | None         # forward tiles (None: DEFAULT_CONFIGS)
    backward: str             # "atomic" (this module) | "fa2" (flash_triton's kernels)
    bwd_tma: str
    bwd_warp_specialize: bool
    bwd_config: HopperConfig | None


def _as_config(cfg, name: str) -> HopperConfig | None:
    if cfg is None or isinstance(cfg, HopperConfig):
        return cfg
    if isinstance(cfg, (tuple, list)) and len(cfg) == 4 and all(isinstance(x, int) for x in cfg):
        return HopperConfig(*cfg)
    raise TypeError(f"{name} must be None or (block_m, block_n, num_warps, num_stages), got {cfg!r}")


def _tma_mode(tma, warp_specialize: bool, name: str = "tma") -> str:
    if tma is True:
        return "device" if warp_specialize else "host"
    if tma is False or tma is None:
        return "off"
    if tma not in TMA_MODES:
        raise ValueError(f"{name} must be True, False or one of {TMA_MODES}, got {tma!r}")
    return tma


def make_plan(*, tma=True, warp_specialize: bool = True, causal_split: bool | None = None, grid: str = "m_rev",
              config=None, backward: str = "atomic", bwd_tma=None, bwd_warp_specialize: bool = False,
              bwd_config=None) -> HopperPlan:
    """Check the switches of :func:`flash_attention_hopper` and return them as a :class:`HopperPlan`.
    ``bwd_tma=None`` follows the forward's ``tma`` (``"host"`` when that is ``"device"`` but the
    backward is not warp-specialised)."""
    if causal_split is not None and not isinstance(causal_split, bool):
        raise TypeError(f"causal_split must be a bool or None, got {causal_split!r}")
    for name, val in (("warp_specialize", warp_specialize), ("bwd_warp_specialize", bwd_warp_specialize)):
        if not isinstance(val, bool):
            raise TypeError(f"{name} must be a bool, got {val!r}")
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}, got {backward!r}")
    fwd_tma = _tma_mode(tma, warp_specialize)
    if bwd_tma is None:
        bwd_tma = "off" if fwd_tma == "off" else ("device" if bwd_warp_specialize else "host")
    else:
        bwd_tma = _tma_mode(bwd_tma, bwd_warp_specialize, "bwd_tma")
    return HopperPlan(fwd_tma, warp_specialize, causal_split, grid, _as_config(config, "config"), backward,
                      bwd_tma, bwd_warp_specialize, _as_config(bwd_config, "bwd_config"))


def _split(plan: HopperPlan) -> bool:
    """Whether the forward splits its key loop into unmasked and masked loops. Triton 3.6 warp-
    specialises a function with one key loop only (a second loop fails to compile), so the
    default (None) is to split exactly when not warp-specialised."""
    return (not plan.warp_specialize) if plan.causal_split is None else plan.causal_split


def _alloc(size: int, alignment: int, stream):
    """Global scratch for in-kernel tensor descriptors (``triton.set_allocator``)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _ensure_allocator() -> None:
    """Install :func:`_alloc` unless an allocator is set in this context (Triton keeps it in a
    ``ContextVar``, so autograd's backward thread starts without one)."""
    try:
        from triton.runtime import _allocation
        if not isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # pragma: no cover - another Triton layout
        pass
    triton.set_allocator(_alloc)


def _flat_ok(t: torch.Tensor) -> bool:
    """Whether a (B, H, N, D) tensor is one (B·H·N, D) row-major matrix, 16-byte aligned."""
    return t.is_contiguous() and t.data_ptr() % 16 == 0


def _config(plan_cfg, kind: str, D: int, ws: bool) -> HopperConfig:
    if interpreting():
        return plan_cfg if plan_cfg is not None else INTERPRETER_CONFIG
    return plan_cfg if plan_cfg is not None else DEFAULT_CONFIGS[(kind, D, ws)]


def _descriptor(t2d: torch.Tensor, block_rows: int):
    from triton.tools.tensor_descriptor import TensorDescriptor
    return TensorDescriptor(t2d, shape=list(t2d.shape), strides=[t2d.shape[1], 1], block_shape=[block_rows, t2d.shape[1]])


def _strides(t: torch.Tensor):
    return t.stride(0), t.stride(1), t.stride(2)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _num_sms(device: torch.device) -> int:
    """Multiprocessors of ``device`` (4 for CPU tensors: the interpreter's persistent grid)."""
    return _sm_count(device.index or 0) if device.type == "cuda" else 4


#: The compiled kernel of the latest launch, by kernel name (registers, spills, warps after
#: warp specialisation): read by tools/hopper_probe.py.
last_compiled: dict = {}


def _launch(kernel, grid, args, kwargs, cfg: HopperConfig, warmup: bool):
    """Launch (or, with ``warmup``, only compile) one kernel; the interpreter takes no
    ``num_warps``/``num_stages``."""
    if interpreting():
        if not warmup:
            kernel[grid](*args, **kwargs)
        return None
    _ensure_allocator()
    kw = dict(kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    compiled = kernel.warmup(*args, grid=grid, **kw) if warmup else kernel[grid](*args, **kw)
    last_compiled[kernel.__name__] = compiled
    return compiled


class ForwardLaunch(NamedTuple):
    """One forward launch of ``_hopper_fwd_kernel``, fully bound, and the outputs it will write."""
    grid: tuple
    args: tuple
    kwargs: dict          # the kernel's constexprs
    config: HopperConfig
    o: torch.Tensor       # (B, Hq, Nq, D)
    lse: torch.Tensor     # (B, Hq, Nq) fp32


def forward_launch(q, k, v, lo: int, hi: int, scale: float, plan: HopperPlan) -> ForwardLaunch:
    """Bind the forward's launch for checked inputs without launching it (allocates ``o`` and
    ``lse``): :func:`launch_hopper_forward` launches it, :mod:`effsmall.attention.sm90_asm`
    compiles it for an sm90 target."""
    B, Hq, Nq, D = q.shape
    Hk, Nk = k.shape[1], k.shape[2]
    cfg = _config(plan.config, "fwd", D, plan.warp_specialize)
    BM, BN = cfg.block_m, cfg.block_n
    o = torch.empty_like(q)                                            # (B, Hq, Nq, D)
    lse = torch.empty((B, Hq, Nq), device=q.device, dtype=torch.float32)  # (B, Hq, Nq)
    tma = _TMA_CODE[plan.tma]
    if tma == 1:  # descriptors over the flattened (B·H·N, D) row matrices
        args4 = (_descriptor(q.view(B * Hq * Nq, D), BM), _descriptor(k.view(B * Hk * Nk, D), BN),
                 _descriptor(v.view(B * Hk * Nk, D), BN), _descriptor(o.view(B * Hq * Nq, D), BM))
    else:
        args4 = (q, k, v, o)
    n_m = cdiv(Nq, BM)
    grid_code = _GRID_CODE[plan.grid]
    if grid_code == 3:
        per_sm = 2 if plan.grid == "persistent2" else 1
        num_progs = min(n_m * B * Hq, _num_sms(q.device) * per_sm)
        grid = (num_progs,)
    elif grid_code == 2:
        num_progs, grid = 0, (B * Hq, n_m)
    else:
        num_progs, grid = 0, (n_m, B * Hq)
    has_left, has_right, ragged = lo > -_BIG, hi < _BIG, Nk % BN != 0
    kwargs = dict(D=D, TMA=tma, WS=plan.warp_specialize and not interpreting(), SPLIT=_split(plan),
                  CHK=int(has_left) | 2 * int(has_right) | 4 * int(ragged),
                  GRID=grid_code, PREC=_dot_precision(q),
                  BLOCK_M=BM, BLOCK_N=BN, **interp_flag())
    args = (*args4, o, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(o),
            B, Hq, Hk, Hq // Hk, Nq, Nk, lo, hi, scale * LOG2E.value, n_m, num_progs)
    return ForwardLaunch(grid, args, kwargs, cfg, o, lse)


def launch_hopper_forward(q, k, v, lo: int, hi: int, scale: float, plan: HopperPlan, *, warmup: bool = False):
    """Launch the forward on checked inputs (``lo, hi, scale`` from
    :func:`~effsmall.attention.flash_triton.check_flash_inputs`); returns ``(o, lse)`` with the
    kernels' ``+inf`` for a row that sees no key. q ``(B, Hq, Nq, D)``, k, v ``(B, Hk, Nk, D)``;
    descriptor modes need them contiguous. ``warmup=True`` compiles without launching."""
    fl = forward_launch(q, k, v, lo, hi, scale, plan)
    _launch(_hopper_fwd_kernel, fl.grid, fl.args, fl.kwargs, fl.config, warmup)
    return fl.o, fl.lse


def launch_hopper_backward(do, q, k, v, o, lse, lo: int, hi: int, scale: float, plan: HopperPlan, *,
                           warmup: bool = False):
    """Gradients ``(dq, dk, dv)`` from the forward's ``o`` and ``lse`` (kernel convention, ``+inf``
    for a row that sees no key) with this module's atomic-dQ kernel; ``do`` like ``q``."""
    B, Hq, Nq, D = q.shape
    Hk, Nk = k.shape[1], k.shape[2]
    cfg = _config(plan.bwd_config, "bwd", D, plan.bwd_warp_specialize)
    BM, BN = cfg.block_m, cfg.block_n
    tma = _TMA_CODE[plan.bwd_tma]
    do = do.contiguous() if (tma > 0 and not _flat_ok(do)) or do.stride(-1) != 1 else do
    delta = torch.empty_like(lse)                                      # (B, Hq, Nq) rowsum(dO ∘ O)
    pre_m = 16 if interpreting() else 64
    if not warmup:
        _bwd_preprocess[(cdiv(Nq, pre_m), B * Hq)](
            o, do, delta, q, *_strides(o), *_strides(do), lse.stride(0), lse.stride(1), Hq, Nq,
            D=D, BLOCK_D=D, VARLEN=False, BLOCK_M=pre_m)
    dqa = torch.zeros((B, Hq, Nq, D), device=q.device, dtype=torch.float32)  # fp32 dQ accumulator
    dk, dv = torch.empty_like(k), torch.empty_like(v)                  # (B, Hk, Nk, D)
    atomic_tma = tma > 0 and not interpreting()
    if tma == 1:  # descriptors over the flattened (B·H·N, D) row matrices
        args4 = (_descriptor(q.view(B * Hq * Nq, D), BM), _descriptor(k.view(B * Hk * Nk, D), BN),
                 _descriptor(v.view(B * Hk * Nk, D), BN), _descriptor(do.view(B * Hq * Nq, D), BM))
        dqa_arg = _descriptor(dqa.view(B * Hq * Nq, D), BM) if atomic_tma else dqa
    else:
        args4 = (q, k, v, do)
        dqa_arg = dqa
    has_left, has_right = lo > -_BIG, hi < _BIG
    kwargs = dict(D=D, TMA=tma, ATOMIC_TMA=atomic_tma, DQ_T=BM < 64, WS=plan.bwd_warp_specialize and not interpreting(),
                  CHK=int(has_left) | 2 * int(has_right) | 4 * int(Nk % BN != 0), RAGGED_Q=Nq % BM != 0,
                  PREC=_dot_precision(q), BLOCK_M=BM, BLOCK_N=BN, **interp_flag())
    args = (*args4, dqa_arg, dqa, lse, delta, dk, dv,
            *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
            B, Hq, Hk, Hq // Hk, Nq, Nk, lo, hi, scale * LOG2E.value, scale)
    _launch(_hopper_bwd_kernel, (cdiv(Nk, BN), B * Hk), args, kwargs, cfg, warmup)
    return dqa.to(q.dtype), dk, dv


def _prepare(q, k, v, plan: HopperPlan):
    """Contiguous copies where a descriptor mode needs the flat layout."""
    if "off" != plan.tma or (plan.backward == "atomic" and plan.bwd_tma != "off"):
        q, k, v = (t if _flat_ok(t) else t.contiguous() for t in (q, k, v))
    return q, k, v


class _FlashAttentionHopper(torch.autograd.Function):
    """Saves what :class:`~effsmall.attention.flash_triton._FlashAttention` saves — q, k, v, o
    ``(B, H, N, D)`` and lse ``(B, Hq, Nq)`` fp32 with ``+inf`` for a row that sees no key — so
    either backward can run on this forward's outputs. ``autotune`` goes to the FA2 backward."""
    @staticmethod
    def forward(ctx, q, k, v, lo, hi, scale, plan, autotune):
        o, lse = launch_hopper_forward(q, k, v, lo, hi, scale, plan)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.lo, ctx.hi, ctx.scale, ctx.plan, ctx.autotune = lo, hi, scale, plan, autotune
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        if ctx.plan.backward == "fa2":
            dq, dk, dv = launch_backward(do.contiguous(), q, k, v, o, lse, ctx.lo, ctx.hi, ctx.scale,
                                         autotune=ctx.autotune)
        else:
            dq, dk, dv = launch_hopper_backward(do, q, k, v, o, lse, ctx.lo, ctx.hi, ctx.scale, ctx.plan)
        return dq, dk, dv, None, None, None, None, None


def _checked(q, k, v, causal, scale, window):
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal, scale=scale, window=window)
    return scale, lo, hi


def flash_attention_hopper(q, k, v, causal: bool = False, scale: float | None = None, *, window=None,
                           tma=True, warp_specialize: bool = True, causal_split: bool | None = None, grid: str = "m_rev",
                           config=None, backward: str = "atomic", bwd_tma=None, bwd_warp_specialize: bool = False,
                           bwd_config=None):
    """Exact softmax attention ``softmax(Q Kᵀ · scale + mask) V`` with Hopper kernels.

    The same contract and output as :func:`effsmall.attention.flash_attention`: q ``(B, Hq, Nq, D)``,
    k and v ``(B, Hk, Nk, D)`` with ``Hq % Hk == 0``; returns ``(B, Hq, Nq, D)`` in q's dtype;
    ``causal`` bottom-right aligned; ``window=(left, right)``; rows that see no key are zeros.
    Differentiable. The keyword switches are described in the module docstring
    (``config``/``bwd_config``: ``(block_m, block_n, num_warps, num_stages)``). Inputs the Hopper
    kernels do not cover (:func:`hopper_supported` is False: another GPU, D ∉ {64, 128}, fp32 on
    a GPU) are computed by :func:`~effsmall.attention.flash_attention`.
    """
    scale, lo, hi = _checked(q, k, v, causal, scale, window)
    plan = make_plan(tma=tma, warp_specialize=warp_specialize, causal_split=causal_split, grid=grid, config=config,
                     backward=backward, bwd_tma=bwd_tma, bwd_warp_specialize=bwd_warp_specialize, bwd_config=bwd_config)
    if q.shape[2] == 0 or k.shape[2] == 0 or not hopper_supported(q, k, v):
        return flash_attention(q, k, v, causal=causal, scale=scale, window=window)
    if interpreting() and q.dtype == torch.bfloat16:
        warn_once("flash_attention_hopper.bf16_interpreter",
                  "the Triton interpreter has no bfloat16: flash_attention_hopper computes in float32 and casts back")
        q32, k32, v32 = _prepare(q.float(), k.float(), v.float(), plan)
        return _FlashAttentionHopper.apply(q32, k32, v32, lo, hi, scale, plan, True).to(torch.bfloat16)
    q, k, v = _prepare(q, k, v, plan)
    return _FlashAttentionHopper.apply(q, k, v, lo, hi, scale, plan, True)


def flash_attention_hopper_forward(q, k, v, causal: bool = False, scale: float | None = None, *, window=None,
                                   tma=True, warp_specialize: bool = True, causal_split: bool | None = None,
                                   grid: str = "m_rev", config=None):
    """Forward only, returning ``(O, lse)`` with lse ``(B, Hq, Nq)`` fp32 (natural log) and the
    package convention ``lse = -inf`` for a row that sees no key, as
    :func:`~effsmall.attention.flash_triton.flash_attention_forward`. Raises ValueError where
    :func:`hopper_supported` is False."""
    scale, lo, hi = _checked(q, k, v, causal, scale, window)
    reason = hopper_unsupported_reason(q, k, v)
    if reason is not None:
        raise ValueError(f"q: {reason}")
    if interpreting() and q.dtype == torch.bfloat16:
        raise TypeError("q: bfloat16 is not supported by the Triton interpreter; use float32 or float16 on CPU")
    plan = make_plan(tma=tma, warp_specialize=warp_specialize, causal_split=causal_split, grid=grid, config=config)
    q, k, v = _prepare(q, k, v, plan)
    o, lse = launch_hopper_forward(q, k, v, lo, hi, scale, plan)
    return o, lse.masked_fill(lse == float("inf"), float("-inf"))


# ---------------------------------------------------------------------------------------------
# What flash_attention runs on a Hopper GPU
# ---------------------------------------------------------------------------------------------
#: The forward :func:`~effsmall.attention.flash_attention` runs on a Hopper GPU, one fixed plan
#: per (head dim, causal) group; the backward stays flash_triton's FA2 kernels (``backward="fa2"``).
#: Chosen by ``tools/hopper_probe.py`` on an NVIDIA H200 (Triton 3.6, torch 2.11, 2026-12-02;
#: committed as ``effsmall/results/hopper-nvidia-h200-20261202.json``, ``summary.chosen``): bf16,
#: 16K tokens per call, N = 512 … 16K, GPU time (CUDA graphs). These four plans run the forward
#: 1.068x as fast as the portable kernel (geometric mean over 24 shapes, slowest shape 1.001x),
#: 0.82x cuDNN's speed, 1.08x FlexAttention's; the best shape reaches 570 TFLOP/s, 72% of the
#: H200's measured 790 TFLOP/s bf16 ceiling. Forward + backward: 1.021x the portable kernel.
#:
#: * D = 128, full: in-kernel descriptors + warp specialisation, 128 × 128 tiles, 4 warps
#:   (warp specialisation engages only with 4), 2 stages (3 stages with it gave NaN).
#: * D = 64, full: host descriptors, 128 × 64 tiles, 4 warps, 3 stages.
#: * causal (D = 128 and 64): host descriptors and the split loop (unmasked blocks, then the
#:   diagonal); warp specialisation with the split loop does not compile in Triton 3.6, and
#:   without the split the masked single loop was about 0.89x as fast.
#: All use the longest-rows-first grid (``"m_rev"``). The atomic-dQ backward of this module was
#: slower than the FA2 backward at every measured shape (2-23% lower throughput) except D = 128, N = 512 (1-2%
#: faster), hence ``"fa2"``.
DISPATCH_PLANS = {
    (128, False): make_plan(tma="device", warp_specialize=True, grid="m_rev", config=(128, 128, 4, 2), backward="fa2"),
    (64, False): make_plan(tma="host", warp_specialize=False, grid="m_rev", config=(128, 64, 4, 3), backward="fa2"),
    (128, True): make_plan(tma="host", warp_specialize=False, causal_split=True, grid="m_rev", config=(128, 128, 8, 3),
                           backward="fa2"),
    (64, True): make_plan(tma="host", warp_specialize=False, causal_split=True, grid="m_rev", config=(128, 64, 4, 3),
                          backward="fa2"),
}


def _measured_group(lo: int, hi: int) -> bool | None:
    """The ``causal`` of a kernel band the probe measured (no window), None for any other band."""
    if lo != -_BIG:
        return None
    return {_BIG: False, 0: True}.get(hi)


def dispatch_reason(q, k, v, lo: int, hi: int, *, hopper: bool | None = None) -> str | None:
    """Why :func:`~effsmall.attention.flash_attention` runs the portable forward for these checked
    inputs (``lo, hi`` from ``check_flash_inputs``), None when it runs the Hopper one.

    ``hopper=False`` or the environment variable ``EFFSMALL_HOPPER=0`` (read on every call, so a
    benchmark can time before and after) force the portable kernel; ``hopper=True`` ignores the
    variable. Otherwise the Hopper forward runs on inputs of the measured groups: a compiled
    Hopper GPU (not the interpreter), fp16/bf16, D ∈ {64, 128}, full or causal attention without
    a window, dense inputs already in the flat layout the descriptors read (contiguous: a copy of
    a transposed projection could cost more than the rung gains at short N)."""
    if hopper is False:
        return "hopper=False"
    if hopper is None and os.environ.get("EFFSMALL_HOPPER", "1") == "0":
        return "EFFSMALL_HOPPER=0"
    if interpreting():
        return "the Triton interpreter runs the portable kernel"
    reason = hopper_unsupported_reason(q, k, v)
    if reason is not None:
        return reason
    if _measured_group(lo, hi) is None:
        return "only full and causal attention without a window were measured on the Hopper rung"
    if not all(_flat_ok(t) for t in (q, k, v)):
        return "q, k, v are not contiguous (B, H, N, D) tensors (the descriptors read the flat layout)"
    return None


def dispatch_plan(q, k, v, lo: int, hi: int, *, hopper: bool | None = None) -> HopperPlan | None:
    """The :data:`DISPATCH_PLANS` entry :func:`~effsmall.attention.flash_attention` runs for these
    checked inputs, None when :func:`dispatch_reason` says the portable kernel runs."""
    if dispatch_reason(q, k, v, lo, hi, hopper=hopper) is not None:
        return None
    return DISPATCH_PLANS[(q.shape[-1], _measured_group(lo, hi))]


def hopper_forward_fa2_backward(q, k, v, lo: int, hi: int, scale: float, plan: HopperPlan, autotune: bool = True):
    """Attention with the Hopper forward of ``plan`` and flash_triton's FA2 backward (what
    :func:`~effsmall.attention.flash_attention` calls when :func:`dispatch_plan` gives a plan)."""
    return _FlashAttentionHopper.apply(q, k, v, lo, hi, scale, plan, autotune)
