"""Static-cache decoding (the path a CUDA graph captures) equals the eager reference; the static
cache refuses to overflow; sampling stays on the device; generate(use_cuda_graph=True) falls back
on CPU and, on a GPU, replays a real CUDA graph with the eager path's greedy tokens."""
import pytest
import torch

from effsmall.models import build_model
from effsmall.models.static_decode import (DecodeState, StaticKVCache, TokenDecoder, bytes_per_token, decode_op_counts,
                                           decode_step, generate_static, sample_tokens)
from effsmall.testing import DEVICE
from effsmall.testing import tiny_lm_config

ARCHS = ("transformer", "mamba2", "hybrid")


tiny = tiny_lm_config   # one small model for every decode test (effsmall.testing)


def _model(arch, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(tiny(arch, **kw)).eval()


@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_static_steps_equal_eager_steps(arch, kernels):
    device = DEVICE if kernels else "cpu"         # kernels: compiled on a GPU, interpreted on a CPU
    model = _model(arch).to(device)
    idx = torch.randint(0, 61, (2, 11)).to(device)
    model.decode_kernels = False
    _, caches = model.prefill(idx[:, :6])
    _, pre = model.hidden(idx[:, :6], want_cache=True)
    state = DecodeState.from_prefill(model, pre, length=6, capacity=13)
    for t in range(6, 11):
        model.decode_kernels = False
        ref, caches = model.step(idx[:, t], caches)              # the eager reference: growing KVCache
        model.decode_kernels = kernels       # True: flash_decode and mamba2_step in the interpreter
        got = decode_step(model, idx[:, t], state)
        assert (got - ref).abs().max().item() < 1e-5
    assert state.seqlens.tolist() == [11, 11]


@pytest.mark.parametrize("arch", ARCHS)
def test_static_generate_equals_eager_generate(arch):
    model = _model(arch, seed=1)
    prompt = torch.randint(0, 61, (3, 5))
    ref = model.generate(prompt, 7)
    assert torch.equal(generate_static(model, prompt, 7), ref)                 # eager static path on CPU
    assert torch.equal(model.generate(prompt, 7, use_cuda_graph=True), ref)    # CPU: falls back to the eager loop
    assert generate_static(model, prompt, 0).shape == (3, 5)


def test_step_weights_are_concatenated_once_and_leave_the_model_alone():
    model = _model("hybrid")
    before = {k: (v.shape, v.data_ptr()) for k, v in model.state_dict().items()}
    state = DecodeState(model, 1, capacity=8)
    assert {k: (v.shape, v.data_ptr()) for k, v in model.state_dict().items()} == before   # same parameters
    for layer, w in zip(model.layers, state.weights):
        attn, mlp = layer.mixer, layer.mlp
        if layer.is_attention:
            assert torch.equal(w.qkv, torch.cat([attn.wq.weight, attn.wkv.weight]))       # ((h + 2·hk)·D, d)
        else:
            assert w.qkv is None
        assert torch.equal(w.gate_up, torch.cat([mlp.gate.weight, mlp.up.weight]))        # (2·d_ff, d)
        assert not w.gate_up.requires_grad and w.gate_up.data_ptr() != mlp.gate.weight.data_ptr()
    assert all(w.gate_up is None for w in DecodeState(_model("mamba2", d_ff=0), 1, 4).weights)


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_weights_decode_the_reference_tokens(arch):
    """The trained models of chapter 12 load as before, and the decode-kernel path (interpreted on a
    CPU; on a GPU compiled and replayed as a CUDA graph) continues a prompt with the reference's
    greedy tokens."""
    from effsmall.models.book import has_weights, load_lm

    if not has_weights():
        pytest.skip("the shipped weights are not in this checkout")
    model = load_lm(arch, device=DEVICE)
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    model.decode_kernels = False
    ref = model.generate(prompt, 6)                           # the eager reference (growing caches)
    model.decode_kernels = True
    assert torch.equal(generate_static(model, prompt, 6), ref)


# Operations (PyTorch ops + Triton launches) one token issues on the decode-kernel path, as
# count_ops counts them; a regression that adds a kernel per layer fails here. Attention: norm,
# qkv, rope_append, flash_decode (+ its merge when it splits the keys: not at this capacity),
# wo; Mamba-2: norm, in_proj, mamba2_step, gated norm, out_proj; the MLP: norm, gate_up, swiglu,
# down. Fixed: seqlens += 1, embedding, final norm, lm_head, argmax.
MAX_OPS_PER_LAYER = {"attention": 9, "mamba2": 9}
MAX_FIXED_OPS = 5


@pytest.mark.parametrize("arch,batches", [("transformer", (1,)), ("mamba2", (1,)), ("hybrid", (1, 3))])
def test_decode_ops_per_layer_stay_bounded(arch, batches):
    model = _model(arch).to(DEVICE)
    model.decode_kernels = True                       # interpreted on a CPU: the same launches
    for batch in batches:
        c = decode_op_counts(model, batch)
        assert c["token"] == sum(c["layers"]) + c["fixed"] and c["step"] < c["token"]
        assert set(c["per_layer"]) == {"attention" if layer.is_attention else "mamba2" for layer in model.layers}
        for kind, n in c["per_layer"].items():
            assert n <= MAX_OPS_PER_LAYER[kind], (kind, n)
        assert c["fixed"] <= MAX_FIXED_OPS, c


def test_cuda_graph_needs_cuda():
    model = _model("hybrid")
    dec = TokenDecoder(model, DecodeState(model, 1, 8))
    with pytest.raises(ValueError, match="CUDA"):
        dec.capture()


def test_static_cache_layout_and_overflow():
    model = _model("hybrid")
    state = DecodeState(model, 2, capacity=4)
    kinds = [type(c).__name__ for c in state.caches]
    assert kinds == ["Mamba2Cache", "StaticKVCache", "Mamba2Cache"]
    kv = state.caches[1]
    assert isinstance(kv, StaticKVCache) and kv.k.shape == (2, 2, 4, 8)
    dec = TokenDecoder(model, state)
    for _ in range(4):
        dec()
    assert state.length == 4 and state.seqlens.tolist() == [4, 4]
    with pytest.raises(ValueError, match="static cache is full"):
        dec()
    with pytest.raises(ValueError, match="length"):
        state.set_length(5)
    with pytest.raises(ValueError, match="capacity"):
        DecodeState(model, 2, capacity=0)
    with pytest.raises(ValueError, match="batch"):
        DecodeState(model, 0, capacity=4)
    _, pre = model.hidden(torch.zeros(2, 6, dtype=torch.long), want_cache=True)
    with pytest.raises(ValueError, match="more than capacity"):
        DecodeState.from_prefill(model, pre, length=6, capacity=5)


def test_snapshot_restore_undoes_steps():
    model = _model("hybrid")
    state = DecodeState(model, 1, capacity=8)
    dec = TokenDecoder(model, state)
    dec()
    snap, tok = state.snapshot(), dec.token.clone()
    a = dec().clone()
    state.restore(snap)
    state.length -= 1
    dec.token.copy_(tok)
    assert torch.equal(dec(), a)


def test_sampling_on_device():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    assert torch.equal(sample_tokens(logits), logits.argmax(-1))
    noise = torch.rand(4, 50, generator=g)
    assert torch.equal(sample_tokens(logits, 1.0, top_k=1, noise=noise), logits.argmax(-1))   # top-1 is greedy
    s = sample_tokens(logits, 0.7, top_k=5, noise=noise)
    assert s.dtype == torch.long and s.device == logits.device
    assert all(t in row.topk(5).indices for t, row in zip(s.tolist(), logits))
    with pytest.raises(ValueError, match="noise"):
        sample_tokens(logits, 1.0)
    # Gumbel-max draws from softmax(logits / T): frequencies over many rows of one distribution
    p = torch.tensor([0.5, 0.3, 0.2])
    many = sample_tokens(p.log().expand(20000, 3), 1.0, noise=torch.rand(20000, 3, generator=g))
    freq = torch.bincount(many, minlength=3).float() / 20000
    assert (freq - p).abs().max().item() < 0.02


def test_sampled_generation_is_reproducible_and_top1_greedy():
    model = _model("transformer")
    prompt = torch.randint(0, 61, (2, 4))
    a = generate_static(model, prompt, 6, temperature=1.0, top_k=10, seed=3)
    assert torch.equal(a, generate_static(model, prompt, 6, temperature=1.0, top_k=10, seed=3))
    assert torch.equal(generate_static(model, prompt, 6, temperature=1.0, top_k=1), model.generate(prompt, 6))
    with pytest.raises(ValueError, match="top_k"):
        generate_static(model, prompt, 2, temperature=1.0, top_k=0)


def test_bytes_per_token():
    model = _model("hybrid")
    cfg = model.cfg
    b = bytes_per_token(model, batch=2, context=100)
    assert b["weights"] == model.num_params() * 4
    assert b["kv"] == 2 * 2 * cfg.n_kv_heads * 100 * cfg.d_head * 4               # one attention layer
    blk = model.layers[0].mixer
    assert b["state"] == 2 * 2 * 2 * (blk.nheads * blk.headdim * blk.d_state * 4 + blk.conv_dim * blk.d_conv * 4)
    assert b["total"] == b["weights"] + b["kv"] + b["state"]
    assert bytes_per_token(model, 2, 200)["kv"] == 2 * b["kv"]


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ARCHS)
def test_gpu_cuda_graph_generation_equals_eager(arch):
    torch.manual_seed(0)
    cfg = tiny(arch, d_model=512, n_heads=8, n_kv_heads=2, n_layers=4, headdim=64, d_state=64, vocab_size=512,
               chunk_size=64, attn_every=4)
    model = build_model(cfg).cuda().eval()
    idx = torch.randint(0, 512, (4, 300), device="cuda")
    model.decode_kernels = False
    ref = model.generate(idx, 24)                           # the eager reference path (fp32)
    model.decode_kernels = None
    assert torch.equal(model.generate(idx, 24, use_cuda_graph=True), ref)
    assert torch.equal(generate_static(model, idx, 24, cuda_graph=False), ref)
    # bf16: graph replay and the eager static step are the same kernels on the same data
    model = model.to(torch.bfloat16)
    for temperature in (0.0, 0.8):
        a = generate_static(model, idx, 24, temperature=temperature, top_k=50, seed=1, cuda_graph=True)
        b = generate_static(model, idx, 24, temperature=temperature, top_k=50, seed=1, cuda_graph=False)
        assert torch.equal(a, b)
    # a graph keeps decoding after its capture: 40 tokens from one capture, batch 1
    h, pre = model.hidden(idx[:1], want_cache=True)
    state = DecodeState.from_prefill(model, pre, length=300, capacity=400)
    dec = TokenDecoder(model, state)
    dec.sample(model.lm_head(h)[:, -1])
    dec.capture()
    toks = [dec().clone() for _ in range(40)]
    assert state.length == 340 and int(state.seqlens[0]) == 340
    assert all(0 <= int(t) < 512 for t in toks)
