"""flash_attention_hopper (Triton, run by the interpreter on CPU) equals naive_attention.

The interpreter runs the same kernels with 16×16 tiles (or the tiles a test passes): tensor
descriptors are emulated there, warp specialisation is ignored, so every switch combination
is checked for the function it computes. Its speed is measured by ``tools/hopper_probe.py``;
the ``gpu``-marked tests at the end check the compiled kernels on a Hopper GPU.
"""
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import effsmall.attention.flash_hopper as fh
from effsmall.attention import flash_attention, naive_attention
from effsmall.testing import on_device

flash_attention_hopper = on_device(fh.flash_attention_hopper)
flash_attention_hopper_forward = on_device(fh.flash_attention_hopper_forward)


def _qkv(B, Hq, Hk, Nq, Nk, D, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(dtype)
    k = torch.randn(B, Hk, Nk, D, generator=g).to(dtype)
    v = torch.randn(B, Hk, Nk, D, generator=g).to(dtype)
    return q, k, v


def _ref64(q, k, v, **kw):
    return naive_attention(q.double(), k.double(), v.double(), **kw)


FWD_CASES = [  # B, Hq, Hk, Nq, Nk, D, causal, window, switches
    (1, 2, 1, 37, 45, 64, True, None, dict(tma="off", grid="m")),
    (2, 2, 2, 40, 40, 64, False, None, dict(tma="host", grid="m_rev")),            # ragged last block
    (1, 4, 2, 48, 48, 64, False, None, dict(tma="device", grid="persistent")),     # GQA, no mask at all
    (1, 2, 1, 33, 20, 64, True, None, dict(tma="host")),                           # first 13 rows see no key
    (1, 2, 2, 40, 40, 128, False, (5, 3), dict(tma="device", causal_split=False)),  # window, one masked loop
    (1, 2, 2, 30, 30, 64, True, (4, None), dict(grid="bh")),                       # causal + left window
    (1, 2, 2, 40, 40, 64, True, None, dict(config=(32, 16, 4, 2), grid="persistent2")),
    (1, 2, 1, 35, 50, 128, True, None, dict(config=(16, 32, 4, 2), tma="off", causal_split=False)),
    (1, 2, 2, 24, 24, 64, False, (0, 0), dict(warp_specialize=True)),                # only the diagonal
    (1, 2, 1, 25, 30, 64, False, (3, -1), dict(tma="off")),                          # left window edge only
    (1, 2, 1, 32, 32, 64, False, (None, 3), dict(tma="host", grid="m")),             # right edge only, even N
]


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window,switches", FWD_CASES)
def test_forward_fp32_matches_naive(B, Hq, Hk, Nq, Nk, D, causal, window, switches):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D)
    o = flash_attention_hopper(q, k, v, causal, window=window, **switches)
    ref = _ref64(q, k, v, causal=causal, window=window)
    assert o.shape == q.shape and o.dtype == q.dtype
    assert torch.isfinite(o).all()
    assert (o.double() - ref).abs().max().item() < 1e-5


GRAD_CASES = [
    (1, 2, 1, 37, 45, 64, True, None, dict(tma="off")),
    (1, 4, 2, 40, 33, 64, False, None, dict(tma="host", bwd_config=(32, 16, 4, 2))),  # GQA: dK, dV over 2 heads
    (1, 2, 1, 33, 20, 128, True, None, dict(tma="device", bwd_tma="device")),          # rows that see no key
    (1, 2, 2, 40, 40, 64, False, (5, 3), dict(bwd_config=(16, 32, 4, 2))),
    (1, 2, 2, 37, 37, 64, True, None, dict(backward="fa2")),
    (1, 2, 1, 32, 40, 64, False, (6, -1), dict(bwd_config=(16, 16, 4, 2))),           # left edge: masked tail loop
]


@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,D,causal,window,switches", GRAD_CASES)
def test_gradients_match_naive_autograd(B, Hq, Hk, Nq, Nk, D, causal, window, switches):
    q, k, v = _qkv(B, Hq, Hk, Nq, Nk, D, seed=1)
    do = torch.randn(B, Hq, Nq, D, generator=torch.Generator().manual_seed(2))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention_hopper(q, k, v, causal, window=window, **switches)
    grads = torch.autograd.grad(o, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = naive_attention(q64, k64, v64, causal=causal, window=window)
    for name, a, b in zip("qkv", grads, torch.autograd.grad(ref, (q64, k64, v64), do.double())):
        assert a.shape == b.shape
        assert (a.double() - b).abs().max().item() < 2e-5, name


def test_fp16_matches_naive():
    q, k, v = _qkv(1, 2, 1, 33, 40, 64, dtype=torch.float16)
    o = flash_attention_hopper(q, k, v, True)
    assert o.dtype == torch.float16
    assert (o.float() - naive_attention(q.float(), k.float(), v.float(), causal=True)).abs().max().item() < 1e-2


def test_bf16_in_interpreter_computes_in_fp32():
    q, k, v = _qkv(1, 2, 2, 9, 9, 64, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        o = flash_attention_hopper(q, k, v)
    assert o.dtype == torch.bfloat16
    assert (o.float() - naive_attention(q.float(), k.float(), v.float())).abs().max().item() < 1e-2


def test_same_output_as_flash_attention():
    q, k, v = _qkv(1, 2, 1, 29, 41, 64, seed=3)
    a = flash_attention_hopper(q, k, v, True, scale=0.3)
    b = on_device(flash_attention)(q, k, v, causal=True, scale=0.3)
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.skipif(not fh.interpreting(), reason="fp32 inputs: on a GPU the Hopper rung runs bf16/fp16 only")
def test_lse_follows_the_package_convention():
    q, k, v = _qkv(1, 1, 1, 20, 12, 64, seed=4)                       # causal, Nq > Nk: 8 empty rows
    o, lse = flash_attention_hopper_forward(q, k, v, True)
    s = (q.double() @ k.double().transpose(-1, -2)) * 64 ** -0.5       # (1, 1, 20, 12)
    mask = torch.ones(20, 12, dtype=torch.bool).tril(-8)              # key j visible iff j <= i - 8
    ref = torch.logsumexp(s.masked_fill(~mask, float("-inf")), -1)
    assert torch.equal(lse[..., :8], torch.full_like(lse[..., :8], float("-inf")))
    assert (lse[..., 8:].double() - ref[..., 8:]).abs().max().item() < 1e-5
    assert (o[..., :8, :] == 0).all()


@given(Nq=st.integers(1, 40), Nk=st.integers(1, 40), group=st.sampled_from([1, 2]), causal=st.booleans(),
       tma=st.sampled_from(["off", "host", "device"]))
def test_random_shapes_property(Nq, Nk, group, causal, tma):
    q, k, v = _qkv(1, 2 * group, 2, Nq, Nk, 64, seed=Nq * 41 + Nk)
    o = flash_attention_hopper(q, k, v, causal, tma=tma)
    assert o.shape == (1, 2 * group, Nq, 64)
    assert (o.double() - _ref64(q, k, v, causal=causal)).abs().max().item() < 1e-5


def test_other_head_dims_fall_back_to_flash_attention():
    q, k, v = _qkv(1, 2, 1, 17, 17, 32)
    assert not fh.hopper_supported(q, k, v)
    assert "head dim" in fh.hopper_unsupported_reason(q)
    o = flash_attention_hopper(q, k, v, True)
    assert (o.double() - _ref64(q, k, v, causal=True)).abs().max().item() < 1e-5
    with pytest.raises(ValueError, match="head dim"):
        flash_attention_hopper_forward(q, k, v)


def test_hopper_supported_here():
    q, k, v = _qkv(1, 2, 1, 8, 8, 64)
    if fh.interpreting():
        assert fh.hopper_supported(q, k, v)        # CPU tensors under the interpreter
    assert not fh.hopper_supported(q[..., :48])
    assert not fh.hopper_supported(q[0])           # not (B, H, N, D)


@pytest.mark.parametrize("kw,exc,word", [
    (dict(grid="diagonal"), ValueError, "grid"),
    (dict(tma="sometimes"), ValueError, "tma"),
    (dict(backward="magic"), ValueError, "backward"),
    (dict(config=(128, 64)), TypeError, "config"),
    (dict(warp_specialize="yes"), TypeError, "warp_specialize"),
    (dict(causal_split=1), TypeError, "causal_split"),
])
def test_bad_switches_name_the_argument(kw, exc, word):
    q, k, v = _qkv(1, 2, 2, 8, 8, 64)
    with pytest.raises(exc, match=word):
        flash_attention_hopper(q, k, v, **kw)


@pytest.mark.parametrize("make,exc,word", [
    (lambda q, k, v: (q, k, v[:, :, :3]), ValueError, "shape"),
    (lambda q, k, v: (q.double(), k.double(), v.double()), TypeError, "float64"),
    (lambda q, k, v: (q[:, :1], k, v), ValueError, "heads"),
])
def test_bad_inputs_name_the_argument(make, exc, word):
    q, k, v = _qkv(1, 2, 2, 8, 8, 64)
    with pytest.raises(exc, match=word):
        flash_attention_hopper(*make(q, k, v))


# -- compiled on a Hopper GPU ---------------------------------------------------------------------
GPU_VARIANTS = [
    dict(),                                                               # defaults: device TMA, warp-specialised
    dict(tma="host", warp_specialize=False),
    dict(tma="off", warp_specialize=False, grid="m"),
    dict(tma="host", warp_specialize=False, grid="persistent", backward="fa2"),
]


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("switches", GPU_VARIANTS)
@pytest.mark.parametrize("N, D, Hq, Hk, causal", [(2048, 128, 8, 8, False), (1000, 64, 8, 2, True)])
def test_compiled_on_hopper_bf16(switches, N, D, Hq, Hk, causal):
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(N + D)
    q = torch.randn(2, Hq, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    k = torch.randn(2, Hk, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    v = torch.randn(2, Hk, N, D, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    if not fh.hopper_supported(q, k, v):
        pytest.skip(f"not a Hopper rung here: {fh.hopper_unsupported_reason(q, k, v)}")
    o = fh.flash_attention_hopper(q, k, v, causal, **switches)
    do = torch.randn_like(o)
    ref_in = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = naive_attention(*ref_in, causal=causal)
    assert o.dtype == torch.bfloat16 and _rel(o, ref) < 2e-2
    assert (o.float() - flash_attention(q, k, v, causal=causal).float()).abs().max().item() < 2e-2
    grads = torch.autograd.grad(o, (q, k, v), do)
    for a, b in zip(grads, torch.autograd.grad(ref, ref_in, do.float())):
        assert _rel(a, b) < 3e-2


# -- flash_attention's dispatch to the Hopper forward ---------------------------------------------
import effsmall.attention.flash_triton as ft  # noqa: E402


def test_dispatch_plans_are_the_measured_choices():
    """One plan per (D, causal) group, all with the FA2 backward; warp specialisation only where it
    compiles and gave correct results (4 warps, 2 stages, no split loop)."""
    assert set(fh.DISPATCH_PLANS) == {(64, False), (64, True), (128, False), (128, True)}
    for (D, causal), plan in fh.DISPATCH_PLANS.items():
        assert plan.backward == "fa2" and plan.grid == "m_rev"
        if plan.warp_specialize:
            assert plan.tma == "device" and plan.config.num_warps == 4 and plan.config.num_stages == 2
            assert not fh._split(plan)
        if causal:
            assert fh._split(plan) and not plan.warp_specialize


def test_interpreter_runs_the_portable_forward(monkeypatch):
    """On CPU (Triton interpreter) flash_attention never takes the Hopper path: same output as
    hopper=False, and the Hopper launcher is never called."""
    if not fh.interpreting():
        pytest.skip("the interpreter only runs on CPU")
    q, k, v = _qkv(1, 2, 1, 40, 40, 64)
    calls = []
    monkeypatch.setattr(fh, "launch_hopper_forward", lambda *a, **kw: calls.append(a))
    o = flash_attention(q, k, v, causal=True)
    assert calls == []
    assert torch.equal(o, flash_attention(q, k, v, causal=True, hopper=False))
    assert ft.backend(q, k, v, causal=True) == "triton-interpreter"
    assert ft.backend(q) == "triton-interpreter"
    _, lo, hi = ft.check_flash_inputs(q, k, v, causal=True)
    assert "interpreter" in fh.dispatch_reason(q, k, v, lo, hi)
    assert fh.dispatch_plan(q, k, v, lo, hi, hopper=True) is None


def _compiled_here(monkeypatch, unsupported=None):
    """Pretend to be a compiled Hopper machine for dispatch_reason's checks (CPU tensors)."""
    monkeypatch.setattr(fh, "interpreting", lambda: False)
    monkeypatch.setattr(fh, "hopper_unsupported_reason", lambda q, k=None, v=None: unsupported)


@pytest.mark.parametrize("D,causal", [(64, False), (64, True), (128, False), (128, True)])
def test_dispatch_picks_the_group_plan(monkeypatch, D, causal):
    _compiled_here(monkeypatch)
    monkeypatch.delenv("EFFSMALL_HOPPER", raising=False)
    q, k, v = _qkv(1, 4, 2, 33, 47, D)
    _, lo, hi = ft.check_flash_inputs(q, k, v, causal=causal)
    assert fh.dispatch_reason(q, k, v, lo, hi) is None
    assert fh.dispatch_plan(q, k, v, lo, hi) is fh.DISPATCH_PLANS[(D, causal)]


def test_dispatch_off_hopper_and_outside_the_measured_domain(monkeypatch):
    q, k, v = _qkv(1, 2, 2, 40, 40, 64)
    _, lo, hi = ft.check_flash_inputs(q, k, v)
    monkeypatch.setattr(fh, "interpreting", lambda: False)
    assert "CUDA" in fh.dispatch_reason(q, k, v, lo, hi)            # the real check: CPU tensors
    _compiled_here(monkeypatch, unsupported="compute capability (8, 0) is not Hopper (9.x)")
    assert "not Hopper" in fh.dispatch_reason(q, k, v, lo, hi)      # another GPU
    _compiled_here(monkeypatch)
    _, wlo, whi = ft.check_flash_inputs(q, k, v, causal=True, window=(8, 0))
    assert "window" in fh.dispatch_reason(q, k, v, wlo, whi)        # not measured: portable
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)             # a (B, N, H, D) projection's view
    assert "contiguous" in fh.dispatch_reason(qt, k, v, lo, hi)


def test_switches_force_the_portable_forward(monkeypatch):
    _compiled_here(monkeypatch)
    q, k, v = _qkv(1, 2, 2, 40, 40, 128)
    _, lo, hi = ft.check_flash_inputs(q, k, v)
    monkeypatch.delenv("EFFSMALL_HOPPER", raising=False)
    assert fh.dispatch_plan(q, k, v, lo, hi) is not None
    assert fh.dispatch_reason(q, k, v, lo, hi, hopper=False) == "hopper=False"
    monkeypatch.setenv("EFFSMALL_HOPPER", "0")
    assert fh.dispatch_reason(q, k, v, lo, hi) == "EFFSMALL_HOPPER=0"
    assert fh.dispatch_plan(q, k, v, lo, hi, hopper=True) is not None  # the argument wins
    monkeypatch.setenv("EFFSMALL_HOPPER", "1")
    assert fh.dispatch_plan(q, k, v, lo, hi) is not None


@pytest.mark.parametrize("D,causal", [(64, False), (64, True), (128, False), (128, True)])
def test_flash_attention_through_a_dispatch_plan(monkeypatch, D, causal):
    """flash_attention's Hopper branch, run by the interpreter: each group's plan (its real tiles)
    forward, then the FA2 backward on that forward's saved o and lse — GQA, ragged N, Nq != Nk."""
    if not fh.interpreting():
        pytest.skip("the compiled path is checked by test_flash_attention_dispatches_on_hopper")
    plan = fh.DISPATCH_PLANS[(D, causal)]
    monkeypatch.setattr(ft, "_hopper_plan", lambda q, k, v, lo, hi, hopper: plan)
    launched = []
    real = fh.launch_hopper_forward
    monkeypatch.setattr(fh, "launch_hopper_forward", lambda *a, **kw: launched.append(a[6]) or real(*a, **kw))
    q, k, v = _qkv(1, 4, 2, 37, 45, D, seed=3)
    do = torch.randn(1, 4, 37, D, generator=torch.Generator().manual_seed(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention(q, k, v, causal=causal)
    assert launched == [plan]
    ref = naive_attention(*(x.detach().double() for x in (q, k, v)), causal=causal)
    assert (o.double() - ref).abs().max().item() < 1e-5
    grads = torch.autograd.grad(o, (q, k, v), do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    refg = torch.autograd.grad(naive_attention(q64, k64, v64, causal=causal), (q64, k64, v64), do.double())
    for a, b in zip(grads, refg):
        assert (a.double() - b).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("D,causal", [(64, False), (64, True), (128, False), (128, True)])
@pytest.mark.parametrize("B,Hq,Hk,Nq,Nk,dtype", [(2, 8, 8, 2048, 2048, torch.bfloat16),
                                                 (1, 8, 2, 1000, 1000, torch.bfloat16),
                                                 (2, 4, 1, 333, 517, torch.bfloat16),
                                                 (1, 4, 2, 777, 777, torch.float16)])
def test_flash_attention_dispatches_on_hopper(monkeypatch, D, causal, B, Hq, Hk, Nq, Nk, dtype):
    """On sm90 flash_attention runs the group's Hopper forward, matches the portable kernel in
    bf16/fp16, and its gradients (FA2 backward on the Hopper forward's o, lse) match the portable
    ones. Odd lengths, GQA and Nq != Nk were not in the probe's timing, only checked here."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(Nq + D)
    q = torch.randn(B, Hq, Nq, D, device=dev, dtype=dtype, generator=g).requires_grad_()
    k = torch.randn(B, Hk, Nk, D, device=dev, dtype=dtype, generator=g).requires_grad_()
    v = torch.randn(B, Hk, Nk, D, device=dev, dtype=dtype, generator=g).requires_grad_()
    if not fh.hopper_supported(q, k, v):
        pytest.skip(f"not a Hopper GPU here: {fh.hopper_unsupported_reason(q, k, v)}")
    monkeypatch.delenv("EFFSMALL_HOPPER", raising=False)
    assert ft.backend(q, k, v, causal=causal) == "triton-hopper"
    assert ft.backend(q, k, v, causal=causal, hopper=False) == "triton"
    launched = []
    real = fh.launch_hopper_forward
    monkeypatch.setattr(fh, "launch_hopper_forward", lambda *a, **kw: launched.append(a[6]) or real(*a, **kw))
    o = flash_attention(q, k, v, causal=causal)
    assert launched == [fh.DISPATCH_PLANS[(D, causal)]]
    o_port = flash_attention(q, k, v, causal=causal, hopper=False)
    monkeypatch.setenv("EFFSMALL_HOPPER", "0")
    o_env = flash_attention(q, k, v, causal=causal)
    assert len(launched) == 1                                          # neither switch reached the rung
    assert o.dtype == dtype and torch.isfinite(o).all()
    assert (o.float() - o_port.float()).abs().max().item() < 2e-2
    assert torch.equal(o_env, o_port)
    do = torch.randn_like(o)
    grads = torch.autograd.grad(o, (q, k, v), do)
    grads_port = torch.autograd.grad(o_port, (q, k, v), do)
    for a, b in zip(grads, grads_port):
        assert torch.isfinite(a).all() and _rel(a, b) < 3e-2


def test_dispatch_plans_match_the_committed_probe():
    """DISPATCH_PLANS are the probe's first choice per group in the committed H200 result (the
    variant names of tools/hopper_probe.py), each with the FA2 backward."""
    from effsmall.bench import load_result

    res = load_result("hopper", device="H200")
    assert res["env"]["capability"] == "9.0"
    for (D, causal), p in fh.DISPATCH_PLANS.items():
        split = {None: "", True: "+split", False: "+nosplit"}[p.causal_split]
        name = f"{p.tma}{'+ws' if p.warp_specialize else ''}{split}/{p.grid}/" \
               f"{p.config.block_m}x{p.config.block_n}w{p.config.num_warps}s{p.config.num_stages}"
        chosen = res["summary"]["chosen"][f"D{D}{'c' if causal else 'n'}"]
        assert chosen["fwd"][0] == name and chosen["bwd"] == "fa2(autotuned)"
    s = res["summary"]
    assert 1.0 < s["fwd_fixed_vs_today_min"] <= s["fwd_fixed_vs_today_geomean"]
