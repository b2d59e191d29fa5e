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


def mamba_scan_host_cost(Bsz=1, L=32, H=32, P=64, N=16, chunk_size=16, *, backward=True, device="cpu",
                         sms=132, calls=20, repeats=5) -> dict:
    """Host work of one :func:`~effsmall.ssm.mamba_api.mamba_chunk_scan_combined` call (forward, or
    forward+backward) on its Triton path, measured without a GPU: Triton launches stubbed, the
    kernels' tile and segment choices made as on a GPU with ``sms`` SMs (132: H100/H200). Returns
    :func:`effsmall.measure.host_cost`'s dict. bf16, one group, every input needing a gradient.

    Host work depends on the shape only through the launch plan (Q, x-blocks, time segments).
    The default shape has the plan of the bench's 16K-token shapes (effsmall.bench.ssd: H = 32,
    P = 64, two launches per scan) but is small enough that CPU torch ops cost their dispatch,
    not their arithmetic: the µs are then close to a GPU host's dispatch cost (on a CPU the call
    also runs the A ≤ 0 value check, 2 ops, that CUDA skips). ``device="meta"`` counts at any
    shape for free, but meta ops run Python shape functions: its µs are not representative."""
    from unittest import mock

    from effsmall.measure import host_cost
    from effsmall.ssm import mamba_api, ssd_kernels

    dev, bf16 = device, torch.bfloat16
    x = torch.zeros(Bsz, L, H, P, device=dev, dtype=bf16, requires_grad=True)
    dt = torch.zeros(Bsz, L, H, device=dev, requires_grad=True)
    A = torch.zeros(H, device=dev, requires_grad=True)
    Bm, Cm = (torch.zeros(Bsz, L, 1, N, device=dev, dtype=bf16, requires_grad=True) for _ in range(2))
    dy = torch.zeros(Bsz, L, H, P, device=dev, dtype=bf16)

    def call():  # autograd.grad, not backward: a training step's grads start from None, nothing accumulates
        y = mamba_api.mamba_chunk_scan_combined(x, dt, A, Bm, Cm, chunk_size)
        if backward:
            torch.autograd.grad(y, (x, dt, A, Bm, Cm), dy)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU ops of a few KB: a thread pool's wake-ups would dominate them
    with mock.patch.object(mamba_api, "_use_triton", lambda t: True), \
            mock.patch.object(ssd_kernels, "_num_sms", lambda i: sms):
        ssd_kernels._config_cached.cache_clear()
        try:
            return host_cost(call, calls=calls, repeats=repeats)
        finally:
            ssd_kernels._config_cached.cache_clear()
            torch.set_num_threads(threads)
