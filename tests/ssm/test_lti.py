"""LTI SSMs: discretization, recurrence = kernel convolution (direct and FFT), the layer's two paths."""
import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.ssm import (LTISSMLayer, discretize, ssm_convolution, ssm_kernel, ssm_recurrent)

f64 = torch.float64


def _system(N, seed=0, diagonal=False):
    g = torch.Generator().manual_seed(seed)
    if diagonal:
        A = torch.diag(-torch.rand(N, generator=g, dtype=f64) * 3 - 0.1)
    else:
        A = torch.randn(N, N, generator=g, dtype=f64) / N ** 0.5 - 1.5 * torch.eye(N, dtype=f64)
    B = torch.randn(N, 1, generator=g, dtype=f64)
    C = torch.randn(1, N, generator=g, dtype=f64)
    u = torch.randn(33, generator=g, dtype=f64)
    return A, B, C, u


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_discretize_matches_closed_forms(method):
    A, B, _, _ = _system(5)
    dt = 0.07
    Ab, Bb = discretize(A, B, dt, method)
    I = torch.eye(5, dtype=f64)
    if method == "zoh":
        ref_A = torch.linalg.matrix_exp(dt * A)
        ref_B = torch.linalg.solve(A, (ref_A - I) @ B)
    else:
        ref_A = torch.linalg.solve(I - dt / 2 * A, I + dt / 2 * A)
        ref_B = torch.linalg.solve(I - dt / 2 * A, dt * B)
    torch.testing.assert_close(Ab, ref_A, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(Bb, ref_B, rtol=1e-10, atol=1e-12)


def test_zoh_singular_A():
    """A = 0 (an integrator) is singular; the augmented exponential still gives B̄ = Δ B."""
    A = torch.zeros(3, 3, dtype=f64)
    A[0, 1] = 1.0   # nilpotent: exp(ΔA) = I + ΔA, B̄ = (ΔI + Δ²A/2) B
    B = torch.tensor([[0.0], [1.0], [2.0]], dtype=f64)
    Ab, Bb = discretize(A, B, 0.5)
    torch.testing.assert_close(Ab, torch.eye(3, dtype=f64) + 0.5 * A)
    torch.testing.assert_close(Bb, (0.5 * torch.eye(3, dtype=f64) + 0.125 * A) @ B)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
@pytest.mark.parametrize("diagonal", [False, True])
def test_recurrence_equals_convolution(method, diagonal):
    A, B, C, u = _system(6, seed=1, diagonal=diagonal)
    Ab, Bb = discretize(A, B, 0.1, method)
    D = 0.3
    y = ssm_recurrent(Ab, Bb, C, D, u)
    K = ssm_kernel(Ab, Bb, C, u.shape[0])
    K_slow = ssm_kernel(Ab, Bb, C, u.shape[0], diagonal=False)
    torch.testing.assert_close(K, K_slow, rtol=1e-12, atol=1e-13)
    for conv in ("direct", "fft"):
        torch.testing.assert_close(ssm_convolution(u, K, conv) + D * u, y, rtol=1e-10, atol=1e-12)


@given(L=st.integers(1, 40), N=st.integers(1, 5), seed=st.integers(0, 100))
def test_shapes_property(L, N, seed):
    A, B, C, _ = _system(N, seed)
    u = torch.randn(L, dtype=f64, generator=torch.Generator().manual_seed(seed))
    Ab, Bb = discretize(A, B, 0.05)
    y = ssm_recurrent(Ab, Bb, C, torch.tensor([[0.5]], dtype=f64), u)
    K = ssm_kernel(Ab, Bb, C, L)
    assert y.shape == K.shape == (L,)
    torch.testing.assert_close(ssm_convolution(u, K, "fft") + 0.5 * u, y, rtol=1e-9, atol=1e-11)


def test_convolution_gradcheck():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(9, dtype=f64, generator=g, requires_grad=True)
    K = torch.randn(9, dtype=f64, generator=g, requires_grad=True)
    for conv in ("direct", "fft"):
        assert torch.autograd.gradcheck(lambda a, b: ssm_convolution(a, b, conv), (u, K))


@pytest.mark.parametrize("diagonal", [True, False])
def test_layer_fft_equals_step(diagonal):
    torch.manual_seed(0)
    layer = LTISSMLayer(H=3, N=4, diagonal=diagonal, dtype=f64)
    x = torch.randn(2, 17, 3, dtype=f64)
    y = layer(x)
    state = layer.init_state(2)
    ys = []
    for t in range(17):
        y_t, state = layer.step(x[:, t], state)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-10, atol=1e-12)


def test_layer_gradcheck_and_length_one():
    torch.manual_seed(1)
    layer = LTISSMLayer(H=2, N=3, dtype=f64)
    x = torch.randn(1, 5, 2, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    y = layer(x[:, :1])
    torch.testing.assert_close(y, layer.step(x[:, 0], layer.init_state(1))[0][:, None])


def test_bad_inputs():
    A, B, C, u = _system(3)
    with pytest.raises(ValueError, match="A"):
        discretize(A[:2], B, 0.1)
    with pytest.raises(ValueError, match="B"):
        discretize(A, B[:2], 0.1)
    with pytest.raises(ValueError, match="method"):
        discretize(A, B, 0.1, "euler")
    with pytest.raises(ValueError, match="dt"):
        discretize(A, B, -0.1)
    with pytest.raises(TypeError, match="B"):
        discretize(A, B.float(), 0.1)
    with pytest.raises(ValueError, match="u"):
        ssm_recurrent(A, B, C, 0.0, u[None])
    with pytest.raises(ValueError, match="C"):
        ssm_kernel(A, B, C.T, 4)
    with pytest.raises(ValueError, match="length"):
        ssm_convolution(u, u[:-1])
    layer = LTISSMLayer(H=2, N=3)
    with pytest.raises(ValueError, match="x"):
        layer(torch.randn(1, 4, 3))
    with pytest.raises(TypeError, match="x"):
        layer(torch.randn(1, 4, 2, dtype=f64))
