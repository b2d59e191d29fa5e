"""The quantized GEMV compiled on a GPU at LLM layer sizes, in bf16 and fp16, against the fp64
naive rung (dequantize with torch, then matmul). Marked ``gpu``: skipped without CUDA."""
import pytest
import torch

from effsmall.compress import quantize_int4, quantize_int8
from effsmall.compress.dequant_gemv import GPU_CONFIG, GPU_FMA_CONFIG, dequant_matmul_reference, quant_gemv

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
    """Ragged N, M on both paths and above one block of 16, and every launch configuration the
    benchmark tries for each M bucket (decode: split K, few rows per program)."""
    from effsmall.bench.gemv import CONFIGS, bucket

    g = torch.Generator(device=DEV).manual_seed(bits)
    K, N = 4160, 1000                      # K = 65 groups of 64
    w = torch.randn(N, K, device=DEV, generator=g)
    qt = quantize_int8(w, torch.float16) if bits == 8 else quantize_int4(w, 64, torch.float16)
    for M in (1, 3, 5, 23):
        x = torch.randn(M, K, device=DEV, generator=g).to(torch.bfloat16)
        ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
        for cfg in [None, GPU_CONFIG[bits], GPU_FMA_CONFIG[bits], *CONFIGS.get((bits, bucket(M)), [])]:
            assert rel(quant_gemv(x, qt.data, qt.scale, bits, config=cfg), ref) < 1e-2, (M, cfg)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("split_k", [1, 2, 7])
def test_quant_gemv_decode_split_k_in_a_cuda_graph(bits, split_k):
    """The decode path with K split (atomic adds into a zeroed fp32 buffer) replays correctly from a
    CUDA graph, as the benchmark times it."""
    g = torch.Generator(device=DEV).manual_seed(split_k)
    K, N = 4096, 4096
    w = torch.randn(N, K, device=DEV, generator=g) * 0.02
    qt = quantize_int8(w, torch.float16) if bits == 8 else quantize_int4(w, 64, torch.float16)
    x = torch.randn(1, K, device=DEV, generator=g).to(torch.float16)
    cfg = dict(GPU_FMA_CONFIG[bits], split_k=split_k)
    quant_gemv(x, qt.data, qt.scale, bits, config=cfg)                       # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = quant_gemv(x, qt.data, qt.scale, bits, config=cfg)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    ref = dequant_matmul_reference(x, qt.data, qt.scale, bits, torch.float64)
    assert rel(y, ref) < 1e-2
