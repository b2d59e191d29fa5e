"""The teaching SSD kernel (chapter 11) against ssd_chunked in fp64, on the policy device
(interpreted on a CPU, compiled when CUDA is visible: fp32 dots then use TF32)."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.ssm import ssd_chunked, ssd_minimal
from effsmall.ssm._ssd_testing import ssd_inputs
from effsmall.testing import DEVICE, on_device

GPU = torch.device(DEVICE).type == "cuda"
run = on_device(ssd_minimal)


def _rel(a, b):
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _ref(X, A, B, C, Q=16):
    return ssd_chunked(X.double(), A.double(), B.double(), C.double(), Q)


@given(b=st.integers(1, 2), chunks=st.integers(1, 3), hg=st.sampled_from([(1, 1), (2, 1), (4, 2)]),
       p=st.sampled_from([16, 32]), n=st.sampled_from([16, 32]), Q=st.sampled_from([16, 32]),
       decay=st.sampled_from(["mixed", "strong", "weak"]), seed=st.integers(0, 2**16))
def test_matches_ssd_chunked_fp32(b, chunks, hg, p, n, Q, decay, seed):
    h, g = hg
    X, A, B, C, _ = ssd_inputs(b=b, l=Q * chunks, h=h, g=g, p=p, n=n, dtype=torch.float32, decay=decay, seed=seed)
    Y, s = run(X, A, B, C, Q)
    Yr, sr = _ref(X, A, B, C, Q)
    assert Y.shape == X.shape and Y.dtype == torch.float32 and s.shape == (b, h, p, n)
    # fp32 cumulative log decays reach ~-300 under "strong" decay: exp(cs_t - cs_s) keeps ~1e-5
    tol = 5e-3 if GPU else 1e-4
    assert _rel(Y, Yr) < tol and _rel(s, sr) < tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    X, A, B, C, _ = ssd_inputs(b=1, l=48, h=2, g=1, p=16, n=16, dtype=dtype)
    Y, s = run(X, A, B, C, 16)
    Yr, sr = _ref(X, A, B, C)
    assert Y.dtype == dtype and _rel(Y, Yr) < 2e-2 and _rel(s, sr) < 2e-2


def test_chunk_size_does_not_change_the_answer():
    X, A, B, C, _ = ssd_inputs(b=1, l=64, h=2, g=2, p=16, n=16, dtype=torch.float32, seed=3)
    Y16, s16 = run(X, A, B, C, 16)
    Y64, s64 = run(X, A, B, C, 64)
    tol = 5e-3 if GPU else 1e-5
    assert _rel(Y16, Y64.double()) < tol and _rel(s16, s64.double()) < tol


def test_rejects_bad_input():
    X, A, B, C, _ = ssd_inputs(b=1, l=32, h=2, g=1, p=16, n=16, dtype=torch.float32)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        run(X[:, :30], A[:, :30], B[:, :30], C[:, :30], 16)
    with pytest.raises(ValueError, match="head dim p"):
        run(X[..., :8], A, B, C, 16)
    with pytest.raises(ValueError, match="chunk_size"):
        run(X, A, B, C, 24)
    with pytest.raises(TypeError, match="share a dtype"):
        run(X, A, B.half(), C, 16)
    with pytest.raises(ValueError, match="X must have shape"):
        run(X[0], A, B, C, 16)
    with pytest.raises(ValueError, match="<= 0"):
        run(X, -A, B, C, 16)
