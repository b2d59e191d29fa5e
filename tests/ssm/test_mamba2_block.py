"""Mamba2Block: the recurrent step equals the parallel forward; gradients; bad input."""
import pytest
import torch

from effsmall.ssm import Mamba2Block
from effsmall.ssm.mamba2_block import GatedRMSNorm
from effsmall.testing import on_device

f64 = torch.float64


def block(dtype=f64, **kw):
    torch.manual_seed(0)
    cfg = dict(d_model=16, d_state=8, headdim=8, ngroups=2, chunk_size=4, dtype=dtype)
    cfg.update(kw)
    return Mamba2Block(**cfg)


@pytest.mark.parametrize("l,prefill", [(1, 0), (9, 0), (11, 5), (7, 1), (3, 2), (12, 8)])
def test_step_equals_forward(l, prefill):
    m = block()
    u = torch.randn(2, l, 16, dtype=f64)
    y = m(u)
    if prefill:
        y_pre, cache = m(u[:, :prefill], return_cache=True)
        outs = [y_pre]
    else:
        cache, outs = m.allocate_cache(2), []
    for t in range(prefill, l):
        o, cache = m.step(u[:, t], cache)
        outs.append(o[:, None])
    torch.testing.assert_close(torch.cat(outs, 1), y, rtol=1e-10, atol=1e-10)
    _, full_cache = m(u, return_cache=True)
    torch.testing.assert_close(cache.ssm_state, full_cache.ssm_state, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cache.conv_state, full_cache.conv_state)


def test_fp32_and_one_group():
    m = block(dtype=torch.float32, ngroups=1, d_conv=3)
    u = torch.randn(1, 10, 16)
    y = m(u)
    cache, outs = m.allocate_cache(1), []
    for t in range(10):
        o, cache = m.step(u[:, t], cache)
        outs.append(o)
    torch.testing.assert_close(torch.stack(outs, 1), y, rtol=1e-5, atol=1e-5)


def test_gated_rmsnorm_reference():
    norm = GatedRMSNorm(8, group_size=4, dtype=f64)
    y, z = torch.randn(3, 8, dtype=f64), torch.randn(3, 8, dtype=f64)
    x = (y * torch.nn.functional.silu(z)).view(3, 2, 4)
    ref = (x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-5)).view(3, 8)
    torch.testing.assert_close(norm(y, z), ref)


def test_backward_runs():
    m = block(d_model=8, headdim=4, d_state=4)
    u = torch.randn(1, 6, 8, dtype=f64, requires_grad=True)
    m(u).sum().backward()
    assert torch.isfinite(u.grad).all() and torch.isfinite(m.A_log.grad).all()
    assert m.dt_bias.grad is not None and m.D.grad is not None


def test_bad_inputs():
    with pytest.raises(ValueError, match="headdim"):
        Mamba2Block(d_model=10, headdim=8)
    with pytest.raises(ValueError, match="ngroups"):
        Mamba2Block(d_model=16, headdim=8, ngroups=3)
    m = block()
    with pytest.raises(ValueError, match="u"):
        m(torch.randn(1, 4, 15, dtype=f64))
    with pytest.raises(TypeError, match="u"):
        m(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match="conv_state"):
        m.step(torch.randn(3, 16, dtype=f64), m.allocate_cache(2))


def test_triton_ssd_path_matches(monkeypatch):
    """The CUDA path (Triton SSD) gives the CPU path's outputs (here under the interpreter)."""
    triton_mod = pytest.importorskip("effsmall.ssm.ssd_kernels")
    import effsmall.ssm.mamba2_block as mb

    m = block(dtype=torch.float32)
    u = torch.randn(1, 9, 16)
    y_ref = m(u)
    monkeypatch.setattr(mb, "_ssd_fn", lambda device, dtype: on_device(triton_mod.ssd_triton))
    torch.testing.assert_close(m(u), y_ref, rtol=1e-4, atol=1e-5)
