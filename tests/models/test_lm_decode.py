"""The models' decode path through the chapter-16 kernels (paged cache + flash_decode, fused
Mamba-2 step) gives the eager path's logits and greedy tokens."""
import pytest
import torch

from effsmall.attention import PagedKVCache
from effsmall.models import build_model
from effsmall.models.lm import cache_bytes
from effsmall.testing import tiny_lm_config

ARCHS = ("transformer", "mamba2", "hybrid")


tiny = tiny_lm_config   # one small model for every decode test (effsmall.testing)


@pytest.mark.parametrize("arch", ARCHS)
def test_kernels_equal_eager_decoding(arch):
    torch.manual_seed(0)
    from effsmall.testing import DEVICE

    model = build_model(tiny(arch)).to(DEVICE).eval()        # kernels: compiled on a GPU, interpreted on a CPU
    idx = torch.randint(0, 61, (2, 9), device=DEVICE)
    model.decode_kernels = False
    ref_logits, ref_caches = model.prefill(idx[:, :5])
    model.decode_kernels = True                    # the Triton interpreter on CPU
    logits, caches = model.prefill(idx[:, :5])
    assert torch.equal(logits, ref_logits)
    assert any(isinstance(c, PagedKVCache) for c in caches) == (arch != "mamba2")
    for t in range(5, 9):
        a, ref_caches = model.step(idx[:, t], ref_caches)
        b, caches = model.step(idx[:, t], caches)
        assert (a - b).abs().max().item() < 1e-5
    assert cache_bytes(caches) == cache_bytes(ref_caches)   # stored tokens, whatever the layout
    model.decode_kernels = None
    greedy = model.generate(idx[:, :3], 5)
    model.decode_kernels = True
    assert torch.equal(model.generate(idx[:, :3], 5), greedy)


@pytest.fixture
def untuned():
    """Correctness here: the kernels launch one configuration (the bench tunes them)."""
    from effsmall.testing import untuned_kernels

    with untuned_kernels():
        yield


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_gpu_decode_kernels_bf16(arch, untuned):
    torch.manual_seed(0)
    cfg = tiny(arch, d_model=512, n_heads=8, n_kv_heads=2, n_layers=4, headdim=64, d_state=64, vocab_size=512,
               chunk_size=64)
    model = build_model(cfg).cuda().eval()
    idx = torch.randint(0, 512, (4, 700), device="cuda")
    model.decode_kernels = False
    ref = model.generate(idx, 16)
    model.decode_kernels = None                    # auto: on for CUDA
    out = model.generate(idx, 16)
    assert torch.equal(out, ref)                   # fp32 weights: identical greedy tokens
    model = model.to(torch.bfloat16)
    logits, caches = model.prefill(idx)
    assert any(isinstance(c, PagedKVCache) for c in caches) == (arch != "mamba2")
    model.decode_kernels = False
    ref_logits, ref_caches = model.prefill(idx)
    a, _ = model.step(idx[:, -1], ref_caches)
    model.decode_kernels = None
    b, _ = model.step(idx[:, -1], caches)
    assert (a.float() - b.float()).abs().max().item() <= 5e-2 * a.float().abs().max().item()
