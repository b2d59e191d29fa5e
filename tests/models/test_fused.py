"""The fused decode norms equal the PyTorch modules (Triton: compiled on a GPU, interpreted on a CPU)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.models.fused import add_rmsnorm, gated_rmsnorm
from effsmall.nn import RMSNorm
from effsmall.ssm.mamba2_block import GatedRMSNorm
from effsmall.testing import DEVICE


def _norm(n, dtype):
    norm = RMSNorm(n, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    return norm.to(DEVICE, dtype)


@given(rows=st.integers(1, 5), n=st.integers(1, 70), residual=st.booleans())
def test_add_rmsnorm_equals_modules(rows, n, residual):
    torch.manual_seed(rows * 100 + n)
    norm = _norm(n, torch.float32)
    x = torch.randn(rows, n, device=DEVICE) * 3
    r = torch.randn(rows, n, device=DEVICE) if residual else None
    s, y = add_rmsnorm(x, norm.weight, norm.eps, residual=r)
    s_ref = x + r if residual else x
    assert torch.equal(s, s_ref)
    assert (y - norm(s_ref)).abs().max().item() < 1e-5


def test_add_rmsnorm_half_and_leading_dims():
    dtype = torch.float16 if torch.device(DEVICE).type == "cpu" else torch.bfloat16
    norm = _norm(48, dtype)
    x = torch.randn(2, 3, 48, device=DEVICE).to(dtype)
    r = torch.randn(2, 3, 48, device=DEVICE).to(dtype)
    s, y = add_rmsnorm(x, norm.weight, norm.eps, residual=r)
    assert s.shape == y.shape == (2, 3, 48) and y.dtype == dtype
    assert torch.equal(s, x + r)
    assert (y.float() - norm(x + r).float()).abs().max().item() < 1e-2


def test_add_rmsnorm_bad_input():
    norm = _norm(8, torch.float32)
    with pytest.raises(ValueError, match="dimension of 8"):
        add_rmsnorm(torch.randn(2, 9, device=DEVICE), norm.weight, 1e-5)
    with pytest.raises(ValueError, match="residual"):
        add_rmsnorm(torch.randn(2, 8, device=DEVICE), norm.weight, 1e-5, residual=torch.randn(1, 8, device=DEVICE))
    with pytest.raises(TypeError, match="float"):
        add_rmsnorm(torch.randn(2, 8, device=DEVICE, dtype=torch.float64), norm.weight, 1e-5)


@pytest.mark.parametrize("dim,groups", [(32, 1), (48, 3), (20, 2)])
def test_gated_rmsnorm_equals_module(dim, groups):
    torch.manual_seed(dim)
    norm = GatedRMSNorm(dim, dim // groups).to(DEVICE)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    y = torch.randn(3, dim, device=DEVICE)
    z = torch.randn(3, 2 * dim, device=DEVICE)[:, :dim]          # a strided view, as Mamba-2's split gives
    assert (gated_rmsnorm(norm, y, z) - norm(y, z)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="one shape"):
        gated_rmsnorm(norm, y, z[:2])


@pytest.mark.parametrize("h,hk,D", [(4, 2, 8), (3, 1, 12), (2, 2, 16)])
def test_rope_append_equals_apply_rope_and_cache_write(h, hk, D):
    from effsmall.models.fused import rope_append
    from effsmall.nn import apply_rope, rope_tables

    torch.manual_seed(h * D)
    B, cap = 3, 10
    lens = torch.tensor([1, 8, 10], device=DEVICE, dtype=torch.int32)   # the new token is the lens[b]-th
    pos = lens.long() - 1
    cos, sin = rope_tables(cap, D, device=DEVICE)                     # (cap, D/2)
    qkv = torch.randn(B, (h + 2 * hk) * D, device=DEVICE)             # one product: row-strided q and kv
    q, kv = qkv.split([h * D, 2 * hk * D], dim=-1)
    kc = torch.randn(B, hk, cap, D, device=DEVICE)
    vc = torch.randn(B, hk, cap, D, device=DEVICE)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    out = rope_append(q, kv, cos, sin, lens, kc, vc)
    c, s = cos[pos][:, None, None], sin[pos][:, None, None]           # (B, 1, 1, D/2)
    q_ref = apply_rope(q.reshape(B, h, 1, D), c, s)[:, :, 0]
    k, v = kv.reshape(B, 2, hk, D).unbind(1)
    k_ref = apply_rope(k[:, :, None], c, s)[:, :, 0]
    for b in range(B):
        kc_ref[b, :, pos[b]] = k_ref[b]
        vc_ref[b, :, pos[b]] = v[b]
    assert (out - q_ref).abs().max().item() < 1e-5
    assert (kc - kc_ref).abs().max().item() < 1e-5                    # only the new slots changed
    assert torch.equal(vc, vc_ref)
    with pytest.raises(ValueError, match="kv"):
        rope_append(q, kv[:, :-1], cos, sin, lens, kc, vc)
    with pytest.raises(ValueError, match="lens"):
        rope_append(q, kv, cos, sin, lens[:2], kc, vc)
    with pytest.raises(ValueError, match="tables"):
        rope_append(q, kv, cos[:, :-1], sin[:, :-1], lens, kc, vc)


@given(rows=st.integers(1, 4), F=st.integers(1, 70), block=st.sampled_from([16, 1024]))
def test_swiglu_packed_equals_swiglu(rows, F, block):
    from effsmall.models.fused import swiglu_packed
    from effsmall.nn import swiglu

    torch.manual_seed(rows * 100 + F)
    h = torch.randn(rows, 2 * F + 3, device=DEVICE)[:, 1:2 * F + 1] * 4    # a row-strided view, odd width
    gate, up = h.chunk(2, dim=-1)
    out = swiglu_packed(h, block=block)                                  # block 16: several column blocks
    assert out.shape == (rows, F)
    assert (out - swiglu(gate, up)).abs().max().item() < 1e-5


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")   # e^100 → inf: SiLU(−100) = 0
def test_swiglu_packed_half_leading_dims_extremes_and_bad_input():
    from effsmall.models.fused import swiglu_packed
    from effsmall.nn import swiglu

    dtype = torch.float16 if torch.device(DEVICE).type == "cpu" else torch.bfloat16
    h = torch.randn(2, 3, 2 * 40, device=DEVICE).to(dtype)
    h[0, 0, :5] = torch.tensor([-100.0, 100.0, 0.0, -20.0, 60.0])       # SiLU's saturated ends
    out = swiglu_packed(h)
    ref = swiglu(*h.chunk(2, dim=-1))
    assert out.shape == (2, 3, 40) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert (out.float() - ref.float()).abs().max().item() <= 1e-2 * ref.float().abs().max().item()
    with pytest.raises(ValueError, match="even"):
        swiglu_packed(torch.randn(2, 7, device=DEVICE))
    with pytest.raises(TypeError, match="float"):
        swiglu_packed(torch.randn(2, 8, device=DEVICE, dtype=torch.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_swiglu_packed_realistic(dtype):
    from effsmall.models.fused import swiglu_packed
    from effsmall.nn import swiglu

    torch.manual_seed(0)
    h = torch.randn(16, 2 * 2816, device="cuda", dtype=dtype)          # the bench model's d_ff, batch 16
    out = swiglu_packed(h)
    ref = swiglu(*h.chunk(2, dim=-1))                                    # torch's kernels, the same roundings
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 1e-6                 # at most one last bit apart (exp)
    assert ((out.float() - ref.float()).abs() <= ulp * ref.float().abs() + 1e-6).all()


@pytest.mark.parametrize("residual", [False, True])
def test_add_rmsnorm_into_preallocated_buffers_and_in_place(residual):
    norm = _norm(24, torch.float32)
    x = torch.randn(3, 24, device=DEVICE)
    r = torch.randn(3, 24, device=DEVICE) if residual else None
    s_ref = x + r if residual else x.clone()
    y_ref = norm(s_ref)
    s_buf, y_buf = torch.empty_like(x), torch.empty_like(x)
    s, y = add_rmsnorm(x, norm.weight, norm.eps, residual=r, out=(s_buf, y_buf))     # into buffers
    assert s is s_buf and y is y_buf and torch.equal(s, s_ref)
    assert (y - y_ref).abs().max().item() < 1e-5
    x_in = x.clone()
    s, y = add_rmsnorm(x_in, norm.weight, norm.eps, residual=r, out=(x_in, y_buf))   # the stream in place
    assert s is x_in and torch.equal(x_in, s_ref)
    assert (y - y_ref).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="out"):
        add_rmsnorm(x, norm.weight, norm.eps, residual=r, out=(s_buf[:2], y_buf))
