"""The fused Triton selective scan equals the torch reference (interpreter on CPU, compiled on CUDA)."""
import pytest
import torch

from effsmall.runtime import default_device, interpreting
from effsmall.ssm.selective_scan import selective_scan_sequential
from effsmall.ssm.selective_scan_kernel import selective_scan_triton

dev = default_device()


def inputs(b=2, d=4, l=13, n=3, g=None, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    bc = (b, n, l) if g is None else (b, g, n, l)
    t = dict(u=r(b, d, l), delta=r(b, d, l), A=-torch.rand(d, n, generator=gen) * 2,
             B=r(*bc), C=r(*bc), D=r(d), z=r(b, d, l), delta_bias=r(d))
    return {k: v.to(dev, dtype) for k, v in t.items()}


@pytest.mark.parametrize("l,g,block_d,block_l", [(1, None, None, None), (16, 2, None, None),
                                                 (17, 2, 2, 8), (23, None, 4, 16), (9, 4, 1, 4)])
def test_matches_reference(l, g, block_d, block_l):
    x = inputs(l=l, g=g, seed=l)
    y0, h0 = selective_scan_sequential(**x, delta_softplus=True)
    y1, h1 = selective_scan_triton(**x, delta_softplus=True, block_d=block_d, block_l=block_l)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h1, h0, rtol=1e-5, atol=1e-5)


def test_optional_arguments_odd_state_size():
    x = inputs(d=3, n=5, l=10)
    for drop in ("D", "z", "delta_bias"):
        kw = dict(x, **{drop: None})
        y0, h0 = selective_scan_sequential(**kw)
        y1, h1 = selective_scan_triton(**kw)
        torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)


def test_extreme_delta():
    x = inputs(l=12)
    x["delta"] = 40.0 * torch.rand_like(x["delta"])  # softplus linear branch, state wiped
    y0, _ = selective_scan_sequential(**x, delta_softplus=True)
    y1, _ = selective_scan_triton(**x, delta_softplus=True)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-4)


def test_gradients_flow():
    x = inputs(b=1, d=2, l=6, n=2)
    xa = {k: v.clone().requires_grad_() for k, v in x.items()}
    xb = {k: v.clone().requires_grad_() for k, v in x.items()}
    selective_scan_triton(**xa, delta_softplus=True)[0].sum().backward()
    selective_scan_sequential(**xb, delta_softplus=True)[0].sum().backward()
    for k in x:
        torch.testing.assert_close(xa[k].grad, xb[k].grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not interpreting(), reason="device check is for the interpreter")
def test_bad_inputs():
    x = inputs()
    with pytest.raises(TypeError, match="bfloat16"):
        selective_scan_triton(**{k: v.bfloat16() for k, v in x.items()})
    with pytest.raises(ValueError, match="B"):
        selective_scan_triton(**dict(x, B=x["B"][:, :2]))
    with pytest.raises(TypeError, match="u"):
        selective_scan_triton(**dict(x, u=[1.0]))


def test_half_inputs_accumulate_in_fp32():
    x32 = inputs(l=12, seed=5)
    x16 = {k: v.half() for k, v in x32.items()}
    ref = {k: v.float() for k, v in x16.items()}          # the same rounded inputs, in fp32
    y0, h0 = selective_scan_sequential(**ref, delta_softplus=True)
    y1, h1 = selective_scan_triton(**x16, delta_softplus=True)
    assert y1.dtype == torch.float16 and h1.dtype == torch.float32
    torch.testing.assert_close(y1.float(), y0, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(h1, h0, rtol=1e-4, atol=1e-4)
