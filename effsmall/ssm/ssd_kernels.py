"""Chunked SSD in Triton: one fused scan kernel, used for the forward and for the backward.

The kernel (:func:`_ssd_scan_kernel`) walks the chunks of one (batch, head, p-block) in order and
keeps the state h ∈ R^{P×N} in registers (fp32). For each chunk of Q steps it does, in one pass
over X, A, B, C (Mamba-2, Dao & Gu 2024, §6, with ``dA_cumsum`` = cumsum of a inside the chunk):

1. ``dA_cumsum`` by ``tl.cumsum`` and the diagonal block Y = (L ∘ C Bᵀ) X with two ``tl.dot``;
2. state to output: Y += exp(dA_cumsum) · C hᵀ (one ``tl.dot`` against the carried state);
3. chunk state and state passing at once: h ← exp(a_chunk) h + (X ∘ exp(a_last − dA_cumsum))ᵀ B.

Nothing but Y (and the final state) is written to memory: no chunk states, no C Bᵀ matrix, no
cumsum tensor. When the decays need a gradient the same store also writes an fp32 copy of Y: the
backward's dA is a sum of differences of nearly equal terms, and a bf16 Y cost it 4% accuracy.
Sequential chunks give too little parallelism when b·h is small and L long, so the time axis is
also split into ``nseg`` segments: a first launch computes each segment's local end state from
zero (step 3 only), and the scan launch starts segment k from the prefix combination of the
segments before it. Two launches at most; one when b·h alone fills the GPU.

**Backward** uses the same kernel three more times. With the adjoint state
dh_t = dy_t C_tᵀ + exp(a_{t+1}) dh_{t+1} (the recurrence run backwards in time):

* dX = scan **in reverse** with inputs (dY, C, B) and decays shifted by one (dx_t = dh_t B_t);
* dB = scan in reverse with inputs (C, dY, X) (dB_t = dh_tᵀ x_t), summed over a group's heads;
* dC = scan forward with inputs (B, X, dY) (dC_t = h_tᵀ dy_t), summed over a group's heads;
* dA: da_k = ⟨dh_final, h_final⟩ + Σ_{t≥k} (dy_t·y_t − x_t·dx_t), a reverse cumsum — the
  telescoped sum over the (t, s) pairs that a_k decays (s < k ≤ t);
* d initial_states = exp(a_0) · dh_0 (the reverse scan's final state).

Reverse time is negative strides, so nothing is flipped or copied. Chunking (Q) is an
implementation parameter of this kernel: the result does not depend on it mathematically, so
the ``chunk_size`` argument only sets Q when it is a power of two in [16, 128]; otherwise
the tuned default is used (documented, tested).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from effsmall.runtime import cdiv, interpreting, next_power_of_2, require_triton_tensor
from effsmall.ssm._ssd_checks import check_ssd_inputs, segment_ids

# Overrides for tuning sweeps and tests: {"Q": 64, "BX": 64, "nseg": 4, "num_warps": 4, "num_stages": 2}
TUNING: dict = {}


@triton.jit
def _chunk_step(c, h, seg_prev, fac_total, X, sxl, sxd, A, sal, A_LO, Bm, sbl, sbd, Cm, scl, scd,
                Y, Y32, syl, syd, SEG, sgl, DT, sdl, XO, YF, RC, DDT, sel, L, offs_q, offs_x, offs_s, mx, ms,
                Q: tl.constexpr, HAS_SEG: tl.constexpr, STATE_ONLY: tl.constexpr, IEEE: tl.constexpr,
                SCALE: tl.constexpr, EPI: tl.constexpr, BIG: tl.constexpr, DUAL: tl.constexpr):
    """One chunk c: diagonal block, state to output (unless STATE_ONLY), then the state update."""
    t = c * Q + offs_q  # (Q,) logical time steps
    if BIG:  # time offsets past 2**31 elements: 64-bit address arithmetic
        t = t.to(tl.int64)
    tv = t < L
    a = tl.load(A + t * sal, mask=tv & (t >= A_LO), other=0.0).to(tl.float32)  # (Q,)
    cs = tl.cumsum(a, 0)  # (Q,) dA_cumsum
    cs_last = tl.sum(a, 0)
    x = tl.load(X + t[:, None] * sxl + offs_x[None, :] * sxd, mask=tv[:, None] & mx[None, :], other=0.0)  # (Q, BX)
    bm = tl.load(Bm + t[:, None] * sbl + offs_s[None, :] * sbd, mask=tv[:, None] & ms[None, :], other=0.0)  # (Q, BS)
    if SCALE != 0:  # mamba's x·Δ, folded in: scale the role that holds x by dt (per step and head)
        dt = tl.load(DT + t * sdl, mask=tv, other=0.0).to(tl.float32)  # (Q,)
        if SCALE == 1:
            x = (x.to(tl.float32) * dt[:, None]).to(x.dtype)
        if SCALE == 2:
            bm = (bm.to(tl.float32) * dt[:, None]).to(bm.dtype)
    if HAS_SEG:
        sg = tl.load(SEG + t * sgl, mask=tv, other=-1)  # (Q,)
        sg_last = tl.load(SEG + (tl.minimum(c * Q + Q, L) - 1) * sgl)  # last valid step
        w = tl.where(sg == sg_last, tl.exp(cs_last - cs), 0.0)  # (Q,) decay to the chunk's end
        carry = tl.where(seg_prev == sg_last, tl.exp(cs_last), 0.0)
    else:
        w = tl.exp(cs_last - cs)
        carry = tl.exp(cs_last)
    if not STATE_ONLY:
        cm = tl.load(Cm + t[:, None] * scl + offs_s[None, :] * scd, mask=tv[:, None] & ms[None, :], other=0.0)  # (Q, BS)
        if SCALE == 3:
            cm = (cm.to(tl.float32) * dt[:, None]).to(cm.dtype)
        if IEEE:
            cb = tl.dot(cm, tl.trans(bm), input_precision="ieee")  # (Q, Q)
        else:
            cb = tl.dot(cm, tl.trans(bm))  # (Q, Q)
        keep = offs_q[:, None] >= offs_q[None, :]  # (Q, Q) causal
        din = tl.exp(cs)  # (Q,) decay from the chunk's start
        if HAS_SEG:
            keep = keep & (sg[:, None] == sg[None, :])
            din = tl.where(sg == seg_prev, din, 0.0)
        lmat = tl.exp(tl.where(keep, cs[:, None] - cs[None, :], float("-inf")))  # (Q, Q) diagonal block of L
        if IEEE:
            y = tl.dot(cb * lmat, x.to(tl.float32), input_precision="ieee")  # (Q, BX)
            y += tl.dot(cm.to(tl.float32), tl.trans(h), input_precision="ieee") * din[:, None]
        else:
            y = tl.dot((cb * lmat).to(x.dtype), x)  # (Q, BX)
            y += tl.dot(cm, tl.trans(h).to(cm.dtype)) * din[:, None]
        if EPI != 0:  # backward dX pass: y is dx̃ = dh B for the scanned input x̃ = x·Δ
            m2 = tv[:, None] & mx[None, :]
            xo = tl.load(XO + t[:, None] * sxl + offs_x[None, :] * sxd, mask=m2, other=0.0).to(tl.float32)
            yf = tl.load(YF + t[:, None] * sxl + offs_x[None, :] * sxd, mask=m2, other=0.0).to(tl.float32)
            if EPI == 2:
                dte = tl.load(DT + t * sdl, mask=tv, other=0.0).to(tl.float32)  # (Q,)
                xe = xo * dte[:, None]
            else:
                xe = xo
            # dy·y − x̃·dx̃ per step: its suffix sums are the log-decay gradient
            tl.store(RC + t * sel, tl.sum(x.to(tl.float32) * yf, 1) - tl.sum(xe * y, 1), mask=tv)
            if EPI == 2:
                tl.store(DDT + t * sel, tl.sum(xo * y, 1), mask=tv)  # dΔ_t = x_t·dx̃_t
                y = y * dte[:, None]  # dx = Δ·dx̃
        tl.store(Y + t[:, None] * syl + offs_x[None, :] * syd,
                 y.to(Y.dtype.element_ty), mask=tv[:, None] & mx[None, :])
        if DUAL:  # fp32 copy of y for the backward's dA (y·dy − x̃·dx̃ cancels: bf16 y cost 4% error)
            tl.store(Y32 + t[:, None] * syl + offs_x[None, :] * syd, y, mask=tv[:, None] & mx[None, :])
    xw = x.to(tl.float32) * w[:, None]  # (Q, BX)
    if IEEE:
        h = h * carry + tl.dot(tl.trans(xw), bm.to(tl.float32), input_precision="ieee")  # (BX, BS)
    else:
        h = h * carry + tl.dot(tl.trans(xw.to(bm.dtype)), bm)  # (BX, BS)
    fac_total = fac_total * carry
    if HAS_SEG:
        seg_prev = sg_last
    return h, seg_prev, fac_total


@triton.jit
def _ssd_scan_kernel(
    X, x_off, sxb, sxl, sxh, sxd, x_hdiv,  # "x" role: (b, l, ·, DX)
    A, a_off, sab, sal, sah, A_LO,  # log decays (b, l, h); logical steps < A_LO read 0
    Bm, b_off, sbb, sbl, sbh, sbd, b_hdiv,  # "B" role: (b, l, ·, DS)
    Cm, c_off, scb, scl, sch, scd, c_hdiv,  # "C" role: (b, l, ·, DS)
    Y, Y32, y_off, syb, syl, syh, syd,  # output (b, l, h, DX); Y32: its fp32 copy when DUAL
    SEG, g_off, sgb, sgl,  # segment ids (b, l) int32
    DT, d_off, sdb, sdl, sdh,  # optional per-step scale of the x-holding role (b, l, h)
    XO, YF, RC, DDT, e_off, seb, sel, seh,  # dX-pass epilogue: X and Y (x-role strides), outputs (b, l, h)
    H0, s0b, s0h, s0x, s0s,  # initial state (b, h, DX, DS)
    HF, sfb, sfh, sfx, sfs,  # final state (b, h, DX, DS), fp32
    LOC, FAC,  # per-segment local end states (b, h, nseg, DX, DS) and decay factors (b, h, nseg), fp32
    L, H, DX, DS, chunks_per_seg, nseg,
    Q: tl.constexpr, BX: tl.constexpr, BS: tl.constexpr,
    HAS_H0: tl.constexpr, HAS_SEG: tl.constexpr, STATE_ONLY: tl.constexpr, WRITE_HF: tl.constexpr,
    IEEE: tl.constexpr, FOR_LOOP: tl.constexpr, SCALE: tl.constexpr, EPI: tl.constexpr, BIG: tl.constexpr,
    DUAL: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_x = tl.program_id(2)
    bi = pid_bh // H
    hi = pid_bh % H
    offs_x = pid_x * BX + tl.arange(0, BX)  # (BX,)
    offs_s = tl.arange(0, BS)  # (BS,)
    mx = offs_x < DX
    ms = offs_s < DS
    offs_q = tl.arange(0, Q)  # (Q,)

    X = X + x_off + bi.to(tl.int64) * sxb + (hi // x_hdiv) * sxh
    A = A + a_off + bi.to(tl.int64) * sab + hi * sah
    Bm = Bm + b_off + bi.to(tl.int64) * sbb + (hi // b_hdiv) * sbh
    Cm = Cm + c_off + bi.to(tl.int64) * scb + (hi // c_hdiv) * sch
    SEG = SEG + g_off + bi.to(tl.int64) * sgb
    DT = DT + d_off + bi.to(tl.int64) * sdb + hi * sdh
    XO = XO + x_off + bi.to(tl.int64) * sxb + hi * sxh
    YF = YF + x_off + bi.to(tl.int64) * sxb + hi * sxh
    RC = RC + e_off + bi.to(tl.int64) * seb + hi * seh
    DDT = DDT + e_off + bi.to(tl.int64) * seb + hi * seh
    st_off = (pid_bh * nseg + pid_s).to(tl.int64)

    # The state entering this segment: initial state, then the earlier segments' local states.
    h = tl.zeros((BX, BS), dtype=tl.float32)  # (BX, BS)
    if not STATE_ONLY:
        if HAS_H0:
            h = tl.load(H0 + bi * s0b + hi * s0h + offs_x[:, None] * s0x + offs_s[None, :] * s0s,
                        mask=mx[:, None] & ms[None, :], other=0.0).to(tl.float32)
        j = 0
        while j < pid_s:  # earlier segments, in order
            fac = tl.load(FAC + pid_bh * nseg + j)
            loc = tl.load(LOC + (pid_bh * nseg + j).to(tl.int64) * DX * DS + offs_x[:, None] * DS + offs_s[None, :],
                          mask=mx[:, None] & ms[None, :], other=0.0)
            h = fac * h + loc
            j += 1
    c_start = pid_s * chunks_per_seg
    seg_prev = 0
    if HAS_SEG:
        seg_prev = tl.load(SEG + tl.maximum(c_start * Q - 1, 0) * sgl)
    fac_total = tl.full((), 1.0, tl.float32)

    Y = Y + y_off + bi.to(tl.int64) * syb + hi * syh
    Y32 = Y32 + y_off + bi.to(tl.int64) * syb + hi * syh
    if FOR_LOOP:  # compiled only: a for loop lets Triton pipeline the next chunk's loads
        for k in range(0, chunks_per_seg):  # chunks past the end are all-masked no-ops
            h, seg_prev, fac_total = _chunk_step(
                c_start + k, h, seg_prev, fac_total, X, sxl, sxd, A, sal, A_LO, Bm, sbl, sbd, Cm, scl, scd,
                Y, Y32, syl, syd, SEG, sgl, DT, sdl, XO, YF, RC, DDT, sel, L, offs_q, offs_x, offs_s, mx, ms,
                Q, HAS_SEG, STATE_ONLY, IEEE, SCALE, EPI, BIG, DUAL)
    else:  # while, not range(): the interpreter under numpy 2 rejects runtime range() bounds
        c = c_start
        c_end = tl.minimum(c_start + chunks_per_seg, tl.cdiv(L, Q))
        while c < c_end:
            h, seg_prev, fac_total = _chunk_step(
                c, h, seg_prev, fac_total, X, sxl, sxd, A, sal, A_LO, Bm, sbl, sbd, Cm, scl, scd,
                Y, Y32, syl, syd, SEG, sgl, DT, sdl, XO, YF, RC, DDT, sel, L, offs_q, offs_x, offs_s, mx, ms,
                Q, HAS_SEG, STATE_ONLY, IEEE, SCALE, EPI, BIG, DUAL)
            c += 1

    if STATE_ONLY:
        tl.store(LOC + st_off * DX * DS + offs_x[:, None] * DS + offs_s[None, :], h, mask=mx[:, None] & ms[None, :])
        if pid_x == 0:
            tl.store(FAC + st_off, fac_total)
    elif WRITE_HF:
        if pid_s == nseg - 1:
            tl.store(HF + bi * sfb + hi * sfh + offs_x[:, None] * sfx + offs_s[None, :] * sfs, h,
                     mask=mx[:, None] & ms[None, :])


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    if interpreting() or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _config(b: int, h: int, l: int, DX: int, DS: int, chunk_size: int, device_index: int = 0) -> dict:
    """Tile sizes and the number of time segments (see the module docstring); cached per shape."""
    return dict(_config_cached(b, h, l, DX, DS, chunk_size, device_index, tuple(sorted(TUNING.items())),
                               interpreting()))


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
    return tuple(dict(Q=Q, BX=BX, BS=BS, nx=nx, nseg=nseg, cps=cps,
                      num_warps=tune.get("num_warps", 4), num_stages=tune.get("num_stages", 2),
                      for_loop=tune.get("for_loop", True) and not interp).items())


def _time_view(t: torch.Tensor, l: int, reverse: bool, shift: int = 0):
    """(element offset, time stride) so that logical step τ reads t[:, τ] or t[:, l - 1 + shift - τ]."""
    s = t.stride(1)
    return ((l - 1 + shift) * s, -s) if reverse else (0, s)


def _scan(x, xd, a, bm, bd, cm, cd, h, seg, h0, h0_t, reverse, a_shift, out_dtype, want_final, chunk_size,
          dt=None, scale_role=0, epilogue=None, want_y32=None):
    """Run the scan kernel on role tensors: x (b,l,·,DX), a (b,l,h), bm, cm (b,l,·,DS).

    xd, bd, cd: head divisors (head i reads index i // d of that role's head axis). h0_t: read
    the initial state transposed. dt (b, l, h): multiply role ``scale_role`` (1 x, 2 B, 3 C) by it
    per step and head. epilogue = (X, Y, dt or None) turns on the dX-pass epilogue (x must be dY,
    all three contiguous (b, l, h, p)): then Y holds dx = Δ·dx̃ and the call also returns
    rc = dy·y − x̃·dx̃ and dΔ = x·dx̃ ``(b, l, h)`` fp32. Returns (Y (b, l, h, DX), final state (b, h, DX, DS) or None),
    and, when ``want_y32`` is given, a third value: an fp32 copy of Y written by the same kernel if
    ``want_y32`` is true and out_dtype is not fp32, else Y itself.
    """
    b, l = x.shape[:2]
    DX, DS = x.shape[-1], bm.shape[-1]
    cfg = _config(b, h, l, DX, DS, chunk_size, x.device.index or 0)
    dev = x.device
    Y = torch.empty(b, l, h, DX, device=dev, dtype=out_dtype)  # (b, l, h, DX)
    dual = bool(want_y32) and out_dtype != torch.float32
    Y32 = torch.empty(b, l, h, DX, device=dev, dtype=torch.float32) if dual else Y  # (b, l, h, DX)
    HF = torch.empty(b, h, DX, DS, device=dev, dtype=torch.float32) if want_final else Y
    LOC = torch.empty(b * h * cfg["nseg"] * DX * DS if cfg["nseg"] > 1 else 1, device=dev, dtype=torch.float32)
    FAC = torch.empty(max(b * h * cfg["nseg"], 1), device=dev, dtype=torch.float32)
    xo, xs = _time_view(x, l, reverse)
    ao, as_ = _time_view(a, l, reverse, shift=a_shift)
    bo, bs = _time_view(bm, l, reverse)
    co, cs = _time_view(cm, l, reverse)
    yo, ys = _time_view(Y, l, reverse)
    segt = seg if seg is not None else a
    go, gs = _time_view(segt, l, reverse)
    epi_dt = epilogue is not None and epilogue[2] is not None
    dtt = dt if dt is not None else (epilogue[2] if epi_dt else a)
    do, ds = _time_view(dtt, l, reverse)
    if epilogue is not None:
        XO, YF = epilogue[0], epilogue[1]
        # (b, l, h) views of (b, h, l) memory: the suffix sum over l then runs on the innermost dim
        RC = torch.empty(b, h, l, device=dev, dtype=torch.float32).transpose(1, 2)  # (b, l, h)
        DDT = torch.empty(b, h, l, device=dev, dtype=torch.float32).transpose(1, 2) if epi_dt else RC
    else:
        XO = YF = x
        RC = DDT = a
    eo, es = _time_view(RC, l, reverse)
    if h0 is not None:
        s0 = (h0.stride(0), h0.stride(1), h0.stride(3), h0.stride(2)) if h0_t else h0.stride()
    else:
        s0 = (0, 0, 0, 0)
    sf = HF.stride() if want_final else (0, 0, 0, 0)
    ieee = x.dtype == torch.float32 and bm.dtype == torch.float32
    common = (x, xo, x.stride(0), xs, x.stride(2), x.stride(3), xd,
              a, ao, a.stride(0), as_, a.stride(2), a_shift,
              bm, bo, bm.stride(0), bs, bm.stride(2), bm.stride(3), bd,
              cm, co, cm.stride(0), cs, cm.stride(2), cm.stride(3), cd,
              Y, Y32, yo, Y.stride(0), ys, Y.stride(2), Y.stride(3),
              segt, go, segt.stride(0), gs,
              dtt, do, dtt.stride(0), ds, dtt.stride(2),
              XO, YF, RC, DDT, eo, RC.stride(0), es, RC.stride(2),
              h0 if h0 is not None else Y, *s0, HF, *sf, LOC, FAC,
              l, h, DX, DS, cfg["cps"], cfg["nseg"])
    meta = dict(Q=cfg["Q"], BX=cfg["BX"], BS=cfg["BS"], HAS_H0=h0 is not None, HAS_SEG=seg is not None, DUAL=dual,
                IEEE=ieee, FOR_LOOP=cfg["for_loop"], SCALE=scale_role if dt is not None else 0,
                EPI=0 if epilogue is None else (2 if epi_dt else 1),
                BIG=max(abs(t.stride(1)) for t in (x, a, bm, cm, Y, segt, dtt, RC)) * (l + 1) >= 2**31, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if cfg["nseg"] > 1:
        _ssd_scan_kernel[(b * h, cfg["nseg"] - 1, cfg["nx"])](*common, STATE_ONLY=True, WRITE_HF=False, **meta)
    _ssd_scan_kernel[(b * h, cfg["nseg"], cfg["nx"])](*common, STATE_ONLY=False, WRITE_HF=want_final, **meta)
    if epilogue is not None:
        return Y, (HF if want_final else None), RC, (DDT if epi_dt else None)
    if want_y32 is not None:
        return Y, (HF if want_final else None), Y32
    return Y, (HF if want_final else None)


class _SSDTriton(torch.autograd.Function):
    """Autograd for the scan; ``dt`` (optional, (b, l, h)) scales X per step inside the kernels."""

    @staticmethod
    def forward(ctx, X, A, B, C, chunk_size, initial_states, seq_idx, dt=None):
        b, l, h, p = X.shape
        r = h // B.shape[2]
        seg = segment_ids(seq_idx).to(torch.int32) if seq_idx is not None else None  # (b, l)
        # the backward's dA needs y in fp32 (see _chunk_step): the kernel writes a copy when A needs a gradient
        Y, hf, Y32 = _scan(X, 1, A, B, r, C, r, h, seg, initial_states, False, reverse=False, a_shift=0,
                           out_dtype=X.dtype, want_final=True, chunk_size=chunk_size, dt=dt, scale_role=1,
                           want_y32=ctx.needs_input_grad[1] or (dt is not None and ctx.needs_input_grad[7]))
        ctx.save_for_backward(X, A, B, C, initial_states, seg, Y32, hf, dt)
        ctx.chunk_size = chunk_size
        return Y, hf

    @staticmethod
    def backward(ctx, dY, dhf):
        X, A, B, C, h0, seg, Y, hf, dt = ctx.saved_tensors
        b, l, h, p = X.shape
        g, n = B.shape[2], B.shape[3]
        r = h // g
        Q = ctx.chunk_size
        need_x, need_a, need_b, need_c = ctx.needs_input_grad[:4]
        need_h0 = h0 is not None and ctx.needs_input_grad[5]
        need_dt = dt is not None and ctx.needs_input_grad[7]
        dY = dY if dY is not None else torch.zeros_like(Y)
        dX = dA = dB = dC = dh0 = ddt = None
        # per-head dB, dC partials: fp32 when one head per group, else the inputs' dtype (summed in fp32)
        part = torch.float32 if (r == 1 or B.dtype == torch.float32) else B.dtype
        if need_x or need_a or need_h0 or need_dt:
            # dx_t = dh_t B_t: reverse scan of (dY, C, B), decays shifted by one step.
            if _config(b, h, l, p, n, Q, X.device.index or 0)["nx"] == 1:  # fused epilogue: dx, dΔ and dy·y − x̃·dx̃ in-kernel
                dY = dY.contiguous()
                dX, dh_first, rc, ddt = _scan(dY, 1, A, C, r, B, r, h, seg, dhf, False, reverse=True, a_shift=1,
                                              out_dtype=X.dtype, want_final=True, chunk_size=Q,
                                              epilogue=(X.contiguous(), Y, dt))
                ddt = ddt.to(dt.dtype) if need_dt else None
            else:  # head dim split over blocks: the same sums in torch
                dXe, dh_first = _scan(dY, 1, A, C, r, B, r, h, seg, dhf, False, reverse=True, a_shift=1,
                                      out_dtype=torch.float32, want_final=True, chunk_size=Q)  # (b, l, h, p)
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
                    rc[:, :, -1] += (dhf.float() * hf).sum((-1, -2))  # (b, h)
                dA = torch.flip(torch.cumsum(torch.flip(rc, [-1]), -1), [-1])  # (b, h, l) suffix sums
                dA = dA.transpose(1, 2).to(A.dtype)  # (b, l, h)
        if need_b:
            # dB_t = dh_tᵀ x_t: reverse scan of (C, dY, X); the state is dhᵀ.
            dBh, _ = _scan(C, r, A, dY, 1, X, 1, h, seg, dhf, True, reverse=True, a_shift=1,
                           out_dtype=part, want_final=False, chunk_size=Q, dt=dt, scale_role=3)
            dB = dBh.view(b, l, g, r, n).sum(3, dtype=torch.float32).to(B.dtype)  # (b, l, g, n)
        if need_c:
            # dC_t = h_tᵀ dy_t: forward scan of (B, X, dY); the state is hᵀ.
            dCh, _ = _scan(B, r, A, X, 1, dY, 1, h, seg, h0, True, reverse=False, a_shift=0,
                           out_dtype=part, want_final=False, chunk_size=Q, dt=dt, scale_role=2)
            dC = dCh.view(b, l, g, r, n).sum(3, dtype=torch.float32).to(C.dtype)  # (b, l, g, n)
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
