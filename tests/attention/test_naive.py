"""naive_attention against torch SDPA (float64), masks, GQA. Rows that see no key, large logits
and bad input: tests/attention/test_contract.py, over every rung."""
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import attention_mask, naive_attention


def _rand(B, Hq, Hk, Nq, Nk, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hk, Nk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hk, Nk, D, generator=g, dtype=dtype)
    return q, k, v


def _sdpa(q, k, v, mask, scale=None):
    """SDPA reference with GQA by repetition; fully masked rows zeroed (SDPA gives NaN there)."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.where(mask.any(-1)[:, None], o, torch.zeros_like(o)).nan_to_num(0.0)


@given(B=st.integers(1, 2), Hk=st.integers(1, 2), rep=st.sampled_from([1, 2, 3]),
       Nq=st.integers(1, 19), Nk=st.integers(1, 19), D=st.sampled_from([1, 4, 8]),
       causal=st.booleans(),
       window=st.one_of(st.none(), st.tuples(st.integers(-1, 6), st.integers(-1, 6))))
def test_equals_sdpa_float64(B, Hk, rep, Nq, Nk, D, causal, window):
    q, k, v = _rand(B, Hk * rep, Hk, Nq, Nk, D)
    mask = attention_mask(Nq, Nk, causal, window)
    out = naive_attention(q, k, v, causal=causal, window=window)
    ref = _sdpa(q, k, v, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_mask_bottom_right_causal():
    m = attention_mask(2, 4, causal=True)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    m = attention_mask(4, 2, causal=True)  # first two queries see no key
    assert m.tolist() == [[False, False], [False, False], [True, False], [True, True]]
    assert attention_mask(3, 3, causal=True).equal(torch.ones(3, 3, dtype=torch.bool).tril())


def test_mask_window():
    m = attention_mask(5, 5, window=(1, 0))
    ref = torch.ones(5, 5, dtype=torch.bool).tril() & ~torch.ones(5, 5, dtype=torch.bool).tril(-2)
    assert m.equal(ref)
    assert attention_mask(4, 4, window=(None, None)).all()
    assert attention_mask(4, 4, window=(-1, 0)).equal(attention_mask(4, 4, causal=True))


def test_no_keys():
    q, k, v = _rand(1, 1, 1, 3, 0, 4)
    assert torch.equal(naive_attention(q, k, v), torch.zeros_like(q))


def test_scale_and_half_precision():
    q, k, v = _rand(2, 4, 2, 11, 13, 16)
    ref = naive_attention(q, k, v, causal=True, scale=0.3)
    torch.testing.assert_close(ref, _sdpa(q, k, v, attention_mask(11, 13, True), scale=0.3))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        out = naive_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, scale=0.3)
        assert out.dtype == dtype
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_gradcheck():
    q, k, v = _rand(1, 2, 1, 4, 5, 3)
    args = tuple(t.requires_grad_(True) for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: naive_attention(a, b, c, causal=True, window=(2, None)), args)
