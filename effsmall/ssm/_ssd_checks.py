"""Input checks shared by every SSD implementation (recurrent, chunked, Triton, mamba API).

Shapes (Mamba-2 notation, see ``book/notation.md``): X ``(b, l, h, p)``, A ``(b, l, h)`` per-step
log decay a_t = Δ_t·A ≤ 0, B and C ``(b, l, g, n)`` with ``h % g == 0``, states ``(b, h, p, n)``,
seq_idx ``(b, l)`` integer.
"""
from __future__ import annotations

import torch


def _is_tensor(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def check_same_device(ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """ValueError naming the first of ``tensors`` (None skipped) not on ``ref``'s device."""
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_ssd_inputs(X, A, B, C, initial_states=None, seq_idx=None, chunk_size=None,
                     check_values: bool = True) -> tuple[int, int, int, int, int, int]:
    """Validate SSD arguments; return ``(b, l, h, p, g, n)``.

    One exception type per kind of mistake, on every SSD rung: TypeError for a wrong type
    (non-tensors, non-floating dtypes, a non-integer seq_idx, a chunk_size that is not an int),
    ValueError for a wrong value (shapes, devices, ``h % g != 0``, ``chunk_size < 1`` and, when
    ``check_values``, positive log decays). Messages name the argument.
    """
    for name, t in (("X", X), ("A", A), ("B", B), ("C", C)):
        _is_tensor(name, t)
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if X.dim() != 4:
        raise ValueError(f"X must have shape (b, l, h, p), got {tuple(X.shape)}")
    b, l, h, p = X.shape
    if A.shape != (b, l, h):
        raise ValueError(f"A must have shape (b, l, h) = {(b, l, h)}, got {tuple(A.shape)}")
    if B.dim() != 4 or B.shape[:2] != (b, l):
        raise ValueError(f"B must have shape (b, l, g, n) with (b, l) = {(b, l)}, got {tuple(B.shape)}")
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    g, n = B.shape[2], B.shape[3]
    if g == 0 or h % g != 0:
        raise ValueError(f"the number of heads h={h} must be divisible by the groups g={g} of B and C")
    if l == 0:
        raise ValueError("X must have at least one time step (l >= 1)")
    check_same_device("X", X, A=A, B=B, C=C)
    if initial_states is not None:
        _is_tensor("initial_states", initial_states)
        if initial_states.shape != (b, h, p, n):
            raise ValueError(f"initial_states must have shape (b, h, p, n) = {(b, h, p, n)}, "
                             f"got {tuple(initial_states.shape)}")
        if not initial_states.is_floating_point():
            raise TypeError(f"initial_states must be floating point, got {initial_states.dtype}")
    if seq_idx is not None:
        _is_tensor("seq_idx", seq_idx)
        if seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
            raise TypeError(f"seq_idx must be an integer tensor, got {seq_idx.dtype}")
        if seq_idx.shape != (b, l):
            raise ValueError(f"seq_idx must have shape (b, l) = {(b, l)}, got {tuple(seq_idx.shape)}")
    check_same_device("X", X, initial_states=initial_states, seq_idx=seq_idx)
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
            raise TypeError(f"chunk_size must be a positive int, got {type(chunk_size).__name__} {chunk_size!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if check_values and A.numel() and bool((A > 0).any()):
        raise ValueError("A holds log decays a_t = Δ_t·A, which must be <= 0 (found a positive value)")
    return b, l, h, p, g, n


def segment_ids(seq_idx: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Number the packed sequences of each row: a new one starts wherever seq_idx[t] != seq_idx[t-1].

    Returns ``(b, l)`` in ``dtype`` (int64 by default), 0 for the first sequence (the only one
    that sees initial_states). Four small ops (cat, sub, ne, cumsum).
    """
    change = torch.diff(seq_idx, dim=1, prepend=seq_idx[:, :1]) != 0  # (b, l) bool, False at t = 0
    return change.cumsum(dim=1, dtype=dtype)  # (b, l)
