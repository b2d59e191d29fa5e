"""flash_attention_varlen (packed sequences) equals per-sequence flash_attention calls."""
import pytest
import torch

from effsmall.attention import flash_attention, flash_attention_varlen
from effsmall.testing import on_device

flash_attention, flash_attention_varlen = on_device(flash_attention), on_device(flash_attention_varlen)


def _packed(lens_q, lens_k, Hq=4, Hk=2, D=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sum(lens_q), Hq, D, generator=g).to(dtype)   # (total_q, Hq, D)
    k = torch.randn(sum(lens_k), Hk, D, generator=g).to(dtype)   # (total_k, Hk, D)
    v = torch.randn(sum(lens_k), Hk, D, generator=g).to(dtype)
    cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)  # noqa: E731
    return q, k, v, cu(lens_q), cu(lens_k)


def _per_sequence(q, k, v, cq, ck, **kw):
    outs = []
    for b in range(len(cq) - 1):
        seq = lambda x, c: x[c[b]:c[b + 1]].transpose(0, 1).unsqueeze(0)  # noqa: E731  (1, H, n_b, D)
        o = flash_attention(seq(q, cq), seq(k, ck), seq(v, ck), **kw)
        outs.append(o.squeeze(0).transpose(0, 1))                            # (n_b, Hq, D)
    return torch.cat(outs)


@pytest.mark.parametrize("causal,window", [(False, None), (True, None), (False, (6, 2))])
def test_varlen_equals_per_sequence_calls(causal, window):
    lens_q, lens_k = [5, 17, 1, 30], [9, 17, 3, 30]
    q, k, v, cq, ck = _packed(lens_q, lens_k, Hq=2, Hk=1)  # GQA group of 2
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    o = flash_attention_varlen(q, k, v, cq, ck, max(lens_q), max(lens_k), causal=causal, window=window)
    ref = _per_sequence(q, k, v, cq, ck, causal=causal, window=window)
    do = torch.randn_like(o)
    g = torch.autograd.grad(o, (q, k, v), do)
    gr = torch.autograd.grad(ref, (q, k, v), do)
    err = (o - ref).abs().max().item()
    print(f"max error {err:.2e}")
    assert o.shape == q.shape
    assert err < 1e-6
    for a, b in zip(g, gr):
        assert (a - b).abs().max().item() < 1e-6


def test_varlen_single_sequence_equals_dense():
    q, k, v, cq, ck = _packed([23], [23], Hq=2, Hk=2, D=16)
    o = flash_attention_varlen(q, k, v, cq, ck, 23, 23, causal=True)
    dense = flash_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], causal=True)
    assert (o - dense[0].transpose(0, 1)).abs().max().item() < 1e-6


def test_varlen_bad_cu_seqlens():
    q, k, v, cq, ck = _packed([4, 6], [4, 6])
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        flash_attention_varlen(q, k, v, cq.long(), ck, 6, 6)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        flash_attention_varlen(q, k, v, torch.tensor([1, 4, 10], dtype=torch.int32), ck, 6, 6)
    with pytest.raises(ValueError, match="cu_seqlens_k"):
        flash_attention_varlen(q, k, v, cq, torch.tensor([0, 7, 4], dtype=torch.int32), 6, 7)  # decreasing
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        flash_attention_varlen(q, k, v, torch.tensor([0, 4, 9], dtype=torch.int32), ck, 6, 6)  # total 10
    with pytest.raises(ValueError, match="max_seqlen"):
        flash_attention_varlen(q, k, v, cq, ck, 5, 6)
    with pytest.raises(ValueError, match="same batch"):
        flash_attention_varlen(q, k, v, cq, torch.tensor([0, 10], dtype=torch.int32), 6, 10)
    with pytest.raises(ValueError, match="rank 3"):
        flash_attention_varlen(q[None], k[None], v[None], cq, ck, 6, 6)
