"""Weight-only quantization: int8 per output channel and int4 per group of input columns.

Symmetric absmax quantization of a weight matrix W ``(out, in)``:

    scale = max|W_block| / q_max,   q = clamp(round(W / scale), −q_max, q_max),   Ŵ = q · scale

with q_max = 127 for int8 (one scale per output row: *per-channel*) and q_max = 7 for int4
(one scale per ``group_size`` consecutive inputs of a row: *group-wise*, as GPTQ/AWQ-style
4-bit formats store them {cite}`frantar2022gptq`). Rounding to nearest gives the bound

    |W − Ŵ| ≤ scale / 2    elementwise,

tested for both formats. Two int4 values are packed into one uint8 (low nibble first) so the
weights really take 4 bits; :func:`unpack_int4` inverts :func:`pack_int4` exactly.

Only weights are quantized; activations stay in floating point and :class:`QuantLinear`
dequantizes its weight on the fly (a fused int4 GEMM kernel would dequantize in registers —
the memory saved is the same, which is what matters for fitting on a device).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class QuantizedTensor:
    """``data``: int8 ``(out, in)`` (bits=8) or packed uint8 ``(out, in/2)`` (bits=4);
    ``scale``: ``(out, 1)`` (bits=8) or ``(out, in/group_size)`` (bits=4), fp16 or fp32."""
    data: torch.Tensor
    scale: torch.Tensor
    bits: int
    shape: tuple[int, int]
    group_size: int | None = None

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()


def _check_matrix(w: torch.Tensor):
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError("w must be a floating-point torch.Tensor")
    if w.dim() != 2:
        raise ValueError(f"w must be a 2-D weight matrix (out, in), got shape {tuple(w.shape)}")


def quantize_int8(w: torch.Tensor, scale_dtype: torch.dtype = torch.float32) -> QuantizedTensor:
    """Per-output-channel symmetric int8: one scale per row of W ``(out, in)``."""
    _check_matrix(w)
    wf = w.float()
    scale = (wf.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)    # (out, 1)
    scale = scale.to(scale_dtype)
    q = (wf / scale.float()).round().clamp(-127, 127).to(torch.int8)       # (out, in)
    return QuantizedTensor(q, scale, 8, tuple(w.shape))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [−8, 7] ``(..., n)`` with n even → uint8 ``(..., n/2)``: low nibble = q[2i]."""
    if q.dtype != torch.int8:
        raise TypeError(f"q must be int8, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"the last dimension of q must be even, got {q.shape[-1]}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("q must hold int4 values in [-8, 7]")
    u = (q.to(torch.int16) & 0xF).to(torch.uint8)                           # two's-complement nibbles
    return u[..., 0::2] | (u[..., 1::2] << 4)                               # (..., n/2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``(..., m)`` → int8 ``(..., 2m)`` in [−8, 7]."""
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be uint8, got {packed.dtype}")
    lo = (packed & 0xF).to(torch.int16)
    hi = (packed >> 4).to(torch.int16)
    both = torch.stack([lo, hi], dim=-1).flatten(-2)                        # (..., 2m)
    return torch.where(both >= 8, both - 16, both).to(torch.int8)           # sign-extend the nibble


def quantize_int4(w: torch.Tensor, group_size: int = 64, scale_dtype: torch.dtype = torch.float32) -> QuantizedTensor:
    """Group-wise symmetric int4: one scale per ``group_size`` consecutive inputs of each row."""
    _check_matrix(w)
    out, n_in = w.shape
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2 or n_in % group_size:
        raise ValueError(f"group_size must be an even int >= 2 dividing in_features={n_in}, got {group_size!r}")
    wg = w.float().view(out, n_in // group_size, group_size)                # (out, groups, gs)
    scale = (wg.abs().amax(-1, keepdim=True) / 7).clamp(min=1e-12).to(scale_dtype)  # (out, groups, 1)
    q = (wg / scale.float()).round().clamp(-7, 7).to(torch.int8)            # (out, groups, gs)
    return QuantizedTensor(pack_int4(q.view(out, n_in)), scale[..., 0], 4, (out, n_in), group_size)


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Ŵ = q · scale as a dense ``(out, in)`` tensor."""
    if qt.bits == 8:
        return (qt.data.float() * qt.scale.float()).to(dtype)
    out, n_in = qt.shape
    q = unpack_int4(qt.data).float().view(out, n_in // qt.group_size, qt.group_size)  # (out, groups, gs)
    return (q * qt.scale.float()[..., None]).view(out, n_in).to(dtype)


class QuantLinear(nn.Module):
    """A ``nn.Linear`` whose weight is stored int8 or packed int4 (bias kept in float)."""

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.bits, self.group_size, self.shape = qweight.bits, qweight.group_size, qweight.shape
        self.in_features, self.out_features = qweight.shape[1], qweight.shape[0]
        self.compute_dtype = dtype
        self.register_buffer("qdata", qweight.data)
        self.register_buffer("scale", qweight.scale)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int = 8, group_size: int = 64,
                    scale_dtype: torch.dtype = torch.float16) -> "QuantLinear":
        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        w = linear.weight.detach()
        qt = quantize_int8(w, scale_dtype) if bits == 8 else quantize_int4(w, group_size, scale_dtype)
        return cls(qt, linear.bias, w.dtype)

    def qweight(self) -> QuantizedTensor:
        return QuantizedTensor(self.qdata, self.scale, self.bits, self.shape, self.group_size)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight Ŵ ``(out, in)`` (for code that reads ``.weight`` of a Linear)."""
        return dequantize(self.qweight(), self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize(self.qweight(), x.dtype)                              # (out, in)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{g}"


def quantize_model(model: nn.Module, bits: int = 8, group_size: int = 64, skip: tuple[str, ...] = ("lm_head",),
                   scale_dtype: torch.dtype = torch.float16) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`QuantLinear`.

    Modules whose qualified name contains a string of ``skip`` stay in float (by default the
    output layer, which is tied to the embedding in our models and is the most sensitive).
    For int4, a layer whose ``in_features`` is not a multiple of ``group_size`` uses groups of
    ``gcd(in_features, group_size)`` (e.g. 32 for 160 inputs at group_size 64).
    Works for effsmall LMs and ``transformers`` models alike. Returns ``model``.
    """
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(s in full for s in skip):
                g = math.gcd(child.in_features, group_size)
                setattr(module, child_name, QuantLinear.from_linear(child, bits, g, scale_dtype))
    return model


def model_bytes(model: nn.Module) -> int:
    """Bytes of all distinct parameters and buffers (quantized weights count at their storage)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
