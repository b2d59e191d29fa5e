"""The collectives every parallel layer is built from, as autograd functions.

A collective in the forward pass has a *dual* collective in the backward pass; getting the
pair right is what makes sharded training exact (Megatron-LM, Shoeybi et al. 2019, §3):

=========================  ============================  ===============================
operator                   forward                       backward
=========================  ============================  ===============================
``copy_to_parallel`` (f)   identity                      all-reduce of the gradient
``reduce_from_parallel``   all-reduce                    identity
(g)
``gather_sequence``        all-gather along a dim        reduce-scatter along that dim
``scatter_sequence``       reduce-scatter along a dim    all-gather along that dim
``all_to_all``             all-to-all (scatter a dim,    the inverse all-to-all
                           gather another)
``shift_right``            send to rank+1, receive       send the gradient to rank−1,
                           from rank−1 (rank 0: zeros)   receive from rank+1
=========================  ============================  ===============================

Every function calls ``torch.distributed`` (looked up at call time, so
:func:`effsmall.dist.count_collectives` sees each call). ``group=None`` is the default group.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from effsmall.dist.counting import uncounted

__all__ = ["copy_to_parallel", "reduce_from_parallel", "gather_sequence", "scatter_sequence",
           "all_to_all", "shift_right", "split_along", "check_same_shape", "world_and_rank", "peer"]


def all_gather_into(out: torch.Tensor, x: torch.Tensor, group=None):
    """All-gather ``x`` of every rank into ``out`` (``world·x.shape[0]`` rows, rank order):
    ``torch.distributed.all_gather_single`` where this torch has it, else ``all_gather_into_tensor``."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, x, group=group)


def reduce_scatter_into(out: torch.Tensor, x: torch.Tensor, group=None):
    """Sum ``x`` over the ranks and keep this rank's ``out.shape[0]`` rows: ``reduce_scatter_single``
    where this torch has it, else ``reduce_scatter_tensor``."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, x, group=group)


def world_and_rank(group=None) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


def peer(group, group_rank: int) -> int:
    """The global rank of ``group_rank`` in ``group`` (what send/recv address)."""
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def split_along(x: torch.Tensor, dim: int, world: int, rank: int) -> torch.Tensor:
    """This rank's contiguous piece of ``x`` along ``dim`` (``x.shape[dim] % world == 0``)."""
    if x.shape[dim] % world:
        raise ValueError(f"the size {x.shape[dim]} of dim {dim} must be divisible by the world size {world}")
    return x.chunk(world, dim=dim)[rank].contiguous()


def check_same_shape(x: torch.Tensor, group=None, name: str = "x") -> None:
    """Raise ``ValueError`` on every rank if ``x`` differs in shape across ranks.

    Collectives on tensors of unequal shape can hang or read garbage; one small all-gather of
    the shapes (not counted by :func:`count_collectives`) turns that into an error."""
    world, rank = world_and_rank(group)
    if world == 1:
        return
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    mine = torch.tensor([x.dim(), *x.shape] + [-1] * (8 - x.dim()), dtype=torch.int64, device=dev)  # (9,)
    shapes = torch.empty(world * 9, dtype=torch.int64, device=dev)      # (world·9,)
    with uncounted():
        all_gather_into(shapes, mine, group)
    shapes = shapes.view(world, 9)                                      # (world, 9)
    rows = [tuple(r[1:1 + r[0]]) for r in shapes.tolist()]
    if len(set(rows)) > 1:
        raise ValueError(f"{name} must have the same shape on every rank, got "
                         + ", ".join(f"rank {i}: {s}" for i, s in enumerate(rows)))


# ---------------------------------------------------------------- tensor parallel: f and g
class _CopyToParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _ReduceFromParallel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


def copy_to_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    """Megatron's *f*: the replicated input enters the sharded layer (backward: all-reduce)."""
    return _CopyToParallel.apply(x, group)


def reduce_from_parallel(x: torch.Tensor, group=None) -> torch.Tensor:
    """Megatron's *g*: sum the ranks' partial outputs (one all-reduce; backward: identity)."""
    return _ReduceFromParallel.apply(x, group)


# ---------------------------------------------------------------- sequence parallel
def _all_gather(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    x0 = x.movedim(dim, 0).contiguous()                                # (n, ...)
    out = x0.new_empty((world * x0.shape[0], *x0.shape[1:]))           # (world·n, ...)
    all_gather_into(out, x0, group)
    return out.movedim(0, dim)


def _reduce_scatter(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    if x.shape[dim] % world:
        raise ValueError(f"the size {x.shape[dim]} of dim {dim} must be divisible by the world size {world}")
    x0 = x.movedim(dim, 0).contiguous()                                # (world·n, ...)
    out = x0.new_empty((x0.shape[0] // world, *x0.shape[1:]))          # (n, ...)
    reduce_scatter_into(out, x0, group)
    return out.movedim(0, dim)


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return _reduce_scatter(g, ctx.dim, ctx.group), None, None


class _ScatterSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, g):
        return _all_gather(g, ctx.dim, ctx.group), None, None


def gather_sequence(x: torch.Tensor, dim: int = 1, group=None) -> torch.Tensor:
    """All-gather the ranks' pieces along ``dim`` (rank order); backward reduce-scatters."""
    return _GatherSequence.apply(x, dim, group)


def scatter_sequence(x: torch.Tensor, dim: int = 1, group=None) -> torch.Tensor:
    """Sum the ranks' partial ``x`` and keep this rank's piece along ``dim`` (one
    reduce-scatter); backward all-gathers."""
    return _ScatterSequence.apply(x, dim, group)


# ---------------------------------------------------------------- all-to-all
def _all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group) -> torch.Tensor:
    world = dist.get_world_size(group)
    if x.shape[scatter_dim] % world:
        raise ValueError(f"the size {x.shape[scatter_dim]} of dim {scatter_dim} must be divisible by "
                         f"the world size {world}")
    parts = x.unflatten(scatter_dim, (world, -1)).movedim(scatter_dim, 0).contiguous()  # (world, ...)
    out = torch.empty_like(parts)                                      # (world, ...): row j came from rank j
    dist.all_to_all_single(out, parts, group=group)
    # out[j] is rank j's piece; put the piece index just before gather_dim and merge the two.
    return out.movedim(0, gather_dim).flatten(gather_dim, gather_dim + 1)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scatter_dim, gather_dim, group):
        ctx.dims, ctx.group = (scatter_dim, gather_dim), group
        return _all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, g):
        s, d = ctx.dims
        return _all_to_all(g, d, s, ctx.group), None, None, None


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group=None) -> torch.Tensor:
    """Split ``scatter_dim`` into ``world`` pieces, send piece j to rank j, and concatenate what
    arrives along ``gather_dim`` (rank order). Ulysses uses it to trade a sequence shard for a
    head shard. Backward is the inverse all-to-all."""
    nd = x.dim()
    return _AllToAll.apply(x, scatter_dim % nd, gather_dim % nd, group)


# ---------------------------------------------------------------- point to point
def exchange(send: torch.Tensor | None, dst: int | None, recv: torch.Tensor | None, src: int | None,
             group=None, wait: bool = True):
    """Post a send to group rank ``dst`` and a receive from ``src`` together (either may be
    None). Batched, so that NCCL never deadlocks on a ring. Returns ``recv`` (after waiting),
    or with ``wait=False`` the pending works, to wait on once overlapping compute is done."""
    ops = []
    if send is not None and dst is not None:
        ops.append(dist.P2POp(c10d.isend, send.contiguous(), peer(group, dst), group))
    if recv is not None and src is not None:
        ops.append(dist.P2POp(c10d.irecv, recv, peer(group, src), group))
    works = dist.batch_isend_irecv(ops) if ops else []
    if not wait:
        return works
    for w in works:
        w.wait()
    return recv


def _shift(x: torch.Tensor, group, step: int) -> torch.Tensor:
    """Non-cyclic shift by ``step`` (+1: to the next rank): rank r receives rank r−step's x, zeros
    where there is no such rank."""
    world, rank = world_and_rank(group)
    dst, src = rank + step, rank - step
    out = torch.zeros(x.shape, dtype=x.dtype, device=x.device)       # contiguous receive buffer
    exchange(x, dst if 0 <= dst < world else None, out, src if 0 <= src < world else None, group)
    return out


class _ShiftRight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _shift(x, group, +1)

    @staticmethod
    def backward(ctx, g):
        return _shift(g, ctx.group, -1), None


def shift_right(x: torch.Tensor, group=None) -> torch.Tensor:
    """Rank r gets rank r−1's ``x`` (rank 0 gets zeros): a halo from the previous sequence
    shard. Backward sends the gradient back to where the data came from."""
    return _ShiftRight.apply(x, group)
