"""Launching a teaching kernel with tile sizes that fit the GPU at hand.

The minimal kernels of chapters 7 and 11 are not autotuned: they have one default launch
configuration. Shared memory per SM differs by a factor of two between GPUs (about 99 KB on
consumer Ampere/Ada cards, 163 KB on an A100, 227 KB on an H100/H200), and fp32 tiles take
twice the bytes of bf16 ones, so a default that suits bf16 on an H100 may not fit elsewhere.
:func:`launch_fitting` tries the configurations in order and moves on when Triton reports that
one needs more shared memory or registers than the device has (``OutOfResources``, raised at
launch, before anything runs). If none fits, the caller gets a ValueError that names the sizes.
"""
from __future__ import annotations

from typing import Callable, Iterable

from triton.runtime.errors import OutOfResources

__all__ = ["launch_fitting", "shrinking"]


def shrinking(block_m: int, block_n: int, num_stages: int, smallest: int = 16) -> list[tuple[int, int, int]]:
    """``(block_m, block_n, num_stages)`` candidates: as given, then one pipeline stage, then the
    blocks halved in turn (a power-of-two block that divides N still does when halved)."""
    out = [(block_m, block_n, num_stages)]
    if num_stages > 1:
        out.append((block_m, block_n, 1))
    while block_m > smallest or block_n > smallest:
        if block_m >= block_n and block_m > smallest:
            block_m //= 2
        else:
            block_n //= 2
        out.append((block_m, block_n, 1))
    return out


def launch_fitting(launch: Callable[..., object], configs: Iterable[dict], what: str):
    """Call ``launch(**config)`` for each config until one fits the device; return the config used.

    ``launch`` launches the kernel (``kernel[grid](...)``); ``what`` names the call and the sizes
    for the error message when no configuration fits."""
    tried = []
    for cfg in configs:
        try:
            launch(**cfg)
            return cfg
        except OutOfResources as e:
            tried.append(f"{cfg}: {e.name} {e.required} > {e.limit}")
    raise ValueError(f"{what} does not fit this GPU with any of the tried tile sizes ("
                     + "; ".join(tried) + "): use smaller inputs' head/state dims or a half-precision dtype")
