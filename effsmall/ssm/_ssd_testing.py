"""Random SSD inputs for tests, chapters and benchmarks (seeded, any dtype/device)."""
import torch


def ssd_inputs(b=2, l=13, h=4, p=3, g=2, n=5, dtype=torch.float64, decay="mixed", seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(b, l, h, p, generator=gen, dtype=torch.float64)
    scale = {"mixed": 1.0, "strong": 20.0, "weak": 1e-6}[decay]
    A = -scale * torch.rand(b, l, h, generator=gen, dtype=torch.float64)
    B = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    C = torch.randn(b, l, g, n, generator=gen, dtype=torch.float64)
    h0 = torch.randn(b, h, p, n, generator=gen, dtype=torch.float64)
    return [t.to(dtype=dtype, device=device) for t in (X, A, B, C, h0)]
