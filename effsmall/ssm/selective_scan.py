"""The selective scan of Mamba-1 ({cite}`gu2023mamba` §3): an SSM whose Δ, B, C depend on t.

For every batch element and channel d (state size n), with Δ_t = softplus(δ_t + bias) or δ_t:

    Ā_t = exp(Δ_t A_d)             (n,)   per-step decay of each state coordinate
    B̄_t u_t = Δ_t B_t u_t          (n,)   the (simplified, Euler) input term of Mamba
    h_t = Ā_t ⊙ h_{t−1} + B̄_t u_t  (n,)
    y_t = C_t · h_t + D_d u_t,   out_t = y_t · silu(z_t)   (when z is given)

Because Ā_t changes with t there is no single kernel K: the convolution of chapter 08 is
gone. What survives is that the update h ↦ a ⊙ h + b is an affine map, and composing affine
maps is associative:

    (a₁, b₁) • (a₂, b₂) = (a₁ a₂,  a₂ b₁ + b₂)      ("first apply 1, then 2")

so all prefixes h_t = (a_1, b_1) • … • (a_t, b_t) can be computed by a parallel prefix
scan {cite}`blelloch1990prefix` in O(log₂ L) steps instead of L.

Shapes (as in ``mamba_ssm.selective_scan_ref``): u, delta ``(b, d, l)``, A ``(d, n)``, B and C
``(b, n, l)`` or grouped ``(b, g, n, l)`` (channel d uses group d // (d/g)), D ``(d,)``,
z ``(b, d, l)``, delta_bias ``(d,)``. Every function returns ``(out (b, d, l), last_state (b, d, n))``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["selective_scan_sequential", "selective_scan_parallel", "affine_scan",
           "scan_bytes_moved", "check_selective_scan_inputs"]


# --------------------------------------------------------------------------- input checks
def check_selective_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """Validate shapes/dtypes; return (b, d, l, n, g). Raises ValueError/TypeError naming the argument."""
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D),
                    ("z", z), ("delta_bias", delta_bias)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise TypeError(f"{name}: complex selective scans are not supported (real A only)")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if t.device != u.device:
            raise TypeError(f"{name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3:
        raise ValueError(f"u must be (b, d, l), got shape {tuple(u.shape)}")
    b, d, l = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be (d, n) = ({d}, n), got {tuple(A.shape)}")
    n = A.shape[1]
    g = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3 and t.shape == (b, n, l):
            tg = 1
        elif t.dim() == 4 and t.shape[0] == b and t.shape[2:] == (n, l):
            tg = t.shape[1]
            if tg < 1 or d % tg:
                raise ValueError(f"{name}: d={d} must be divisible by the number of groups g={tg}")
        else:
            raise ValueError(f"{name} must be (b, n, l) = {(b, n, l)} or (b, g, n, l), "
                             f"got {tuple(t.shape)}")
        if g is not None and tg != g:
            raise ValueError(f"B and C must have the same number of groups, got {g} and {tg}")
        g = tg
    if D is not None and D.shape != (d,):
        raise ValueError(f"D must be (d,) = ({d},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"delta_bias must be (d,) = ({d},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}")
    return b, d, l, n, g


def _grouped(X: torch.Tensor) -> torch.Tensor:
    """B or C (b, n, l) / (b, g, n, l) → (b, g, 1, l, n): broadcastable against (b, g, d/g, l, n)."""
    if X.dim() == 3:
        X = X[:, None]                                                 # (b, 1, n, l)
    return X.transpose(-1, -2)[:, :, None]                             # (b, g, 1, l, n)


def _discretize(u, delta, A, B, delta_bias, delta_softplus):
    """Return the scan's pairs: decay a = exp(Δ A) and input b = Δ B u, both (b, d, l, n)."""
    b, d, l = u.shape
    delta = delta.float() if delta.dtype in (torch.float16, torch.bfloat16) else delta
    if delta_bias is not None:
        delta = delta + delta_bias[:, None].to(delta.dtype)            # (b, d, l)
    if delta_softplus:
        delta = F.softplus(delta)                                      # (b, d, l)
    dtype = delta.dtype
    a = torch.exp(delta[..., None] * A.to(dtype)[:, None, :])          # (b, d, l, n)
    Bg = _grouped(B).to(dtype)                                         # (b, g, 1, l, n)
    g = Bg.shape[1]
    du = (delta * u.to(dtype)).view(b, g, d // g, l, 1)                # (b, g, d/g, l, 1)
    bu = (du * Bg).view(b, d, l, -1)                                   # (b, d, l, n)
    return a, bu


def _output(h_all, u, C, D, z, out_dtype):
    """y_t = C_t · h_t (+ D u_t), gated by silu(z). h_all (b, d, l, n) → (b, d, l)."""
    b, d, l, n = h_all.shape
    Cg = _grouped(C).to(h_all.dtype)                                   # (b, g, 1, l, n)
    g = Cg.shape[1]
    y = (h_all.view(b, g, d // g, l, n) * Cg).sum(-1).view(b, d, l)   # (b, d, l)
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)                 # (b, d, l)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))                                  # (b, d, l)
    return y.to(out_dtype)


# --------------------------------------------------------------------------- sequential
def selective_scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                              delta_softplus=False):
    """The reference: l steps of h_t = exp(Δ_t A) ⊙ h_{t−1} + Δ_t B_t u_t, y_t = C_t · h_t.

    O(b d l n) work, l sequential steps; the state h (b, d, n) is the only memory carried,
    but the per-step terms are formed for all t first (as ``selective_scan_ref`` does).
    """
    b, d, l, n, g = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    a, bu = _discretize(u, delta, A, B, delta_bias, delta_softplus)    # (b, d, l, n) ×2
    Cg = _grouped(C).to(a.dtype)                                       # (b, g, 1, l, n)
    h = a.new_zeros(b, d, n)                                           # (b, d, n)
    ys = []
    for t in range(l):
        h = a[:, :, t] * h + bu[:, :, t]                               # (b, d, n)
        y_t = (h.view(b, g, d // g, n) * Cg[:, :, :, t]).sum(-1)        # (b, g, d/g)
        ys.append(y_t.reshape(b, d))                                   # (b, d)
    y = torch.stack(ys, dim=-1) if ys else a.new_zeros(b, d, 0)        # (b, d, l)
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u.to(y.dtype)                 # (b, d, l)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))                                  # (b, d, l)
    return y.to(u.dtype), h


# --------------------------------------------------------------------------- parallel
def affine_scan_hillis_steele(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """States h_t of the affine maps h ↦ a_t h + b_t (h_{−1} = 0), scanned along dim −2.

    Hillis–Steele: at step s = 1, 2, 4, … every position t ≥ s combines with position t − s,
    (a, b)[t] ← (a, b)[t−s] • (a, b)[t]. After ⌈log₂ L⌉ steps position t holds the
    composition of maps 0…t. Depth log₂ L, but work L log₂ L (every step touches all of L).
    Shapes: a, b ``(..., L, n)`` → h ``(..., L, n)``.
    """
    L = a.shape[-2]
    s = 1
    while s < L:
        a_prev, b_prev = a[..., :-s, :], b[..., :-s, :]                   # (..., L−s, n)
        b = torch.cat([b[..., :s, :], a[..., s:, :] * b_prev + b[..., s:, :]], dim=-2)  # (..., L, n)
        a = torch.cat([a[..., :s, :], a[..., s:, :] * a_prev], dim=-2)                  # (..., L, n)
        s *= 2
    return b


def affine_scan_blelloch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same states with O(L) work: Blelloch's up-sweep/down-sweep, written recursively.

    Up: combine neighbours, (a_{2k}, b_{2k}) • (a_{2k+1}, b_{2k+1}) — a problem of half the
    length whose prefixes are the states at odd positions (recurse). Down: each even position
    2k finishes with one more step from the odd state before it,
    h_{2k} = a_{2k} h_{2k−1} + b_{2k}. Depth 2⌈log₂ L⌉, work ≈ 2L combines (vs L log₂ L).
    Shapes: a, b ``(..., L, n)`` → h ``(..., L, n)``.
    """
    L = a.shape[-2]
    if L <= 1:
        return b
    if L % 2:                                   # pad with the identity map (a, b) = (1, 0)
        a = torch.cat([a, torch.ones_like(a[..., :1, :])], dim=-2)        # (..., L+1, n)
        b = torch.cat([b, torch.zeros_like(b[..., :1, :])], dim=-2)       # (..., L+1, n)
    a_even, a_odd = a[..., 0::2, :], a[..., 1::2, :]                      # (..., L/2, n) ×2
    b_even, b_odd = b[..., 0::2, :], b[..., 1::2, :]                      # (..., L/2, n) ×2
    # Up-sweep: pairs (2k, 2k+1) composed; the half-length scan gives h at odd positions.
    h_odd = affine_scan_blelloch(a_even * a_odd, torch.addcmul(b_odd, a_odd, b_even))  # (..., L/2, n)
    # Down-sweep: h_{2k} = a_{2k} h_{2k−1} + b_{2k}, with h_{−1} = 0.
    h_before = F.pad(h_odd[..., :-1, :], (0, 0, 1, 0))                   # (..., L/2, n)
    h_even = torch.addcmul(b_even, a_even, h_before)                      # (..., L/2, n)
    h = torch.stack([h_even, h_odd], dim=-2).flatten(-3, -2)              # (..., L(+1), n)
    return h[..., :L, :]


def affine_scan(a: torch.Tensor, b: torch.Tensor, method: str = "blelloch") -> torch.Tensor:
    """Inclusive scan of h_t = a_t h_{t−1} + b_t along dim −2 with the associative operator

        (a₁, b₁) • (a₂, b₂) = (a₁a₂, a₂b₁ + b₂)        ("apply map 1, then map 2").

    ``method``: ``"blelloch"`` (work-efficient, default) or ``"hillis_steele"``.
    """
    if method == "blelloch":
        return affine_scan_blelloch(a, b)
    if method == "hillis_steele":
        return affine_scan_hillis_steele(a, b)
    raise ValueError(f"method must be 'blelloch' or 'hillis_steele', got {method!r}")


def selective_scan_parallel(u, delta, A, B, C, D=None, z=None, delta_bias=None,
                            delta_softplus=False, method: str = "blelloch"):
    """The same scan in O(log₂ l) vectorised steps (``affine_scan`` over the (decay, input) pairs).

    Materializes the (b, d, l, n) pairs and states — the HBM traffic that Mamba's fused
    kernel avoids (see ``scan_bytes_moved``) — but replaces l Python-level steps with
    log₂ l large tensor operations, which wins on CPU and GPU alike for long l.
    """
    b, d, l, n, g = check_selective_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    a, bu = _discretize(u, delta, A, B, delta_bias, delta_softplus)    # (b, d, l, n) ×2
    h_all = affine_scan(a, bu, method)                                 # (b, d, l, n)
    last = h_all[:, :, -1] if l else a.new_zeros(b, d, n)              # (b, d, n)
    return _output(h_all, u, C, D, z, u.dtype), last


# --------------------------------------------------------------------------- bytes moved
def scan_bytes_moved(b: int, d: int, l: int, n: int, g: int = 1, itemsize: int = 4,
                     gated: bool = True) -> dict:
    """Main-memory bytes of one selective scan, materialized vs fused ({cite}`gu2023mamba` §3.3).

    *Fused* (Mamba's kernel): read u, Δ, z (b·d·l each), A (d·n), B, C (b·g·n·l each),
    write y (b·d·l) and the last state (b·d·n); the per-step Ā, B̄u and h live in SRAM.
    (This is the ideal: a kernel that splits channels into blocks re-reads B and C once per
    block, which on a GPU mostly hits the L2 cache.)
    *Materialized* (a framework graph, e.g. ``selective_scan_parallel``): additionally write
    and read back Ā and B̄u (b·d·l·n each), write the states h (b·d·l·n) and read them again
    to contract with C. Returns ``{"fused", "materialized", "ratio"}`` in bytes.
    """
    x = b * d * l                       # one (b, d, l) tensor
    s = b * d * l * n                   # one (b, d, l, n) tensor
    io = (3 if gated else 2) * x + d * n + 2 * b * g * n * l + x + b * d * n
    fused = io * itemsize
    materialized = (io + 2 * s + 2 * s + 2 * s) * itemsize   # Ā, B̄u, h: each written + read
    return {"fused": fused, "materialized": materialized, "ratio": materialized / fused}
