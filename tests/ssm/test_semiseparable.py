"""SSMs as semiseparable matrices: every form equals the recurrence; ranks; attention forms."""
import pytest
import torch
from hypothesis import given, strategies as st

# Import from the defining modules: a submodule named like its function (ssd_recurrent)
# shadows the package-level export once it has been imported.
from effsmall.ssm.semiseparable import (is_semiseparable, linear_attention, offdiagonal_ranks,
                                        ssd_quadratic, ssm_matrix, structured_masked_attention)
from effsmall.ssm.ssd_recurrence import segsum, ssd_recurrent
from effsmall.ssm._ssd_testing import ssd_inputs

f64 = torch.float64


@pytest.mark.parametrize("l", [1, 7, 16, 17])
@pytest.mark.parametrize("decay", ["mixed", "strong", "weak"])
def test_quadratic_equals_recurrence(l, decay):
    X, A, B, C, _ = ssd_inputs(l=l, decay=decay, seed=l)
    Y_ref, _ = ssd_recurrent(X, A, B, C)
    torch.testing.assert_close(ssd_quadratic(X, A, B, C), Y_ref, rtol=1e-10, atol=1e-10)


def test_matrix_entries():
    X, A, B, C, _ = ssd_inputs(b=1, l=6, h=2, g=1, n=3)
    M = ssm_matrix(A, B, C)
    assert M.shape == (1, 2, 6, 6)
    i, j, hd = 4, 1, 1
    expected = (C[0, i, 0] @ B[0, j, 0]) * torch.exp(A[0, j + 1:i + 1, hd].sum())
    torch.testing.assert_close(M[0, hd, i, j], expected)
    assert (torch.triu(M, 1) == 0).all()


@given(l=st.integers(2, 14), n=st.integers(1, 4), seed=st.integers(0, 50))
def test_offdiagonal_rank_at_most_N(l, n, seed):
    X, A, B, C, _ = ssd_inputs(b=1, l=l, h=1, g=1, n=n, seed=seed)
    M = ssm_matrix(A, B, C)[0, 0]
    ranks = offdiagonal_ranks(M)
    assert ranks.shape == (l - 1,)
    assert int(ranks.max()) <= n
    assert is_semiseparable(M, n)


def test_not_semiseparable():
    torch.manual_seed(0)
    M = torch.tril(torch.randn(10, 10, dtype=f64))   # generic lower-triangular: full-rank blocks
    assert offdiagonal_ranks(M).max() == 5
    assert not is_semiseparable(M, 2)
    assert not is_semiseparable(torch.randn(4, 4, dtype=f64), 4)  # not lower triangular


def test_sma_is_ssd_and_linear_attention():
    X, A, B, C, _ = ssd_inputs(b=2, l=11, h=2, g=2, n=4)
    Y_ref, _ = ssd_recurrent(X, A, B, C)
    Q, K, V = C.transpose(1, 2), B.transpose(1, 2), X.transpose(1, 2)   # (b, h, l, ·) (g == h)
    L = torch.exp(segsum(A.transpose(1, 2)))                            # (b, h, l, l)
    Y = structured_masked_attention(Q, K, V, L).transpose(1, 2)
    torch.testing.assert_close(Y, Y_ref, rtol=1e-10, atol=1e-10)
    causal = torch.tril(torch.ones(11, 11, dtype=f64))
    torch.testing.assert_close(structured_masked_attention(Q, K, V, causal),
                               linear_attention(Q, K, V), rtol=1e-10, atol=1e-10)
    # Linear attention is SSD with no decay (a = 0).
    Y0, _ = ssd_recurrent(X, torch.zeros_like(A), B, C)
    torch.testing.assert_close(linear_attention(Q, K, V).transpose(1, 2), Y0, rtol=1e-10, atol=1e-10)


def test_gradcheck_quadratic():
    X, A, B, C, _ = ssd_inputs(b=1, l=5, h=2, p=2, g=1, n=2)
    args = tuple(t.requires_grad_() for t in (X, A, B, C))
    assert torch.autograd.gradcheck(ssd_quadratic, args)


def test_bad_inputs():
    X, A, B, C, _ = ssd_inputs()
    with pytest.raises(ValueError, match="A"):
        ssm_matrix(A[..., None], B, C)
    with pytest.raises(ValueError, match="divisible"):
        ssm_matrix(A[..., :3], B, C)
    with pytest.raises(ValueError, match="<= 0"):
        ssd_quadratic(X, -A, B, C)
    with pytest.raises(ValueError, match="M"):
        offdiagonal_ranks(torch.ones(3, 4))
    with pytest.raises(ValueError, match="rank"):
        is_semiseparable(torch.eye(3), -1)
    with pytest.raises(ValueError, match="L_mask"):
        structured_masked_attention(X[0], X[0], X[0], torch.ones(2, 2, dtype=f64))
    with pytest.raises(ValueError, match="K"):
        linear_attention(X[0], X[0, :, :2], X[0])


def test_definition_counts_blocks_on_or_below_the_diagonal():
    # Mamba-2's Definition 3.1 takes submatrices on or below the diagonal: a diagonal matrix has
    # rank-0 strictly-lower blocks but rank-1 blocks M[j:, :j+1], so it is 1- but not 0-semiseparable.
    M = torch.diag(torch.arange(1.0, 6.0, dtype=f64))
    assert int(offdiagonal_ranks(M).max()) == 0
    assert offdiagonal_ranks(M, include_diagonal=True).tolist() == [1] * 5
    assert is_semiseparable(M, 1) and not is_semiseparable(M, 0)
    X, A, B, C, _ = ssd_inputs(b=1, l=12, h=1, g=1, n=3, seed=1)
    S = ssm_matrix(A, B, C)[0, 0]
    assert int(offdiagonal_ranks(S, include_diagonal=True).max()) == 3
