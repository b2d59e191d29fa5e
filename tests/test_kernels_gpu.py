"""Every kernel compiled on a real GPU, at realistic sizes, in the dtypes readers train in.

Marked ``gpu``: skipped without CUDA (the CPU suite checks the same kernels in the Triton
interpreter at small sizes). References are computed in fp32/fp64 on the GPU; half-precision
tolerances are relative (``max |Δ| / max |ref|``), as bf16 keeps 8 bits of mantissa.
"""
import pytest
import torch

from effsmall.runtime import device_policy

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
HALF = [torch.bfloat16, torch.float16]


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _grads(out, inputs, cot):
    return torch.autograd.grad(out, inputs, cot)


@pytest.fixture(autouse=True)
def _tensor_core_gpu():
    if not device_policy().tensor_cores:
        pytest.skip("Triton's tensor-core kernels need compute capability >= 8.0")


# -- attention ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("N, D, Hq, Hk, causal, window", [
    (2048, 64, 16, 4, True, None),       # GQA 4:1, causal
    (1000, 128, 8, 8, False, None),      # odd N, D = 128
    (1537, 96, 8, 2, True, (256, 0)),    # padded head dim, sliding window
])
def test_flash_attention_fwd_bwd(dtype, N, D, Hq, Hk, causal, window):
    from effsmall.attention import flash_attention, naive_attention
    from effsmall.attention.flash_triton import backend

    g = torch.Generator(device=DEV).manual_seed(N)
    q = torch.randn(2, Hq, N, D, device=DEV, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(2, Hk, N, D, device=DEV, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(2, Hk, N, D, device=DEV, dtype=dtype, generator=g).requires_grad_()
    assert backend(q) == "triton"
    o = flash_attention(q, k, v, causal=causal, window=window)
    do = torch.randn_like(o)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ref_in, causal=causal, window=window)
    assert o.dtype == dtype and rel(o, ref) < 2e-2
    for a, b in zip(_grads(o, (q, k, v), do), _grads(ref, ref_in, do.float())):
        assert rel(a, b) < 3e-2


@pytest.mark.parametrize("dtype", HALF)
def test_flash_attention_varlen(dtype):
    from effsmall.attention import flash_attention_varlen, naive_attention

    lens = [1, 700, 129, 1024, 33]
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=DEV)
    g = torch.Generator(device=DEV).manual_seed(0)
    q, k, v = (torch.randn(sum(lens), 8, 64, device=DEV, dtype=dtype, generator=g) for _ in range(3))
    o = flash_attention_varlen(q, k, v, cu, cu, max(lens), max(lens), causal=True)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = naive_attention(*(x[a:b].float().transpose(0, 1)[None] for x in (q, k, v)), causal=True)
        assert rel(o[a:b], ref[0].transpose(0, 1)) < 2e-2


@pytest.mark.parametrize("dtype, D", [(torch.float16, d) for d in (16, 32, 64, 96, 128, 192, 256)]
                         + [(torch.bfloat16, 64), (torch.bfloat16, 128), (torch.float32, 32), (torch.float32, 96)])
def test_flash_attention_every_head_dim(dtype, D):
    """Every supported head dim (powers of two and padded ones), GQA 2:1, Nq != Nk, full, causal
    and a window; outputs and gradients against fp32 naive attention (fp64 for fp32 inputs)."""
    from effsmall.attention import flash_attention, naive_attention

    g = torch.Generator(device=DEV).manual_seed(D)
    q = torch.randn(2, 4, 203, D, device=DEV, generator=g).to(dtype).requires_grad_()
    k = torch.randn(2, 2, 250, D, device=DEV, generator=g).to(dtype).requires_grad_()
    v = torch.randn(2, 2, 250, D, device=DEV, generator=g).to(dtype).requires_grad_()
    do = torch.randn(2, 4, 203, D, device=DEV, generator=g).to(dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    for causal, window in ((False, None), (True, None), (False, (40, 7))):
        o = flash_attention(q, k, v, causal=causal, window=window)
        ref_in = [t.detach().to(ref_dtype).requires_grad_() for t in (q, k, v)]
        ref = naive_attention(*ref_in, causal=causal, window=window)
        assert o.dtype == dtype and rel(o, ref) < tol
        for a, b in zip(_grads(o, (q, k, v), do), _grads(ref, ref_in, do.to(ref_dtype))):
            assert rel(a, b) < 1.5 * tol


def test_flash_attention_tf32_follows_matmul_precision():
    """fp32 inputs under ``set_float32_matmul_precision("high")`` multiply on TF32 tensor cores."""
    from effsmall.attention import flash_attention, naive_attention

    q, k, v = (torch.randn(1, 4, 300, 64, device=DEV) for _ in range(3))
    ref = naive_attention(q.double(), k.double(), v.double(), causal=True)
    prev = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert rel(flash_attention(q, k, v, causal=True), ref) < 1e-2
    finally:
        torch.set_float32_matmul_precision(prev)


def test_flash_attention_fp32_is_exact_on_gpu():
    from effsmall.attention import flash_attention, naive_attention

    q, k, v = (torch.randn(1, 4, 777, 64, device=DEV) for _ in range(3))
    ref = naive_attention(q.double(), k.double(), v.double(), causal=True)
    assert (flash_attention(q, k, v, causal=True).double() - ref).abs().max().item() < 1e-5


# -- SSD -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("n", [64, 128])
def test_ssd_triton_fwd_bwd(dtype, n):
    from effsmall.ssm._ssd_testing import ssd_inputs
    from effsmall.ssm.ssd_chunkwise import ssd_chunked
    from effsmall.ssm.ssd_kernels import ssd_triton

    X, A, B, C, h0 = ssd_inputs(b=2, l=2048 + 37, h=8, g=1, p=64, n=n, dtype=torch.float32, device=DEV)
    X, A = X * 0.5, A * 0.1
    args = [X.to(dtype), A, B.to(dtype), C.to(dtype), h0]
    args = [t.clone().requires_grad_() for t in args]
    ref_in = [t.detach().double().requires_grad_() for t in args]
    Y, s = ssd_triton(*args[:4], 256, initial_states=args[4])
    Yr, sr = ssd_chunked(*ref_in[:4], 256, initial_states=ref_in[4])
    assert Y.dtype == dtype and rel(Y, Yr) < 2e-2 and rel(s, sr) < 2e-2
    gY, gs = torch.randn_like(Yr), torch.randn_like(sr)
    got = torch.autograd.grad((Y.double() * gY).sum() + (s.double() * gs).sum(), args)
    want = torch.autograd.grad((Yr * gY).sum() + (sr * gs).sum(), ref_in)
    for name, a, b in zip("XABCh", got, want):
        assert rel(a, b) < 3e-2, name


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
def test_ssd_triton_packed_sequences_and_initial_states(dtype):
    """Packed sequences (``seq_idx``), initial states, groups: outputs, final states and every
    gradient against fp64 ``ssd_chunked``."""
    from effsmall.ssm._ssd_testing import ssd_inputs
    from effsmall.ssm.ssd_chunkwise import ssd_chunked
    from effsmall.ssm.ssd_kernels import ssd_triton

    X, A, B, C, h0 = ssd_inputs(b=2, l=1000, h=8, p=64, g=2, n=64, device=DEV)   # float64
    X, A = X * 0.5, A * 0.1
    seq = torch.cat([torch.zeros(2, 300), torch.ones(2, 450), 2 * torch.ones(2, 250)], 1).int().to(DEV)
    ref_in = [t.clone().requires_grad_() for t in (X, A, B, C, h0)]
    Yr, sr = ssd_chunked(*ref_in[:4], 64, initial_states=ref_in[4], seq_idx=seq)
    args = [t.clone().requires_grad_() for t in (X.to(dtype), A.float(), B.to(dtype), C.to(dtype), h0.float())]
    Y, s = ssd_triton(*args[:4], 64, initial_states=args[4], seq_idx=seq)
    tol = 5e-3 if dtype == torch.float32 else 3e-2
    assert Y.dtype == dtype and rel(Y, Yr) < tol and rel(s, sr) < tol
    gY, gs = torch.randn_like(Yr), torch.randn_like(sr)
    got = torch.autograd.grad((Y.double() * gY).sum() + (s.double() * gs).sum(), args)
    want = torch.autograd.grad((Yr * gY).sum() + (sr * gs).sum(), ref_in)
    for name, a, b in zip(("X", "A", "B", "C", "h0"), got, want):
        assert rel(a, b) < tol, name


@pytest.mark.parametrize("dtype", HALF)
def test_mamba_chunk_scan_combined_fwd_bwd(dtype):
    from effsmall.ssm.mamba_api import mamba_chunk_scan_combined

    g = torch.Generator(device=DEV).manual_seed(0)
    b, l, h, p, ng, n = 2, 1500, 8, 64, 2, 64
    x = torch.randn(b, l, h, p, device=DEV, generator=g)
    dt = torch.randn(b, l, h, device=DEV, generator=g)
    A = -torch.rand(h, device=DEV, generator=g) - 0.1
    B, C = (torch.randn(b, l, ng, n, device=DEV, generator=g) for _ in range(2))
    D, z = torch.randn(h, device=DEV, generator=g), torch.randn(b, l, h, p, device=DEV, generator=g)
    half = [t.to(dtype).requires_grad_() for t in (x, B, C, z)] + [dt.clone().requires_grad_()]
    full = [t.detach().double().requires_grad_() for t in half]
    y = mamba_chunk_scan_combined(half[0], half[4], A, half[1], half[2], 256, D=D, z=half[3], dt_softplus=True)
    yr = mamba_chunk_scan_combined(full[0], full[4], A.double(), full[1], full[2], 256, D=D.double(),
                                   z=full[3], dt_softplus=True)          # fp64: the PyTorch path
    assert y.dtype == dtype and rel(y, yr) < 2e-2
    gy = torch.randn_like(yr)
    for a, bb in zip(torch.autograd.grad((y.double() * gy).sum(), half), torch.autograd.grad((yr * gy).sum(), full)):
        assert rel(a, bb) < 3e-2


def test_selective_scan_triton_compiled():
    from effsmall.ssm.selective_scan import selective_scan_sequential
    from effsmall.ssm.selective_scan_kernel import selective_scan_triton

    g = torch.Generator(device=DEV).manual_seed(0)
    b, d, l, n = 2, 256, 1000, 16
    r = lambda *s: torch.randn(*s, device=DEV, generator=g)  # noqa: E731
    x = dict(u=r(b, d, l), delta=r(b, d, l) * 0.5, A=-torch.rand(d, n, device=DEV, generator=g) * 2,
             B=r(b, n, l), C=r(b, n, l), D=r(d), z=r(b, d, l), delta_bias=r(d))
    y0, h0 = selective_scan_sequential(**x, delta_softplus=True)
    y1, h1 = selective_scan_triton(**x, delta_softplus=True)
    torch.testing.assert_close(y1, y0, rtol=1e-3, atol=5e-4)     # fp32, 1000 steps, other summation order
    torch.testing.assert_close(h1, h0, rtol=1e-3, atol=5e-4)


# -- the three LMs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["transformer", "mamba2", "hybrid"])
def test_lm_train_step_and_cached_decoding(arch):
    from effsmall.models import LMConfig, build_model
    from effsmall.models.training import lm_loss

    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=512, d_model=256, n_layers=4, arch=arch, n_heads=8, n_kv_heads=2,
                   d_state=64, headdim=64, chunk_size=64, attn_every=2)
    model = build_model(cfg).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 512, (4, 300), device=DEV)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss0 = lm_loss(model, (x[:, :-1], x[:, 1:]))
    loss0.backward()
    opt.step()
    assert torch.isfinite(loss0) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        full = model(x[:1, :77])
        logits, caches = model.prefill(x[:1, :40])
        steps = [logits]
        for t in range(40, 77):
            out, caches = model.step(x[:1, t], caches)
            steps.append(out[:, None])
    # the full forward (chunked SSD, attention kernels) and the steps (the recurrence) sum in
    # different orders; on an H200 the logits (size ~1) differed by 0.8e-3 to 1.1e-3 between runs
    assert (torch.cat(steps, 1) - full).abs().max().item() < 3e-3
