"""The attention contract: what every rung of the ladder accepts, checks and returns.

Every attention function of the package — :func:`~effsmall.attention.naive_attention`,
:func:`~effsmall.attention.tiled_attention` and its backward, :func:`~effsmall.attention.flash_attention`,
:func:`~effsmall.attention.flash_attention_varlen` and :func:`~effsmall.attention.flash_decode` —
validates its arguments here, so one mistake gets one exception type and one message everywhere.

* shapes: q ``(B, Hq, Nq, D)``, k and v ``(B, Hk, Nk, D)`` (packed: ``(total, H, D)``),
  ``Hq % Hk == 0``. Query head ``h`` uses key/value head ``h // (Hq // Hk)`` (GQA; MQA when Hk = 1);
* ``causal`` is aligned bottom-right: with the diagonal ``d(i) = i + Nk − Nq``, query i sees key j
  iff ``j ≤ d(i)``, so the last query always sees the last key (as in FlashAttention ≥ 2.1);
* ``window=(left, right)`` keeps keys ``d(i) − left ≤ j ≤ d(i) + right``; ``None`` or a negative
  entry leaves that side unbounded. :func:`window_bounds` folds ``causal`` in (``right ≤ 0``);
* ``scale`` is a positive finite number, ``D^−½`` by default;
* a query row that sees no key returns zeros, and its log-sum-exp — where a rung returns one —
  is ``−inf`` (``log Σ`` over no term), never NaN. This is what
  :func:`~effsmall.attention.merge_attention_states` needs: an empty part has weight
  ``e^{−inf} = 0``. (The Triton kernels store ``+inf`` internally so that their backward's
  ``exp(S − lse)`` is 0; the public functions return ``−inf``.)

Kinds of mistakes and their exceptions: a wrong *type* — not a tensor, a non-float or unsupported
dtype, dtypes that differ, a malformed ``window``, a ``scale`` that is not a real number —
raises ``TypeError``; a wrong *value* — rank, shapes, head counts, devices, a non-positive or
non-finite ``scale``, a head dim a kernel cannot run — raises ``ValueError``. Every message
names the argument.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import torch

__all__ = ["Window", "Band", "AttentionArgs", "check_attention", "check_tensors", "check_scale",
           "window_bounds", "check_heads", "check_kernel_tensors"]

Window = tuple[int | None, int | None] | None


class Band(NamedTuple):
    """The visible keys of query i: ``d(i) − left ≤ j ≤ d(i) + right``, ``None`` = unbounded."""
    left: int | None
    right: int | None


class AttentionArgs(NamedTuple):
    """What :func:`check_attention` returns: the scale to use and the visible band."""
    scale: float
    left: int | None
    right: int | None


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def window_bounds(window: Window, causal: bool = False) -> Band:
    """Check ``window`` and return the band ``(left, right)`` with ``causal`` folded in.

    A side that is ``None`` or negative is unbounded (``None`` in the result); ``causal`` caps
    ``right`` at 0. Raises ``TypeError`` unless window is ``None`` or a pair of ints/None.
    """
    left = right = None
    if window is not None:
        if not (isinstance(window, (tuple, list)) and len(window) == 2
                and all(w is None or _is_int(w) for w in window)):
            raise TypeError(f"window must be None or a pair (left, right) of ints or None, got {window!r}")
        left, right = (None if w is None or w < 0 else int(w) for w in window)
    if causal:
        right = 0 if right is None else min(right, 0)
    return Band(left, right)


def check_scale(scale: float | None, head_dim: int) -> float:
    """``scale`` as a float (``head_dim^−½`` when None). TypeError unless a real number,
    ValueError unless positive and finite."""
    if scale is None:
        return head_dim ** -0.5
    if not isinstance(scale, numbers.Real) or isinstance(scale, bool):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def check_tensors(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, rank: int = 4) -> None:
    """Check q, k, v against the shape/dtype/device contract.

    ``rank=4``: ``(B, H, N, D)`` tensors; ``rank=3``: packed ``(total, H, D)`` sequences (varlen).
    """
    layout = "(B, H, N, D)" if rank == 4 else "(total, H, D)"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != rank:
            raise ValueError(f"{name} must have rank {rank} {layout}, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if rank == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"q and k must have the same batch size, got {q.shape[0]} and {k.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same head dim D, got {q.shape[-1]} and {k.shape[-1]}")
    check_heads(q.shape[-3 if rank == 4 else -2], k.shape[-3 if rank == 4 else -2])


def check_heads(Hq: int, Hk: int, k_name: str = "k") -> None:
    """GQA: the query heads of q must be a multiple of the key/value heads of k."""
    if Hk == 0 or Hq % Hk != 0:
        raise ValueError(f"number of query heads of q ({Hq}) must be a multiple of the kv heads of {k_name} ({Hk})")


KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_kernel_tensors(fn: str, max_head_dim: int, min_head_dim: int = 1, *, hint: str = "",
                         **tensors: torch.Tensor) -> None:
    """What the Triton kernels add to the contract: fp16/bf16/fp32 (TypeError), a contiguous
    head (last) dimension and ``min_head_dim ≤ D ≤ max_head_dim`` (ValueError)."""
    for name, t in tensors.items():
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{name}: {fn} runs float16, bfloat16 or float32, got {t.dtype}{hint}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last (head) dimension")
    name, t = next(iter(tensors.items()))
    D = t.shape[-1]
    if not (min_head_dim <= D <= max_head_dim):
        raise ValueError(f"{name}'s head dim D={D} is outside the range {min_head_dim}..{max_head_dim} "
                         f"that {fn} supports")


def check_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, window: Window = None, rank: int = 4) -> AttentionArgs:
    """Validate one attention call against the contract; return ``(scale, left, right)``.

    ``left``/``right`` are :func:`window_bounds` of ``window`` with ``causal`` folded in.
    """
    check_tensors(q, k, v, rank=rank)
    band = window_bounds(window, causal)
    return AttentionArgs(check_scale(scale, q.shape[-1]), band.left, band.right)
