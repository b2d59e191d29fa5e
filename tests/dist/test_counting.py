"""count_collectives and the autograd collectives in this process, as a one-rank gloo group."""
import torch
import torch.distributed as dist
import pytest

from effsmall.dist import comm
from effsmall.dist.counting import count_collectives, uncounted


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    store = tmp_path_factory.mktemp("pg") / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_counts_calls_and_bytes_and_restores(one_rank):
    original = dist.all_reduce
    x = torch.ones(4, 3)                                                   # 48 bytes
    with count_collectives() as outer:
        dist.all_reduce(x)
        with count_collectives() as inner:
            comm.reduce_from_parallel(x)
            with uncounted():
                dist.all_reduce(x)
        comm.gather_sequence(x, 0)
    assert dist.all_reduce is original                                    # wrappers removed on exit
    assert inner.calls == {"all_reduce": 1}
    assert outer.calls == {"all_reduce": 2, "all_gather": 1}
    assert outer.bytes["all_reduce"] == 96 and outer.bytes["all_gather"] == 48
    assert outer.wire_bytes["all_reduce"] == 0                            # one rank sends nothing
    assert "all_reduce" in str(outer) and outer.total_calls == 3


def test_autograd_collectives_one_rank_are_identities(one_rank):
    x = torch.randn(2, 6, 3, requires_grad=True)
    for fn in (comm.copy_to_parallel, comm.reduce_from_parallel,
               lambda t: comm.gather_sequence(t, 1), lambda t: comm.scatter_sequence(t, 1),
               lambda t: comm.all_to_all(t, 1, 2), comm.shift_right):
        y = fn(x)
        g = torch.randn_like(y)
        (gx,) = torch.autograd.grad(y, x, g)
        if fn is comm.shift_right:                                         # rank 0 receives zeros
            assert torch.equal(y, torch.zeros_like(x)) and torch.equal(gx, torch.zeros_like(x))
        else:
            assert torch.equal(y, x) and torch.equal(gx, g)


def test_split_and_shape_checks(one_rank):
    with pytest.raises(ValueError, match="size 5 of dim 1 must be divisible by the world size 2"):
        comm.split_along(torch.zeros(1, 5), 1, 2, 0)
    comm.check_same_shape(torch.zeros(3))                                  # one rank: nothing to compare
