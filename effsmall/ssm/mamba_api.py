"""``mamba_chunk_scan_combined``: a drop-in for mamba_ssm's function of the same name.

mamba_ssm's layer calls SSD with per-step sizes Δ ``dt (b, l, h)`` and a per-head decay rate
``A (h,)`` (negative), not with ready log decays. The function prepares the SSD inputs the way
mamba_ssm does (Mamba-2, Dao & Gu 2024, §7):

1. Δ = dt + dt_bias; Δ = softplus(Δ) where Δ ≤ 20 (left as is above) if ``dt_softplus``;
   Δ = clamp(Δ, *dt_limit) — always, so with the default (0, ∞) a negative Δ becomes 0;
2. the SSD input is x·Δ and the log decay a = Δ·A (the state h_t = exp(Δ_t A) h_{t-1} + Δ_t x_t B_tᵀ);
3. y = SSD(x·Δ, a, B, C) + D·x (D of shape (h,) or (h, p));
4. with z: y = y · silu(z) = y · z · σ(z).

Returns y (x's dtype), or ``(y, final_states)`` (fp32) with ``return_final_states``. On CUDA the
scan is :func:`ssd_triton` (x·Δ folded into its kernels); on CPU it is the readable
:func:`ssd_chunked` (the interpreter would be slow).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from effsmall.runtime import compute_dtype, interpreting, triton_device_ok
from effsmall.ssm._ssd_checks import _is_tensor, check_same_device


def _prepare_dt(dt: torch.Tensor, dt_bias, dt_softplus: bool, dt_limit) -> torch.Tensor:
    """Δ as mamba_ssm computes it, in fp32 (fp64 for fp64 dt) ``(b, l, h)``."""
    ct = compute_dtype(dt)
    d = dt.to(ct)
    if dt_bias is not None:
        d = d + dt_bias.to(ct)
    if dt_softplus:
        d = torch.where(d <= 20.0, F.softplus(d), d)
    lo, hi = dt_limit
    return d.clamp(min=lo, max=hi if math.isfinite(hi) else None)


def check_mamba_shapes(x, dt, A, B, C) -> tuple[int, int, int, int]:
    """The shapes of mamba_ssm's x ``(b, l, h, p)``, Δ ``dt (b, l, h)`` and ``A (h,)`` (B and C
    must be tensors); returns ``(b, l, h, p)``. Shared by every entry point with this interface."""
    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C)):
        _is_tensor(name, t)
    if x.dim() != 4:
        raise ValueError(f"x must have shape (b, l, h, p), got {tuple(x.shape)}")
    b, l, h, p = x.shape
    if dt.shape != (b, l, h):
        raise ValueError(f"dt must have shape (b, l, h) = {(b, l, h)}, got {tuple(dt.shape)}")
    if A.shape != (h,):
        raise ValueError(f"A must have shape (h,) = {(h,)}, got {tuple(A.shape)}")
    return b, l, h, p


def _check(x, dt, A, B, C, D, z, dt_bias, dt_limit):
    """mamba_ssm's argument contract; the SSD part (x·Δ, a, B, C) is checked again by
    :func:`effsmall.ssm._ssd_checks.check_ssd_inputs` when it is called."""
    b, l, h, p = check_mamba_shapes(x, dt, A, B, C)
    if D is not None and D.shape not in ((h,), (h, p)):
        raise ValueError(f"D must have shape (h,) or (h, p), got {tuple(D.shape)}")
    if z is not None and z.shape != x.shape:
        raise ValueError(f"z must have the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
    if dt_bias is not None and dt_bias.shape != (h,):
        raise ValueError(f"dt_bias must have shape (h,), got {tuple(dt_bias.shape)}")
    if len(dt_limit) != 2 or dt_limit[0] > dt_limit[1]:
        raise ValueError(f"dt_limit must be (min, max) with min <= max, got {dt_limit}")
    check_same_device("x", x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)


def _use_triton(x: torch.Tensor) -> bool:
    """The scan runs in :func:`ssd_triton`'s kernels: compiled CUDA, not fp64 (host-cost
    measurements patch this to reach the kernels' host code with ``meta`` tensors)."""
    return x.is_cuda and x.dtype != torch.float64 and triton_device_ok(x) and not interpreting()


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False):
    """SSD with mamba_ssm's interface: x ``(b, l, h, p)``, dt ``(b, l, h)``, A ``(h,)``, B, C ``(b, l, g, n)``.

    See the module docstring for the exact semantics. Gradients flow to every tensor argument.
    """
    _check(x, dt, A, B, C, D, z, dt_bias, dt_limit)
    if not (x.is_cuda or x.is_meta) and bool((A > 0).any()):  # on a GPU it would synchronize; meta: no values
        raise ValueError("A must be <= 0 (decay rates; the log decay is Δ·A)")
    delta = _prepare_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, l, h) fp32
    a = delta * A.to(delta.dtype)  # (b, l, h) log decays
    if _use_triton(x):
        from effsmall.ssm._ssd_checks import check_ssd_inputs
        from effsmall.ssm.ssd_kernels import _SSDTriton

        check_ssd_inputs(x, a, B, C, initial_states, seq_idx, chunk_size, check_values=False)
        if not (x.dtype == B.dtype == C.dtype):
            B, C = B.to(x.dtype), C.to(x.dtype)
        y, final = _SSDTriton.apply(x, a, B, C, chunk_size, initial_states, seq_idx, delta)
    else:
        from effsmall.ssm.ssd_chunkwise import ssd_chunked

        xd = (x.to(delta.dtype) * delta[..., None]).to(x.dtype)  # (b, l, h, p) the SSD input x·Δ
        y, final = ssd_chunked(xd, a, B, C, chunk_size, initial_states=initial_states, seq_idx=seq_idx)
    if D is not None or z is not None:
        ct = compute_dtype(x)
        y = y.to(ct)
        if D is not None:
            Dv = D.to(ct) if D.dim() == 2 else D.to(ct)[:, None]  # (h, p) or (h, 1)
            y = y + x.to(ct) * Dv
        if z is not None:
            y = y * F.silu(z.to(ct))
        y = y.to(x.dtype)
    return (y, final) if return_final_states else y
