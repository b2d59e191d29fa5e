"""effsmall.compress.dequant_gemv's decode path (M ≤ FMA_MAX_M rows of x: FMA in fp32, int4 without
interleaving, K split across programs whose partial sums meet by atomic adds) against the naive
rung, on the policy device (the Triton interpreter on CPU)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from effsmall.compress import quantize_int4, quantize_int8
from effsmall.compress.dequant_gemv import FMA_MAX_M, dequant_matmul_reference, quant_gemv
from effsmall.testing import on_device

gemv = on_device(quant_gemv)


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-300)).item()


def _weights(n, K, bits, group, g):
    w = torch.randn(n, K, generator=g)
    return quantize_int8(w) if bits == 8 else quantize_int4(w, group, scale_dtype=torch.float16)


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, FMA_MAX_M), n=st.integers(1, 37), groups=st.integers(1, 5),
       group=st.sampled_from([16, 32, 64, 128]), bits=st.sampled_from([4, 8]), split_k=st.integers(1, 4),
       block_n=st.sampled_from([1, 4, 16]), subs=st.integers(1, 3), seed=st.integers(0, 99))
def test_split_k_matches_reference(m, n, groups, group, bits, split_k, block_n, subs, seed):
    """Any number of K slices (more than K has blocks, too), any rows per program, ragged N."""
    g = torch.Generator().manual_seed(seed)
    K = groups * group
    qt, x = _weights(n, K, bits, group, g), torch.randn(m, K, generator=g)
    cfg = dict(split_k=split_k, block_n=block_n, subs=subs, block_k=32)
    y = gemv(x, qt.data, qt.scale, bits, config=cfg)
    assert y.shape == (m, n) and y.dtype == x.dtype
    assert rel(y, dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)) < 1e-5


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("K", [18, 50, 100, 130])
@pytest.mark.parametrize("split_k", [1, 3])
def test_one_group_per_row_odd_k(bits, K, split_k):
    """One scale per row: K need not be a multiple of the block (int4: even K), the tail is masked."""
    g = torch.Generator().manual_seed(K)
    w, x = torch.randn(21, K, generator=g), torch.randn(1, K, generator=g)
    qt = quantize_int8(w) if bits == 8 else quantize_int4(w, K)
    y = gemv(x, qt.data, qt.scale, bits, config=dict(split_k=split_k, block_k=16))
    assert rel(y, dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)) < 1e-5


@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize("bits, group", [(8, None), (4, 16), (4, 128)])
def test_both_paths_agree(M, bits, group):
    """M = 1–4 take the decode path, 5 and 16 the tensor-core path: one answer either side."""
    g = torch.Generator().manual_seed(M)
    qt, x = _weights(40, 256, bits, group, g), torch.randn(M, 256, generator=g)
    ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
    assert rel(gemv(x, qt.data, qt.scale, bits, config=dict(split_k=2)), ref) < 1e-5


def test_every_nibble_split():
    """All 16 × 16 nibble pairs through the even/odd-column product, with K split in two."""
    from effsmall.compress import pack_int4

    q = torch.tensor([[a, b] for a in range(-8, 8) for b in range(-8, 8)], dtype=torch.int8).view(8, 64)  # (N, K)
    x = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    y = gemv(x, pack_int4(q), torch.ones(8, 1), 4, config=dict(split_k=2, block_k=16))
    assert rel(y, x.double() @ q.double().T) < 1e-6                       # fp32 rounding; a wrong nibble is > 1e-2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_split(dtype):
    g = torch.Generator().manual_seed(5)
    qt = _weights(24, 128, 4, 32, g)
    x = torch.randn(3, 128, generator=g).to(dtype)
    y = gemv(x, qt.data, qt.scale, 4, config=dict(split_k=2))
    assert y.dtype == dtype
    assert rel(y, dequant_matmul_reference(x, qt.data, qt.scale, 4, torch.float64)) < 1e-2


@pytest.mark.parametrize("cfg, word", [(dict(split_k=0), "split_k"), (dict(subs=1.5), "subs"),
                                       (dict(block_n=12), "block_n"), (dict(block_k=8), "block_k")])
def test_bad_config(cfg, word):
    qt = _weights(8, 32, 4, 16, torch.Generator().manual_seed(0))
    x = torch.randn(1, 32)
    with pytest.raises(ValueError, match=word):
        gemv(x, qt.data, qt.scale, 4, config=cfg)
