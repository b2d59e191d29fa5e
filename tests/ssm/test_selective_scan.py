"""Selective scan (Mamba-1): the parallel associative scan equals the sequential reference."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from effsmall.ssm import selective_scan_parallel, selective_scan_sequential
from effsmall.ssm.selective_scan import affine_scan, scan_bytes_moved

f64 = torch.float64


def inputs(b=2, d=4, l=13, n=3, g=None, dtype=f64, seed=0, delta_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=f64)
    bc = (b, n, l) if g is None else (b, g, n, l)
    t = dict(u=r(b, d, l), delta=delta_scale * r(b, d, l),
             A=-torch.rand(d, n, generator=gen, dtype=f64) * 2, B=r(*bc), C=r(*bc),
             D=r(d), z=r(b, d, l), delta_bias=r(d))
    return {k: v.to(dtype) for k, v in t.items()}


def direct_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """A plainly written loop over (b, d, t) — independent of the package's vectorisation."""
    b, d, l = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        B, C = B[:, None], C[:, None]
    per = d // B.shape[1]
    dt = delta + delta_bias[:, None]
    dt = F.softplus(dt) if delta_softplus else dt
    y = torch.zeros_like(u)
    last = torch.zeros(b, d, n, dtype=u.dtype)
    for i in range(b):
        for c in range(d):
            h = torch.zeros(n, dtype=u.dtype)
            for t in range(l):
                h = torch.exp(dt[i, c, t] * A[c]) * h + dt[i, c, t] * B[i, c // per, :, t] * u[i, c, t]
                y[i, c, t] = (h @ C[i, c // per, :, t] + D[c] * u[i, c, t]) * F.silu(z[i, c, t])
            last[i, c] = h
    return y, last


@pytest.mark.parametrize("g", [None, 1, 2])
@pytest.mark.parametrize("softplus", [False, True])
def test_against_direct_loop(g, softplus):
    x = inputs(l=9, g=g)
    y_ref, h_ref = direct_reference(**x, delta_softplus=softplus)
    for fn in (selective_scan_sequential, selective_scan_parallel):
        y, h = fn(**x, delta_softplus=softplus)
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("l", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("method", ["blelloch", "hillis_steele"])
def test_parallel_equals_sequential_odd_lengths(l, method):
    x = inputs(l=l, g=2, seed=l)
    y0, h0 = selective_scan_sequential(**x, delta_softplus=True)
    y1, h1 = selective_scan_parallel(**x, delta_softplus=True, method=method)
    torch.testing.assert_close(y1, y0, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(h1, h0, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("scale", [1e-6, 50.0])
def test_extreme_decays(scale):
    """Near-identity steps (tiny Δ) and steps that wipe the state (large Δ)."""
    x = inputs(l=20, seed=3)
    x["delta"] = scale * torch.rand_like(x["delta"])
    x["delta_bias"] = None
    y0, h0 = selective_scan_sequential(**x)
    y1, h1 = selective_scan_parallel(**x)
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-10)
    assert torch.isfinite(y1).all()


def test_optional_arguments_and_fp32():
    x = inputs(l=11, dtype=torch.float32)
    for drop in ("D", "z", "delta_bias"):
        kw = dict(x, **{drop: None})
        y0, h0 = selective_scan_sequential(**kw)
        y1, h1 = selective_scan_parallel(**kw)
        assert y1.dtype == torch.float32
        torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)


@given(b=st.integers(1, 2), d=st.sampled_from([2, 4, 6]), l=st.integers(1, 24),
       n=st.integers(1, 4), grouped=st.booleans())
def test_shapes_property(b, d, l, n, grouped):
    x = inputs(b=b, d=d, l=l, n=n, g=2 if grouped else None, seed=l)
    y, h = selective_scan_parallel(**x)
    assert y.shape == (b, d, l) and h.shape == (b, d, n)
    y0, _ = selective_scan_sequential(**x)
    torch.testing.assert_close(y, y0, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fn", [selective_scan_sequential, selective_scan_parallel])
def test_gradcheck(fn):
    x = inputs(b=1, d=2, l=5, n=2, g=2)
    x = {k: v.requires_grad_() for k, v in x.items()}
    names = list(x)
    f = lambda *args: fn(**dict(zip(names, args)), delta_softplus=True)[0]
    assert torch.autograd.gradcheck(f, tuple(x.values()))


def test_affine_scan_operator():
    """Both scans give h_t = a_t h_{t-1} + b_t."""
    a, b = torch.rand(3, 10, 2, dtype=f64), torch.randn(3, 10, 2, dtype=f64)
    h, ref = torch.zeros(3, 2, dtype=f64), []
    for t in range(10):
        h = a[:, t] * h + b[:, t]
        ref.append(h)
    for m in ("blelloch", "hillis_steele"):
        torch.testing.assert_close(affine_scan(a, b, m), torch.stack(ref, 1))
    with pytest.raises(ValueError, match="method"):
        affine_scan(a, b, "kogge")


@pytest.mark.parametrize("L", [2, 8, 16])
def test_scan_graphs_compute_the_scan(L):
    """The drawn dependency graphs (chapter 09) are correct scans: replay them on numbers."""
    from effsmall.ssm.viz_scan import blelloch_edges, hillis_steele_edges

    g = torch.Generator().manual_seed(L)
    a, b = torch.rand(L, generator=g, dtype=f64), torch.randn(L, generator=g, dtype=f64)
    ref = affine_scan(a[:, None], b[:, None], "hillis_steele")[:, 0]
    for edges_fn in (hillis_steele_edges, blelloch_edges):
        va, vb = a.clone(), b.clone()
        for edges in edges_fn(L):
            oa, ob = va.clone(), vb.clone()
            for s, t in edges:
                va[t], vb[t] = oa[s] * oa[t], oa[t] * ob[s] + ob[t]
        torch.testing.assert_close(vb, ref)
    assert sum(map(len, blelloch_edges(L))) < 2 * L


def test_bytes_moved():
    r = scan_bytes_moved(b=1, d=1536, l=2048, n=16)
    assert r["materialized"] > 10 * r["fused"] and r["ratio"] == r["materialized"] / r["fused"]
    x = 1536 * 2048
    assert r["fused"] == 4 * (3 * x + 1536 * 16 + 2 * 16 * 2048 + x + 1536 * 16)


def test_bad_inputs():
    x = inputs()
    with pytest.raises(ValueError, match="delta"):
        selective_scan_parallel(**dict(x, delta=x["delta"][..., :-1]))
    with pytest.raises(ValueError, match="A"):
        selective_scan_parallel(**dict(x, A=x["A"][:-1]))
    with pytest.raises(ValueError, match="B"):
        selective_scan_parallel(**dict(x, B=torch.randn(2, 3, 3, 13, dtype=f64)))
    with pytest.raises(ValueError, match="D"):
        selective_scan_sequential(**dict(x, D=x["D"][:-1]))
    with pytest.raises(TypeError, match="u"):
        selective_scan_parallel(**dict(x, u=x["u"].long()))
    with pytest.raises(TypeError, match="complex"):
        selective_scan_parallel(**dict(x, A=x["A"].to(torch.complex128)))
