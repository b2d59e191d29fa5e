"""Lazy exports: a subpackage lists ``name -> module`` and imports a module only when used.

This keeps ``import effsmall.attention`` cheap (no Triton compilation) and lets each ladder
rung live in its own module. No module bears the name of a function it exports, so
``from effsmall.ssm import ssd_chunked`` is always the function and
``import effsmall.ssm.ssd_chunkwise as m`` always the module.

Without the optional ``triton`` package the Triton-backed names raise ``AttributeError`` (saying
so), which ``help()`` and ``inspect.getmembers`` skip: the rest of a subpackage stays usable.
"""
from __future__ import annotations

import importlib
import sys


def install(package: str, table: dict[str, str]) -> None:
    """Give ``package`` lazy ``__getattr__``/``__dir__`` for ``table`` (export name -> module)."""
    mod = sys.modules[package]
    clash = sorted(name for name, module in table.items() if name == module)
    if clash:
        raise ValueError(f"{package}: exports named like their module would be shadowed by it: {clash}")

    def __getattr__(name: str):
        if name in table:
            try:
                module = importlib.import_module(f"{package}.{table[name]}")
            except ImportError as e:  # the optional Triton missing: the torch-only rungs still work
                if (e.name or "").split(".")[0] != "triton":
                    raise
                raise AttributeError(f"{package}.{name} needs the optional package triton, which is "
                                     f"not installed ({e})") from e
            value = getattr(module, name)
            mod.__dict__[name] = value  # cache
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(table) | set(mod.__dict__))

    mod.__dict__["_EXPORTS"] = table
    mod.__dict__["__getattr__"] = __getattr__
    mod.__dict__["__dir__"] = __dir__
