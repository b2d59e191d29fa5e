"""mamba_chunk_scan_combined: mamba_ssm's semantics, checked against a direct implementation."""
import pytest
import torch

from effsmall.ssm.mamba_api import mamba_chunk_scan_combined
from effsmall.ssm.ssd_recurrence import ssd_recurrent


def _inputs(b=2, l=11, h=4, p=3, g=2, n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.float64
    return dict(x=torch.randn(b, l, h, p, generator=gen, dtype=d), dt=torch.randn(b, l, h, generator=gen, dtype=d),
                A=-torch.rand(h, generator=gen, dtype=d) - 0.1, B=torch.randn(b, l, g, n, generator=gen, dtype=d),
                C=torch.randn(b, l, g, n, generator=gen, dtype=d))


def _direct(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, dt_softplus=False,
            dt_limit=(0.0, float("inf"))):
    """mamba_ssm's documented maths written out step by step, on top of ssd_recurrent."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = torch.where(dt <= 20.0, torch.log1p(torch.exp(dt)), dt)
    dt = torch.minimum(torch.maximum(dt, torch.tensor(dt_limit[0], dtype=dt.dtype)), torch.tensor(dt_limit[1], dtype=dt.dtype))
    y, s = ssd_recurrent(x * dt[..., None], dt * A, B, C, initial_states)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * z * torch.sigmoid(z)
    return y, s


@pytest.mark.parametrize("opts", [
    dict(),
    dict(dt_softplus=True),
    dict(dt_softplus=True, dt_bias=True),
    dict(dt_limit=(0.05, 0.5)),
    dict(D="h"), dict(D="hp"), dict(z=True),
    dict(dt_softplus=True, dt_bias=True, D="h", z=True, dt_limit=(0.01, 2.0), initial_states=True),
])
def test_semantics_match_direct(opts):
    t = _inputs()
    b, l, h, p = t["x"].shape
    n = t["B"].shape[-1]
    gen = torch.Generator().manual_seed(1)
    kw = {}
    if opts.get("dt_softplus"):
        kw["dt_softplus"] = True
    if opts.get("dt_bias"):
        kw["dt_bias"] = torch.randn(h, generator=gen, dtype=torch.float64)
    if "dt_limit" in opts:
        kw["dt_limit"] = opts["dt_limit"]
    if opts.get("D") == "h":
        kw["D"] = torch.randn(h, generator=gen, dtype=torch.float64)
    if opts.get("D") == "hp":
        kw["D"] = torch.randn(h, p, generator=gen, dtype=torch.float64)
    if opts.get("z"):
        kw["z"] = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    if opts.get("initial_states"):
        kw["initial_states"] = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    y, s = mamba_chunk_scan_combined(**t, chunk_size=4, return_final_states=True, **kw)
    yr, sr = _direct(**t, **kw)
    assert torch.allclose(y, yr, atol=1e-10) and torch.allclose(s, sr, atol=1e-10)
    y_only = mamba_chunk_scan_combined(**t, chunk_size=4, **kw)
    assert isinstance(y_only, torch.Tensor) and torch.equal(y_only, y)


def test_negative_dt_is_clamped_to_zero_by_default():
    t = _inputs()
    t["dt"] = -t["dt"].abs()  # every Δ < 0: clamped to 0, so nothing enters the state
    y = mamba_chunk_scan_combined(**t, chunk_size=4)
    assert torch.count_nonzero(y) == 0


def test_seq_idx_passes_through():
    t = _inputs(b=1, l=10)
    seq = torch.tensor([[0] * 4 + [1] * 6])
    y = mamba_chunk_scan_combined(**t, chunk_size=4, seq_idx=seq, dt_softplus=True)
    t2 = {k: (v[:, 4:] if k != "A" else v) for k, v in t.items()}
    y2 = mamba_chunk_scan_combined(**t2, chunk_size=4, dt_softplus=True)
    assert torch.allclose(y[:, 4:], y2, atol=1e-10)


def test_gradients_flow_to_every_input():
    t = {k: v.clone().requires_grad_() for k, v in _inputs(b=1, l=6, h=2, g=1, p=2, n=3).items()}
    D = torch.randn(2, dtype=torch.float64, requires_grad=True)
    z = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    f = lambda x, dt, A, B, C, D, z, bias: mamba_chunk_scan_combined(  # noqa: E731
        x, dt, A, B, C, 4, D=D, z=z, dt_bias=bias, dt_softplus=True)
    assert torch.autograd.gradcheck(f, (t["x"], t["dt"], t["A"], t["B"], t["C"], D, z, bias))


@pytest.mark.parametrize("bad", ["A_shape", "dt_shape", "D_shape", "z_shape", "bias_shape", "A_positive", "limit"])
def test_bad_inputs(bad):
    t = _inputs()
    kw = {}
    if bad == "A_shape":
        t["A"] = t["A"][:2]
    elif bad == "dt_shape":
        t["dt"] = t["dt"][:, :3]
    elif bad == "D_shape":
        kw["D"] = torch.ones(3)
    elif bad == "z_shape":
        kw["z"] = torch.ones(1)
    elif bad == "bias_shape":
        kw["dt_bias"] = torch.ones(5)
    elif bad == "A_positive":
        t["A"] = t["A"].abs()
    elif bad == "limit":
        kw["dt_limit"] = (1.0, 0.5)
    with pytest.raises(ValueError):
        mamba_chunk_scan_combined(**t, chunk_size=4, **kw)
