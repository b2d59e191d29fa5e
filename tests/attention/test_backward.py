"""tiled_attention_backward equals autograd through naive_attention."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import naive_attention, tiled_attention, tiled_attention_backward


def _grads(q, k, v, do, **kw):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    o = naive_attention(q, k, v, **kw)
    return torch.autograd.grad(o, (q, k, v), do)


@given(Hk=st.integers(1, 2), rep=st.sampled_from([1, 2]), Nq=st.integers(1, 33), Nk=st.integers(1, 33),
       causal=st.booleans(), block_m=st.integers(1, 16), block_n=st.integers(1, 16),
       window=st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(-1, 6))))
def test_equals_autograd(Hk, rep, Nq, Nk, causal, block_m, block_n, window):
    g = torch.Generator().manual_seed(Nq * 37 + Nk)
    q = torch.randn(2, Hk * rep, Nq, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, Hk, Nk, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, Hk, Nk, 8, generator=g, dtype=torch.float64)
    do = torch.randn(2, Hk * rep, Nq, 8, generator=g, dtype=torch.float64)
    o, lse = tiled_attention(q, k, v, causal=causal, window=window, block_m=block_m, block_n=block_n, return_lse=True)
    got = tiled_attention_backward(q, k, v, o, do, lse, causal=causal, window=window, block_m=block_m, block_n=block_n)
    ref = _grads(q, k, v, do, causal=causal, window=window)
    for name, a, b in zip("qkv", got, ref):
        assert a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"d{name}")


def test_float32_large_logits_and_scale():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 4, 45, 16, generator=g) * 6
    k = torch.randn(1, 2, 45, 16, generator=g) * 6
    v = torch.randn(1, 2, 45, 16, generator=g)
    do = torch.randn(1, 4, 45, 16, generator=g)
    o, lse = tiled_attention(q, k, v, causal=True, scale=0.2, return_lse=True, block_m=16, block_n=32)
    got = tiled_attention_backward(q, k, v, o, do, lse, causal=True, scale=0.2, block_m=16, block_n=32)
    ref = _grads(q.double(), k.double(), v.double(), do.double(), causal=True, scale=0.2)
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


def test_bad_input():
    q = k = v = torch.randn(1, 1, 4, 8)
    o, lse = tiled_attention(q, k, v, return_lse=True)
    with pytest.raises(ValueError, match="lse"):
        tiled_attention_backward(q, k, v, o, o, lse[..., :2])
    with pytest.raises(ValueError, match="do"):
        tiled_attention_backward(q, k, v, o, o[:, :, :2], lse)
    with pytest.raises(TypeError, match="o"):
        tiled_attention_backward(q, k, v, None, o, lse)
