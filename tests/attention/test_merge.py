"""merge_attention_states: attention over a ∪ b from attention over a and over b."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from effsmall.attention import merge_attention_states, merge_attention_states_many


def _partial(q, k, v, keep):
    """Reference attention of each query row over the keys where ``keep`` is True, with its lse."""
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5          # (B, H, Nq, Nk)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, -1)                                 # (B, H, Nq), -inf if no key
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    return p @ v, lse


@settings(deadline=None, max_examples=25)
@given(Nq=st.integers(1, 9), Nk=st.integers(1, 17), D=st.sampled_from([1, 8, 16]), seed=st.integers(0, 99))
def test_merge_equals_attention_over_the_union(Nq, Nk, D, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 3, n, D, generator=g, dtype=torch.float64) for n in (Nq, Nk, Nk))
    split = torch.rand(2, 3, Nq, Nk, generator=g) < 0.5          # random disjoint key sets per row
    o_a, lse_a = _partial(q, k, v, split)
    o_b, lse_b = _partial(q, k, v, ~split)
    o, lse = merge_attention_states(o_a, lse_a, o_b, lse_b)
    o_ref, lse_ref = _partial(q, k, v, torch.ones_like(split))
    assert (o - o_ref).abs().max().item() < 1e-12
    assert (lse.double() - lse_ref).abs().max().item() < 1e-5   # lse is returned in fp32


def test_many_equals_pairwise_and_is_order_free():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(5, 2, 4, 8, generator=g, dtype=torch.float64)
    lse = torch.randn(5, 2, 4, generator=g, dtype=torch.float64) * 10
    lse[1, 0, 0] = float("-inf")                                   # one empty partial
    acc_o, acc_l = o[4], lse[4]
    for s in (2, 0, 3, 1):
        acc_o, acc_l = merge_attention_states(acc_o, acc_l, o[s], lse[s])
    many_o, many_l = merge_attention_states_many(o, lse, dim=0)
    assert (many_o - acc_o).abs().max().item() < 1e-12
    assert (many_l - acc_l).abs().max().item() < 1e-5


def test_empty_partials_have_no_weight_and_never_nan():
    o_a, o_b = torch.randn(3, 4), torch.randn(3, 4)
    ninf = torch.full((3,), float("-inf"))
    o, lse = merge_attention_states(o_a * 0, ninf, o_b, torch.zeros(3))
    assert torch.equal(o, o_b) and torch.equal(lse, torch.zeros(3))
    o, lse = merge_attention_states(o_a * 0, ninf, o_b * 0, ninf)
    assert not o.isnan().any() and torch.equal(o, torch.zeros(3, 4)) and torch.equal(lse, ninf)


def test_extreme_lse_values_do_not_overflow():
    o_a, o_b = torch.ones(2, 4), -torch.ones(2, 4)
    lse_a, lse_b = torch.tensor([1e4, -1e4]), torch.tensor([1e4, 1e4])
    o, lse = merge_attention_states(o_a, lse_a, o_b, lse_b)
    assert torch.isfinite(o).all()
    assert torch.allclose(o[0], torch.zeros(4), atol=1e-6) and torch.allclose(o[1], -torch.ones(4))


def test_gradients_flow_to_all_inputs():
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda *a: merge_attention_states(*a)[0].double(), args)


def test_bad_input_names_the_argument():
    o, lse = torch.randn(2, 3, 4), torch.randn(2, 3)
    with pytest.raises(ValueError, match="o_a and o_b"):
        merge_attention_states(o, lse, torch.randn(2, 3, 5), lse)
    with pytest.raises(ValueError, match="lse must have the shape"):
        merge_attention_states(o, torch.randn(2, 4), o, torch.randn(2, 4))
    with pytest.raises(TypeError, match="lse_b"):
        merge_attention_states(o, lse, o, lse.long())
