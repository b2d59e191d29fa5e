"""Softmax three ways equal torch.softmax; the online recurrence holds block by block."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import naive_softmax, online_softmax, safe_softmax
from effsmall.attention.softmax import online_softmax_matmul, online_softmax_stats


@given(rows=st.integers(1, 4), n=st.integers(1, 70), block=st.integers(1, 33), scale=st.sampled_from([1.0, 1e2, 1e4]))
def test_equal_torch_softmax(rows, n, block, scale):
    x = torch.randn(rows, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * scale
    ref = torch.softmax(x, dim=-1)
    torch.testing.assert_close(safe_softmax(x), ref)
    torch.testing.assert_close(online_softmax(x, block=block), ref)


def test_other_dim_and_float32():
    x = torch.randn(5, 9, 3) * 30
    for dim in (0, 1, -1):
        torch.testing.assert_close(online_softmax(x, dim=dim, block=4), torch.softmax(x, dim=dim), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(safe_softmax(x, dim=dim), torch.softmax(x, dim=dim), rtol=1e-5, atol=1e-6)


def test_naive_overflows_safe_does_not():
    x = torch.tensor([[1000.0, 999.0, 0.0]])
    assert torch.isnan(naive_softmax(x)).any()
    assert torch.isfinite(safe_softmax(x)).all() and torch.isfinite(online_softmax(x, block=1)).all()
    small = torch.randn(3, 6, dtype=torch.float64)
    torch.testing.assert_close(naive_softmax(small), torch.softmax(small, -1))


def test_all_minus_inf_row_gives_zeros():
    x = torch.tensor([[float("-inf")] * 4, [0.0, float("-inf"), 1.0, 2.0]])
    for f in (safe_softmax, lambda t: online_softmax(t, block=3)):
        y = f(x)
        assert torch.equal(y[0], torch.zeros(4))
        torch.testing.assert_close(y[1], torch.softmax(x[1], -1))


def test_recurrence_block_by_block():
    x = torch.randn(3, 20, dtype=torch.float64) * 5
    trace = []
    m, l = online_softmax_stats(x, block=6, trace=trace)
    assert len(trace) == 4
    for b, (m_b, l_b) in enumerate(trace):
        prefix = x[:, : min(6 * (b + 1), 20)]
        torch.testing.assert_close(m_b, prefix.amax(-1, keepdim=True))
        torch.testing.assert_close(l_b, torch.exp(prefix - m_b).sum(-1, keepdim=True))
    torch.testing.assert_close(m + torch.log(l), torch.logsumexp(x, -1, keepdim=True))


@given(n=st.integers(1, 50), block=st.integers(1, 17))
def test_online_matmul(n, block):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(3, n, dtype=torch.float64, generator=g) * 50
    v = torch.randn(n, 4, dtype=torch.float64, generator=g)
    torch.testing.assert_close(online_softmax_matmul(x, v, block=block), torch.softmax(x, -1) @ v)


def test_bad_input():
    with pytest.raises(TypeError, match="x"):
        online_softmax([1.0, 2.0])
    with pytest.raises(TypeError, match="x"):
        safe_softmax(torch.arange(3))
    with pytest.raises(ValueError, match="block"):
        online_softmax(torch.randn(3), block=0)
    with pytest.raises(ValueError, match="dim"):
        online_softmax(torch.randn(3), dim=2)
    with pytest.raises(ValueError, match="v"):
        online_softmax_matmul(torch.randn(2, 3), torch.randn(4, 2))


def test_package_name_stays_callable_after_module_import():
    import effsmall.attention as A
    import effsmall.attention.softmax  # noqa: F401  (binds the package attribute to the module)

    x = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(A.online_softmax(x, block=4), torch.softmax(x, -1))
