"""launch_fitting: the teaching kernels fall back to smaller tiles when a GPU lacks the shared
memory for their defaults (Triton raises OutOfResources at launch, before anything runs)."""
import pytest
import torch
from triton.runtime.errors import OutOfResources

from effsmall.launch import launch_fitting, shrinking


def test_shrinking_keeps_powers_of_two_and_ends_small():
    c = shrinking(128, 64, 3)
    assert c[0] == (128, 64, 3) and c[1] == (128, 64, 1) and c[-1] == (16, 16, 1)
    assert all(m & (m - 1) == 0 and n & (n - 1) == 0 and s == 1 for m, n, s in c[1:])
    assert shrinking(16, 16, 1) == [(16, 16, 1)]


def test_launch_fitting_takes_the_first_that_fits():
    seen = []

    def launch(block_m, num_stages):
        seen.append((block_m, num_stages))
        if block_m * num_stages > 64:
            raise OutOfResources(block_m * num_stages * 1024, 64 * 1024, "shared memory")

    cfg = launch_fitting(launch, [dict(block_m=128, num_stages=3), dict(block_m=128, num_stages=1),
                                  dict(block_m=64, num_stages=1)], "demo")
    assert cfg == dict(block_m=64, num_stages=1) and len(seen) == 3


def test_launch_fitting_names_the_call_when_nothing_fits():
    def launch(**cfg):
        raise OutOfResources(300_000, 232_448, "shared memory")

    with pytest.raises(ValueError, match="demo kernel .* does not fit"):
        launch_fitting(launch, [dict(block_m=64)], "demo kernel (D=256)")


def test_minimal_attention_falls_back_on_out_of_resources(monkeypatch):
    import effsmall.attention.flash_minimal as fm
    from effsmall.attention import naive_attention
    from effsmall.testing import on_device

    real = fm._fa2_minimal_kernel
    configs = []

    class Proxy:   # a GPU whose shared memory only fits one-stage 16 x 16 tiles
        def __getitem__(self, grid):
            def run(*args, **kw):
                configs.append((kw["BLOCK_M"], kw["BLOCK_N"], kw["num_stages"]))
                if kw["BLOCK_M"] > 16 or kw["num_stages"] > 1:
                    raise OutOfResources(1 << 20, 1 << 16, "shared memory")
                return real[grid](*args, **kw)
            return run

    monkeypatch.setattr(fm, "_fa2_minimal_kernel", Proxy())
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    o = on_device(fm.flash_attention_minimal)(q, k, v, block_m=32, block_n=16, num_stages=2)
    assert configs[0][:2] == (32, 16) and configs[-1] == (16, 16, 1)
    assert (o - naive_attention(q, k, v)).abs().max().item() < 5e-3
