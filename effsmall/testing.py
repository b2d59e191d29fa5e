"""Helpers for tests that run on every device: the same test checks the compiled kernel on a
GPU and the interpreted one on a CPU.

The device comes from :func:`effsmall.runtime.device_policy` (CUDA when visible, else the CPU
with the Triton interpreter), so a test suite run with CUDA visible exercises the real
kernels — never a silent CPU fallback.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from effsmall.runtime import device_policy

__all__ = ["DEVICE", "on_device", "to_device", "untuned_kernels"]

DEVICE = device_policy().device


def to_device(obj, device):
    """``obj`` with every tensor inside (tuples, lists, dicts) moved to ``device`` (differentiably)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(x, device) for x in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def _first_tensor(args, kwargs):
    for x in (*args, *kwargs.values()):
        if isinstance(x, torch.Tensor):
            return x
    return None


def on_device(fn, device=None):
    """``fn`` run on ``device`` (default :data:`DEVICE`): tensor arguments are moved there and
    tensor results moved back to the device of the first tensor argument. The moves are
    differentiable, so a test can build CPU inputs, call the kernel on the GPU and compare
    gradients on the CPU. On a CPU-only machine this is ``fn`` itself."""
    device = torch.device(device or DEVICE)
    if device.type == "cpu":
        return fn

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        first = _first_tensor(args, kwargs)
        back = first.device if first is not None else torch.device("cpu")
        out = fn(*to_device(args, device), **to_device(kwargs, device))
        return to_device(out, back)
    return wrapper


def _tunable_kernels():
    """The public kernel functions that take ``autotune`` (imported on first use: they need Triton)."""
    from effsmall.attention import decode, flash_triton, varlen

    return (flash_triton.flash_attention, flash_triton.flash_attention_forward,
            flash_triton.flash_attention_backward, varlen.flash_attention_varlen, decode.flash_decode)


@contextlib.contextmanager
def untuned_kernels():
    """Inside the block the kernels' ``autotune`` parameter defaults to False: they launch one
    safe configuration instead of timing every candidate for each new shape (which would cost
    minutes across a test suite's many small, odd shapes). Callers that pass ``autotune``
    explicitly are not affected; the defaults are restored on exit."""
    fns = _tunable_kernels()
    saved = [fn.__kwdefaults__["autotune"] for fn in fns]
    try:
        for fn in fns:
            fn.__kwdefaults__["autotune"] = False
        yield
    finally:
        for fn, value in zip(fns, saved):
            fn.__kwdefaults__["autotune"] = value


def tiny_lm_config(arch: str, **kw):
    """The tests' small language model of ``arch``: every code path of the three LMs (grouped
    query heads 4/2, a hybrid with both layer kinds, Mamba-2 chunks shorter than the prompts) at
    interpreter speed; ``kw`` overrides any field."""
    from effsmall.models import LMConfig

    cfg = dict(vocab_size=61, d_model=32, n_layers=3, arch=arch, n_heads=4, n_kv_heads=2, d_state=8, headdim=16,
               chunk_size=8, attn_every=2)
    cfg.update(kw)
    return LMConfig(**cfg)
