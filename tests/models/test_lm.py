"""The three LMs: cached decoding equals the full forward, configs validate, stats are exact."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.models import (HybridLM, LMConfig, Mamba2LM, SequenceClassifier, TransformerLM, attention,
                             build_model, cache_bytes, model_stats)
from effsmall.testing import on_device

ARCHS = ["transformer", "mamba2", "hybrid"]


def tiny(arch="hybrid", **kw):
    base = dict(vocab_size=61, d_model=32, n_layers=3, arch=arch, n_heads=4, n_kv_heads=2, d_state=8,
                headdim=16, chunk_size=8, attn_every=2)
    base.update(kw)
    return LMConfig(**base)


def naive_attention_ref(q, k, v, causal):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        i, j = torch.arange(nq)[:, None], torch.arange(nk)[None]
        s = s.masked_fill(j > i + nk - nq, float("-inf"))
    return s.softmax(-1) @ v


@given(nq=st.integers(1, 9), extra=st.integers(0, 7), hk=st.sampled_from([1, 2, 4]), causal=st.booleans())
def test_attention_dispatch_matches_reference(nq, extra, hk, causal):
    torch.manual_seed(nq * 100 + extra)
    q = torch.randn(2, 4, nq, 8, dtype=torch.float64)
    k, v = torch.randn(2, 2, hk, nq + extra, 8, dtype=torch.float64).unbind(0)
    torch.testing.assert_close(attention(q, k, v, causal), naive_attention_ref(q, k, v, causal))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_incremental_decoding_equals_full_forward(arch, dtype, tol):
    torch.manual_seed(0)
    model = build_model(tiny(arch)).to(dtype).eval()
    idx = torch.randint(0, 61, (2, 19))           # 19: not a multiple of chunk_size
    full = model(idx)
    for n_prompt in (1, 5):
        logits, caches = model.prefill(idx[:, :n_prompt])
        outs = [logits]
        for t in range(n_prompt, idx.shape[1]):
            step, caches = model.step(idx[:, t], caches)
            outs.append(step[:, None])
        err = (torch.cat(outs, 1) - full).abs().max().item()
        assert err < tol * full.abs().max().item() + tol, (arch, n_prompt, err)


@pytest.mark.parametrize("arch", ARCHS)
def test_generate_cached_equals_recomputed(arch):
    torch.manual_seed(1)
    model = build_model(tiny(arch, d_ff=0)).eval()
    prompt = torch.randint(0, 61, (2, 4))
    a = model.generate(prompt, 8)
    assert a.shape == (2, 12) and torch.equal(a[:, :4], prompt)
    assert torch.equal(a, model.generate(prompt, 8, use_cache=False))
    s1 = model.generate(prompt, 5, temperature=1.0, top_k=10, seed=3)
    assert torch.equal(s1, model.generate(prompt, 5, temperature=1.0, top_k=10, seed=3))


def test_classes_and_kinds():
    assert isinstance(TransformerLM(tiny("transformer")), TransformerLM)
    assert tiny("hybrid", n_layers=8, attn_every=4).layer_kinds().count("attention") == 2
    assert tiny("hybrid", attn_every=1).layer_kinds() == ["attention"] * 3
    with pytest.raises(ValueError, match="arch"):
        Mamba2LM(tiny("hybrid"))
    assert isinstance(HybridLM(tiny("hybrid")), HybridLM)


@pytest.mark.parametrize("bad,match", [
    (dict(d_model=30, n_heads=4), "n_heads"),
    (dict(attn_every=0), "attn_every"),
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(arch="rnn"), "arch"),
    (dict(headdim=24), "headdim"),
    (dict(n_layers=0), "n_layers"),
])
def test_bad_configs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)


def test_bad_inputs_raise():
    model = build_model(tiny("transformer"))
    with pytest.raises(TypeError, match="idx"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="idx"):
        model(torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("d_ff", [None, 0])
def test_stats_match_model(arch, d_ff):
    cfg = tiny(arch, d_ff=d_ff)
    model = build_model(cfg)
    st_ = model_stats(cfg, context=13)
    assert st_["params"] == model.num_params()
    _, caches = model.prefill(torch.zeros(1, 13, dtype=torch.long))
    assert st_["decode_cache_bytes"] == cache_bytes(caches)
    if arch == "mamba2":
        assert st_["kv_bytes_per_token"] == 0


@pytest.mark.parametrize("arch", ["transformer", "mamba2"])
def test_classifier_ignores_padding(arch):
    torch.manual_seed(0)
    clf = SequenceClassifier(build_model(tiny(arch)), 2).eval()
    for pooling in ("last", "mean"):
        clf.pooling = pooling
        tokens = torch.randint(1, 61, (3, 12))
        lengths = torch.tensor([12, 7, 1])
        noisy = tokens.clone()
        for b, n in enumerate(lengths.tolist()):
            noisy[b, n:] = torch.randint(1, 61, (12 - n,))
        with torch.no_grad():
            torch.testing.assert_close(clf(tokens, lengths), clf(noisy, lengths))
    with pytest.raises(ValueError, match="lengths"):
        clf(tokens, torch.tensor([0, 1, 2]))


def test_sdpa_path_equals_book_naive_attention_and_gradcheck():
    from effsmall.attention import naive_attention
    torch.manual_seed(3)
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True)
    for causal in (False, True):
        torch.testing.assert_close(attention(q, k, v, causal), naive_attention(q, k, v, causal=causal))
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, True), (q, k, v))


def test_flash_triton_path_equals_sdpa_path():
    """The CUDA path (the book's Triton kernel) run under the interpreter on a tiny shape."""
    torch.manual_seed(4)
    q = torch.randn(1, 2, 7, 16)
    k, v = torch.randn(2, 1, 2, 11, 16).unbind(0)
    for causal in (False, True):
        torch.testing.assert_close(on_device(attention)(q, k, v, causal, backend="flash_triton"),
                                   attention(q, k, v, causal, backend="sdpa"), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        attention(q, k, v, backend="cudnn")


def test_rope_is_relative():
    from effsmall.models.layers import rope
    torch.manual_seed(5)
    q, k = torch.randn(2, 1, 1, 1, 8, dtype=torch.float64).unbind(0)
    dots = [float((rope(q, torch.tensor([p + 3])) * rope(k, torch.tensor([p]))).sum()) for p in (0, 7, 100)]
    assert max(dots) - min(dots) < 1e-10


def test_small_head_dims_take_sdpa_on_the_triton_backend():
    """A toy model's head dim of 8 is below the FlashAttention kernel's 16: the model must not
    crash on a GPU, it computes those heads with SDPA."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    out = attention(q, k, v, causal=True, backend="flash_triton")
    torch.testing.assert_close(out, attention(q, k, v, causal=True, backend="sdpa"))
