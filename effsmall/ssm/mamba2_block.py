"""The Mamba-2 block ({cite}`dao2024mamba2` §7): one SSD layer with everything around it.

    u (b, l, d_model)
      └─ in_proj ─→ [ z (d_inner) | xBC (d_inner + 2·g·N) | dt (h) ]
    xBC ─ causal depthwise conv1d (width d_conv) ─ SiLU ─→ [ x (h·P) | B (g·N) | C (g·N) ]
    Δ = softplus(dt + dt_bias),  A = −exp(A_log)  (one scalar decay per head)
    y = SSD(X = x·Δ, a = Δ·A, B, C) + D ⊙ x          (the state space dual layer)
    y = RMSNorm(y ⊙ SiLU(z)) · w                       (gated RMSNorm)
    out = out_proj(y)

Heads: h = d_inner / P heads of width P share B and C within each of g groups (h % g == 0),
the paper's multi-value / grouped-value pattern (§7.2) — B, C play the role of keys and
queries, x of values.

``forward`` processes a whole sequence with the chunked SSD (``ssd_chunked`` on CPU, the
Triton ``ssd_triton`` on CUDA when it is available); ``step`` decodes one token with the
recurrence, carrying a :class:`Mamba2Cache` (the last d_conv−1 conv inputs and the SSM state
(b, h, P, N)). ``forward(..., return_cache=True)`` returns the cache after a prompt, so
generation continues with ``step`` and produces exactly the parallel outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from effsmall.ssm.ssd_chunkwise import ssd_chunked

__all__ = ["Mamba2Block", "Mamba2Cache", "GatedRMSNorm"]


@dataclass
class Mamba2Cache:
    """Decode state of one block: ``conv_state (b, conv_dim, d_conv)`` holds the most recent
    conv inputs (oldest first; the last column is overwritten by each new token), and
    ``ssm_state (b, h, P, N)`` the SSD state h_t."""
    conv_state: torch.Tensor
    ssm_state: torch.Tensor


class GatedRMSNorm(nn.Module):
    """RMSNorm(y ⊙ SiLU(z)) · w, normalised over groups of ``group_size`` features (Mamba-2's
    ``norm_before_gate=False``)."""

    def __init__(self, dim: int, group_size: int | None = None, eps: float = 1e-5, **kw):
        super().__init__()
        self.group_size = group_size or dim
        if dim % self.group_size:
            raise ValueError(f"dim={dim} must be divisible by group_size={self.group_size}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **kw))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        x = (y * F.silu(z)).float()                                        # (..., dim)
        xg = x.unflatten(-1, (-1, self.group_size))                        # (..., groups, gs)
        xg = xg * torch.rsqrt(xg.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xg.flatten(-2) * self.weight.float()).to(y.dtype)          # (..., dim)


def _ssd_fn(device: torch.device, dtype: torch.dtype = torch.float32):
    """The fastest exact SSD forward here: Triton on CUDA (fp32/bf16/fp16) if present, else torch."""
    if device.type == "cuda" and dtype in (torch.float32, torch.bfloat16, torch.float16):
        try:
            from effsmall.ssm.ssd_kernels import ssd_triton
            return ssd_triton
        except ImportError:
            pass
    return ssd_chunked


class Mamba2Block(nn.Module):
    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2,
                 headdim: int = 64, ngroups: int = 1, chunk_size: int = 64,
                 A_init_range: tuple[float, float] = (1.0, 16.0), dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, bias: bool = False,
                 conv_bias: bool = True, norm_groups: int = 1, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"expand·d_model = {self.d_inner} must be divisible by headdim={headdim}")
        self.headdim, self.nheads, self.ngroups = headdim, self.d_inner // headdim, ngroups
        if self.nheads % ngroups:
            raise ValueError(f"the number of heads {self.nheads} must be divisible by ngroups={ngroups}")
        self.chunk_size = chunk_size
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **kw)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **kw)
        # Δ initialised log-uniformly in [dt_min, dt_max]; dt_bias = softplus⁻¹(Δ).
        dt = torch.exp(torch.rand(self.nheads, **kw) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))             # (h,)
        A = torch.empty(self.nheads, **kw).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))                                    # (h,)
        self.D = nn.Parameter(torch.ones(self.nheads, **kw))                       # (h,)
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // norm_groups, **kw)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **kw)

    # ------------------------------------------------------------------ shared pieces
    @staticmethod
    def _fp32_or_64(t: torch.Tensor) -> torch.Tensor:
        """Decays and states accumulate in fp32 (fp64 stays fp64)."""
        return t if t.dtype == torch.float64 else t.float()

    def _split_proj(self, zxbcdt: torch.Tensor):
        return torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xbc(self, xBC: torch.Tensor):
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xBC, [self.d_inner, gn, gn], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)),                      # (..., h, P)
                B.unflatten(-1, (self.ngroups, self.d_state)),                     # (..., g, N)
                C.unflatten(-1, (self.ngroups, self.d_state)))                     # (..., g, N)

    def _check(self, u: torch.Tensor, rank: int, what: str):
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"u must be a torch.Tensor, got {type(u).__name__}")
        if u.dim() != rank or u.shape[-1] != self.d_model:
            raise ValueError(f"u must have shape {what} with d_model={self.d_model}, got {tuple(u.shape)}")
        w = self.in_proj.weight
        if u.dtype != w.dtype or u.device != w.device:
            raise TypeError(f"u must have the block's dtype/device ({w.dtype}, {w.device}), "
                            f"got ({u.dtype}, {u.device})")

    # ------------------------------------------------------------------ parallel path
    def forward(self, u: torch.Tensor, return_cache: bool = False):
        """u (b, l, d_model) → out (b, l, d_model) [, Mamba2Cache after the last token]."""
        self._check(u, 3, "(b, l, d_model)")
        b, l, _ = u.shape
        z, xBC, dt = self._split_proj(self.in_proj(u))    # (b,l,d_inner), (b,l,conv_dim), (b,l,h)
        xBC_in = xBC
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :l]   # (b, conv_dim, l): causal (left pad)
        xBC = F.silu(xBC.transpose(1, 2))                 # (b, l, conv_dim)
        x, B, C = self._split_xbc(xBC)                    # (b,l,h,P), (b,l,g,N), (b,l,g,N)
        dt = F.softplus(self._fp32_or_64(dt + self.dt_bias))  # (b, l, h), Δ in fp32
        A = -torch.exp(self._fp32_or_64(self.A_log))      # (h,)
        ssd = _ssd_fn(u.device, x.dtype)
        # SSD inputs: X = x·Δ in the activation dtype, log decays a = Δ·A kept in fp32.
        Y, final = ssd(x * dt[..., None].to(x.dtype), dt * A, B, C, self.chunk_size)
        y = Y + x * self.D[:, None].to(x.dtype)           # (b, l, h, P)
        y = self.norm(y.flatten(-2), z)                   # (b, l, d_inner)
        out = self.out_proj(y)                            # (b, l, d_model)
        if not return_cache:
            return out
        # Conv cache: the last d_conv inputs of the conv (zeros before the sequence start).
        conv_state = F.pad(xBC_in.transpose(1, 2), (max(self.d_conv - l, 0), 0))[..., -self.d_conv:]
        return out, Mamba2Cache(conv_state.contiguous(), self._fp32_or_64(final))

    # ------------------------------------------------------------------ recurrent path
    def allocate_cache(self, batch: int) -> Mamba2Cache:
        w = self.in_proj.weight
        return Mamba2Cache(
            w.new_zeros(batch, self.conv_dim, self.d_conv),                       # (b, conv_dim, d_conv)
            self._fp32_or_64(w.new_zeros(batch, self.nheads, self.headdim, self.d_state)))  # (b, h, P, N)

    def step(self, u_t: torch.Tensor, cache: Mamba2Cache):
        """One token: u_t (b, d_model) → (out_t (b, d_model), updated cache). O(h·P·N) work."""
        self._check(u_t, 2, "(b, d_model)")
        if cache.conv_state.shape != (u_t.shape[0], self.conv_dim, self.d_conv):
            raise ValueError(f"cache.conv_state must be {(u_t.shape[0], self.conv_dim, self.d_conv)}, "
                             f"got {tuple(cache.conv_state.shape)}")
        z, xBC, dt = self._split_proj(self.in_proj(u_t))  # (b,d_inner), (b,conv_dim), (b,h)
        # Conv: shift the window left by one and append the new input; dot with the filter.
        conv_state = torch.cat([cache.conv_state[..., 1:], xBC[..., None]], dim=-1)  # (b, conv_dim, d_conv)
        xBC = (conv_state * self.conv1d.weight[:, 0]).sum(-1)                     # (b, conv_dim)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, B, C = self._split_xbc(F.silu(xBC))             # (b,h,P), (b,g,N), (b,g,N)
        dt = F.softplus(self._fp32_or_64(dt + self.dt_bias))  # (b, h), Δ in fp32
        A = -torch.exp(self._fp32_or_64(self.A_log))       # (h,)
        rep = self.nheads // self.ngroups
        Bh = B.repeat_interleave(rep, dim=1)               # (b, h, N)
        Ch = C.repeat_interleave(rep, dim=1)               # (b, h, N)
        s = cache.ssm_state
        decay = torch.exp(dt * A).to(s.dtype)              # (b, h)
        xdt = (x * dt[..., None].to(x.dtype)).to(s.dtype)  # (b, h, P), rounded as in forward
        s = decay[..., None, None] * s + xdt[..., None] * Bh.to(s.dtype)[:, :, None, :]  # (b, h, P, N)
        y = torch.einsum("bhpn,bhn->bhp", s, Ch.to(s.dtype)).to(x.dtype)          # (b, h, P)
        y = y + x * self.D[:, None].to(x.dtype)            # (b, h, P)
        y = self.norm(y.flatten(-2), z)                    # (b, d_inner)
        return self.out_proj(y), Mamba2Cache(conv_state, s)
