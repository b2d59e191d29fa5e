"""The teaching kernels of chapter 7 — tiled matmul, minimal FA2-order and FA1-order attention —
against their references (``torch.matmul``, ``naive_attention``), on the policy device: the
interpreter on a CPU, the compiled kernels when CUDA is visible (fp32 ``tl.dot`` then runs on
TF32 tensor cores, hence the looser fp32 tolerance there)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import flash_attention_fa1, flash_attention_minimal, matmul, naive_attention
from effsmall.testing import DEVICE, on_device

GPU = torch.device(DEVICE).type == "cuda"
TOL32 = 5e-3 if GPU else 1e-5          # TF32 on a GPU, exact fp32 in the interpreter
KERNELS = {"fa2_minimal": flash_attention_minimal, "fa1": flash_attention_fa1}


def _ref(q, k, v, scale=None):
    return naive_attention(q.double(), k.double(), v.double(), scale=scale)


# -- tiled matmul ---------------------------------------------------------------------------------
@given(M=st.integers(1, 70), N=st.integers(1, 70), K=st.integers(1, 70))
def test_matmul_any_shape_fp32(M, N, K):
    g = torch.Generator().manual_seed(M * 10_000 + N * 100 + K)
    a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    c = on_device(matmul)(a, b, block_m=16, block_n=16, block_k=16)
    assert c.shape == (M, N) and c.dtype == torch.float32
    assert (c.double() - a.double() @ b.double()).abs().max().item() < TOL32 * max(1, K ** 0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_matmul_half_precision_and_strides(dtype):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 64, generator=g).to(dtype)
    b = torch.randn(48, 64, generator=g).to(dtype).t()           # a transposed (non-contiguous) view
    c = on_device(matmul)(a, b)
    ref = a.double() @ b.double()
    assert c.dtype == dtype
    assert ((c.double() - ref).abs().max() / ref.abs().max()).item() < 1e-2


def test_matmul_extreme_values():
    a = torch.full((32, 32), 1e4)
    b = torch.eye(32) * 1e-4
    assert (on_device(matmul)(a, b) - 1.0).abs().max().item() < (3e-3 if GPU else 1e-5)


def test_matmul_rejects_bad_input():
    with pytest.raises(ValueError, match="a must be 2-D"):
        matmul(torch.randn(2, 3, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="columns"):
        on_device(matmul)(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(TypeError, match="b must be float16"):
        on_device(matmul)(torch.randn(3, 4), torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="block_k"):
        on_device(matmul)(torch.randn(3, 4), torch.randn(4, 5), block_k=24)


# -- minimal FA2 order and FA1 order --------------------------------------------------------------
@pytest.mark.parametrize("name", KERNELS)
@given(B=st.integers(1, 2), H=st.integers(1, 3), nblocks=st.integers(1, 4), D=st.sampled_from([16, 32, 64]),
       seed=st.integers(0, 2**16))
def test_attention_kernels_match_naive_fp32(name, B, H, nblocks, D, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, 16 * nblocks, D, generator=g) for _ in range(3))
    o = on_device(KERNELS[name])(q, k, v, block_m=16, block_n=16)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert (o.double() - _ref(q, k, v)).abs().max().item() < TOL32


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_kernels_half_precision(name, dtype):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 64, 64, generator=g).to(dtype) for _ in range(3))
    o = on_device(KERNELS[name])(q, k, v, block_m=32, block_n=16)    # unequal blocks
    assert o.dtype == dtype
    assert (o.double() - _ref(q, k, v)).abs().max().item() < 2e-2


@pytest.mark.parametrize("name", KERNELS)
def test_attention_kernels_extreme_scores_and_scale(name):
    # scores in the hundreds: the online max must hold. On a GPU in fp16 (exact products, fp32
    # sums): TF32 would round scores of this size by ~0.1, which no softmax survives.
    dtype, tol = (torch.float16, 1e-2) if GPU else (torch.float32, 1e-5)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 1, 32, 32, generator=g) for _ in range(3))
    q, k, v = (q * 30).to(dtype), k.to(dtype), v.to(dtype)
    for scale in (None, 0.05):
        o = on_device(KERNELS[name])(q, k, v, scale=scale)
        assert torch.isfinite(o).all()
        assert (o.double() - _ref(q, k, v, scale)).abs().max().item() < tol


def test_fa1_and_fa2_orders_agree():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 48, 32, generator=g) for _ in range(3))
    a = on_device(flash_attention_minimal)(q, k, v, block_m=16, block_n=16)
    b = on_device(flash_attention_fa1)(q, k, v, block_m=16, block_n=16)
    assert (a - b).abs().max().item() < TOL32


@pytest.mark.parametrize("name", KERNELS)
def test_attention_kernels_reject_bad_input(name):
    fn = on_device(KERNELS[name])
    x = torch.randn(1, 2, 32, 32)
    with pytest.raises(ValueError, match="multiple of block_m"):
        fn(*(torch.randn(1, 2, 24, 32) for _ in range(3)), block_m=16, block_n=16)   # no masks: N % 16 == 0
    with pytest.raises(ValueError, match="one shape"):
        fn(x, torch.randn(1, 1, 32, 32), torch.randn(1, 1, 32, 32))       # GQA is not supported here
    with pytest.raises(ValueError, match="power of two"):
        fn(*(torch.randn(1, 2, 32, 48) for _ in range(3)))
    with pytest.raises(ValueError, match=r"\(B, H, N, D\)"):
        fn(*(torch.randn(2, 32, 32) for _ in range(3)))
    with pytest.raises(TypeError, match="share a dtype"):
        fn(x, x.half(), x)
    with pytest.raises(ValueError, match="block_n must be a power of two"):
        fn(x, x, x, block_n=24)
