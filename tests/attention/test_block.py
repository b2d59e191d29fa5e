"""TransformerBlock: causality, GQA, pluggable attention, RoPE relative positions, gradients."""
import pytest
import torch

from effsmall.attention import TransformerBlock, naive_attention, tiled_attention
from effsmall.nn import RMSNorm, apply_rope, rope_tables


@pytest.mark.parametrize("n_kv_heads,mlp,rope", [(4, "swiglu", True), (2, "gelu", True), (1, "swiglu", False)])
def test_causal_and_shapes(n_kv_heads, mlp, rope):
    torch.manual_seed(0)
    blk = TransformerBlock(32, 4, n_kv_heads, mlp=mlp, rope=rope).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y = blk(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 7:] += torch.randn(2, 4, 32, dtype=torch.float64)  # change the future
    torch.testing.assert_close(blk(x2)[:, :7], y[:, :7])  # the past does not see it
    assert not torch.allclose(blk(x2)[:, 7:], y[:, 7:])


def test_gqa_parameter_count():
    full = TransformerBlock(64, 8, 8, rope=False)
    gqa = TransformerBlock(64, 8, 2, rope=False)
    assert full.wkv.weight.numel() == 4 * gqa.wkv.weight.numel()


def test_pluggable_attention_equals_naive():
    torch.manual_seed(1)
    blk = TransformerBlock(48, 6, 3).double()
    x = torch.randn(2, 37, 48, dtype=torch.float64)
    ref = blk(x)
    blk.attn_fn = lambda q, k, v, causal: tiled_attention(q, k, v, causal=causal, block_m=16, block_n=8)
    torch.testing.assert_close(blk(x), ref)
    calls = []
    blk.attn_fn = lambda q, k, v, causal: calls.append(causal) or naive_attention(q, k, v, causal=causal)
    blk(x)
    assert calls == [True]


def test_rope_relative_positions():
    cos, sin = rope_tables(20, 8)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 20, 8)
    qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    s = (qr @ kr.transpose(-1, -2))[0, 0]  # (20, 20): same vectors at every position
    torch.testing.assert_close(s[5, 2], s[15, 12], rtol=1e-5, atol=1e-5)  # depends only on i - j
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))  # rotation keeps norms


def test_rmsnorm():
    x = torch.randn(3, 16) * 5
    y = RMSNorm(16)(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(3), rtol=1e-4, atol=1e-4)


def test_gradcheck():
    torch.manual_seed(2)
    blk = TransformerBlock(8, 2, 1, d_ff=8).double()
    x = torch.randn(1, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(blk, (x,))


def test_bad_args():
    with pytest.raises(ValueError, match="n_heads"):
        TransformerBlock(30, 4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        TransformerBlock(32, 4, 3)
    with pytest.raises(ValueError, match="mlp"):
        TransformerBlock(32, 4, mlp="relu")
    with pytest.raises(ValueError, match="x"):
        TransformerBlock(32, 4)(torch.randn(2, 3, 16))
