"""Lazy exports: a subpackage lists ``name -> module`` and imports a module only when used.

This keeps ``import effsmall.attention`` cheap (no Triton compilation) and lets each ladder
rung live in its own module.

Several rungs are a module and a function of the same name (``ssm/ssd_chunked.py`` defines
``ssd_chunked``). Python's import system binds a submodule as an attribute of its package
the first time anything imports it, which would make ``from effsmall.ssm import ssd_chunked``
return the *module* or the *function* depending on import order. :func:`install` makes the
package's exported **function always win**: the package attribute is never rebound to the
submodule. Reach a module itself with ``from effsmall.ssm.ssd_chunked import ...`` or
``importlib.import_module("effsmall.ssm.ssd_chunked")``.

Without the optional ``triton`` package the Triton-backed names raise ``AttributeError`` (saying
so), which ``help()`` and ``inspect.getmembers`` skip: the rest of a subpackage stays usable.
"""
from __future__ import annotations

import importlib
import sys
import types


class _LazyPackage(types.ModuleType):
    """A package module whose exported names are never shadowed by same-named submodules."""

    def __setattr__(self, name, value):
        table = self.__dict__.get("_EXPORTS", {})
        if isinstance(value, types.ModuleType) and table.get(name) == name:
            return  # the import system binding the submodule: keep the function reachable instead
        super().__setattr__(name, value)


def install(package: str, table: dict[str, str]) -> None:
    """Give ``package`` lazy ``__getattr__``/``__dir__`` for ``table`` (export name -> module)."""
    mod = sys.modules[package]

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
            mod.__dict__[name] = value  # cache (bypasses the submodule guard on purpose)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(table) | set(mod.__dict__))

    mod.__dict__["_EXPORTS"] = table
    mod.__dict__["__getattr__"] = __getattr__
    mod.__dict__["__dir__"] = __dir__
    mod.__class__ = _LazyPackage

