"""Chunked SSD in Triton: one fused scan kernel, used for the forward and for the backward.

**Forward.** The kernel (:func:`_ssd_scan_kernel`) walks the chunks of one (batch, head,
x-block) in order and keeps the state h ∈ ℝ^{P×N} in registers (fp32). For each chunk of Q
steps it does, in one pass over X, A, B, C (the chunked algorithm of Mamba-2, Dao & Gu 2024,
"Transformers are SSMs", §6; ``dA_cumsum`` is the cumulative sum of a inside the chunk):

1. ``dA_cumsum`` by ``tl.cumsum`` and the diagonal block Y = (L ∘ C Bᵀ) X with two ``tl.dot``;
2. state to output: Y += exp(dA_cumsum) · C hᵀ (one ``tl.dot`` against the carried state);
3. chunk state and state passing at once: h ← exp(a_chunk) h + (X ∘ exp(a_last − dA_cumsum))ᵀ B.

Nothing but Y (and the final state) is written to memory: no chunk states, no C Bᵀ matrix, no
cumsum tensor. When the decays need a gradient the same store also writes an fp32 copy of Y: the
backward's dA is a sum of differences of nearly equal terms, and a bf16 Y cost it 4% accuracy.

**Time segments.** Sequential chunks give too little parallelism when b·h is small and L long,
so the time axis is also split into ``nsegments`` segments: a first launch
(``SEGMENT_STATES_ONLY``) computes each segment's end state from a zero start (step 3 only),
and the scan launch starts segment k from the prefix combination of the segments before it.
Two launches at most; one when b·h alone fills the GPU.

**Backward** uses the same kernel three more times, with the operands in other roles. With the
adjoint state dh_t = dy_t C_tᵀ + exp(a_{t+1}) dh_{t+1} (the recurrence run backwards in time):

* dX = scan **in reverse** with roles (x, B, C) = (dY, C, B) and decays shifted by one step
  (dx_t = dh_t B_t);
* dB = scan in reverse with roles (C, dY, X) (dB_t = dh_tᵀ x_t), summed over a group's heads;
* dC = scan forward with roles (B, X, dY) (dC_t = h_tᵀ dy_t), summed over a group's heads;
* dA: da_k = ⟨dh_final, h_final⟩ + Σ_{t≥k} (dy_t·y_t − x_t·dx_t), a reverse cumsum — the
  telescoped sum over the (t, s) pairs that a_k decays (s < k ≤ t);
* d initial_states = exp(a_0) · dh_0 (the reverse scan's final state).

Reverse time is negative strides, so nothing is flipped or copied. Chunking (Q) is an
implementation parameter of this kernel: the result does not depend on it mathematically, so
the ``chunk_size`` argument only sets Q when it is a power of two in [16, 128]; otherwise
the tuned default is used (documented, tested).

**Roles.** The kernel computes Y = SSD(x, a, B, C) on whatever tensors fill its three operand
roles (x, B, C); the four passes fill them so:

  pass      x role   B role   C role   time      a shift   state        Δ multiplies
  forward   X        B        C        forward   0         h   (P×N)    the x role (X), on load
  dX        dY       C        B        reverse   1         dh  (P×N)    dx̃, in the epilogue
  dB        C        dY       X        reverse   1         dhᵀ (N×P)    the C role (X), on load
  dC        B        X        dY       forward   0         hᵀ  (N×P)    the B role (X), on load

with X (b, l, h, P), B and C (b, l, g, N), A (b, l, h). A role that holds B or C (g heads) is
shared by h/g consecutive heads: Mamba-2's multi-input pattern (§7.2). The x role's last
dimension is called ``dim_x`` (P in the forward) and the B and C roles' ``dim_bc`` (N in the
forward); the state is dim_x × dim_bc.

**Compile-time modes** of the kernel (``tl.constexpr``). The two with more than two values are
strings rather than module-level constants: Triton re-checks every global constant a kernel
reads on every launch (about 2 µs each on a slow host), and these kernels are launch-bound at small sizes.

* ``SCALE_ROLE`` — which operand the per-step, per-head Δ (``dt``) multiplies as it is loaded
  (Mamba's x·Δ folded into the kernel, so the scaled input is never written to memory):
  ``"none"``; ``"x"`` (forward: x ← x·Δ); ``"B"`` (dC pass: the B role holds X);
  ``"C"`` (dB pass: the C role holds X).
* ``EPILOGUE`` — what the dX pass computes besides Y (:func:`_dx_epilogue`):
  ``"none"``; ``"grad_a"`` (also the per-step dA terms dy·y − x·dx);
  ``"grad_a_dt"`` (with Δ: the dA terms dy·y − x̃·dx̃ of the scanned input x̃ = x·Δ, dΔ = x·dx̃,
  and Y becomes dx = Δ·dx̃).
* booleans: ``HAS_INITIAL_STATE``; ``HAS_SEQ_IDX`` (packed sequences: decays cut where a new
  sequence starts); ``SEGMENT_STATES_ONLY`` (the first launch of a split scan);
  ``STORE_FINAL_STATE``; ``STORE_Y_FP32`` (the fp32 copy of Y); ``IEEE_FP32`` (fp32 operands:
  exact fp32 dots instead of TF32); ``FOR_LOOP`` (compiled: a pipelined ``for`` over chunks;
  interpreted: a ``while``); ``TIME_OFFSETS_INT64`` (time offsets past 2³¹ elements need 64-bit
  address arithmetic).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, interpreting, next_power_of_2, require_triton_tensor
from effsmall.ssm._ssd_checks import check_ssd_inputs, segment_ids

# Overrides for tuning sweeps and tests: {"Q": 64, "BX": 64, "nseg": 4, "num_warps": 4, "num_stages": 2}
TUNING: dict = {}


@triton.jit
def _dx_epilogue(
    y, x, t, t_valid, offs_x, mask_x,
    X_FWD, Y_FWD, stride_x_seqlen, stride_x_dim,  # the forward's X and Y, at the x role's (dY's) strides
    DT, stride_dt_seqlen,  # Δ (b, l, h), read when EPILOGUE == "grad_a_dt"
    DA_TERMS, DDT, stride_epi_seqlen,  # outputs (b, l, h) fp32
    EPILOGUE: tl.constexpr,
):
    """The dX pass's extra outputs for one chunk; returns the dX tile to store.

    In this pass the x role holds dY and y is dx̃ = dh B (dx̃ = dx when there is no Δ). It stores,
    per step t, the dA term dy_t·y_t − x̃_t·dx̃_t (its suffix sums are dA) and, with Δ, dΔ_t =
    x_t·dx̃_t, and returns dx = Δ·dx̃ (else y unchanged). y (Q, BLOCK_X) fp32; x (Q, BLOCK_X) dY.
    """
    m2 = t_valid[:, None] & mask_x[None, :]
    xo = tl.load(X_FWD + t[:, None] * stride_x_seqlen + offs_x[None, :] * stride_x_dim,
                 mask=m2, other=0.0).to(tl.float32)  # (Q, BLOCK_X) the forward's x
    yf = tl.load(Y_FWD + t[:, None] * stride_x_seqlen + offs_x[None, :] * stride_x_dim,
                 mask=m2, other=0.0).to(tl.float32)  # (Q, BLOCK_X) the forward's y
    if EPILOGUE == "grad_a_dt":
        dte = tl.load(DT + t * stride_dt_seqlen, mask=t_valid, other=0.0).to(tl.float32)  # (Q,)
        xe = xo * dte[:, None]  # x̃ = x·Δ
    else:
        xe = xo
    # dy·y − x̃·dx̃ per step: its suffix sums are the log-decay gradient
    tl.store(DA_TERMS + t * stride_epi_seqlen, tl.sum(x.to(tl.float32) * yf, 1) - tl.sum(xe * y, 1), mask=t_valid)
    if EPILOGUE == "grad_a_dt":
        tl.store(DDT + t * stride_epi_seqlen, tl.sum(xo * y, 1), mask=t_valid)  # dΔ_t = x_t·dx̃_t
        y = y * dte[:, None]  # dx = Δ·dx̃
    return y


@triton.jit
def _chunk_step(
    chunk, h, seq_prev, decay_total,  # carried from chunk to chunk (docstring)
    X, stride_x_seqlen, stride_x_dim,  # x role, at this (batch, head)
    A, stride_a_seqlen, a_shift,  # log decays; logical steps < a_shift read 0
    B, stride_b_seqlen, stride_b_dim,  # B role
    C, stride_c_seqlen, stride_c_dim,  # C role
    Y, Y_fp32, stride_y_seqlen, stride_y_dim,  # output, and its fp32 copy when STORE_Y_FP32
    SEQ_IDX, stride_seq_idx_seqlen,  # sequence ids when HAS_SEQ_IDX
    DT, stride_dt_seqlen,  # Δ when SCALE_ROLE != "none" or EPILOGUE == "grad_a_dt"
    X_FWD, Y_FWD, DA_TERMS, DDT, stride_epi_seqlen,  # dX-pass epilogue (see _dx_epilogue)
    seqlen, offs_q, offs_x, offs_bc, mask_x, mask_bc,
    Q: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, SEGMENT_STATES_ONLY: tl.constexpr,
    IEEE_FP32: tl.constexpr, SCALE_ROLE: tl.constexpr, EPILOGUE: tl.constexpr,
    TIME_OFFSETS_INT64: tl.constexpr, STORE_Y_FP32: tl.constexpr,
):
    """One chunk: diagonal block, state to output (unless SEGMENT_STATES_ONLY), then the state update.

    Carried from chunk to chunk: the chunk index; h (BLOCK_X, BLOCK_BC) fp32, the state entering
    the chunk; seq_prev, the sequence id of the step before it; decay_total, the product of the
    decays so far. Returns the new h, seq_prev and decay_total.
    """
    t = chunk * Q + offs_q  # (Q,) logical time steps
    if TIME_OFFSETS_INT64:
        t = t.to(tl.int64)
    t_valid = t < seqlen
    a = tl.load(A + t * stride_a_seqlen, mask=t_valid & (t >= a_shift), other=0.0).to(tl.float32)  # (Q,)
    cs = tl.cumsum(a, 0)  # (Q,) dA_cumsum
    cs_last = tl.sum(a, 0)
    x = tl.load(X + t[:, None] * stride_x_seqlen + offs_x[None, :] * stride_x_dim,
                mask=t_valid[:, None] & mask_x[None, :], other=0.0)  # (Q, BLOCK_X)
    bm = tl.load(B + t[:, None] * stride_b_seqlen + offs_bc[None, :] * stride_b_dim,
                 mask=t_valid[:, None] & mask_bc[None, :], other=0.0)  # (Q, BLOCK_BC)
    if SCALE_ROLE != "none":  # Mamba's x·Δ, folded in: scale the role that holds x, per step and head
        dt = tl.load(DT + t * stride_dt_seqlen, mask=t_valid, other=0.0).to(tl.float32)  # (Q,)
        if SCALE_ROLE == "x":
            x = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
        if SCALE_ROLE == "B":
            bm = (bm.to(tl.float32) * dt[:, None]).to(bm.dtype)
    if HAS_SEQ_IDX:
        sq = tl.load(SEQ_IDX + t * stride_seq_idx_seqlen, mask=t_valid, other=-1)  # (Q,)
        sq_last = tl.load(SEQ_IDX + (tl.minimum(chunk * Q + Q, seqlen) - 1) * stride_seq_idx_seqlen)  # last valid step
        w = tl.where(sq == sq_last, tl.exp(cs_last - cs), 0.0)  # (Q,) decay to the chunk's end
        carry = tl.where(seq_prev == sq_last, tl.exp(cs_last), 0.0)
    else:
        w = tl.exp(cs_last - cs)
        carry = tl.exp(cs_last)
    if not SEGMENT_STATES_ONLY:
        cm = tl.load(C + t[:, None] * stride_c_seqlen + offs_bc[None, :] * stride_c_dim,
                     mask=t_valid[:, None] & mask_bc[None, :], other=0.0)  # (Q, BLOCK_BC)
        if SCALE_ROLE == "C":
            cm = (cm.to(tl.float32) * dt[:, None]).to(cm.dtype)
        if IEEE_FP32:
            cb = tl.dot(cm, tl.trans(bm), input_precision="ieee")  # (Q, Q)
        else:
            cb = tl.dot(cm, tl.trans(bm))  # (Q, Q)
        keep = offs_q[:, None] >= offs_q[None, :]  # (Q, Q) causal
        din = tl.exp(cs)  # (Q,) decay from the chunk's start
        if HAS_SEQ_IDX:
            keep = keep & (sq[:, None] == sq[None, :])
            din = tl.where(sq == seq_prev, din, 0.0)
        lmat = tl.exp(tl.where(keep, cs[:, None] - cs[None, :], float("-inf")))  # (Q, Q) diagonal block of L
        if IEEE_FP32:
            y = tl.dot(cb * lmat, x.to(tl.float32), input_precision="ieee")  # (Q, BLOCK_X)
            y += tl.dot(cm.to(tl.float32), tl.trans(h), input_precision="ieee") * din[:, None]
        else:
            y = tl.dot((cb * lmat).to(x.dtype), x)  # (Q, BLOCK_X)
            y += tl.dot(cm, tl.trans(h).to(cm.dtype)) * din[:, None]
        if EPILOGUE != "none":  # dX pass: y is dx̃ = dh B for the scanned input x̃ = x·Δ
            y = _dx_epilogue(y=y, x=x, t=t, t_valid=t_valid, offs_x=offs_x, mask_x=mask_x,
                             X_FWD=X_FWD, Y_FWD=Y_FWD, stride_x_seqlen=stride_x_seqlen, stride_x_dim=stride_x_dim,
                             DT=DT, stride_dt_seqlen=stride_dt_seqlen,
                             DA_TERMS=DA_TERMS, DDT=DDT, stride_epi_seqlen=stride_epi_seqlen, EPILOGUE=EPILOGUE)
        tl.store(Y + t[:, None] * stride_y_seqlen + offs_x[None, :] * stride_y_dim,
                 y.to(Y.dtype.element_ty), mask=t_valid[:, None] & mask_x[None, :])
        if STORE_Y_FP32:  # fp32 copy of y for the backward's dA (y·dy − x̃·dx̃ cancels: bf16 y cost 4% error)
            tl.store(Y_fp32 + t[:, None] * stride_y_seqlen + offs_x[None, :] * stride_y_dim, y,
                     mask=t_valid[:, None] & mask_x[None, :])
    xw = x.to(tl.float32) * w[:, None]  # (Q, BLOCK_X)
    if IEEE_FP32:
        h = h * carry + tl.dot(tl.trans(xw), bm.to(tl.float32), input_precision="ieee")  # (BLOCK_X, BLOCK_BC)
    else:
        h = h * carry + tl.dot(tl.trans(xw.to(bm.dtype)), bm)  # (BLOCK_X, BLOCK_BC)
    decay_total = decay_total * carry
    if HAS_SEQ_IDX:
        seq_prev = sq_last
    return h, seq_prev, decay_total


@triton.jit
def _ssd_scan_kernel(
    # x role (b, l, ·, dim_x): heads read index head // x_heads_per_group of axis 2
    X, x_offset, stride_x_batch, stride_x_seqlen, stride_x_head, stride_x_dim, x_heads_per_group,
    # log decays a (b, l, h); logical steps < a_shift read 0
    A, a_offset, stride_a_batch, stride_a_seqlen, stride_a_head, a_shift,
    # B role (b, l, ·, dim_bc)
    B, b_offset, stride_b_batch, stride_b_seqlen, stride_b_head, stride_b_dim, b_heads_per_group,
    # C role (b, l, ·, dim_bc)
    C, c_offset, stride_c_batch, stride_c_seqlen, stride_c_head, stride_c_dim, c_heads_per_group,
    # output (b, l, h, dim_x); Y_fp32: its fp32 copy when STORE_Y_FP32 (same strides)
    Y, Y_fp32, y_offset, stride_y_batch, stride_y_seqlen, stride_y_head, stride_y_dim,
    # sequence ids (b, l) int32 when HAS_SEQ_IDX
    SEQ_IDX, seq_idx_offset, stride_seq_idx_batch, stride_seq_idx_seqlen,
    # Δ (b, l, h): scales the SCALE_ROLE operand, or read by the "grad_a_dt" epilogue
    DT, dt_offset, stride_dt_batch, stride_dt_seqlen, stride_dt_head,
    # dX-pass epilogue: the forward's X and Y (b, l, h, dim_x) at the x role's strides and x_offset;
    # outputs DA_TERMS, DDT (b, l, h) fp32
    X_FWD, Y_FWD, DA_TERMS, DDT, epi_offset, stride_epi_batch, stride_epi_seqlen, stride_epi_head,
    # initial state (b, h, dim_x, dim_bc) when HAS_INITIAL_STATE
    INITIAL_STATE, stride_h0_batch, stride_h0_head, stride_h0_x, stride_h0_bc,
    # final state (b, h, dim_x, dim_bc) fp32 when STORE_FINAL_STATE
    FINAL_STATE, stride_hf_batch, stride_hf_head, stride_hf_x, stride_hf_bc,
    # per time segment, contiguous fp32: end state from a zero start (b·h, nsegments, dim_x, dim_bc)
    # and product of its decays (b·h, nsegments); written by SEGMENT_STATES_ONLY, read by the scan
    SEGMENT_STATES, SEGMENT_DECAYS,
    # sizes
    seqlen, nheads, dim_x, dim_bc, chunks_per_segment, nsegments,
    # tiles: Q steps per chunk, BLOCK_X of dim_x per program, BLOCK_BC ≥ dim_bc
    Q: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_BC: tl.constexpr,
    # modes (module docstring)
    HAS_INITIAL_STATE: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, SEGMENT_STATES_ONLY: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, IEEE_FP32: tl.constexpr, FOR_LOOP: tl.constexpr,
    SCALE_ROLE: tl.constexpr, EPILOGUE: tl.constexpr, TIME_OFFSETS_INT64: tl.constexpr,
    STORE_Y_FP32: tl.constexpr,
):
    """Grid (b·h, time segments, x-blocks): one program scans its segment's chunks in order."""
    tl.static_assert(SCALE_ROLE == "none" or SCALE_ROLE == "x" or SCALE_ROLE == "B" or SCALE_ROLE == "C",
                     "SCALE_ROLE is one of 'none', 'x', 'B', 'C'")
    tl.static_assert(EPILOGUE == "none" or EPILOGUE == "grad_a" or EPILOGUE == "grad_a_dt",
                     "EPILOGUE is one of 'none', 'grad_a', 'grad_a_dt'")
    pid_bh = tl.program_id(0)
    pid_seg = tl.program_id(1)
    pid_x = tl.program_id(2)
    pid_b = pid_bh // nheads
    pid_h = pid_bh % nheads
    offs_x = pid_x * BLOCK_X + tl.arange(0, BLOCK_X)  # (BLOCK_X,)
    offs_bc = tl.arange(0, BLOCK_BC)  # (BLOCK_BC,)
    mask_x = offs_x < dim_x
    mask_bc = offs_bc < dim_bc
    offs_q = tl.arange(0, Q)  # (Q,)

    # Every pointer to this program's (batch, head); a grouped role's head is head // heads_per_group.
    X = X + x_offset + pid_b.to(tl.int64) * stride_x_batch + (pid_h // x_heads_per_group) * stride_x_head
    A = A + a_offset + pid_b.to(tl.int64) * stride_a_batch + pid_h * stride_a_head
    B = B + b_offset + pid_b.to(tl.int64) * stride_b_batch + (pid_h // b_heads_per_group) * stride_b_head
    C = C + c_offset + pid_b.to(tl.int64) * stride_c_batch + (pid_h // c_heads_per_group) * stride_c_head
    SEQ_IDX = SEQ_IDX + seq_idx_offset + pid_b.to(tl.int64) * stride_seq_idx_batch
    DT = DT + dt_offset + pid_b.to(tl.int64) * stride_dt_batch + pid_h * stride_dt_head
    X_FWD = X_FWD + x_offset + pid_b.to(tl.int64) * stride_x_batch + pid_h * stride_x_head
    Y_FWD = Y_FWD + x_offset + pid_b.to(tl.int64) * stride_x_batch + pid_h * stride_x_head
    DA_TERMS = DA_TERMS + epi_offset + pid_b.to(tl.int64) * stride_epi_batch + pid_h * stride_epi_head
    DDT = DDT + epi_offset + pid_b.to(tl.int64) * stride_epi_batch + pid_h * stride_epi_head
    segment = (pid_bh * nsegments + pid_seg).to(tl.int64)  # this program's row of SEGMENT_STATES/DECAYS

    # The state entering this segment: initial state, then the earlier segments' end states.
    h = tl.zeros((BLOCK_X, BLOCK_BC), dtype=tl.float32)  # (BLOCK_X, BLOCK_BC)
    if not SEGMENT_STATES_ONLY:
        if HAS_INITIAL_STATE:
            h = tl.load(INITIAL_STATE + pid_b * stride_h0_batch + pid_h * stride_h0_head
                        + offs_x[:, None] * stride_h0_x + offs_bc[None, :] * stride_h0_bc,
                        mask=mask_x[:, None] & mask_bc[None, :], other=0.0).to(tl.float32)
        j = 0
        while j < pid_seg:  # earlier segments, in order
            decay = tl.load(SEGMENT_DECAYS + pid_bh * nsegments + j)
            state = tl.load(SEGMENT_STATES + (pid_bh * nsegments + j).to(tl.int64) * dim_x * dim_bc
                            + offs_x[:, None] * dim_bc + offs_bc[None, :],
                            mask=mask_x[:, None] & mask_bc[None, :], other=0.0)
            h = decay * h + state
            j += 1
    c_start = pid_seg * chunks_per_segment
    seq_prev = 0
    if HAS_SEQ_IDX:
        seq_prev = tl.load(SEQ_IDX + tl.maximum(c_start * Q - 1, 0) * stride_seq_idx_seqlen)
    decay_total = tl.full((), 1.0, tl.float32)

    Y = Y + y_offset + pid_b.to(tl.int64) * stride_y_batch + pid_h * stride_y_head
    Y_fp32 = Y_fp32 + y_offset + pid_b.to(tl.int64) * stride_y_batch + pid_h * stride_y_head
    if FOR_LOOP:  # compiled only: a for loop lets Triton pipeline the next chunk's loads
        for k in range(0, chunks_per_segment):  # chunks past the end are all-masked no-ops
            h, seq_prev, decay_total = _chunk_step(
                chunk=c_start + k, h=h, seq_prev=seq_prev, decay_total=decay_total,
                X=X, stride_x_seqlen=stride_x_seqlen, stride_x_dim=stride_x_dim,
                A=A, stride_a_seqlen=stride_a_seqlen, a_shift=a_shift,
                B=B, stride_b_seqlen=stride_b_seqlen, stride_b_dim=stride_b_dim,
                C=C, stride_c_seqlen=stride_c_seqlen, stride_c_dim=stride_c_dim,
                Y=Y, Y_fp32=Y_fp32, stride_y_seqlen=stride_y_seqlen, stride_y_dim=stride_y_dim,
                SEQ_IDX=SEQ_IDX, stride_seq_idx_seqlen=stride_seq_idx_seqlen,
                DT=DT, stride_dt_seqlen=stride_dt_seqlen,
                X_FWD=X_FWD, Y_FWD=Y_FWD, DA_TERMS=DA_TERMS, DDT=DDT, stride_epi_seqlen=stride_epi_seqlen,
                seqlen=seqlen, offs_q=offs_q, offs_x=offs_x, offs_bc=offs_bc, mask_x=mask_x, mask_bc=mask_bc,
                Q=Q, HAS_SEQ_IDX=HAS_SEQ_IDX, SEGMENT_STATES_ONLY=SEGMENT_STATES_ONLY, IEEE_FP32=IEEE_FP32,
                SCALE_ROLE=SCALE_ROLE, EPILOGUE=EPILOGUE, TIME_OFFSETS_INT64=TIME_OFFSETS_INT64,
                STORE_Y_FP32=STORE_Y_FP32)
    else:  # while, not range(): the interpreter under numpy 2 rejects runtime range() bounds
        c = c_start
        c_end = tl.minimum(c_start + chunks_per_segment, tl.cdiv(seqlen, Q))
        while c < c_end:
            h, seq_prev, decay_total = _chunk_step(
                chunk=c, h=h, seq_prev=seq_prev, decay_total=decay_total,
                X=X, stride_x_seqlen=stride_x_seqlen, stride_x_dim=stride_x_dim,
                A=A, stride_a_seqlen=stride_a_seqlen, a_shift=a_shift,
                B=B, stride_b_seqlen=stride_b_seqlen, stride_b_dim=stride_b_dim,
                C=C, stride_c_seqlen=stride_c_seqlen, stride_c_dim=stride_c_dim,
                Y=Y, Y_fp32=Y_fp32, stride_y_seqlen=stride_y_seqlen, stride_y_dim=stride_y_dim,
                SEQ_IDX=SEQ_IDX, stride_seq_idx_seqlen=stride_seq_idx_seqlen,
                DT=DT, stride_dt_seqlen=stride_dt_seqlen,
                X_FWD=X_FWD, Y_FWD=Y_FWD, DA_TERMS=DA_TERMS, DDT=DDT, stride_epi_seqlen=stride_epi_seqlen,
                seqlen=seqlen, offs_q=offs_q, offs_x=offs_x, offs_bc=offs_bc, mask_x=mask_x, mask_bc=mask_bc,
                Q=Q, HAS_SEQ_IDX=HAS_SEQ_IDX, SEGMENT_STATES_ONLY=SEGMENT_STATES_ONLY, IEEE_FP32=IEEE_FP32,
                SCALE_ROLE=SCALE_ROLE, EPILOGUE=EPILOGUE, TIME_OFFSETS_INT64=TIME_OFFSETS_INT64,
                STORE_Y_FP32=STORE_Y_FP32)
            c += 1

    if SEGMENT_STATES_ONLY:
        tl.store(SEGMENT_STATES + segment * dim_x * dim_bc + offs_x[:, None] * dim_bc + offs_bc[None, :], h,
                 mask=mask_x[:, None] & mask_bc[None, :])
        if pid_x == 0:
            tl.store(SEGMENT_DECAYS + segment, decay_total)
    elif STORE_FINAL_STATE:
        if pid_seg == nsegments - 1:
            tl.store(FINAL_STATE + pid_b * stride_hf_batch + pid_h * stride_hf_head
                     + offs_x[:, None] * stride_hf_x + offs_bc[None, :] * stride_hf_bc, h,
                     mask=mask_x[:, None] & mask_bc[None, :])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    if interpreting() or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _config(b: int, h: int, l: int, DX: int, DS: int, chunk_size: int, device_index: int = 0) -> dict:
    """Tile sizes and the number of time segments (see the module docstring); cached per shape.

    Keys: Q, BX (the kernel's BLOCK_X), BS (BLOCK_BC), nx (x-blocks), nseg (time segments),
    cps (chunks per segment), num_warps, num_stages, for_loop. The dict is the cache's own: read it only.
    """
    tuning = tuple(sorted(TUNING.items())) if TUNING else ()  # no sort on the common path
    return _config_cached(b, h, l, DX, DS, chunk_size, device_index, tuning, interpreting())


@functools.lru_cache(maxsize=1024)
def _config_cached(b, h, l, DX, DS, chunk_size, device_index, tuning, interp):
    tune = dict(tuning)
    Q = tune.get("Q", chunk_size if chunk_size in (16, 32, 64, 128) else 64)
    BS = next_power_of_2(DS, 16)
    BX = tune.get("BX", min(next_power_of_2(DX, 16), 64))
    nx = cdiv(DX, BX)
    nchunks = cdiv(l, Q)
    want = tune.get("programs", 4 * _num_sms(device_index))  # measured on H100: 4 programs per SM beat 2 and 8
    # num_warps: 4 for N = 64 and 128 (H100, 2026-11-23: N = 128 forward 0.41 -> 0.23 ms vs 8 warps)
    nseg = tune.get("nseg", max(1, min(nchunks, cdiv(want, b * h * nx))))
    nseg = max(1, min(nseg, nchunks))
    cps = cdiv(nchunks, nseg)
    nseg = cdiv(nchunks, cps)
    return dict(Q=Q, BX=BX, BS=BS, nx=nx, nseg=nseg, cps=cps,
                num_warps=tune.get("num_warps", 4), num_stages=tune.get("num_stages", 2),
                for_loop=tune.get("for_loop", True) and not interp)


def _time_view(s: int, l: int, reverse: bool, shift: int = 0):
    """(element offset, time stride) so that logical step τ reads t[:, τ] or t[:, l - 1 + shift - τ]
    of a tensor t whose time stride (``t.stride(1)``) is s."""
    return ((l - 1 + shift) * s, -s) if reverse else (0, s)


class _DxEpilogue(NamedTuple):
    """Inputs of the dX pass's fused epilogue (:func:`_dx_epilogue`), all contiguous."""

    x: torch.Tensor  # the forward's X (b, l, h, p)
    y: torch.Tensor  # the forward's Y (b, l, h, p), its fp32 copy when there is one
    dt: torch.Tensor | None  # Δ (b, l, h), or None


class _ScanOut(NamedTuple):
    """What one :func:`_scan` returns; fields that were not asked for are None."""

    y: torch.Tensor  # (b, l, h, dim_x) in out_dtype
    final_state: torch.Tensor | None  # (b, h, dim_x, dim_bc) fp32, when want_final_state
    y_fp32: torch.Tensor  # an fp32 copy of y when want_y_fp32 and out_dtype is not fp32, else y itself
    da_terms: torch.Tensor | None  # (b, l, h) fp32 view of (b, h, l) memory: dy·y − x̃·dx̃, with dx_epilogue
    ddt: torch.Tensor | None  # (b, l, h) fp32 view of (b, h, l) memory: dΔ = x·dx̃, with a dx_epilogue.dt


def _scan(*, x: torch.Tensor, B: torch.Tensor, C: torch.Tensor, A: torch.Tensor, nheads: int,
          x_heads_per_group: int = 1, B_heads_per_group: int = 1, C_heads_per_group: int = 1,
          seq_ids: torch.Tensor | None, initial_state: torch.Tensor | None, initial_state_transposed: bool = False,
          reverse: bool, a_shift: int, out_dtype: torch.dtype, want_final_state: bool, chunk_size: int,
          dt: torch.Tensor | None = None, scale_role: str = "none", dx_epilogue: _DxEpilogue | None = None,
          want_y_fp32: bool = False) -> _ScanOut:
    """Launch the scan kernel with tensors in its three roles (module docstring, "Roles").

    x (b, l, ·, dim_x), B and C (b, l, ·, dim_bc), A (b, l, h) log decays. Kernel head i reads
    index i // <role>_heads_per_group of a role's head axis. seq_ids (b, l) int32 or None.
    initial_state (b, h, dim_x, dim_bc), or (b, h, dim_bc, dim_x) read transposed when
    ``initial_state_transposed``. ``reverse`` runs time backwards; ``a_shift`` = 1 reads the
    decays one step later (the adjoint recurrence). dt (b, l, h) multiplies the ``scale_role``
    operand ("x", "B" or "C") per step and head. ``dx_epilogue`` turns on the dX-pass epilogue
    (x must then be dY, contiguous (b, l, h, p) like the epilogue's tensors): y then holds
    dx = Δ·dx̃ and the da_terms (and, with dt, ddt) fields are filled.
    """
    b, l = x.shape[:2]
    h = nheads
    dim_x, dim_bc = x.shape[-1], B.shape[-1]
    cfg = _config(b, h, l, dim_x, dim_bc, chunk_size, x.device.index or 0)
    dev = x.device
    # Outputs and scratch; a pointer argument the kernel will not read gets any tensor as a placeholder.
    Y = torch.empty(b, l, h, dim_x, device=dev, dtype=out_dtype)  # (b, l, h, dim_x)
    y_s = (l * h * dim_x, h * dim_x, dim_x, 1)  # Y's strides (contiguous), without asking the tensor
    store_y_fp32 = bool(want_y_fp32) and out_dtype != torch.float32
    Y_fp32 = torch.empty(b, l, h, dim_x, device=dev, dtype=torch.float32) if store_y_fp32 else Y  # (b, l, h, dim_x)
    final_state = torch.empty(b, h, dim_x, dim_bc, device=dev, dtype=torch.float32) if want_final_state else Y
    # per time segment: end state (b·h, nseg, dim_x, dim_bc) and decay product (b·h, nseg); unread when nseg = 1
    segment_states = torch.empty(b * h * cfg["nseg"] * dim_x * dim_bc if cfg["nseg"] > 1 else 1,
                                 device=dev, dtype=torch.float32)
    segment_decays = torch.empty(max(b * h * cfg["nseg"], 1), device=dev, dtype=torch.float32)
    # each tensor's strides read once (a .stride(i) call is a few hundred ns of host time)
    x_s, a_s, b_s, c_s = x.stride(), A.stride(), B.stride(), C.stride()
    x_offset, x_stride_l = _time_view(x_s[1], l, reverse)
    a_offset, a_stride_l = _time_view(a_s[1], l, reverse, shift=a_shift)
    b_offset, b_stride_l = _time_view(b_s[1], l, reverse)
    c_offset, c_stride_l = _time_view(c_s[1], l, reverse)
    y_offset, y_stride_l = _time_view(y_s[1], l, reverse)
    seq_t = seq_ids if seq_ids is not None else A
    seq_s = seq_t.stride() if seq_ids is not None else a_s
    seq_offset, seq_stride_l = _time_view(seq_s[1], l, reverse)
    epilogue_dt = dx_epilogue is not None and dx_epilogue.dt is not None
    dt_t = dt if dt is not None else (dx_epilogue.dt if epilogue_dt else A)
    dt_s = dt_t.stride() if dt_t is not A else a_s
    dt_offset, dt_stride_l = _time_view(dt_s[1], l, reverse)
    if dx_epilogue is not None:
        x_fwd, y_fwd = dx_epilogue.x, dx_epilogue.y
        # (b, l, h) views of (b, h, l) memory: the suffix sum over l then runs on the innermost dim
        epi_s = (h * l, 1, l)
        da_terms = torch.empty_strided((b, l, h), epi_s, device=dev, dtype=torch.float32)  # (b, l, h)
        ddt = torch.empty_strided((b, l, h), epi_s, device=dev, dtype=torch.float32) if epilogue_dt else da_terms
    else:
        x_fwd = y_fwd = x
        da_terms = ddt = A
        epi_s = a_s
    epi_offset, epi_stride_l = _time_view(epi_s[1], l, reverse)
    if initial_state is not None:
        s0 = initial_state.stride()
        h0_strides = (s0[0], s0[1], s0[3], s0[2]) if initial_state_transposed else s0
    else:
        h0_strides = (0, 0, 0, 0)
    hf_strides = (h * dim_x * dim_bc, dim_x * dim_bc, dim_bc, 1) if want_final_state else (0, 0, 0, 0)
    ieee = x.dtype == torch.float32 and B.dtype == torch.float32
    args = (  # in the kernel's order, group by group
        x, x_offset, x_s[0], x_stride_l, x_s[2], x_s[3], x_heads_per_group,
        A, a_offset, a_s[0], a_stride_l, a_s[2], a_shift,
        B, b_offset, b_s[0], b_stride_l, b_s[2], b_s[3], B_heads_per_group,
        C, c_offset, c_s[0], c_stride_l, c_s[2], c_s[3], C_heads_per_group,
        Y, Y_fp32, y_offset, y_s[0], y_stride_l, y_s[2], y_s[3],
        seq_t, seq_offset, seq_s[0], seq_stride_l,
        dt_t, dt_offset, dt_s[0], dt_stride_l, dt_s[2],
        x_fwd, y_fwd, da_terms, ddt, epi_offset, epi_s[0], epi_stride_l, epi_s[2],
        initial_state if initial_state is not None else Y, *h0_strides,
        final_state, *hf_strides,
        segment_states, segment_decays,
        l, h, dim_x, dim_bc, cfg["cps"], cfg["nseg"])
    time_strides = (x_s[1], a_s[1], b_s[1], c_s[1], y_s[1], seq_s[1], dt_s[1], epi_s[1])
    int64 = max(abs(s) for s in time_strides) * (l + 1) >= 2**31
    modes = dict(Q=cfg["Q"], BLOCK_X=cfg["BX"], BLOCK_BC=cfg["BS"], HAS_INITIAL_STATE=initial_state is not None,
                 HAS_SEQ_IDX=seq_ids is not None, STORE_Y_FP32=store_y_fp32, IEEE_FP32=ieee,
                 FOR_LOOP=cfg["for_loop"], SCALE_ROLE=scale_role if dt is not None else "none",
                 EPILOGUE="none" if dx_epilogue is None else ("grad_a_dt" if epilogue_dt else "grad_a"),
                 TIME_OFFSETS_INT64=int64, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg["nseg"] > 1:
        _ssd_scan_kernel[(b * h, cfg["nseg"] - 1, cfg["nx"])](
            *args, SEGMENT_STATES_ONLY=True, STORE_FINAL_STATE=False, **modes)
    _ssd_scan_kernel[(b * h, cfg["nseg"], cfg["nx"])](
        *args, SEGMENT_STATES_ONLY=False, STORE_FINAL_STATE=want_final_state, **modes)
    return _ScanOut(y=Y, final_state=final_state if want_final_state else None, y_fp32=Y_fp32,
                    da_terms=da_terms if dx_epilogue is not None else None, ddt=ddt if epilogue_dt else None)


def _group_sum(per_head: torch.Tensor, g: int) -> torch.Tensor:
    """(b, l, h, n) per-head partials -> (b, l, g, n), the sum over each group's h/g heads, in
    the partials' dtype (torch's reductions of bf16/fp16 accumulate in fp32 and round once)."""
    b, l, h, n = per_head.shape
    if h == g:
        return per_head  # one head per group: nothing to sum
    return per_head.view(b, l, g, h // g, n).sum(3)  # (b, l, g, n)


class _SSDTriton(torch.autograd.Function):
    """Autograd for the scan; ``dt`` (optional, (b, l, h)) scales X per step inside the kernels."""

    @staticmethod
    def forward(ctx, X, A, B, C, chunk_size, initial_states, seq_idx, dt=None):
        b, l, h, p = X.shape
        r = h // B.shape[2]  # heads per group
        seq_ids = segment_ids(seq_idx, torch.int32) if seq_idx is not None else None  # (b, l)
        # the backward's dA needs y in fp32 (see _chunk_step): the kernel writes a copy when A needs a gradient
        out = _scan(x=X, B=B, C=C, A=A, nheads=h, B_heads_per_group=r, C_heads_per_group=r,
                    seq_ids=seq_ids, initial_state=initial_states, reverse=False, a_shift=0,
                    out_dtype=X.dtype, want_final_state=True, chunk_size=chunk_size, dt=dt, scale_role="x",
                    want_y_fp32=ctx.needs_input_grad[1] or (dt is not None and ctx.needs_input_grad[7]))
        ctx.save_for_backward(X, A, B, C, initial_states, seq_ids, out.y_fp32, out.final_state, dt)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)  # an unused final state's gradient arrives as None, not zeros
        return out.y, out.final_state

    @staticmethod
    def backward(ctx, dY, dhf):
        X, A, B, C, h0, seq_ids, Y, hf, dt = ctx.saved_tensors
        b, l, h, p = X.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        Q = ctx.chunk_size
        need_x, need_a, need_b, need_c = ctx.needs_input_grad[:4]
        need_h0 = h0 is not None and ctx.needs_input_grad[5]
        need_dt = dt is not None and ctx.needs_input_grad[7]
        if dY is None:  # only the final state is used; zeros in the output's dtype (Y may be the fp32 copy)
            dY = torch.zeros(X.shape, device=X.device, dtype=X.dtype)  # (b, l, h, p)
        dX = dA = dB = dC = dh0 = ddt = None
        # per-head dB, dC partials in the inputs' dtype; one head per group: they are dB, dC themselves
        part = B.dtype
        if need_x or need_a or need_h0 or need_dt:
            # dx_t = dh_t B_t: reverse scan with roles (x, B, C) = (dY, C, B), decays shifted by one step.
            # one x-block (p ≤ BLOCK_X): the fused epilogue computes dx, dΔ and dy·y − x̃·dx̃ in-kernel
            if _config(b, h, l, p, n, Q, X.device.index or 0)["nx"] == 1:
                dY = dY.contiguous()
                out = _scan(x=dY, B=C, C=B, A=A, nheads=h, B_heads_per_group=r, C_heads_per_group=r,
                            seq_ids=seq_ids, initial_state=dhf, reverse=True, a_shift=1,
                            out_dtype=X.dtype, want_final_state=True, chunk_size=Q,
                            dx_epilogue=_DxEpilogue(x=X.contiguous(), y=Y, dt=dt))
                dX, dh_first, rc = out.y, out.final_state, out.da_terms
                ddt = out.ddt.to(dt.dtype) if need_dt else None
            else:  # head dim split over blocks: the same sums in torch
                out = _scan(x=dY, B=C, C=B, A=A, nheads=h, B_heads_per_group=r, C_heads_per_group=r,
                            seq_ids=seq_ids, initial_state=dhf, reverse=True, a_shift=1,
                            out_dtype=torch.float32, want_final_state=True, chunk_size=Q)
                dXe, dh_first = out.y, out.final_state  # (b, l, h, p) dx̃, (b, h, p, n)
                Xe = X.float() if dt is None else X.float() * dt.float()[..., None]  # (b, l, h, p) scanned input
                rc = (dY.float() * Y.float()).sum(-1) - (Xe * dXe).sum(-1)  # (b, l, h)
                dX = (dXe if dt is None else dXe * dt.float()[..., None]).to(X.dtype)
                ddt = (X.float() * dXe).sum(-1).to(dt.dtype) if need_dt else None
            dX = dX if need_x else None
            if need_h0:
                dh0 = (torch.exp(A[:, 0].float())[:, :, None, None] * dh_first).to(h0.dtype)  # (b, h, p, n)
            if need_a:
                rc = rc.transpose(1, 2)  # (b, h, l): time innermost, so the scan below is fast
                if dhf is not None:  # ⟨dh_final, h_final⟩ joins every suffix: add it at the last step
                    rc = rc.contiguous()
                    rc[:, :, -1].add_((dhf.float() * hf).sum((-1, -2)))  # (b, h); add_, not +=: no setitem copy
                dA = torch.flip(torch.cumsum(torch.flip(rc, [-1]), -1), [-1])  # (b, h, l) suffix sums
                dA = dA.transpose(1, 2).to(A.dtype)  # (b, l, h)
        if need_b:
            # dB_t = dh_tᵀ x_t: reverse scan with roles (C, dY, X); the state is dhᵀ.
            dBh = _scan(x=C, B=dY, C=X, A=A, nheads=h, x_heads_per_group=r,
                        seq_ids=seq_ids, initial_state=dhf, initial_state_transposed=True, reverse=True, a_shift=1,
                        out_dtype=part, want_final_state=False, chunk_size=Q, dt=dt, scale_role="C").y
            dB = _group_sum(dBh, g)  # (b, l, g, n)
        if need_c:
            # dC_t = h_tᵀ dy_t: forward scan with roles (B, X, dY); the state is hᵀ.
            dCh = _scan(x=B, B=X, C=dY, A=A, nheads=h, x_heads_per_group=r,
                        seq_ids=seq_ids, initial_state=h0, initial_state_transposed=True, reverse=False, a_shift=0,
                        out_dtype=part, want_final_state=False, chunk_size=Q, dt=dt, scale_role="B").y
            dC = _group_sum(dCh, g)  # (b, l, g, n)
        return dX, dA, dB, dC, None, dh0, None, ddt


def ssd_triton(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
               initial_states: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD with Triton forward and backward; same signature and semantics as ``ssd_chunked``.

    X, B, C in fp32, bf16 or fp16 (fp32 accumulation); A (log decays ≤ 0) and initial_states
    any float dtype. Returns ``(Y (b, l, h, p) in X's dtype, final_states (b, h, p, n) fp32)``.
    On CUDA the check that A ≤ 0 is skipped (it would synchronize with the device).
    """
    on_gpu = isinstance(X, torch.Tensor) and X.is_cuda
    check_ssd_inputs(X, A, B, C, initial_states, seq_idx, chunk_size, check_values=not on_gpu)
    for name, t in (("X", X), ("B", B), ("C", C)):
        if t.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"ssd_triton takes {name} in float32, bfloat16 or float16, got {t.dtype}")
    require_triton_tensor("X", X, "ssd_triton")
    if not (X.dtype == B.dtype == C.dtype):
        raise TypeError(f"ssd_triton needs X, B and C in one dtype, got {X.dtype}, {B.dtype}, {C.dtype}")
    return _SSDTriton.apply(X, A, B, C, chunk_size, initial_states, seq_idx)
