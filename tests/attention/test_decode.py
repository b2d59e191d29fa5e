"""flash_decode (split-KV decoding, paged cache) against the naive reference, and its merge
against merge_attention_states_many."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.attention import (PagedKVCache, decode_attention_reference, flash_decode, merge_attention_states_many,
                                naive_attention)
from effsmall.attention.decode import choose_num_splits, merge_splits, split_candidates
from effsmall.runtime import device_policy
from effsmall.testing import on_device

# compiled on a GPU, interpreted on a CPU: inputs stay on the CPU, the wrapper moves them
_flash_decode_here = flash_decode          # unwrapped: the device errors are tested on it
flash_decode, merge_splits = on_device(flash_decode), on_device(merge_splits)

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _contiguous(B, Hq, Hk, cap, D, Nq=1, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g).to(device, dtype)
    k = torch.randn(B, Hk, cap, D, generator=g).to(device, dtype)
    v = torch.randn(B, Hk, cap, D, generator=g).to(device, dtype)
    return q, k, v


def _paged(k, v, lens, page, seed=0):
    """Scatter contiguous rows into a shuffled page pool; slots past a row's length hold NaN
    (they must never be read)."""
    B, Hk, cap, D = k.shape
    per_row = -(-cap // page)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(B * per_row + 3, generator=g)[: B * per_row].view(B, per_row).to(k.device)
    pools = []
    for x in (k, v):
        xp = torch.nn.functional.pad(x, (0, 0, 0, per_row * page - cap), value=float("nan"))  # (B, Hk, per_row·page, D)
        for b, L in enumerate(lens.tolist()):
            xp[b, :, L:] = float("nan")
        pool = torch.full((B * per_row + 3, Hk, page, D), float("nan"), dtype=x.dtype, device=x.device)
        pool[perm.flatten()] = xp.view(B, Hk, per_row, page, D).transpose(1, 2).flatten(0, 1)
        pools.append(pool)
    return pools[0], pools[1], perm.to(torch.int32)


def _close(a, b, dtype):
    assert a.shape == b.shape and a.dtype == b.dtype
    err = (a.float() - b.float()).abs().max().item() if a.numel() else 0.0
    assert err <= TOL[dtype], err


@pytest.mark.parametrize("G", [1, 2, 4, 8])
@pytest.mark.parametrize("splits", [None, 1, 3])
def test_contiguous_ragged_gqa(G, splits):
    q, k, v = _contiguous(3, 2 * G, 2, 150, 32, seed=G)
    lens = torch.tensor([1, 150, 67], dtype=torch.int32)
    o, lse = flash_decode(q[:, :, 0], k, v, lens, num_splits=splits, return_lse=True)
    r, rlse = decode_attention_reference(q[:, :, 0], k, v, lens, return_lse=True)
    _close(o, r, torch.float32)
    assert torch.allclose(lse, rlse, atol=1e-5)


def test_reference_equals_naive_attention_per_row():
    q, k, v = _contiguous(2, 4, 2, 40, 16, Nq=3)
    lens = torch.tensor([40, 25], dtype=torch.int32)
    r = decode_attention_reference(q, k, v, lens, window=6)
    for b, L in enumerate(lens.tolist()):
        ref = naive_attention(q[b:b + 1], k[b:b + 1, :, :L], v[b:b + 1, :, :L], causal=True, window=(6, 0))
        assert torch.allclose(r[b:b + 1], ref, atol=1e-6)


@pytest.mark.parametrize("window", [0, 5, 40, 1000])
@pytest.mark.parametrize("Nq", [1, 3])
def test_window_and_several_query_tokens(window, Nq):
    q, k, v = _contiguous(2, 4, 2, 130, 16, Nq=Nq, seed=window)
    lens = torch.tensor([130, 70], dtype=torch.int32)
    o = flash_decode(q, k, v, lens, window=window, num_splits=4)
    _close(o, decode_attention_reference(q, k, v, lens, window=window), torch.float32)


def test_empty_row_gives_zeros_and_minus_inf():
    q, k, v = _contiguous(2, 2, 1, 20, 16)
    lens = torch.tensor([0, 20], dtype=torch.int32)
    o, lse = flash_decode(q, k, v, lens, num_splits=2, return_lse=True)
    assert torch.equal(o[0], torch.zeros_like(o[0])) and torch.isneginf(lse[0]).all()
    assert torch.isfinite(o).all()


@pytest.mark.parametrize("page", [16, 32, 128, 256])
def test_paged_equals_contiguous(page):
    q, k, v = _contiguous(3, 8, 2, 300, 32, seed=page)
    lens = torch.tensor([300, 17, 129], dtype=torch.int32)   # partly filled last pages
    pk, pv, table = _paged(k, v, lens, page, seed=page)
    o = flash_decode(q, pk, pv, lens, block_table=table)
    _close(o, decode_attention_reference(q, k, v, lens), torch.float32)
    _close(o, decode_attention_reference(q, pk, pv, lens, block_table=table), torch.float32)


def test_paged_window_never_reads_pages_outside_it():
    q, k, v = _contiguous(1, 4, 1, 256, 16)
    lens = torch.tensor([256], dtype=torch.int32)
    pk, pv, table = _paged(k, v, lens, 16)
    pk[table[0, :8].long()] = float("nan")            # evict pages wholly before the window
    pv[table[0, :8].long()] = float("nan")
    o = flash_decode(q, pk, pv, lens, block_table=table, window=100, num_splits=3)
    assert torch.isfinite(o).all()
    _close(o, decode_attention_reference(q, k, v, lens, window=100), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16])
def test_half_precision(dtype):
    q, k, v = _contiguous(2, 8, 2, 100, 64, dtype=dtype)
    lens = torch.tensor([100, 33], dtype=torch.int32)
    o = flash_decode(q, k, v, lens, num_splits=2)
    _close(o, decode_attention_reference(q, k, v, lens), dtype)


@given(B=st.integers(1, 3), G=st.sampled_from([1, 2, 3, 8]), Hk=st.integers(1, 2), D=st.sampled_from([16, 24, 64]),
       cap=st.integers(1, 90), Nq=st.integers(1, 2), splits=st.integers(1, 5), seed=st.integers(0, 99),
       window=st.one_of(st.none(), st.integers(0, 50)))
def test_hypothesis_shapes(B, G, Hk, D, cap, Nq, splits, seed, window):
    q, k, v = _contiguous(B, G * Hk, Hk, cap, D, Nq=Nq, seed=seed)
    lens = torch.randint(0, cap + 1, (B,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    o = flash_decode(q, k, v, lens, num_splits=splits, window=window)
    _close(o, decode_attention_reference(q, k, v, lens, window=window), torch.float32)


@given(B=st.integers(1, 3), G=st.sampled_from([1, 4, 5]), page=st.sampled_from([16, 32, 64]), cap=st.integers(1, 140),
       Nq=st.integers(1, 3), seed=st.integers(0, 99), window=st.one_of(st.none(), st.integers(0, 40)),
       splits=st.one_of(st.none(), st.integers(1, 4)))
def test_hypothesis_paged(B, G, page, cap, Nq, seed, window, splits):
    q, k, v = _contiguous(B, 2 * G, 2, cap, 16, Nq=Nq, seed=seed)
    lens = torch.randint(0, cap + 1, (B,), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)
    pk, pv, table = _paged(k, v, lens, page, seed=seed)
    o = flash_decode(q, pk, pv, lens, block_table=table, window=window, num_splits=splits)
    _close(o, decode_attention_reference(q, k, v, lens, window=window), torch.float32)


def test_triton_merge_equals_merge_attention_states_many():
    g = torch.Generator().manual_seed(0)
    o = torch.randn(2, 3, 5, 24, generator=g)
    lse = torch.randn(2, 3, 5, generator=g) * 4
    lse[0, 0] = float("-inf")                      # a row whose splits all saw nothing
    lse[1, 2, :3] = float("-inf")                  # some empty splits
    o[0, 0] = 0
    o[1, 2, :3] = 0
    mine, mine_lse = merge_splits(o, lse)
    ref, ref_lse = merge_attention_states_many(o, lse, dim=-1)
    assert torch.allclose(mine, ref, atol=1e-6)
    assert torch.equal(torch.isneginf(mine_lse), torch.isneginf(ref_lse))
    fin = torch.isfinite(ref_lse)
    assert torch.allclose(mine_lse[fin], ref_lse[fin], atol=1e-6)


def test_num_splits_rule():
    assert choose_num_splits(16, 8, 100_000, sms=132) == 3          # 128 programs already: a few splits
    assert choose_num_splits(64, 8, 100_000, sms=132) == 1          # the batch fills the GPU
    assert choose_num_splits(1, 8, 300, sms=132) == 2               # short cache: >= 256 keys per split
    assert choose_num_splits(1, 8, 1 << 20, sms=132) == 33          # long cache: 2 programs per SM
    assert choose_num_splits(1, 1, 1 << 20, sms=132) == 64          # capped


def test_split_candidates_start_from_the_rule_and_stay_in_its_limits():
    for B, Hk, keys in [(1, 8, 16384), (16, 8, 100_000), (1, 1, 1 << 20), (1, 8, 100), (64, 8, 4096)]:
        c = split_candidates(B, Hk, keys, sms=132)
        assert c[0] == choose_num_splits(B, Hk, keys, sms=132)
        assert len(set(c)) == len(c) and all(1 <= s <= 64 and s <= -(-keys // 64) or s == 1 for s in c)
    assert split_candidates(1, 8, 16384, sms=132) == (33, 16, 64)


def test_remembered_plan_still_checks_every_signature():
    """validate=False remembers a plan per call signature; a call that differs in dtype, device or
    shape is checked again, so a cached plan never hides a mistake."""
    q, k, v = _contiguous(2, 4, 2, 40, 16)
    lens = torch.tensor([40, 7], dtype=torch.int32)
    ref = decode_attention_reference(q, k, v, lens)
    for _ in range(2):                                  # the second call takes the remembered plan
        assert (flash_decode(q, k, v, lens, validate=False) - ref).abs().max().item() < TOL[torch.float32]
    with pytest.raises(TypeError, match="share a dtype"):
        flash_decode(q, k.half(), v, lens, validate=False)
    with pytest.raises(ValueError, match="head dim"):
        flash_decode(q[..., :8], k, v, lens, validate=False)


def test_paged_kv_cache_append_free_and_bytes():
    B, Hk, D, page = 2, 2, 16, 16
    c = PagedKVCache(B, Hk, D, page_size=page, num_pages=1)
    k, v = torch.randn(B, Hk, 40, D), torch.randn(B, Hk, 40, D)
    c.append(k[:, :, :33], v[:, :, :33])
    c.append(k[:, :, 33:], v[:, :, 33:])
    kk, vv = c.gather()
    assert torch.equal(kk, k) and torch.equal(vv, v)
    assert c.lengths == [40, 40] and c.seqlens.tolist() == [40, 40]
    assert c.used_bytes == 2 * 3 * c.page_bytes                     # 3 pages per row for 40 tokens
    assert c.token_bytes == 2 * 40 * 2 * Hk * D * 4
    assert c.pool_bytes >= c.used_bytes
    c.free(0)
    assert c.lengths == [0, 40] and c.used_bytes == 3 * c.page_bytes
    c.append(k[:, :, :1], v[:, :, :1])                              # row 0 restarts from reused pages
    q = torch.randn(B, 4, D)
    o = flash_decode(q, c.k_pages, c.v_pages, c.seqlens, block_table=c.block_table)
    kk, vv = c.gather()
    _close(o, decode_attention_reference(q, kk, vv, c.seqlens), torch.float32)


@pytest.mark.parametrize("bad, err, match", [
    (dict(cache_seqlens=torch.tensor([5, 21], dtype=torch.int32)), ValueError, "capacity"),
    (dict(cache_seqlens=torch.tensor([5, 2])), None, None),
    (dict(cache_seqlens=torch.tensor([5.0, 2.0])), TypeError, "cache_seqlens"),
    (dict(q=torch.randn(2, 4, 8)), ValueError, "head dim"),
    (dict(q=torch.randn(2, 4, 16).double(), k_cache=torch.randn(2, 2, 20, 16).double(),
          v_cache=torch.randn(2, 2, 20, 16).double()), TypeError, "float64"),
    (dict(num_splits=0), ValueError, "num_splits"),
    (dict(q=torch.randn(4, 16)), ValueError, "q must be"),
])
def test_bad_inputs(bad, err, match):
    args = dict(q=torch.randn(2, 4, 16), k_cache=torch.randn(2, 2, 20, 16), v_cache=torch.randn(2, 2, 20, 16),
                cache_seqlens=torch.tensor([5, 20], dtype=torch.int32))
    args.update(bad)
    if err is None:
        flash_decode(**args)
        return
    with pytest.raises(err, match=match):
        flash_decode(**args)


def _i32(*rows):
    return torch.tensor(rows, dtype=torch.int32)


def test_bad_page_table_and_page_size():
    q = torch.randn(1, 2, 16)
    pk = pv = torch.randn(3, 1, 16, 16)
    with pytest.raises(ValueError, match="outside the page pool"):
        flash_decode(q, pk, pv, _i32(20), block_table=_i32([0, 3]))
    with pytest.raises(ValueError, match="capacity"):
        flash_decode(q, pk, pv, _i32(33), block_table=_i32([0, 1]))
    with pytest.raises(ValueError, match="page_size"):
        flash_decode(q, torch.randn(3, 1, 24, 16), torch.randn(3, 1, 24, 16), _i32(5), block_table=_i32([0]))
    with pytest.raises(TypeError, match="block_table"):
        flash_decode(q, pk, pv, _i32(5), block_table=torch.tensor([[0.0]]))
    # pages past a row's length are never read, so their ids may be anything
    flash_decode(q, pk, pv, _i32(10), block_table=_i32([1, 99]))


def test_wrong_device_is_value_error():
    args = [torch.randn(1, 2, 16), torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16),
            torch.tensor([4], dtype=torch.int32)]
    with pytest.raises(ValueError, match="one device"):
        _flash_decode_here(args[0].to("meta"), *args[1:])
    with pytest.raises(ValueError, match="needs"):   # compiled: CUDA tensors; interpreted: CPU ones
        _flash_decode_here(*(t.to("meta") for t in args), validate=False)


# ---------------------------------------------------------------------------------------------
# GPU, realistic sizes, bf16
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def one_config():
    """GPU correctness tests launch the first config (no timing of configs: the bench does that)."""
    from effsmall.testing import untuned_kernels

    with untuned_kernels():
        yield


@pytest.mark.gpu
@pytest.mark.parametrize("B, ctx, page, window", [(1, 32768, None, None), (4, 8191, 64, None), (16, 4096, 16, None),
                                                  (2, 20000, 256, 4096), (3, 1000, None, 100)])
def test_gpu_bf16_realistic(B, ctx, page, window, one_config):
    dev = device_policy()
    q, k, v = _contiguous(B, 32, 8, ctx, 128, dtype=torch.bfloat16, device="cuda", seed=ctx)
    lens = torch.randint(1, ctx + 1, (B,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    lens[0] = ctx
    lens = lens.cuda()
    if page:
        pk, pv, table = _paged(k, v, lens.cpu(), page)
        o = flash_decode(q, pk, pv, lens, block_table=table, window=window)
    else:
        o = flash_decode(q, k, v, lens, window=window)
    ref = decode_attention_reference(q.float(), k.float(), v.float(), lens, window=window)
    err = (o.float() - ref).abs().max().item()
    assert err <= 2e-2 and dev.is_gpu, err


@pytest.mark.gpu
def test_gpu_cuda_graph_capture():  # tunes once (outside the capture), then captures
    q, k, v = _contiguous(2, 32, 8, 4096, 128, dtype=torch.bfloat16, device="cuda")
    lens = torch.tensor([4096, 1000], dtype=torch.int32, device="cuda")
    fn = lambda: flash_decode(q, k, v, lens, validate=False)  # noqa: E731
    ref = fn()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    lens.copy_(torch.tensor([1000, 4096], dtype=torch.int32))
    g.replay()
    torch.cuda.synchronize()
    assert not torch.equal(out, ref)
    assert (out.float() - fn().float()).abs().max().item() <= 1e-2


# ---------------------------------------------------------------------------------------------
# The first-call timing (_pick) and the caller's stream
# ---------------------------------------------------------------------------------------------
def test_gpu_time_synchronizes_before_timing_on_its_own_stream(monkeypatch):
    """do_bench_cudagraph calls fn on a stream that does not wait for the caller's: _gpu_time must
    synchronize first, or a decode step's not-yet-written lengths are read (an illegal address)."""
    import triton.testing as tt

    from effsmall.attention.decode import _gpu_time

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))

    def bench(fn, rep=20, **kw):
        events.append(("bench", None))
        fn()
        return 1.0
    monkeypatch.setattr(tt, "do_bench_cudagraph", bench)
    assert _gpu_time(lambda: events.append(("fn", None)), "cuda:0") == 1.0
    assert events == [("sync", "cuda:0"), ("bench", None), ("fn", None)]

    events.clear()                           # the fallback (no graph) also starts from a synchronized device
    monkeypatch.setattr(tt, "do_bench_cudagraph", lambda fn, rep=20, **kw: (_ for _ in ()).throw(RuntimeError))
    monkeypatch.setattr(tt, "do_bench", lambda fn, **kw: (events.append(("do_bench", None)), 2.0)[1])
    assert _gpu_time(lambda: None, "cuda:0") == 2.0
    assert events[-2:] == [("sync", "cuda:0"), ("do_bench", None)]


def test_pick_times_once_and_never_inside_a_capture(monkeypatch):
    from effsmall.attention import decode

    cands = ((4, (64, 4, 3)), (2, (64, 4, 3)), (8, (32, 4, 1)))
    ran, timed = [], []
    run = lambda S, cfg: ran.append((S, cfg)) or (S, cfg)          # noqa: E731
    monkeypatch.setattr(decode, "_gpu_time", lambda fn, device=None: (timed.append(device), fn(), ran[-1][0])[2])
    monkeypatch.setattr(decode, "_BEST", {})
    # inside a capture nothing may synchronize: the first candidate runs, nothing is remembered
    monkeypatch.setattr(decode, "_capturing", lambda: True)
    assert decode._pick("key", cands, run, True, "cuda:0") == cands[0]
    assert ran == [cands[0]] and not timed and decode._BEST == {}
    # outside: every candidate timed once (on the caller's device), the fastest remembered and run
    monkeypatch.setattr(decode, "_capturing", lambda: False)
    ran.clear()
    assert decode._pick("key", cands, run, True, "cuda:0") == cands[1]
    assert timed == ["cuda:0"] * 3 and decode._BEST == {"key": cands[1]}
    ran.clear()
    assert decode._pick("key", cands, run, True, "cuda:0") == cands[1] and ran == [cands[1]]


@pytest.mark.gpu
def test_gpu_first_call_timing_waits_for_the_callers_stream():
    """The check script in a process of its own: before the fix it ended the CUDA context."""
    import pathlib
    import subprocess
    import sys

    import os

    script = pathlib.Path(__file__).with_name("decode_stream_check.py")
    root = str(script.parents[2])              # this checkout's package, whatever the caller's PYTHONPATH
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0 and "ok" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
