import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.ssm.ssd_chunkwise import ssd_chunked, ssd_chunked_cost
from effsmall.ssm.ssd_recurrence import ssd_recurrent
from effsmall.ssm._ssd_testing import ssd_inputs


@pytest.mark.parametrize("l", [1, 7, 15, 16, 17, 40])
@pytest.mark.parametrize("decay", ["mixed", "strong", "weak"])
def test_matches_recurrence_fp64(l, decay):
    X, A, B, C, h0 = ssd_inputs(l=l, decay=decay)
    Y, s = ssd_recurrent(X, A, B, C, h0)
    Y2, s2 = ssd_chunked(X, A, B, C, 16, initial_states=h0)
    assert torch.allclose(Y, Y2, atol=1e-10, rtol=1e-10)
    assert torch.allclose(s, s2, atol=1e-10, rtol=1e-10)


@given(b=st.integers(1, 2), l=st.integers(1, 33), hg=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
       p=st.integers(1, 4), n=st.integers(1, 5), Q=st.integers(1, 12), init=st.booleans())
def test_any_shape_any_chunk(b, l, hg, p, n, Q, init):
    X, A, B, C, h0 = ssd_inputs(b=b, l=l, h=hg[0], g=hg[1], p=p, n=n, seed=l * 7 + Q)
    h0 = h0 if init else None
    Y, s = ssd_recurrent(X, A, B, C, h0)
    Y2, s2 = ssd_chunked(X, A, B, C, Q, initial_states=h0)
    assert Y2.shape == X.shape and s2.shape == s.shape
    assert torch.allclose(Y, Y2, atol=1e-10) and torch.allclose(s, s2, atol=1e-10)


def _per_sequence(X, A, B, C, h0, cuts):
    """Reference for seq_idx: run the recurrence on each packed sequence alone."""
    ys, s = [], None
    for i, (a, e) in enumerate(zip(cuts[:-1], cuts[1:])):
        y, s = ssd_recurrent(X[:, a:e], A[:, a:e], B[:, a:e], C[:, a:e], h0 if i == 0 else None)
        ys.append(y)
    return torch.cat(ys, 1), s


@pytest.mark.parametrize("cuts", [[0, 5, 16, 21, 40], [0, 16, 32, 40], [0, 1, 2, 40], [0, 40]])
@pytest.mark.parametrize("Q", [4, 16])
def test_seq_idx_resets_state(cuts, Q):
    X, A, B, C, h0 = ssd_inputs(b=1, l=40)
    seq = torch.cat([torch.full((e - a,), i) for i, (a, e) in enumerate(zip(cuts[:-1], cuts[1:]))])[None]
    Yr, sr = _per_sequence(X, A, B, C, h0, cuts)
    Y, s = ssd_chunked(X, A, B, C, Q, initial_states=h0, seq_idx=seq.int())
    assert torch.allclose(Y, Yr, atol=1e-10) and torch.allclose(s, sr, atol=1e-10)


def test_seq_idx_change_not_value_defines_sequence():
    # [3, 3, 0, 0, 3] is three sequences: a reset happens wherever the id changes.
    X, A, B, C, h0 = ssd_inputs(b=1, l=5)
    Yr, _ = _per_sequence(X, A, B, C, h0, [0, 2, 4, 5])
    Y, _ = ssd_chunked(X, A, B, C, 4, initial_states=h0, seq_idx=torch.tensor([[3, 3, 0, 0, 3]]))
    assert torch.allclose(Y, Yr, atol=1e-10)


def test_low_precision_inputs_accumulate_in_fp32():
    X, A, B, C, h0 = ssd_inputs(l=20)
    Y, _ = ssd_recurrent(X, A, B, C)
    Yh, s = ssd_chunked(X.half(), A.half(), B.half(), C.half(), 8)
    assert Yh.dtype == torch.float16 and s.dtype == torch.float32
    assert (Yh.double() - Y).abs().max() / Y.abs().max() < 1e-2


def test_gradients_fp64():
    X, A, B, C, h0 = ssd_inputs(b=1, l=9, h=2, g=1, p=2, n=3)
    args = [t.clone().requires_grad_() for t in (X, A, B, C, h0)]
    f = lambda x, a, b_, c, h: ssd_chunked(x, a, b_, c, 4, initial_states=h)  # noqa: E731
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("bad", ["seqshape", "seqfloat"])  # the shared mistakes: test_ssd_contract.py
def test_bad_inputs(bad):
    X, A, B, C, _ = ssd_inputs()
    kw, Q = {}, 4
    if bad == "seqshape":
        kw["seq_idx"] = torch.zeros(2, 3, dtype=torch.int32)
    elif bad == "seqfloat":
        kw["seq_idx"] = torch.zeros(2, 13)
    with pytest.raises(ValueError if bad == "seqshape" else TypeError, match="seq_idx"):
        ssd_chunked(X, A, B, C, Q, **kw)


def test_cost_model_trade_off():
    small = ssd_chunked_cost(1, 4096, 8, 64, 64, 16)
    big = ssd_chunked_cost(1, 4096, 8, 64, 64, 256)
    assert big["flops_intra"] > small["flops_intra"] and big["bytes_states"] < small["bytes_states"]
