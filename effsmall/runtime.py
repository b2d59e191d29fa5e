"""Where code runs: CUDA or CPU, compiled Triton or the Triton interpreter.

Triton reads ``TRITON_INTERPRET`` when a function is decorated with ``@triton.jit``, so the
choice must be made before any kernel module is imported. ``effsmall/__init__.py`` calls
:func:`configure_triton_interpreter` first thing.
"""
from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import torch


def cdiv(a: int, b: int) -> int:
    """⌈a / b⌉ for host code. ``triton.cdiv`` is a JIT function: calling it from Python costs
    microseconds per call on the host, on every kernel launch."""
    return -(-a // b)


def next_power_of_2(n: int, lo: int = 1) -> int:
    """Smallest power of two ≥ max(n, lo), in plain Python (host code; see :func:`cdiv`)."""
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def compute_dtype(*xs: torch.Tensor | torch.dtype) -> torch.dtype:
    """The dtype host-side reference code accumulates in: float64 if any input is float64, else
    float32 — half inputs (fp16, bf16) are computed in float32, as the GPU kernels do. Also the
    dtype of row statistics (softmax max, sum, log-sum-exp)."""
    dtypes = [x.dtype if isinstance(x, torch.Tensor) else x for x in xs]
    return torch.float64 if torch.float64 in dtypes else torch.float32


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


#: The constexpr that tells a kernel it is interpreted. **Why kernels need it** — loops over a
#: run-time bound: compiled, ``for i in tl.range(lo, hi, step)`` is the loop to write (Triton
#: software-pipelines it, prefetching the next block's loads with ``num_stages``); interpreted
#: (numpy 2), ``range`` cannot take a bound that is a 0-d array, so the same loop must be written
#: ``i = lo; while i < hi: ...; i += step``. A kernel takes ``INTERP: tl.constexpr`` and keeps
#: both forms under ``if INTERP:``; the untaken branch is never compiled. Launch with
#: ``**interp_flag()``.
INTERP_FLAG = "INTERP"


def interp_flag() -> dict:
    """``{INTERP_FLAG: interpreting()}``, the keyword that picks a kernel's loop form (see above)."""
    return {INTERP_FLAG: interpreting()}


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


def require_triton_device(name: str, t: torch.Tensor, fn: str) -> None:
    """Raise ValueError unless ``fn``'s Triton kernels can take a tensor on ``t``'s device here
    (CUDA tensors when compiled, CPU tensors under ``TRITON_INTERPRET=1``); the message names
    the argument and says what to do."""
    if not triton_device_ok(t):
        if interpreting():
            raise ValueError(f"{fn} runs in the Triton interpreter here (TRITON_INTERPRET=1), which needs CPU "
                             f"tensors; {name} is on {t.device}: move the inputs with .cpu(), or unset "
                             f"TRITON_INTERPRET before importing effsmall to compile for the GPU")
        raise ValueError(f"{fn} compiles its Triton kernels for the GPU here, which needs CUDA tensors; {name} "
                         f"is on {t.device}: move the inputs with .to(effsmall.runtime.device_policy().device), "
                         f"or set TRITON_INTERPRET=1 before importing effsmall to interpret on the CPU")


def require_triton_tensor(name: str, t: torch.Tensor, fn: str) -> None:
    """Raise unless ``fn``'s Triton kernels can take ``t`` here: ValueError on the wrong device
    (CUDA tensors when compiled, CPU tensors under ``TRITON_INTERPRET=1``), TypeError for
    bfloat16 under the interpreter (it computes with numpy, which has no bfloat16)."""
    require_triton_device(name, t, fn)
    if interpreting() and t.dtype == torch.bfloat16:
        raise TypeError(f"{name}: bfloat16 is not supported by the Triton interpreter; use float32 or float16 on CPU")


ASSUME_CC_ENV = "EFFSMALL_ASSUME_CC"


def _assumed_capability() -> tuple[int, int] | None:
    """``EFFSMALL_ASSUME_CC=7.5`` makes the package decide as it would on a GPU of that compute
    capability (a Colab T4 is 7.5): tests cover the Turing path on any machine with it."""
    value = os.environ.get(ASSUME_CC_ENV)
    if not value:
        return None
    try:
        major, minor = (int(x) for x in value.split("."))
    except ValueError:
        raise ValueError(f"{ASSUME_CC_ENV} must look like '7.5', got {value!r}") from None
    return major, minor


def compute_capability(device_index: int = 0) -> tuple[int, int] | None:
    """The CUDA compute capability (major, minor), ``$EFFSMALL_ASSUME_CC`` if set, None without CUDA."""
    assumed = _assumed_capability()
    if assumed is not None:
        return assumed
    return _real_capability(device_index)


@functools.lru_cache(maxsize=None)
def _real_capability(device_index: int) -> tuple[int, int] | None:
    if not cuda_available():
        return None
    return torch.cuda.get_device_capability(device_index)


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


# ---------------------------------------------------------------------------------------------
# The device policy: where a chapter (or a test) puts its tensors, in which dtype, at what size
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DevicePolicy:
    """Where the book's code runs here, decided once per process by :func:`device_policy`.

    * ``device`` — ``cuda`` when a GPU is visible and kernels are compiled, else ``cpu`` (the
      Triton interpreter runs the same kernels on CPU tensors, slowly);
    * ``dtype`` — the dtype kernels run in: bfloat16 on compute capability ≥ 8.0, float16 on
      7.x (Turing has no bfloat16 tensor cores), float32 in the interpreter (numpy has no bf16);
    * ``tensor_cores`` — whether Triton's ``tl.dot`` uses tensor cores here (sm80+); where it
      does not (a T4), the attention kernels fall back to PyTorch and the models use SDPA.
    """
    device: torch.device
    dtype: torch.dtype
    interpreter: bool
    capability: tuple[int, int] | None
    tensor_cores: bool
    name: str

    @property
    def is_gpu(self) -> bool:
        return self.device.type == "cuda"

    def size(self, cpu, gpu):
        """A problem size that fits: ``cpu`` under the interpreter, ``gpu`` on a real GPU."""
        return gpu if self.is_gpu else cpu

    def describe(self) -> str:
        """What runs where, in a few lines for a chapter's set-up cell."""
        if not self.is_gpu:
            return ("Device: CPU. Triton kernels run in the Triton interpreter (same code, no GPU),\n"
                    "in float32, at small sizes; timings show the algorithms' shape, not GPU speed.")
        cc = "{}.{}".format(*self.capability)
        lines = [f"Device: {self.name} (compute capability {cc}). Tensors live on the GPU;"
                 f" kernels run in {str(self.dtype).replace('torch.', '')}, compiled."]
        if not self.tensor_cores:
            lines.append("Below compute capability 8.0 (e.g. Colab's T4) Triton has no tensor-core tl.dot and no "
                         "bfloat16:\nflash_attention falls back to PyTorch's tiled attention, the models use SDPA, "
                         "and the SSM kernels run in float16.")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def device_policy() -> DevicePolicy:
    """The one device decision every chapter and GPU test builds its tensors through.

    CUDA when present (and ``TRITON_INTERPRET`` is not forced on), else the CPU with the Triton
    interpreter. ``$EFFSMALL_ASSUME_CC`` overrides the compute capability the decision sees.
    """
    if cuda_available() and not interpreting():
        cc = compute_capability(torch.cuda.current_device())
        tc = cc >= (8, 0)
        name = os.environ.get("EFFSMALL_DEVICE_NAME") or torch.cuda.get_device_name()
        return DevicePolicy(torch.device("cuda"), torch.bfloat16 if tc else torch.float16, False, cc, tc, name)
    return DevicePolicy(torch.device("cpu"), torch.float32, interpreting(), None, False, "CPU")


def set_ci_threads() -> None:
    """One PyTorch thread per process when ``$CI`` is set (CI runs two notebooks side by side on
    two cores), never otherwise: a reader's laptop keeps all its cores."""
    if os.environ.get("CI"):
        torch.set_num_threads(1)


def cache_dir():
    """Where the package caches what it builds (tokenizers, trained weights, flash stores).

    ``$EFFSMALL_CACHE`` if set, else ``~/.cache/effsmall``; created on first use.
    """
    from pathlib import Path

    path = Path(os.environ.get("EFFSMALL_CACHE") or Path.home() / ".cache" / "effsmall")
    path.mkdir(parents=True, exist_ok=True)
    return path
