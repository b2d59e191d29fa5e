"""The fused Mamba-2 decoding step (Triton) equals Mamba2Block.step."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.ssm import Mamba2Block, mamba2_block_step, mamba2_step
from effsmall.ssm.mamba2_block import Mamba2Cache
from effsmall.ssm.mamba2_step_kernel import ring_from_window, window_from_ring
from effsmall.testing import DEVICE, on_device

# Compiled on a GPU, interpreted on a CPU. The blocks (and so their caches) live on the policy
# device; loose CPU inputs to the kernel are moved there by the wrapper.
mamba2_step = on_device(mamba2_step)


def _block(dtype=torch.float32, device=DEVICE, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(d_model=32, d_state=16, headdim=16, ngroups=2, chunk_size=8)
    cfg.update(kw)
    return Mamba2Block(**cfg).to(device=device, dtype=dtype)


def _run(m, batch, prompt, steps, dtype, device=DEVICE):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, prompt + steps, m.d_model, generator=g).to(device, dtype)
    if prompt:
        _, c_ref = m(u[:, :prompt], return_cache=True)
    else:
        c_ref = m.allocate_cache(batch)
    c = c_ref
    worst = 0.0
    for t in range(prompt, prompt + steps):
        o_ref, c_ref = m.step(u[:, t], c_ref)
        o, c = mamba2_block_step(m, u[:, t], c)
        worst = max(worst, (o.float() - o_ref.float()).abs().max().item())
    return worst, c, c_ref


@pytest.mark.parametrize("kw", [dict(), dict(ngroups=1), dict(d_conv=3, conv_bias=False), dict(headdim=8, d_state=12),
                                dict(ngroups=4, headdim=8)])
def test_step_equals_block_step(kw):
    m = _block(**kw)
    worst, c, c_ref = _run(m, 3, 5, 4, torch.float32)
    assert worst < 1e-5
    assert torch.equal(c.conv_state, c_ref.conv_state)
    assert (c.ssm_state - c_ref.ssm_state).abs().max().item() < 1e-5


def test_from_empty_cache_and_inputs_untouched():
    m = _block()
    cache = m.allocate_cache(2)
    before = (cache.conv_state.clone(), cache.ssm_state.clone())
    u = torch.randn(2, 32, device=DEVICE)
    out, new = mamba2_block_step(m, u, cache)
    ref, _ = m.step(u, m.allocate_cache(2))
    assert (out - ref).abs().max().item() < 1e-5
    assert torch.equal(cache.conv_state, before[0]) and torch.equal(cache.ssm_state, before[1])


def test_inplace_ssm_state_and_strided_slices():
    """inplace_ssm writes h into the given state (each element read and written by one program);
    xBC and dt may be row-strided slices of the input projection."""
    m = _block()
    _, cache = m(torch.randn(2, 5, 32, device=DEVICE), return_cache=True)
    u = torch.randn(2, 32, device=DEVICE)
    ref, ref_cache = m.step(u, cache)
    z, xBC, dt = m._split_proj(m.in_proj(u))              # views with row stride > width
    assert not xBC.is_contiguous() and xBC.stride(-1) == 1
    state = cache.ssm_state.clone()
    args = (xBC, dt, cache.conv_state, state, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D)
    kw = dict(nheads=m.nheads, headdim=m.headdim, ngroups=m.ngroups, d_state=m.d_state)
    y, conv, h = mamba2_step(*args, **kw, inplace_ssm=True)
    assert h.data_ptr() == state.data_ptr()
    assert (state - ref_cache.ssm_state).abs().max().item() < 1e-5
    assert torch.equal(conv, ref_cache.conv_state)
    out = m.out_proj(m.norm(y.flatten(-2), z))
    assert (out - ref).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="contiguous"):
        mamba2_step(xBC, dt, cache.conv_state, state.transpose(2, 3).contiguous().transpose(2, 3),
                    *args[4:], **kw, inplace_ssm=True)


def test_ring_round_trip():
    window = torch.randn(3, 5, 4)                                       # (b, conv_dim, d_conv), oldest first
    lens = torch.tensor([4, 3, 10])
    ring = ring_from_window(window, lens)
    assert torch.equal(window_from_ring(ring, lens), window)
    assert torch.equal(ring[0], window[0])                              # lens ≡ 0 (mod 4): input j in slot j
    for k in range(4):                                                  # column k is input lens − 4 + k
        assert torch.equal(ring[1, :, (3 - 4 + k) % 4], window[1, :, k])
        assert torch.equal(ring[2, :, (10 - 4 + k) % 4], window[2, :, k])


@pytest.mark.parametrize("kw", [dict(), dict(ngroups=1), dict(d_conv=3, conv_bias=False), dict(ngroups=4, headdim=8)])
def test_ring_conv_state_in_place_equals_block_step(kw):
    """ring_lens: the conv window is a ring updated in place (only the new input's slot is
    written), the SSM state too; rows of different lengths, around the ring more than once."""
    m = _block(**kw)
    g = torch.Generator().manual_seed(2)
    _, cache = m(torch.randn(3, 5, 32, generator=g).to(DEVICE), return_cache=True)
    lens = torch.tensor([0, 2, 9], device=DEVICE, dtype=torch.int32)   # inputs per row so far (< d_conv too)
    window, ssm_ref = cache.conv_state, cache.ssm_state
    ring, ssm = ring_from_window(window, lens), ssm_ref.clone()
    kw = dict(nheads=m.nheads, headdim=m.headdim, ngroups=m.ngroups, d_state=m.d_state)
    for _ in range(2 * m.d_conv + 1):
        u = torch.randn(3, 32, generator=g).to(DEVICE)
        ref, new = m.step(u, Mamba2Cache(window, ssm_ref))
        z, xBC, dt = m._split_proj(m.in_proj(u))
        lens += 1
        y, conv, h = mamba2_step(xBC, dt, ring, ssm, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D,
                                 **kw, inplace_ssm=True, ring_lens=lens)
        assert conv.data_ptr() == ring.data_ptr() and h.data_ptr() == ssm.data_ptr()
        assert torch.equal(window_from_ring(ring, lens), new.conv_state)
        assert (ssm - new.ssm_state).abs().max().item() < 1e-5
        assert (m.out_proj(m.norm(y.flatten(-2), z)) - ref).abs().max().item() < 1e-5
        window, ssm_ref = new.conv_state, new.ssm_state
    with pytest.raises(ValueError, match="ring_lens"):
        mamba2_step(xBC, dt, ring, ssm, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D, **kw,
                    ring_lens=lens[:2])


def test_fp16():
    m = _block(dtype=torch.float16)
    worst, _, _ = _run(m, 2, 3, 3, torch.float16)
    assert worst < 1e-2


@given(P=st.sampled_from([4, 8, 12]), N=st.sampled_from([4, 8, 20]), g=st.sampled_from([1, 2]),
       d_conv=st.integers(2, 4), seed=st.integers(0, 50))
def test_hypothesis_shapes(P, N, g, d_conv, seed):
    m = _block(d_model=P * g * 2, headdim=P, d_state=N, ngroups=g, d_conv=d_conv, seed=seed)
    worst, _, _ = _run(m, 2, 2, 2, torch.float32)
    assert worst < 1e-5


def test_bad_inputs():
    m = _block()
    c = m.allocate_cache(2)
    xBC = torch.randn(2, m.conv_dim)
    dt = torch.randn(2, m.nheads)
    args = (m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D)
    kw = dict(nheads=m.nheads, headdim=m.headdim, ngroups=m.ngroups, d_state=m.d_state)
    with pytest.raises(ValueError, match="conv_state"):
        mamba2_step(xBC, dt, c.conv_state[:1], c.ssm_state, *args, **kw)
    with pytest.raises(ValueError, match="ssm_state"):
        mamba2_step(xBC, dt, c.conv_state, c.ssm_state[:, :1], *args, **kw)
    with pytest.raises(ValueError, match="channels"):
        mamba2_step(xBC[:, 1:], dt, c.conv_state, c.ssm_state, *args, **kw)
    with pytest.raises(ValueError, match="dt"):
        mamba2_step(xBC, dt[:, 1:], c.conv_state, c.ssm_state, *args, **kw)
    with pytest.raises(TypeError, match="xBC"):
        mamba2_step(xBC.numpy(), dt, c.conv_state, c.ssm_state, *args, **kw)
    with pytest.raises(TypeError, match="float64"):
        mamba2_step(xBC.double(), dt.double(), c.conv_state.double(), c.ssm_state.double(), *args, **kw)
    with pytest.raises(TypeError, match="dtype"):
        mamba2_block_step(m, torch.randn(2, 32, device=DEVICE).double(), c)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_realistic(dtype):
    m = _block(dtype=dtype, device="cuda", d_model=768, d_state=128, headdim=64, ngroups=1, chunk_size=64)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(16, 72, 768, generator=g).to("cuda", dtype)
    _, c_ref = m(u[:, :64], return_cache=True)
    c, worst, scale = c_ref, 0.0, 0.0
    for t in range(64, 72):
        o_ref, c_ref = m.step(u[:, t], c_ref)
        o, c = mamba2_block_step(m, u[:, t], c)
        worst = max(worst, (o.float() - o_ref.float()).abs().max().item())
        scale = max(scale, o_ref.float().abs().max().item())
    rel = 3e-2 if dtype == torch.bfloat16 else 1e-4
    assert worst <= rel * scale, (worst, scale)
    s_err = (c.ssm_state - c_ref.ssm_state).abs().max().item()
    assert s_err <= rel * c_ref.ssm_state.abs().max().item()
