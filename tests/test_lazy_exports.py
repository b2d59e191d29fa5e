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
    code = ("import effsmall.ssm.ssd_chunkwise, effsmall.attention.softmax\n"
            "from effsmall.ssm import ssd_chunked\nfrom effsmall.attention import online_softmax\n"
            "import inspect\nassert inspect.isfunction(ssd_chunked) and inspect.isfunction(online_softmax)\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("pkg", sorted(PACKAGES))
def test_no_module_shares_an_exported_name_and_import_as_gives_the_module(pkg):
    mod = PACKAGES[pkg]
    for name, module in mod._EXPORTS.items():
        assert name != module, f"{pkg}.{module} is named like the {name} it exports"
    for module in set(mod._EXPORTS.values()):
        try:
            sub = importlib.import_module(f"{pkg}.{module}")
        except ImportError:  # pragma: no cover - an optional dependency
            continue
        assert inspect.ismodule(sub)


def test_import_as_gives_the_module():
    import effsmall.ssm.ssd_chunkwise as m
    assert inspect.ismodule(m) and inspect.isfunction(m.ssd_chunked)


def test_unknown_name_is_attribute_error():
    with pytest.raises(AttributeError, match="no attribute"):
        effsmall.ssm.not_a_thing


def test_help_of_every_subpackage_works_without_triton():
    """With the optional triton missing, help() renders every subpackage, the torch-only rungs run
    and a Triton-backed name says what it needs."""
    import subprocess
    import sys

    code = """
import sys, pydoc, importlib
sys.modules["triton"] = None                       # as if triton were not installed
import torch
for sub in ["attention", "ssm", "models", "compress", "data", "dist", "offload", "widgets", "bench"]:
    pydoc.render_doc(importlib.import_module("effsmall." + sub))
from effsmall.attention import naive_attention, tiled_attention
from effsmall.ssm import ssd_chunked
q = torch.randn(1, 2, 5, 8)
assert torch.allclose(naive_attention(q, q, q), tiled_attention(q, q, q, block_m=2, block_n=2), atol=1e-6)
import effsmall.attention
try:
    effsmall.attention.flash_attention
except AttributeError as e:
    assert "needs the optional package triton" in str(e), e
else:
    raise AssertionError("flash_attention reached without triton")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
