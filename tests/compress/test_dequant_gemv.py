"""effsmall.compress.dequant_gemv: the dequantize-in-registers GEMV against the naive rung
(dequantize with torch, matmul in fp64), on the policy device (the Triton interpreter on CPU),
for int8 and packed int4 as ``quantize_int8``/``quantize_int4`` store them."""
import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.compress import quantize_int4, quantize_int8
from effsmall.compress.dequant_gemv import dequant_matmul_reference, gemv_bytes, quant_gemv, quant_linear
from effsmall.testing import DEVICE, on_device

gemv = on_device(quant_gemv)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300)).item()


def _quantize(w, bits, group):
    return quantize_int8(w) if bits == 8 else quantize_int4(w, group, scale_dtype=torch.float16)


@given(m=st.integers(1, 20), n=st.integers(1, 40), groups=st.integers(1, 3), group=st.sampled_from([16, 32, 48, 64]),
       bits=st.sampled_from([4, 8]), seed=st.integers(0, 99))
def test_matches_reference_odd_shapes(m, n, groups, group, bits, seed):
    g = torch.Generator().manual_seed(seed)
    K = groups * group
    w = torch.randn(n, K, generator=g)
    x = torch.randn(m, K, generator=g)
    qt = _quantize(w, bits, group)
    y = gemv(x, qt.data, qt.scale, bits)
    ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
    assert y.shape == (m, n) and y.dtype == x.dtype
    assert rel(y, ref) < 1e-5


@given(m=st.integers(1, 17), n=st.integers(1, 30), k=st.integers(1, 70), seed=st.integers(0, 99))
def test_int8_per_channel_any_k(m, n, k, seed):
    """Per-channel int8 has one group per row, so K need not be a multiple of anything."""
    g = torch.Generator().manual_seed(seed)
    w, x = torch.randn(n, k, generator=g), torch.randn(m, k, generator=g)
    qt = quantize_int8(w)
    ref = dequant_matmul_reference(x, qt.data, qt.scale, 8, torch.float64)
    assert rel(gemv(x, qt.data, qt.scale, 8), ref) < 1e-5


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_groupwise_and_int4_one_group(bits):
    """Both layouts take either scale shape: (N, 1) or (N, K/G)."""
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(24, 64, generator=g), torch.randn(3, 64, generator=g)
    q = quantize_int4(w, 64) if bits == 4 else quantize_int8(w)
    data = q.data
    for scale in (torch.rand(24, 1, generator=g) + 0.1, torch.rand(24, 4, generator=g) + 0.1):
        ref = dequant_matmul_reference(x, data, scale, bits, torch.float64)
        assert rel(gemv(x, data, scale, bits), ref) < 1e-5


def test_extreme_scales_and_zero_rows():
    """Rows six orders of magnitude apart and an all-zero row: every output is right relative to its own row."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(32, 128, generator=g) * torch.logspace(-3, 3, 32)[:, None]
    w[5] = 0.0
    x = torch.randn(2, 128, generator=g)
    for bits in (8, 4):
        qt = _quantize(w, bits, 32) if bits == 4 else quantize_int8(w)
        y = gemv(x, qt.data, qt.scale.float(), bits).double()
        ref = dequant_matmul_reference(x, qt.data, qt.scale.float(), bits, torch.float64)
        col = ref.abs().amax(0).clamp(min=1e-300)                          # (N,) per-output scale
        assert ((y - ref).abs().amax(0) / col).max() < 1e-5
        assert torch.all(y[:, 5] == 0)


def test_int4_every_nibble():
    """All 16 nibble values in both halves of a byte (-8 cannot come out of quantize_int4, but the layout allows it)."""
    from effsmall.compress import pack_int4

    q = torch.tensor([[a, b] for a in range(-8, 8) for b in range(-8, 8)], dtype=torch.int8).view(16, 32)  # (N, K)
    packed = pack_int4(q)                                                   # (16, 16)
    x = torch.eye(32)[:16] + torch.eye(32)[16:]                             # picks columns
    scale = torch.ones(16, 1)
    y = gemv(x, packed, scale, 4)
    ref = x.double() @ q.double().T
    assert torch.equal(y.double(), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_half_output(dtype):
    """fp16/bf16 in, the same dtype out (the interpreter computes bf16 in fp32: numpy has no bf16)."""
    g = torch.Generator().manual_seed(3)
    w, x = torch.randn(40, 64, generator=g), torch.randn(4, 64, generator=g).to(dtype)
    for bits in (4, 8):
        qt = quantize_int4(w, 32, scale_dtype=torch.float16) if bits == 4 else quantize_int8(w, torch.bfloat16)
        y = gemv(x, qt.data, qt.scale, bits)
        assert y.dtype == dtype
        ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
        assert rel(y, ref) < 1e-2


def test_quant_linear_keeps_leading_dims():
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(20, 32, generator=g), torch.randn(2, 3, 32, generator=g)
    qt = quantize_int4(w, 16)
    y = on_device(lambda x, d, s: quant_linear(x, type(qt)(d, s, 4, qt.shape, 16)))(x, qt.data, qt.scale)
    assert y.shape == (2, 3, 20)
    assert rel(y.reshape(6, 20), dequant_matmul_reference(x.reshape(6, 32), qt.data, qt.scale, 4, torch.float64)) < 1e-5


def test_bytes_model():
    # a 4096 x 4096 layer, one token: fp16 32 MiB; int4 with g=64 and fp16 scales ~ 8.5 MiB
    fp16 = gemv_bytes(1, 4096, 4096, None)
    int4 = gemv_bytes(1, 4096, 4096, 4, groups=64)
    assert fp16 == 2 * 4096 * 4096 + 4 * 4096
    assert 3.7 < fp16 / int4 < 3.8


# -- bad input -------------------------------------------------------------------------------------
def _args():
    w, x = torch.randn(8, 32), torch.randn(2, 32)
    qt = quantize_int4(w, 16)
    return x.to(DEVICE), qt.data.to(DEVICE), qt.scale.to(DEVICE)


@pytest.mark.parametrize("mutate, err, word", [
    (lambda x, d, s: (x, d, s, 3), ValueError, "bits"),
    (lambda x, d, s: (x.double(), d, s, 4), TypeError, "x"),
    (lambda x, d, s: (x.long(), d, s, 4), TypeError, "x"),
    (lambda x, d, s: (x, d.to(torch.int8), s, 4), TypeError, "qdata"),
    (lambda x, d, s: (x, d, s, 8), TypeError, "qdata"),
    (lambda x, d, s: (x[:, :30], d, s, 4), ValueError, "qdata"),
    (lambda x, d, s: (x[0], d, s, 4), ValueError, "x"),
    (lambda x, d, s: (x, d, s[:4], 4), ValueError, "scale"),
    (lambda x, d, s: (x, d, s.int(), 4), TypeError, "scale"),
    (lambda x, d, s: (x, d, torch.ones(8, 3, device=s.device), 4), ValueError, "scale"),
    (lambda x, d, s: (x.new_zeros(2, 0), d[:, :0], s, 4), ValueError, "non-empty"),
    (lambda x, d, s: ([[1.0]], d, s, 4), TypeError, "x"),
])
def test_bad_input(mutate, err, word):
    with pytest.raises(err, match=word):
        quant_gemv(*mutate(*_args()))


def test_group_not_multiple_of_16():
    w, x = torch.randn(8, 24), torch.randn(2, 24)
    qt = quantize_int4(w, 8)
    with pytest.raises(ValueError, match="group size"):
        quant_gemv(x.to(DEVICE), qt.data.to(DEVICE), qt.scale.to(DEVICE), 4)
    # the naive rung takes any group
    assert dequant_matmul_reference(x, qt.data, qt.scale, 4).shape == (2, 8)


def test_wrong_device_and_config():
    x, d, s = _args()
    other = torch.device("cpu") if DEVICE.type == "cuda" else torch.device("meta")
    with pytest.raises(ValueError, match="scale"):
        quant_gemv(x, d, s.to(other), 4)
    with pytest.raises(ValueError, match="block_n"):
        quant_gemv(x, d, s, 4, config=dict(block_n=24))
    with pytest.raises(ValueError, match="unknown"):
        quant_gemv(x, d, s, 4, config=dict(blockn=32))
    with pytest.raises(TypeError, match="QuantizedTensor"):
        quant_linear(x, (d, s))
    with pytest.raises(ValueError, match="forward-only"):
        quant_gemv(x.requires_grad_(), d, s, 4)
    with torch.no_grad():
        assert quant_gemv(x, d, s, 4).shape == (2, 8)
