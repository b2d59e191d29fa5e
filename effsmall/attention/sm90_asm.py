"""Compile the Hopper FlashAttention forward for an sm90 GPU on a machine without one, and read
what the compiler made of it.

Triton compiles in stages: the kernel's Python → TTIR (Triton's IR) → TTGIR (layouts, software
pipelining, warp specialisation) → LLVM IR → PTX (NVIDIA's virtual instruction set) → a cubin
(``ptxas``). Only *launching* needs a GPU: given a target — ``GPUTarget("cuda", 90, 32)``, CUDA
compute capability 9.0 with 32 threads per warp — ``triton.compile`` runs every stage on the
CPU. So a reader without an H100 can still check which instructions a claim rests on: a tensor
descriptor load becomes a TMA bulk copy (``cp.async.bulk.tensor``), ``tl.dot`` a warp-group
matrix product (``wgmma.mma_async``), warp specialisation a register hand-over between warp
groups (``setmaxnreg``).

Under the Triton interpreter (``TRITON_INTERPRET=1``, which ``import effsmall`` sets on a machine
without CUDA) ``@triton.jit`` functions are interpreted, not compilable, so
:func:`hopper_forward_asm` then compiles in a fresh Python process with the interpreter off.
:func:`aot_compile` binds arguments as a launch would through Triton's internal API (Triton 3.6:
``create_function_from_signature``, ``JITFunction._pack_args``); ``tools/hopper_probe.py`` uses
it to fill Triton's cache ahead of time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from effsmall.runtime import interpreting

__all__ = ["aot_compile", "hopper_forward_asm", "portable_forward_asm", "instructions"]


def aot_compile(kernel, args, kwargs, target):
    """Compile ``kernel`` for ``target`` exactly as ``kernel[grid](*args, **kwargs)`` would (the
    same binder, options and cache key), without a GPU. Returns Triton's CompiledKernel, whose
    ``asm`` dict holds every stage's text (``"ttgir"``, ``"ptx"``, …)."""
    from triton import knobs
    from triton.compiler import ASTSource, make_backend
    from triton.compiler import compile as tcompile
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(target)
    kw = dict(kwargs)
    kw["debug"] = kw.get("debug", kernel.debug) or knobs.runtime.debug
    kw["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kw)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kw, bound_args, specialization, options)
    return tcompile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def _checked_inputs(D: int, causal: bool, N: int):
    """``(q, k, v, scale, lo, hi)``: bf16 (1, 2, N, D) placeholders (never read) and their checked band."""
    from effsmall.attention.flash_triton import check_flash_inputs

    q, k, v = (torch.empty(1, 2, N, D, dtype=torch.bfloat16) for _ in range(3))  # (B, H, N, D)
    return (q, k, v, *check_flash_inputs(q, k, v, causal=causal))


def _compile_report(kernel, args, kwargs, arch: int) -> dict:
    """Compile for ``sm{arch}`` and keep the texts and resources the book reads."""
    from triton.backends.compiler import GPUTarget

    ck = aot_compile(kernel, args, kwargs, GPUTarget("cuda", arch, 32))
    return dict(ptx=ck.asm["ptx"], ttgir=ck.asm["ttgir"], num_warps=ck.metadata.num_warps, shared=ck.metadata.shared)


def _forward_asm_here(D: int, causal: bool, N: int, arch: int) -> dict:
    """Compile ``DISPATCH_PLANS[(D, causal)]``'s forward in this process (interpreter off)."""
    from effsmall.attention import flash_hopper as fh

    q, k, v, scale, lo, hi = _checked_inputs(D, causal, N)
    fl = fh.forward_launch(q, k, v, lo, hi, scale, fh.DISPATCH_PLANS[(D, causal)])
    return _compile_report(fh._hopper_fwd_kernel, fl.args,
                           dict(fl.kwargs, num_warps=fl.config.num_warps, num_stages=fl.config.num_stages), arch)


def _portable_forward_asm_here(D: int, causal: bool, N: int, arch: int) -> dict:
    """Compile flash_triton's forward (one of its autotuning candidates: 128 × 64 tiles, 4 warps,
    3 stages) in this process (interpreter off)."""
    from effsmall.attention import flash_triton as ft

    q, k, v, scale, lo, hi = _checked_inputs(D, causal, N)
    _, _, args, consts, _, _ = ft.forward_args(q, k, v, lo, hi, scale)
    return _compile_report(ft._fwd_kernel, args,
                           dict(consts, BLOCK_M=128, BLOCK_N=64, num_warps=4, num_ctas=1, num_stages=3), arch)


_HERE = {"hopper": _forward_asm_here, "portable": _portable_forward_asm_here}


def _asm(kind: str, D: int, causal: bool, N: int, arch: int) -> dict:
    """Compile here, or under the interpreter in a fresh process with it off."""
    if not interpreting():
        return _HERE[kind](D, causal, N, arch)
    root = str(Path(__file__).resolve().parents[2])     # the directory that holds effsmall/
    env = dict(os.environ, TRITON_INTERPRET="0", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-m", "effsmall.attention.sm90_asm", kind, str(D), str(int(causal)), str(N),
                          str(arch)], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"compiling for sm{arch} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def portable_forward_asm(D: int = 128, causal: bool = False, *, N: int = 4096, arch: int = 90) -> dict:
    """The portable forward (:mod:`effsmall.attention.flash_triton`) compiled for compute
    capability ``arch`` on any machine, as :func:`hopper_forward_asm` does for the Hopper one."""
    return _asm("portable", D, causal, N, arch)


def hopper_forward_asm(D: int = 128, causal: bool = False, *, N: int = 4096, arch: int = 90) -> dict:
    """The forward :func:`~effsmall.attention.flash_attention` runs on a Hopper GPU for this
    (D, causal) group, compiled for compute capability ``arch`` on any machine: a dict with the
    ``"ptx"`` and ``"ttgir"`` texts and the compiled kernel's ``"num_warps"`` (after warp
    specialisation) and ``"shared"`` memory bytes. Takes a few seconds (a subprocess under the
    interpreter)."""
    return _asm("hopper", D, causal, N, arch)


def instructions(ptx: str, prefix: str) -> list[str]:
    """The distinct PTX instructions (opcode with its modifiers, no operands) that start with
    ``prefix``, in order of first appearance: ``instructions(ptx, "wgmma")``."""
    seen = []
    for line in ptx.splitlines():
        words = line.split()
        if words and words[0].startswith("@"):          # a predicate: @%p1 cp.async...
            words = words[1:]
        op = words[0].rstrip(";") if words else ""
        if op.startswith(prefix) and op not in seen:
            seen.append(op)
    return seen


if __name__ == "__main__":   # python -m effsmall.attention.sm90_asm hopper|portable D causal N arch (JSON on stdout)
    D_, causal_, N_, arch_ = (int(a) for a in sys.argv[2:6])
    print(json.dumps(_HERE[sys.argv[1]](D_, bool(causal_), N_, arch_)))
