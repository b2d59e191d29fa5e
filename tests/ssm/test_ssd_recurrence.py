import math

import pytest
import torch

from effsmall.ssm.ssd_recurrence import segsum, ssd_recurrent
from effsmall.ssm._ssd_testing import ssd_inputs


def test_segsum_definition_and_mask():
    x = torch.randn(3, 7, dtype=torch.float64)
    s = segsum(x)
    assert s.shape == (3, 7, 7)
    for i in range(7):
        for j in range(7):
            if j > i:
                assert s[0, i, j] == -math.inf
            else:
                assert torch.allclose(s[:, i, j], x[:, j + 1:i + 1].sum(-1))


def test_segsum_is_stable_for_long_strong_decay():
    # cumsum differences lose every digit here; the direct sums do not.
    x = torch.full((4096,), -1000.0, dtype=torch.float32)
    x[-1] = -1e-3
    s = segsum(x)
    assert s[-1, -2].item() == pytest.approx(-1e-3, rel=1e-6)
    naive = torch.cumsum(x, 0)[-1] - torch.cumsum(x, 0)[-2]
    assert abs(naive.item() + 1e-3) > 1e-4  # the unstable form is visibly wrong


def test_recurrence_matches_explicit_loop_single_head():
    X, A, B, C, h0 = ssd_inputs(b=1, l=6, h=1, p=2, g=1, n=3)
    Y, s = ssd_recurrent(X, A, B, C, h0)
    state = h0[0, 0].clone()
    for t in range(6):
        state = math.exp(A[0, t, 0]) * state + torch.outer(X[0, t, 0], B[0, t, 0])
        assert torch.allclose(Y[0, t, 0], state @ C[0, t, 0])
    assert torch.allclose(s[0, 0], state)


def test_groups_map_heads_contiguously():
    X, A, B, C, _ = ssd_inputs(b=1, l=5, h=4, g=2)
    Y, _ = ssd_recurrent(X, A, B, C)
    Y1, _ = ssd_recurrent(X[:, :, 2:3], A[:, :, 2:3], B[:, :, 1:2], C[:, :, 1:2])  # head 2 -> group 1
    assert torch.allclose(Y[:, :, 2:3], Y1)


def test_length_one_and_dtype():
    X, A, B, C, h0 = ssd_inputs(l=1, dtype=torch.float32)
    Y, s = ssd_recurrent(X, A, B, C, h0)
    assert Y.dtype == torch.float32 and Y.shape == X.shape
    assert torch.allclose(s, torch.exp(A[:, 0, :, None, None]) * h0 + X[:, 0, :, :, None]
                          * B[:, 0].repeat_interleave(2, 1)[:, :, None, :], atol=1e-6)
