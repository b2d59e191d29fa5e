"""flash_attention_hopper (Triton, run by the interpreter on CPU) equals naive_attention.

The interpreter runs the same kernels with 16×16 tiles (or the tiles a test passes): tensor
descriptors are emulated there, warp specialisation is ignored, so every switch combination
is checked for the function it computes. Its speed is measured by ``tools/hopper_probe.py``;
the ``gpu``-marked tests at the end check the compiled kernels on a Hopper GPU.
"""
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import effsmall.attention.flash_hopper as fh
from effsmall.attention import flash_attention, naive_attention
from effsmall.testing import on_device

flash_attention_hopper = on_device(fh.flash_attention_hopper)
flash_attention_hopper_forward = on_device(fh.flash_attention_hopper_forward)


def _qkv(B, Hq, Hk, Nq, Nk, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, Hk, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, Hk, Nk, D, generator=g).to(dtype)
    return q, k, v


def _ref64(q, k, v, **kw):
    return naive_attention(q.double(), k.double(), v.double(), **kw)


FWD_CASES = [  # B, Hq, Hk, Nq, Nk, D, causal, window, switches
    (1, 2, 1, 37, 45, 64, True, None, dict(tma="off", grid="m")),
    (2, 2, 2, 40, 40, 64, False, None, dict(tma="host", grid="m_rev")),            # ragged last block
    (1, 4, 2, 48, 48, 64, False, None, dict(tma="device", grid="persistent")),     # GQA, no mask at all
    (1, 2, 1, 33, 20, 64, True, None, dict(tma="host")),                           # first 13 rows see no key
    (1, 2, 2, 40, 40, 128, False, (5, 3), dict(tma="device", causal_split=False)),  # window, one masked loop
    (1, 2, 2, 30, 30, 64, True, (4, None), dict(grid="bh")),                       # causal + left window
    (1, 2, 2, 40, 40, 64, True, None, dict(config=(32, 16, 4, 2), grid="persistent2")),
    (1, 2, 1, 35, 50, 128, True, None, dict(config=(16, 32, 4, 2), tma="off", causal_split=False)),
    (1, 2, 2, 24, 24, 64, False, (0, 0), dict(warp_specialize=True)),                # only the diagonal
    (1, 2, 1, 25, 30, 64, False, (3, -1), dict(tma="off")),                          # left window edge only
    (1, 2, 1, 32, 32, 64, False, (None, 3), dict(tma="host", grid="m")),             # right edge only, even N
]


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window,switches", FWD_CASES)
def test_forward_fp32_matches_naive(B, Hq, Hk, Nq, Nk, D, causal, window, switches):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D)
    o = flash_attention_hopper(q, k, v, causal, window=window, **switches)
    ref = _ref64(q, k, v, causal=causal, window=window)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert torch.isfinite(o).all()
    assert (o.double() - ref).abs().max().item() < 1e-5


GRAD_CASES = [
    (1, 2, 1, 37, 45, 64, True, None, dict(tma="off")),
    (1, 4, 2, 40, 33, 64, False, None, dict(tma="host", bwd_config=(32, 16, 4, 2))),  # GQA: dK, dV over 2 heads
    (1, 2, 1, 33, 20, 128, True, None, dict(tma="device", bwd_tma="device")),          # rows that see no key
    (1, 2, 2, 40, 40, 64, False, (5, 3), dict(bwd_config=(16, 32, 4, 2))),
    (1, 2, 2, 37, 37, 64, True, None, dict(backward="fa2")),
    (1, 2, 1, 32, 40, 64, False, (6, -1), dict(bwd_config=(16, 16, 4, 2))),           # left edge: masked tail loop
]


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window,switches", GRAD_CASES)
def test_gradients_match_naive_autograd(B, Hq, Hk, Nq, Nk, D, causal, window, switches):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D, seed=1)
    do = torch.randn(B, Hq, Nq, D, generator=torch.Generator().manual_seed(2))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention_hopper(q, k, v, causal, window=window, **switches)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = naive_attention(q64, k64, v64, causal=causal, window=window)
    for name, a, b in zip("qkv", grads, torch.autograd.grad(ref, (q64, k64, v64), do.double())):
        assert a.shape == b.shape
        assert (a.double() - b).abs().max().item() < 2e-5, name


def test_fp16_matches_naive():
    q, k, v = _qkv(1, 2, 1, 33, 40, 64, dtype=torch.float16)
    o = flash_attention_hopper(q, k, v, True)
    assert o.dtype == torch.float16
    assert (o.float() - naive_attention(q.float(), k.float(), v.float(), causal=True)).abs().max().item() < 1e-2


def test_bf16_in_interpreter_computes_in_fp32():
    q, k, v = _qkv(1, 2, 2, 9, 9, 64, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = flash_attention_hopper(q, k, v)
    assert o.dtype == torch.bfloat16
    assert (o.float() - naive_attention(q.float(), k.float(), v.float())).abs().max().item() < 1e-2


def test_same_output_as_flash_attention():
    q, k, v = _qkv(1, 2, 1, 29, 41, 64, seed=3)
    a = flash_attention_hopper(q, k, v, True, scale=0.3)
    b = on_device(flash_attention)(q, k, v, causal=True, scale=0.3)
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.skipif(not fh.interpreting(), reason="fp32 inputs: on a GPU the Hopper rung runs bf16/fp16 only")
def test_lse_follows_the_package_convention():
    q, k, v = _qkv(1, 1, 1, 20, 12, 64, seed=4)                       # causal, Nq > Nk: 8 empty rows
    o, lse = flash_attention_hopper_forward(q, k, v, True)
    s = (q.double() @ k.double().transpose(-1, -2)) * 64 ** -0.5       # (1, 1, 20, 12)
    mask = torch.ones(20, 12, dtype=torch.bool).tril(-8)              # key j visible iff j <= i - 8
    ref = torch.logsumexp(s.masked_fill(~mask, float("-inf")), -1)
    assert torch.equal(lse[..., :8], torch.full_like(lse[..., :8], float("-inf")))
    assert (lse[..., 8:].double() - ref[..., 8:]).abs().max().item() < 1e-5
    assert (o[..., :8, :] == 0).all()


@given(Nq=st.integers(1, 40), Nk=st.integers(1, 40), group=st.sampled_from([1, 2]), causal=st.booleans(),
       tma=st.sampled_from(["off", "host", "device"]))
def test_random_shapes_property(Nq, Nk, group, causal, tma):
    q, k, v = _qkv(1, 2 * group, 2, Nq, Nk, 64, seed=Nq * 41 + Nk)
    o = flash_attention_hopper(q, k, v, causal, tma=tma)
    assert o.shape == (1, 2 * group, Nq, 64)
    assert (o.double() - _ref64(q, k, v, causal=causal)).abs().max().item() < 1e-5


def test_other_head_dims_fall_back_to_flash_attention():
    q, k, v = _qkv(1, 2, 1, 17, 17, 32)
    assert not fh.hopper_supported(q, k, v)
    assert "head dim" in fh.hopper_unsupported_reason(q)
    o = flash_attention_hopper(q, k, v, True)
    assert (o.double() - _ref64(q, k, v, causal=True)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="head dim"):
        flash_attention_hopper_forward(q, k, v)


def test_hopper_supported_here():
    q, k, v = _qkv(1, 2, 1, 8, 8, 64)
    if fh.interpreting():
        assert fh.hopper_supported(q, k, v)        # CPU tensors under the interpreter
    assert not fh.hopper_supported(q[..., :48])
    assert not fh.hopper_supported(q[0])           # not (B, H, N, D)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(grid="diagonal"), ValueError, "grid"),
    (dict(tma="sometimes"), ValueError, "tma"),
    (dict(backward="magic"), ValueError, "backward"),
    (dict(config=(128, 64)), TypeError, "config"),
    (dict(warp_specialize="yes"), TypeError, "warp_specialize"),
    (dict(causal_split=1), TypeError, "causal_split"),
])
def test_bad_switches_name_the_argument(kw, exc, word):
    q, k, v = _qkv(1, 2, 2, 8, 8, 64)
    with pytest.raises(exc, match=word):
        flash_attention_hopper(q, k, v, **kw)


@pytest.mark.parametrize("make,exc,word", [
    (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, "shape"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "float64"),
    (lambda q, k, v: (q[:, :1], k, v), ValueError, "heads"),
])
def test_bad_inputs_name_the_argument(make, exc, word):
    q, k, v = _qkv(1, 2, 2, 8, 8, 64)
    with pytest.raises(exc, match=word):
        flash_attention_hopper(*make(q, k, v))


# -- compiled on a Hopper GPU ---------------------------------------------------------------------
GPU_VARIANTS = [
    dict(),                                                               # defaults: device TMA, warp-specialised
    dict(tma="host", warp_specialize=False),
    dict(tma="off", warp_specialize=False, grid="m"),
    dict(tma="host", warp_specialize=False, grid="persistent", backward="fa2"),
]


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("switches", GPU_VARIANTS)
@pytest.mark.parametrize("N, D, Hq, Hk, causal", [(2048, 128, 8, 8, False), (1000, 64, 8, 2, True)])
def test_compiled_on_hopper_bf16(switches, N, D, Hq, Hk, causal):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(N + D)
    q = torch.randn(2, Hq, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(2, Hk, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(2, Hk, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    if not fh.hopper_supported(q, k, v):
        pytest.skip(f"not a Hopper rung here: {fh.hopper_unsupported_reason(q, k, v)}")
    o = fh.flash_attention_hopper(q, k, v, causal, **switches)
    do = torch.randn_like(o)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ref_in, causal=causal)
    assert o.dtype == torch.bfloat16 and _rel(o, ref) < 2e-2
    assert (o.float() - flash_attention(q, k, v, causal=causal).float()).abs().max().item() < 2e-2
    grads = torch.autograd.grad(o, (q, k, v), do)
    for a, b in zip(grads, torch.autograd.grad(ref, ref_in, do.float())):
        assert _rel(a, b) < 3e-2
