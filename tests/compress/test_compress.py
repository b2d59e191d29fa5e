"""effsmall.compress: quantization bounds, exact int4 packing, distillation formula, sharing, memory."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from effsmall.compress import (QuantLinear, dequantize, distill, distillation_loss, memory_table, model_bytes,
                               model_memory, pack_int4, quantize_int4, quantize_int8, quantize_model,
                               share_layers, tie_embeddings, unpack_int4)
from effsmall.models import LMConfig, build_model


@given(out=st.integers(1, 9), n=st.integers(1, 40), seed=st.integers(0, 99))
def test_int8_error_within_half_scale(out, n, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, n, generator=g) * torch.logspace(-3, 3, out)[:, None]  # very different rows
    qt = quantize_int8(w)
    err = (dequantize(qt) - w).abs()
    assert qt.data.dtype == torch.int8 and qt.scale.shape == (out, 1)
    assert (err <= qt.scale / 2 * (1 + 1e-5) + 1e-12).all()


@given(out=st.integers(1, 7), groups=st.integers(1, 5), gs=st.sampled_from([2, 4, 32, 64]), seed=st.integers(0, 99))
def test_int4_error_within_half_scale(out, groups, gs, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, groups * gs, generator=g)
    w[0, 0] = 1e4 if seed % 2 else 0.0                                  # an outlier only hurts its own group
    qt = quantize_int4(w, gs)
    assert qt.data.dtype == torch.uint8 and qt.data.shape == (out, groups * gs // 2)
    err = (dequantize(qt) - w).abs().view(out, groups, gs)
    assert (err <= qt.scale[..., None] / 2 * (1 + 1e-5) + 1e-12).all()


def test_zero_and_extreme_weights():
    w = torch.zeros(3, 8)
    assert torch.equal(dequantize(quantize_int8(w)), w) and torch.equal(dequantize(quantize_int4(w, 4)), w)
    w = torch.tensor([[3e38, -3e38, 1.0, 0.0]])
    assert torch.isfinite(dequantize(quantize_int8(w))).all()


def test_pack_unpack_round_trip_exhaustive():
    q = torch.tensor([[a, b] for a in range(-8, 8) for b in range(-8, 8)], dtype=torch.int8)  # all 256 pairs
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (256, 1)
    assert len(set(packed.flatten().tolist())) == 256
    assert torch.equal(unpack_int4(packed), q)
    big = torch.randint(-8, 8, (5, 6, 34), dtype=torch.int8)
    assert torch.equal(unpack_int4(pack_int4(big)), big)
    with pytest.raises(ValueError, match="q"):
        pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(3, dtype=torch.int8))
    with pytest.raises(ValueError, match="group_size"):
        quantize_int4(torch.randn(2, 10), 4)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.0), (2.0, 0.5), (4.0, 1.0), (0.5, 0.3)])
def test_distillation_loss_equals_formula(T, alpha):
    torch.manual_seed(0)
    zs, zt = torch.randn(2, 5, 11, dtype=torch.float64), torch.randn(2, 5, 11, dtype=torch.float64)
    y = torch.randint(0, 11, (2, 5))
    y[0, 1] = -100
    keep = (y != -100).flatten()
    s, t = zs.flatten(0, 1)[keep], zt.flatten(0, 1)[keep]
    pt = torch.softmax(t / T, -1)
    kl = (pt * (pt.log() - torch.log_softmax(s / T, -1))).sum(-1).mean()
    ce = -torch.log_softmax(s, -1)[torch.arange(len(s)), y.flatten()[keep]].mean()
    expected = alpha * T * T * kl + (1 - alpha) * ce
    got = distillation_loss(zs, zt, y, T, alpha)
    assert abs(float(got) - float(expected)) < 1e-6
    # and with the library's own KL: F.kl_div(log q, p) = KL(p ‖ q)
    ref = F.kl_div(torch.log_softmax(s / T, -1), pt, reduction="batchmean")
    assert abs(float(kl) - float(ref)) < 1e-12
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(zs, zt, y, 0.0)


def test_distillation_loss_is_zero_for_identical_logits_hard_off():
    z = torch.randn(4, 7)
    assert float(distillation_loss(z, z, torch.zeros(4, dtype=torch.long), 3.0, 1.0)) < 1e-6


def small_lm(arch="transformer", **kw):
    torch.manual_seed(0)
    return build_model(LMConfig(vocab_size=64, d_model=64, n_layers=4, arch=arch, n_heads=2, d_state=8,
                                headdim=32, chunk_size=8, **kw)).eval()


@pytest.mark.parametrize("bits,tol", [(8, 0.02), (4, 0.4)])
def test_quantize_model_logits_close(bits, tol):
    model = small_lm()
    x = torch.randint(0, 64, (2, 9))
    ref = model(x)
    fp_bytes = model_bytes(model)
    quantize_model(model, bits=bits, group_size=32)
    assert any(isinstance(m, QuantLinear) for m in model.modules())
    out = model(x)
    rel = float((out - ref).norm() / ref.norm())
    assert rel < tol, rel
    assert model_bytes(model) < fp_bytes


def test_share_layers_and_tie():
    model = small_lm(tie_embeddings=False)
    n0 = model.num_params()
    tie_embeddings(model)
    assert model.num_params() == n0 - 64 * 64
    n1 = model.num_params()
    share_layers(model, 1)
    assert model.layers[3] is model.layers[0]
    assert model.num_params() < n1 / 2
    x = torch.randint(0, 64, (1, 7))
    full = model(x)
    logits, c = model.prefill(x[:, :3])
    for t in range(3, 7):
        last, c = model.step(x[:, t], c)
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=1e-5)
    hybrid = small_lm("hybrid", attn_every=2)
    with pytest.raises(ValueError, match="kind"):
        share_layers(hybrid, 1)
    share_layers(hybrid, 2)


def test_distill_runs_and_learns():
    teacher, student = small_lm(), small_lm(d_ff=0)
    g = torch.Generator().manual_seed(0)

    def data():
        while True:
            x = torch.randint(0, 64, (4, 16), generator=g)
            yield x, teacher(x).argmax(-1)

    val = [next(data())]
    h = distill(student, teacher, data(), 15, val_data=val, progress=False, lr=1e-2)
    assert h["val_loss"][-1] < h["val_loss"][0]


def test_memory_table_matches_cards():
    m = model_memory("Phi-3-mini-4k", "fp16", context=4096)
    assert 3.7e9 < m["params"] < 3.9e9                       # Phi-3-mini: 3.8B parameters
    assert abs(m["weight_bytes"] - 2 * m["params"]) < 1
    assert m["kv_bytes"] == 2 * 32 * 32 * 96 * 4096 * 2      # 2·L·Hk·D·context·2 bytes
    rows = memory_table()
    fp16 = {r["model"]: r for r in rows if r["format"] == "fp16"}
    int4 = {r["model"]: r for r in rows if r["format"] == "int4"}
    assert math.isclose(int4["Phi-3-mini-4k"]["weights_GB"], fp16["Phi-3-mini-4k"]["weights_GB"] * 4.25 / 16, rel_tol=0.01)
    assert not fp16["Phi-3-mini-4k"]["fits Phone (flagship 2024 class)"]
    assert int4["TinyLlama-1.1B"]["fits Phone (flagship 2024 class)"]
