"""Exported functions are reachable whatever was imported first (a module of the same name never wins)."""
import importlib
import inspect
import subprocess
import sys

import pytest

import effsmall.attention
import effsmall.ssm

PACKAGES = {name: importlib.import_module(name) for name in (
    "effsmall.attention", "effsmall.ssm", "effsmall.offload", "effsmall.models", "effsmall.data", "effsmall.compress",
    "effsmall.dist")}


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_every_export_resolves_to_its_object(pkg):
    mod = PACKAGES[pkg]
    for name, module in mod._EXPORTS.items():
        obj = getattr(mod, name)
        assert not inspect.ismodule(obj), f"{pkg}.{name} is a module, expected the function/class"
        assert obj is getattr(importlib.import_module(f"{pkg}.{module}"), name)


def test_submodule_import_first_does_not_shadow_function():
    code = ("import effsmall.ssm.ssd_chunked, effsmall.attention.online_softmax\n"
            "from effsmall.ssm import ssd_chunked\nfrom effsmall.attention import online_softmax\n"
            "import inspect\nassert inspect.isfunction(ssd_chunked) and inspect.isfunction(online_softmax)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_unknown_name_is_attribute_error():
    with pytest.raises(AttributeError, match="no attribute"):
        effsmall.ssm.not_a_thing
