"""The quantized GEMV compiled on a GPU at LLM layer sizes, in bf16 and fp16, against the fp64
naive rung (dequantize with torch, then matmul). Marked ``gpu``: skipped without CUDA."""
import pytest
import torch

from effsmall.compress import quantize_int4, quantize_int8
from effsmall.compress.dequant_gemv import GPU_CONFIG, dequant_matmul_reference, quant_gemv

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K, N", [(4096, 4096), (4096, 11008), (11008, 4096)])
@pytest.mark.parametrize("M", [1, 16])
@pytest.mark.parametrize("bits, group", [(8, None), (4, 64), (4, 128)])
def test_quant_gemv_llm_shapes(dtype, K, N, M, bits, group):
    g = torch.Generator(device=DEV).manual_seed(K + N + M)
    w = torch.randn(N, K, device=DEV, generator=g) * 0.02
    x = torch.randn(M, K, device=DEV, generator=g).to(dtype)
    qt = quantize_int8(w, torch.float16) if bits == 8 else quantize_int4(w, group, torch.float16)
    y = quant_gemv(x, qt.data, qt.scale, bits)
    assert y.dtype == dtype and y.shape == (M, N)
    ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
    assert rel(y, ref) < 1e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_quant_gemv_odd_shapes_and_configs(bits):
    """Ragged N, M above one block of 16, and every launch configuration the benchmark tries."""
    from effsmall.bench.gemv import CONFIGS

    g = torch.Generator(device=DEV).manual_seed(bits)
    K, N = 4160, 1000                      # K = 65 groups of 64
    w = torch.randn(N, K, device=DEV, generator=g)
    qt = quantize_int8(w, torch.float16) if bits == 8 else quantize_int4(w, 64, torch.float16)
    for M in (1, 5, 23):
        x = torch.randn(M, K, device=DEV, generator=g).to(torch.bfloat16)
        ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
        for cfg in [GPU_CONFIG[bits], *(CONFIGS[bits] if M == 5 else [])]:
            assert rel(quant_gemv(x, qt.data, qt.scale, bits, config=cfg), ref) < 1e-2, cfg
