"""The attention tests check correctness on small, odd shapes: on a GPU they launch the kernels'
one safe configuration instead of autotuning every new shape (compiling every candidate
configuration cost minutes per shape). ``tests/test_kernels_gpu.py`` runs the autotuned
configurations at realistic sizes."""
import pytest


@pytest.fixture(autouse=True)
def _safe_kernel_config(monkeypatch):
    import effsmall.attention.flash_triton as ft

    monkeypatch.setattr(ft, "AUTOTUNE", False)
