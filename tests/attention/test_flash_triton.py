"""flash_attention (Triton, run by the interpreter on CPU) equals naive_attention.

Sizes are tiny: the interpreter executes every tile in Python. The kernels use 16×16 tiles in
the interpreter, so N up to 40 already crosses several key/query blocks, partial blocks,
causal diagonals and window edges.
"""
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import effsmall.attention.flash_triton as ft
from effsmall.attention import flash_attention, naive_attention
from effsmall.testing import on_device

# The kernels run where the device policy says (compiled on a GPU, interpreted on a CPU); inputs
# and references stay on the CPU, the wrapper moves tensors (differentiably) to and fro.
flash_attention = on_device(flash_attention)
flash_attention_forward = on_device(ft.flash_attention_forward)


def _qkv(B, Hq, Hk, Nq, Nk, D, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(B, Hq, Nq, D, generator=g) * scale).to(dtype)
    k = (torch.randn(B, Hk, Nk, D, generator=g) * scale).to(dtype)
    v = torch.randn(B, Hk, Nk, D, generator=g).to(dtype)
    return q, k, v


def _ref64(q, k, v, **kw):
    return naive_attention(q.double(), k.double(), v.double(), **kw)


CASES = [  # B, Hq, Hk, Nq, Nk, D, causal, window
    (1, 1, 1, 1, 1, 16, False, None),        # N = 1
    (1, 2, 2, 1, 1, 32, True, None),
    (2, 2, 2, 37, 37, 32, True, None),       # not a multiple of the block
    (1, 4, 2, 20, 33, 64, True, None),       # Nq < Nk causal, GQA
    (1, 2, 1, 33, 20, 16, True, None),       # Nq > Nk causal: first 13 rows see no key
    (1, 4, 1, 17, 40, 32, False, None),      # MQA
    (1, 2, 2, 40, 40, 96, False, (5, 3)),    # D = 96 padded to 128, sliding window
    (1, 2, 1, 25, 30, 32, False, (3, -1)),   # left window only
    (1, 2, 2, 30, 30, 16, True, (4, None)),  # causal + left window
    (1, 1, 1, 24, 24, 16, False, (0, 0)),    # only the diagonal
]


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window", CASES)
def test_forward_fp32_matches_naive(B, Hq, Hk, Nq, Nk, D, causal, window):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D)
    o = flash_attention(q, k, v, causal=causal, window=window)
    ref = _ref64(q, k, v, causal=causal, window=window)
    err = (o.double() - ref).abs().max().item()
    print(f"max error {err:.2e} (tol 1e-5)")
    assert o.shape == q.shape and o.dtype == q.dtype
    assert torch.isfinite(o).all()
    assert err < 1e-5


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window", CASES[2:7])
def test_gradients_match_naive_autograd(B, Hq, Hk, Nq, Nk, D, causal, window):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D, seed=1)
    do = torch.randn(B, Hq, Nq, D, generator=torch.Generator().manual_seed(2))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention(q, k, v, causal=causal, window=window)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = naive_attention(q64, k64, v64, causal=causal, window=window)
    rgrads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    for name, a, b in zip("qkv", grads, rgrads):
        err = (a.double() - b).abs().max().item()
        print(f"d{name} max error {err:.2e}")
        assert a.shape == b.shape
        assert err < 2e-5, name


@pytest.mark.parametrize("D", [128, 192, 256])
def test_large_head_dims(D):
    q, k, v = _qkv(1, 2, 1, 7, 8, D)
    o = flash_attention(q, k, v, causal=True)
    assert (o.double() - _ref64(q, k, v, causal=True)).abs().max().item() < 1e-5


def test_fp16_matches_naive():
    q, k, v = _qkv(1, 2, 1, 33, 40, 64, dtype=torch.float16)
    o = flash_attention(q, k, v, causal=True)
    ref = naive_attention(q.float(), k.float(), v.float(), causal=True)
    assert o.dtype == torch.float16
    assert (o.float() - ref).abs().max().item() < 1e-2


def test_bf16_in_interpreter_computes_in_fp32():
    q, k, v = _qkv(1, 2, 2, 9, 9, 16, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = flash_attention(q, k, v)
    assert o.dtype == torch.bfloat16
    assert (o.float() - naive_attention(q.float(), k.float(), v.float())).abs().max().item() < 1e-2


def test_matches_torch_sdpa_in_float64_reference():
    q, k, v = _qkv(1, 2, 2, 19, 19, 32)
    ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    o = flash_attention(q, k, v, causal=True)
    assert (o.double() - ref).abs().max().item() < 1e-5


def test_lse_is_returned_by_the_forward():
    q, k, v = _qkv(1, 1, 1, 18, 18, 16)
    o, lse = flash_attention_forward(q, k, v, causal=True)
    s = (q.double() @ k.double().transpose(-1, -2)) * 16 ** -0.5
    s = s.masked_fill(torch.ones(18, 18, dtype=torch.bool).triu(1), float("-inf"))
    assert (lse.double() - torch.logsumexp(s, -1)).abs().max().item() < 1e-5


@given(Nq=st.integers(1, 40), Nk=st.integers(1, 40), group=st.sampled_from([1, 2]),
       D=st.sampled_from([16, 32]), causal=st.booleans())
def test_random_shapes_property(Nq, Nk, group, D, causal):
    q, k, v = _qkv(1, 2 * group, 2, Nq, Nk, D, seed=Nq * 41 + Nk)
    o = flash_attention(q, k, v, causal=causal)
    assert o.shape == (1, 2 * group, Nq, D)
    assert (o.double() - _ref64(q, k, v, causal=causal)).abs().max().item() < 1e-5


def test_fallback_on_old_gpus_warns_and_is_correct(monkeypatch):
    # Simulate a GPU without tensor-core tl.dot (T4): the documented fallback is tiled_attention.
    monkeypatch.setattr(ft, "fallback_reason", lambda q: "compute capability < 8.0 (simulated)")
    monkeypatch.setattr("effsmall.runtime._warned", set())
    q, k, v = _qkv(1, 2, 1, 12, 12, 16)
    with pytest.warns(RuntimeWarning, match="compute capability"):
        o = flash_attention(q, k, v, causal=True)
    assert (o.double() - _ref64(q, k, v, causal=True)).abs().max().item() < 1e-5


# the contract's mistakes are tested over every rung in test_contract.py; these are the kernels' own
@pytest.mark.parametrize("make,exc,word", [
    (lambda q, k, v: (q[:, :, :, :8], k[:, :, :, :8], v[:, :, :, :8]), ValueError, "D=8"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "float64"),
    (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, "shape"),
    (lambda q, k, v: (q.transpose(-1, -2), k, v), ValueError, "q"),                   # non-contiguous D
])
def test_bad_inputs_name_the_argument(make, exc, word):
    q, k, v = _qkv(1, 2, 2, 16, 16, 16)
    with pytest.raises(exc, match=word):
        flash_attention(*make(q, k, v))


@pytest.mark.parametrize("Nq,Nk,bm,bn,causal,window", [
    (100, 100, 16, 32, True, None), (37, 90, 16, 16, True, None), (90, 37, 32, 16, True, None),
    (64, 64, 16, 16, False, (10, 3)), (50, 70, 16, 32, False, None), (33, 33, 16, 16, True, (5, None))])
def test_block_schedule_covers_exactly_the_visible_tiles(Nq, Nk, bm, bn, causal, window):
    from effsmall.attention.naive import attention_mask

    sched = ft.block_schedule(Nq, Nk, bm, bn, causal=causal, window=window)
    mask = attention_mask(Nq, Nk, causal, window)                       # (Nq, Nk) visible pairs
    for i in range(sched.shape[0]):
        for j in range(sched.shape[1]):
            tile = mask[i * bm:(i + 1) * bm, j * bn:(j + 1) * bn]
            full_tile = tile.shape[1] == bn and bool(tile.all())  # padded query rows never stored
            if sched[i, j] == 0:
                assert not tile.any()                 # skipped tiles hold no visible pair
            if sched[i, j] == 1:
                assert full_tile                      # unmasked tiles need no mask at all


def test_triton_intro_kernels():
    from effsmall.attention import triton_intro

    softmax_rows, vector_add = on_device(triton_intro.softmax_rows), on_device(triton_intro.vector_add)

    x, y = torch.randn(3000), torch.randn(3000)
    assert torch.equal(vector_add(x, y), x + y)
    a = torch.randn(7, 100) * 50
    assert (softmax_rows(a) - torch.softmax(a, -1)).abs().max().item() < 1e-6
    with pytest.raises(ValueError, match="x"):
        softmax_rows(torch.randn(3))
