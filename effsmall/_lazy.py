"""Lazy exports: a subpackage lists ``name -> module`` and imports a module only when used.

This keeps ``import effsmall.attention`` cheap (no Triton compilation) and lets each ladder
rung live in its own module.
"""
from __future__ import annotations

import importlib


def lazy_exports(package: str, table: dict[str, str]):
    def __getattr__(name: str):
        if name in table:
            module = importlib.import_module(f"{package}.{table[name]}")
            return getattr(module, name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(table)

    return __getattr__, __dir__
