"""tiled_attention (both loop orders) equals naive_attention; lse; block skipping; bad input."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import naive_attention, tiled_attention
from effsmall.attention.tiled import HBMCounter, kv_block_range
from effsmall.attention.naive import attention_mask


def _rand(B, Hq, Hk, Nq, Nk, D, dtype=torch.float64, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=torch.float64) * scale
    k = torch.randn(B, Hk, Nk, D, generator=g, dtype=torch.float64) * scale
    v = torch.randn(B, Hk, Nk, D, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _lse_ref(q, k, causal, window, scale=None):
    rep = q.shape[1] // k.shape[1]
    S = (scale or q.shape[-1] ** -0.5) * q @ k.repeat_interleave(rep, 1).transpose(-1, -2)
    S = S.masked_fill(~attention_mask(q.shape[2], k.shape[2], causal, window), float("-inf"))
    return torch.logsumexp(S, -1)


@given(Hk=st.integers(1, 2), rep=st.sampled_from([1, 3]), Nq=st.integers(1, 40), Nk=st.integers(1, 40),
       D=st.sampled_from([4, 8]), causal=st.booleans(), order=st.sampled_from(["fa1", "fa2"]),
       block_m=st.integers(1, 17), block_n=st.integers(1, 17),
       window=st.one_of(st.none(), st.tuples(st.integers(-1, 8), st.integers(-1, 8))))
def test_equals_naive(Hk, rep, Nq, Nk, D, causal, order, block_m, block_n, window):
    q, k, v = _rand(2, Hk * rep, Hk, Nq, Nk, D, seed=Nq * 41 + Nk)
    o, lse = tiled_attention(q, k, v, causal=causal, window=window, order=order,
                             block_m=block_m, block_n=block_n, return_lse=True)
    ref = naive_attention(q, k, v, causal=causal, window=window)
    assert o.shape == ref.shape and lse.shape == q.shape[:3]
    torch.testing.assert_close(o, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, _lse_ref(q, k, causal, window), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["fa1", "fa2"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 1e-2)])
def test_dtypes_and_large_logits(order, dtype, tol):
    q, k, v = _rand(2, 4, 1, 37, 53, 16, dtype=torch.float64, scale=12.0)  # logits up to ~1e3..1e4
    ref = naive_attention(q, k, v, causal=True)
    o, lse = tiled_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True, order=order,
                             block_m=16, block_n=16, return_lse=True)
    assert o.dtype == dtype and lse.dtype == torch.float32 and torch.isfinite(o).all()
    ref_lowp = naive_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    torch.testing.assert_close(o.double(), ref_lowp.double(), rtol=tol, atol=tol)
    if dtype == torch.float32:
        torch.testing.assert_close(o.double(), ref, rtol=1e-4, atol=1e-4)


def test_causal_block_skipping_counted():
    q, k, v = _rand(1, 1, 1, 64, 64, 8)
    for order in ("fa1", "fa2"):
        c = HBMCounter()
        tiled_attention(q, k, v, causal=True, block_m=16, block_n=16, order=order, counter=c)
        assert c.computed == 10 and c.skipped == 6  # lower triangle of a 4x4 tile grid
        c2 = HBMCounter()
        tiled_attention(q, k, v, causal=False, block_m=16, block_n=16, order=order, counter=c2)
        assert c2.computed == 16 and c2.skipped == 0 and c2.total > c.total


def test_kv_block_range_matches_mask():
    for Nq, Nk, bm, bn, causal, window in [(10, 13, 3, 4, True, None), (13, 10, 4, 3, True, (2, None)),
                                           (16, 16, 4, 4, False, (3, 1)), (5, 5, 2, 2, False, None)]:
        jlo, jhi = kv_block_range(Nq, Nk, bm, bn, causal, window)
        mask = attention_mask(Nq, Nk, causal, window)
        for i in range(math.ceil(Nq / bm)):
            for j in range(math.ceil(Nk / bn)):
                visible = bool(mask[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn].any())
                assert visible == (int(jlo[i]) <= j <= int(jhi[i]))


def test_bad_input():
    q, k, v = _rand(1, 2, 1, 4, 4, 8)
    with pytest.raises(ValueError, match="order"):
        tiled_attention(q, k, v, order="fa3")
    with pytest.raises(ValueError, match="block_m"):
        tiled_attention(q, k, v, block_m=0)
    with pytest.raises(ValueError, match="block_n"):
        tiled_attention(q, k, v, block_n=2.5)
