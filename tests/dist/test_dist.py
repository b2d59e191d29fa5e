"""effsmall.dist on CPU with gloo: every parallel layer equals its single-process reference in
the forward and in all gradients (2 and 4 processes), the collectives match the theory, and
failures surface as errors. Spawning processes dominates the time, so each world size runs
all checks in one launch (``checks.check_all``) and the tests assert on its results."""
import json
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from effsmall.dist import checks, launch
from effsmall.dist.ring import (_bwd_torch, _fwd_torch, block_tasks, contiguous_shard, zigzag_shard,
                                          zigzag_unshard)

WORLDS = (2, 4)
FP64, FP32 = 1e-12, 1e-5
MAMBA_GRAD = 1e-5  # the gated RMSNorm of Mamba2Block computes in fp32 even for fp64 inputs


@pytest.mark.parametrize("world", WORLDS)
def test_parallel_layers_equal_their_references(world):
    """One launch per world size (tests may run in parallel workers: a shared fixture would
    launch once per worker), then every family of checks below on its results."""
    res = launch(checks.check_all, nprocs=world)
    for check in (_tensor_parallel_mamba2, _tensor_parallel_transformer, _context_parallel_ssd,
                  _context_parallel_mamba2_block, _ring_attention, _ulysses, _bad_inputs_name_both_numbers):
        check((world, res))


def _errors(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in ("fwd", "bwd", "shape", "state_bytes", "kv_bytes")}


def _calls(d: dict, phase: str = "fwd") -> dict:
    return d[phase]["calls"]


def _tensor_parallel_mamba2(results):
    world, res = results
    for r in res:
        for name, tol in (("tp_mamba2", FP64), ("sp_mamba2", FP64), ("tp_mamba2_fp32", FP32),
                          ("tp_mamba2_odd", FP64)):
            e = r[name]
            assert e["out"] < tol and e["grad_u"] < tol and e["grad_params"] < MAMBA_GRAD, (name, e)
        b, l, d, elt = (r["tp_mamba2"]["shape"][k] for k in ("b", "l", "d_model", "elt"))
        n = b * l * d * elt
        # exactly one all-reduce per block forward (and one in backward), of the block's output
        assert _calls(r["tp_mamba2"]) == {"all_reduce": 1} and _calls(r["tp_mamba2"], "bwd") == {"all_reduce": 1}
        assert r["tp_mamba2"]["fwd"]["bytes"]["all_reduce"] == n
        assert checks.theory("tp_mamba2", world, b=b, l=l, d_model=d, elt=elt) == {"all_reduce": (1, n)}
        # sequence parallel: an all-gather and a reduce-scatter that move what the all-reduce moves
        sp = r["sp_mamba2"]
        assert _calls(sp) == {"all_gather": 1, "reduce_scatter": 1}
        assert sum(sp["fwd"]["wire_bytes"].values()) == r["tp_mamba2"]["fwd"]["wire_bytes"]["all_reduce"]
        assert sp["fwd"]["wire_bytes"]["all_gather"] == n * (world - 1) // world


def _tensor_parallel_transformer(results):
    world, res = results
    for r in res:
        for name in ("tp_transformer", "sp_transformer", "tp_transformer_kv1"):
            e = _errors(r[name])
            assert max(e.values()) < FP64, (name, e)
        assert _calls(r["tp_transformer"]) == {"all_reduce": 2}  # one after attention, one after the MLP
        assert _calls(r["tp_transformer_kv1"], "bwd") == {"all_reduce": 2}
        assert _calls(r["sp_transformer"]) == {"all_gather": 2, "reduce_scatter": 2}
        assert (sum(r["sp_transformer"]["fwd"]["wire_bytes"].values())
                == r["tp_transformer"]["fwd"]["wire_bytes"]["all_reduce"])


def _context_parallel_ssd(results):
    world, res = results
    for rank, r in enumerate(res):
        for name, tol in (("cp_ssd_p2p", FP64), ("cp_ssd_allgather", FP64), ("cp_ssd_fp32", FP32),
                          ("cp_ssd_odd", FP64), ("cp_ssd_h0_p2p", FP64), ("cp_ssd_h0_allgather", FP64),
                          ("cp_ssd_triton", FP32)):
            e = _errors(r[name])
            # A's and D's gradients sum over every token of every rank: fp32 rounding accumulates
            sums = {k: e.pop(k) for k in ("grad_A", "grad_D")}
            assert max(e.values()) < tol and max(sums.values()) < 10 * tol, (name, e, sums)
            assert ("final_state" in e) == (rank == world - 1)
            assert ("grad_initial_states" in e) == (rank == 0 and "h0" in name or name == "cp_ssd_triton" and rank == 0)
        a2a = r["cp_ssd_alltoall"]
        e = _errors(a2a)
        assert max(e.values()) < FP64 and "final_state" not in e, e
        assert _calls(a2a) == {"all_to_all": 5} and _calls(a2a, "bwd") == {"all_to_all": 5}  # x, Δ, B, C in; y out
        p2p, ag = r["cp_ssd_p2p"], r["cp_ssd_allgather"]
        # p2p: one state to the next rank in forward, its gradient back in backward
        want = {**({"send": 1} if rank < world - 1 else {}), **({"recv": 1} if rank > 0 else {})}
        assert _calls(p2p) == want
        assert all(v == p2p["state_bytes"] for v in p2p["fwd"]["bytes"].values())
        assert _calls(p2p, "bwd") == {**({"recv": 1} if rank < world - 1 else {}), **({"send": 1} if rank > 0 else {})}
        # allgather: one round whatever the world size; every rank's (state, decay) pair
        assert _calls(ag) == {"all_gather": 1} and _calls(ag, "bwd") == {"reduce_scatter": 1}
        per_head = ag["state_bytes"] // (2 * 4)   # state bytes per (batch, head): P·N·8
        assert ag["fwd"]["bytes"]["all_gather"] == world * (ag["state_bytes"] + 2 * 4 * 8)
        assert per_head == 4 * 4 * 8


def _context_parallel_mamba2_block(results):
    world, res = results
    for rank, r in enumerate(res):
        for name in ("cp_mamba2_p2p", "cp_mamba2_allgather"):
            e = _errors(r[name])
            assert e["out"] < FP64 and e["grad_u"] < FP64 and e["grad_params"] < MAMBA_GRAD, (name, e)
        # the conv halo: one send forward, on every rank but the last
        halo = {**({"send": 1} if rank < world - 1 else {}), **({"recv": 1} if rank > 0 else {})}
        assert _calls(r["cp_mamba2_allgather"]) == {**halo, "all_gather": 1}
        assert _calls(r["cp_mamba2_p2p"]) == {k: 2 * v for k, v in halo.items()}


def _ring_attention(results):
    world, res = results
    for name in ("ring_contiguous", "ring_zigzag", "ring_full", "ring_fp32", "ring_odd"):
        tol = FP32 if name.endswith("fp32") else FP64
        for r in res:
            e = _errors(r[name])
            assert max(e.values()) < tol, (name, e)
            # forward: p−1 KV shards pass by; backward: p−1 KV shards and p dKV accumulators
            assert _calls(r[name]) == {"send": world - 1, "recv": world - 1}
            assert r[name]["fwd"]["bytes"]["send"] == (world - 1) * r[name]["kv_bytes"]
            assert _calls(r[name], "bwd") == {"send": 2 * world - 1, "recv": 2 * world - 1}


def _ulysses(results):
    world, res = results
    for r in res:
        for name in ("ulysses", "ulysses_gqa"):
            assert max(_errors(r[name]).values()) < FP64, name
            assert _calls(r[name]) == {"all_to_all": 4}


def _bad_inputs_name_both_numbers(results):
    world, res = results
    for rank, r in enumerate(res):
        m = r["bad_inputs"]
        assert "ngroups=1" in m["mamba2_ngroups"] and f"world size {world}" in m["mamba2_ngroups"]
        assert "n_heads=3" in m["attention_heads"] and f"world size {world}" in m["attention_heads"]
        assert f"({world + 1})" in m["ulysses_heads"] and f"world size {world}" in m["ulysses_heads"]
        assert "same shape on every rank" in m["ring_unequal"]


def test_worker_error_names_rank_and_traceback():
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 of 2.*Traceback.*told to fail"):
        launch(checks.fail_on_rank, nprocs=2)


def test_hung_collective_times_out():
    with pytest.raises(RuntimeError, match=r"(?s)rank 0 of 2.*Timed out"):
        launch(checks.hang_on_rank, 3.0, nprocs=2)


def test_launch_rejects_what_cannot_be_spawned():
    with pytest.raises(ValueError, match="importable"):
        launch(lambda rank, world: rank)
    with pytest.raises(ValueError, match="nprocs"):
        launch(checks.fail_on_rank, nprocs=0)
    with pytest.raises(ValueError, match="backend"):
        launch(checks.fail_on_rank, backend="mpi")


def test_torchrun_localhost_gloo(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "effsmall.dist", "effsmall.dist.checks:check_tp_mamba2", "--backend", "gloo", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    for r in rows:
        assert r["result"]["out"] < FP64 and r["result"]["fwd"]["calls"] == {"all_reduce": 1}


# ---------------------------------------------------------------- single-process pieces
@given(world=st.integers(1, 5), pieces=st.integers(1, 3))
def test_zigzag_roundtrip(world, pieces):
    x = torch.arange(2 * world * pieces).view(1, 1, -1, 1)                 # (1, 1, L, 1)
    shards = [zigzag_shard(x, r, world) for r in range(world)]
    assert torch.equal(zigzag_unshard(shards), x)
    assert torch.equal(torch.cat([contiguous_shard(x, r, world) for r in range(world)], 2), x)


@given(world=st.integers(2, 6), half=st.integers(1, 4))
def test_zigzag_balances_causal_work(world, half):
    """Every (rank, step) computes the same number of query-key pairs (diagonal steps aside)."""
    n = 2 * half
    for layout in ("zigzag", "contiguous"):
        work = {}
        for rank in range(world):
            for step in range(world):
                src = (rank - step) % world
                tasks = block_tasks(layout, True, rank, src, n)
                work[rank, step] = sum((q.stop - q.start) * (k.stop - k.start) for q, k, c in tasks if not c)
        off_diag = {w for (r, s), w in work.items() if s > 0}
        if layout == "zigzag":
            assert off_diag == {n * n // 2}
        else:
            assert off_diag == {0, n * n}


@given(n=st.integers(1, 9), m=st.integers(1, 9), causal=st.booleans(), rep=st.sampled_from([1, 2]))
def test_block_backward_with_global_lse(n, m, causal, rep):
    """A block's gradients from the *global* O and LSE, summed over the blocks, equal autograd."""
    torch.manual_seed(n * 10 + m)
    if causal:
        m = n
    q = torch.randn(1, 2 * rep, n, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 2 * m, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 2 * m, 8, dtype=torch.float64, requires_grad=True)
    s = 8 ** -0.5
    o_full, _ = _fwd_torch(q, k, v, False, s)          # (1, H, n, D) over all 2m keys
    do = torch.randn_like(o_full)
    o_full.backward(do)
    o_a, lse_a = _fwd_torch(q, k[:, :, :m], v[:, :, :m], False, s)
    o_b, lse_b = _fwd_torch(q, k[:, :, m:], v[:, :, m:], False, s)
    from effsmall.attention import merge_attention_states
    o, lse = merge_attention_states(o_a, lse_a, o_b, lse_b)
    assert (o - o_full).abs().max() < FP64
    ga = _bwd_torch(do, q, k[:, :, :m], v[:, :, :m], o, lse, False, s)
    gb = _bwd_torch(do, q, k[:, :, m:], v[:, :, m:], o, lse, False, s)
    assert (ga[0] + gb[0] - q.grad).abs().max() < FP64
    assert (torch.cat([ga[1], gb[1]], 2) - k.grad).abs().max() < FP64
    assert (torch.cat([ga[2], gb[2]], 2) - v.grad).abs().max() < FP64


def test_triton_block_kernels_match_torch():
    """The FlashAttention kernels as ring blocks (here in the Triton interpreter): the kernel's
    +inf convention for empty rows is mapped, and the global O/LSE drive the backward."""
    from effsmall.dist.ring import _bwd_triton, _fwd_triton
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    q, k, v = (torch.randn(1, 2, 16, 16, device=dev) for _ in range(3))
    for causal in (True, False):
        o_t, lse_t = _fwd_triton(q, k, v, causal, 0.25)
        o_r, lse_r = _fwd_torch(q, k, v, causal, 0.25)
        assert (o_t - o_r).abs().max() < 1e-4 and (lse_t - lse_r).abs().max() < 1e-4
        do = torch.randn_like(q)
        for a, b in zip(_bwd_triton(do, q, k, v, o_r, lse_r, causal, 0.25), _bwd_torch(do, q, k, v, o_r, lse_r, causal, 0.25)):
            assert (a - b).abs().max() < 1e-4
    # a block no query sees (lse = -inf) contributes no gradient
    lse_empty = torch.full_like(lse_r, float("-inf"))
    for g in _bwd_triton(do, q, k, v, torch.zeros_like(q), lse_empty, False, 0.25):
        assert g.abs().max() == 0


@pytest.mark.gpu
def test_cuda_paths_one_gpu():
    """The CUDA code paths (Triton FlashAttention blocks in the ring, ssd_triton with passed
    states, bf16 TP Mamba-2) in a one-rank NCCL group at realistic sizes."""
    res = launch(checks.check_gpu, nprocs=1, backend="nccl")
    for name, e in res[0].items():
        assert max(_errors(e).values()) < 2e-2, (name, e)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_two_gpus_triton_ring_bf16():
    res = launch(checks.check_gpu, nprocs=2, backend="nccl")
    for r in res:
        for name, e in r.items():
            assert max(_errors(e).values()) < 2e-2, (name, e)
