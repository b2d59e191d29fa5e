"""Where code runs: CUDA or CPU, compiled Triton or the Triton interpreter.

Triton reads ``TRITON_INTERPRET`` when a function is decorated with ``@triton.jit``, so the
choice must be made before any kernel module is imported. ``effsmall/__init__.py`` calls
:func:`configure_triton_interpreter` first thing.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for host code. ``triton.cdiv`` is a JIT function: calling it from Python costs
    microseconds per call on the host, on every kernel launch."""
    return -(-a // b)


def next_power_of_2(n: int, lo: int = 1) -> int:
    """Smallest power of two ≥ max(n, lo), in plain Python (host code; see :func:`cdiv`)."""
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def cuda_available() -> bool:
    return torch.cuda.is_available()


def configure_triton_interpreter() -> bool:
    """Turn on the Triton interpreter when there is no CUDA device (respecting a user's choice).

    Returns True when kernels will be interpreted on the CPU.
    """
    if "TRITON_INTERPRET" not in os.environ and not cuda_available():
        os.environ["TRITON_INTERPRET"] = "1"
    return interpreting()


def interpreting() -> bool:
    """True when ``@triton.jit`` kernels run in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a dependency of the book's environment
        return False
    return True


def triton_device_ok(t: torch.Tensor) -> bool:
    """Can a Triton kernel take this tensor? CUDA tensors when compiled, CPU tensors when interpreted."""
    if not triton_available():
        return False
    return t.device.type == "cpu" if interpreting() else t.device.type == "cuda"


def require_triton_tensor(name: str, t: torch.Tensor, fn: str) -> None:
    """Raise unless ``fn``'s Triton kernels can take ``t`` here: ValueError on the wrong device
    (CUDA tensors when compiled, CPU tensors under ``TRITON_INTERPRET=1``), TypeError for
    bfloat16 under the interpreter (it computes with numpy, which has no bfloat16)."""
    if not triton_device_ok(t):
        where = "CPU tensors under TRITON_INTERPRET=1" if interpreting() else "CUDA tensors"
        raise ValueError(f"{fn} needs {where}; {name} is on {t.device}")
    if interpreting() and t.dtype == torch.bfloat16:
        raise TypeError(f"{name}: bfloat16 is not supported by the Triton interpreter; use float32 or float16 on CPU")


@functools.lru_cache(maxsize=None)
def compute_capability(device_index: int = 0) -> tuple[int, int] | None:
    if not cuda_available():
        return None
    return torch.cuda.get_device_capability(device_index)


@functools.lru_cache(maxsize=None)
def tensor_cores_in_triton(device_index: int = 0) -> bool:
    """Triton >= 3.3 emits tensor-core ``tl.dot`` only on compute capability >= 8.0.

    On older GPUs (Colab's free T4 is sm75) ``tl.dot`` falls back to FMA instructions. Kernels
    call :func:`warn_once` with this fact and pick their documented fallback.
    """
    cc = compute_capability(device_index)
    return cc is not None and cc >= (8, 0)


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Say something once per process (used for fallbacks, so a loop does not flood the output)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def default_device() -> torch.device:
    return torch.device("cuda" if cuda_available() else "cpu")


def cache_dir():
    """Where the package caches what it builds (tokenizers, trained weights, flash stores).

    ``$EFFSMALL_CACHE`` if set, else ``~/.cache/effsmall``; created on first use.
    """
    from pathlib import Path

    path = Path(os.environ.get("EFFSMALL_CACHE") or Path.home() / ".cache" / "effsmall")
    path.mkdir(parents=True, exist_ok=True)
    return path
