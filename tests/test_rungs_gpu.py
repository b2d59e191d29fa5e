"""Chapter 7's teaching kernels compiled on a real GPU at realistic sizes (marked ``gpu``: skipped
without CUDA; ``tests/attention/test_flash_minimal.py`` checks them in the interpreter).
Half-precision tolerances are relative to the fp64 reference's largest entry."""
import pytest
import torch

from effsmall.runtime import device_policy

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
HALF = [torch.bfloat16, torch.float16]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(autouse=True)
def _tensor_core_gpu():
    if not device_policy().tensor_cores:
        pytest.skip("Triton's tensor-core kernels need compute capability >= 8.0")


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("M, N, K", [(4096, 4096, 4096), (1000, 3000, 777), (8192, 256, 1024)])
def test_matmul_gpu(dtype, M, N, K):
    from effsmall.attention import matmul

    g = torch.Generator(device=DEV).manual_seed(M + N + K)
    a = torch.randn(M, K, device=DEV, generator=g).to(dtype)
    b = torch.randn(K, N, device=DEV, generator=g).to(dtype)
    for blocks in (dict(), dict(block_m=128, block_n=128, block_k=64)):
        c = matmul(a, b, **blocks)
        assert c.dtype == dtype and rel(c, a.double() @ b.double()) < 1e-2


def test_matmul_gpu_fp32_follows_matmul_precision():
    from effsmall.attention import matmul

    a, b = torch.randn(512, 384, device=DEV), torch.randn(384, 640, device=DEV)
    ref = a.double() @ b.double()
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert rel(matmul(a, b), ref) < 1e-5
        torch.set_float32_matmul_precision("high")
        assert rel(matmul(a, b), ref) < 5e-3
    finally:
        torch.set_float32_matmul_precision(prev)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name", ["flash_attention_minimal", "flash_attention_fa1"])
@pytest.mark.parametrize("B, H, N, D", [(2, 8, 2048, 64), (1, 16, 4096, 128), (4, 4, 1024, 32)])
def test_teaching_attention_kernels_gpu(dtype, name, B, H, N, D):
    import effsmall.attention as att

    g = torch.Generator(device=DEV).manual_seed(N + D)
    q, k, v = (torch.randn(B, H, N, D, device=DEV, generator=g).to(dtype) for _ in range(3))
    o = getattr(att, name)(q, k, v)
    ref = att.naive_attention(q.double(), k.double(), v.double())
    assert o.dtype == dtype and o.shape == q.shape and rel(o, ref) < 2e-2


@pytest.mark.parametrize("name", ["flash_attention_minimal", "flash_attention_fa1"])
def test_teaching_attention_kernels_gpu_fp32(name):
    import effsmall.attention as att

    q, k, v = (torch.randn(1, 4, 512, 64, device=DEV) for _ in range(3))
    o = getattr(att, name)(q, k, v)
    assert rel(o, att.naive_attention(q.double(), k.double(), v.double())) < 5e-3   # TF32 tl.dot


def test_teaching_attention_kernels_gpu_reject_cpu_tensors():
    from effsmall.attention import flash_attention_minimal

    x = torch.randn(1, 1, 64, 64)
    with pytest.raises(ValueError, match="CUDA tensors"):
        flash_attention_minimal(x, x, x)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("b, l, h, g, p, n, Q", [(2, 4096, 16, 1, 64, 128, 64), (1, 2048, 8, 2, 32, 64, 32)])
def test_ssd_minimal_gpu(dtype, b, l, h, g, p, n, Q):
    from effsmall.ssm import ssd_chunked, ssd_minimal
    from effsmall.ssm._ssd_testing import ssd_inputs

    X, A, B, C, _ = ssd_inputs(b=b, l=l, h=h, g=g, p=p, n=n, dtype=torch.float64, device=DEV)
    Y, s = ssd_minimal(X.to(dtype), A.float(), B.to(dtype), C.to(dtype), Q)
    Yr, sr = ssd_chunked(X.to(dtype).double(), A, B.to(dtype).double(), C.to(dtype).double(), Q)
    assert Y.dtype == dtype and rel(Y, Yr) < 2e-2 and rel(s, sr) < 2e-2
