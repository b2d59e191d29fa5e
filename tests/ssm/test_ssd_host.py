"""Host work of the Triton SSD path, counted without a GPU (launches stubbed): regressions show here.

The bench's eager fwd+bwd at 16K tokens was host-bound (host 1.8–2.2 ms vs GPU 0.84–1.6 ms on an
H200); every torch op and launch below costs the host several µs there.
"""
import pytest

pytest.importorskip("triton")

from effsmall.ssm._ssd_testing import mamba_scan_host_cost  # noqa: E402

# (torch ops, Triton launches) per call at the bench's launch plan (two launches per scan);
# on CPU the torch count includes the A ≤ 0 value check (2 ops: gt, any) that CUDA skips
FWD_MAX = (4, 2)
FWDBWD_MAX = (16, 8)


@pytest.mark.parametrize("backward", [False, True])
def test_mamba_scan_ops_and_launches_bounded(backward):
    cost = mamba_scan_host_cost(backward=backward, calls=1, repeats=1)
    torch_max, triton_max = FWDBWD_MAX if backward else FWD_MAX
    assert cost["triton"] <= triton_max, cost
    assert cost["torch"] <= torch_max, cost


def test_counts_do_not_depend_on_length_beyond_the_plan():
    """The default small shape stands for the 16K-token bench shape: same counts (meta: free)."""
    small = mamba_scan_host_cost(calls=1, repeats=1, device="meta")
    bench = mamba_scan_host_cost(L=16384, N=128, chunk_size=256, device="meta", calls=1, repeats=1)
    assert (small["torch"], small["triton"]) == (bench["torch"], bench["triton"])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_group_sum_equals_the_fp32_sum_rounded_once(dtype):
    """_group_sum replaced ``.sum(3, dtype=float32).to(dtype)`` (two ops): torch's reduced-precision
    sums accumulate in fp32 and round once, so the result is the same."""
    import torch

    from effsmall.ssm.ssd_kernels import _group_sum

    dt = getattr(torch, dtype)
    per_head = (torch.randn(2, 37, 12, 16, generator=torch.Generator().manual_seed(0)) * 3).to(dt)
    old = per_head.view(2, 37, 3, 4, 16).sum(3, dtype=torch.float32).to(dt)
    assert torch.equal(_group_sum(per_head, 3), old)
    assert _group_sum(per_head, 12) is per_head


@pytest.mark.parametrize("dtype", ["int64", "int32", "int16", "uint8"])
def test_segment_ids_match_the_first_definition(dtype):
    """segment_ids by diff/ne/cumsum (4 ops) equals its first definition (zeros, setitem of ne, cumsum)."""
    import torch

    from effsmall.ssm._ssd_checks import segment_ids

    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 3, (3, 29), generator=gen).to(getattr(torch, dtype))
    seq[1] = 7  # one sequence
    seq[2, 0] = 255 if dtype == "uint8" else -(2**15)  # wrap-around differences are still nonzero
    first = torch.zeros_like(seq, dtype=torch.int64)
    first[:, 1:] = (seq[:, 1:] != seq[:, :-1]).to(torch.int64)
    first = first.cumsum(dim=1)
    assert torch.equal(segment_ids(seq), first)
    assert torch.equal(segment_ids(seq, torch.int32), first.to(torch.int32))
    assert segment_ids(seq[:, :1]).tolist() == [[0], [0], [0]]
