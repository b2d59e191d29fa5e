"""The attention tests check correctness on small, odd shapes: on a GPU they launch the kernels'
one safe configuration instead of autotuning every new shape (compiling every candidate
configuration cost minutes per shape). ``tests/test_kernels_gpu.py`` runs the autotuned
configurations at realistic sizes."""
import pytest

from effsmall.testing import untuned_kernels


@pytest.fixture(autouse=True)
def _safe_kernel_config():
    with untuned_kernels():
        yield
