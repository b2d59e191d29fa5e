"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019, §3) for the book's two blocks.

A linear layer ``y = x W`` can be cut two ways over ``p`` ranks:

* **column-parallel**: rank r holds a slice of W's output features; from the *replicated*
  input it computes its slice of y — no communication;
* **row-parallel**: rank r holds the matching slice of W's input features; from its slice of
  the activations it computes a *partial sum* of y; one all-reduce adds the p partials.

A sublayer ``column-parallel → anything per feature slice → row-parallel`` therefore costs
exactly **one all-reduce** in the forward (Megatron's *g*) and one in the backward (*f*).

**Mamba-2** (Dao & Gu 2024, §8.1) was shaped for this: z, x, B, C and Δ all come from one
input projection of u, so a column-parallel ``in_proj`` gives each rank the z, x, Δ of its heads
and the B, C of its groups (``ngroups % p == 0``); conv, SSD and the grouped RMSNorm are
per-head/per-group and stay local (``norm_groups % p == 0``); the row-parallel ``out_proj``
ends in the one all-reduce. (Mamba-1 computes Δ, B, C from x by a second projection over all
of d_inner — a row-parallel product that needs its own all-reduce inside the block: two.)

**Attention**: heads are independent, so q/k/v projections split by heads (column-parallel)
and ``wo`` is row-parallel. GQA: KV heads split when ``n_kv_heads % p == 0``; when ``p`` is a
multiple of ``n_kv_heads`` each rank keeps the one KV head its query heads use (replicated
on ``p / n_kv_heads`` ranks). **SwiGLU**: gate and up column-parallel, down row-parallel.

``sequence_parallel=True`` (Megatron-LM's sequence parallelism, Korthikanti et al. 2022, §4.2):
the block's input and output stay sharded over the sequence; an all-gather replaces *f* and a
reduce-scatter replaces *g* — the same bytes on the wire as the one all-reduce, while norms and
residuals run on 1/p of the tokens. The replicated parameters (norm weights) then receive a
partial gradient on each rank; sum it with :func:`effsmall.dist.allreduce_replicated_grads`.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn as nn

from effsmall.attention.block import TransformerBlock
from effsmall.dist.comm import (copy_to_parallel, gather_sequence, reduce_from_parallel, scatter_sequence,
                                world_and_rank)
from effsmall.ssm.mamba2_block import GatedRMSNorm, Mamba2Block

__all__ = ["shard_mamba2_block", "shard_transformer_block", "TPMamba2Block", "TPTransformerBlock",
           "shard_rows", "allreduce_replicated_grads"]


def _divides(what: str, n: int, world: int) -> None:
    if n % world:
        raise ValueError(f"{what}={n} must be divisible by the world size {world}")


def shard_rows(w: torch.Tensor, sizes: list[int], world: int, rank: int, dim: int = 0) -> torch.Tensor:
    """Cut ``w`` along ``dim`` into segments of ``sizes`` and keep this rank's equal part of each,
    concatenated: the column-parallel slice of a fused projection ``[z | x | B | C | dt]``."""
    parts = torch.split(w, sizes, dim=dim)
    return torch.cat([part.chunk(world, dim=dim)[rank] for part in parts], dim=dim).detach().clone()


def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone())


def _linear(weight: torch.Tensor) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=weight.device, dtype=weight.dtype)
    lin.weight = _param(weight)
    return lin


# ---------------------------------------------------------------- Mamba-2
def _mamba2_shard(block: Mamba2Block, world: int, rank: int) -> Mamba2Block:
    """This rank's Mamba2Block: the same module class and forward, on h/p heads and g/p groups."""
    d_inner, h, g, N = block.d_inner, block.nheads, block.ngroups, block.d_state
    _divides("ngroups", g, world)
    norm_groups = d_inner // block.norm.group_size
    _divides("norm_groups", norm_groups, world)
    di, gN = d_inner // world, g * N // world
    shard = Mamba2Block.__new__(Mamba2Block)  # a smaller block; Mamba2Block.forward runs unchanged on it
    nn.Module.__init__(shard)
    shard.d_model, shard.d_state, shard.d_conv, shard.d_inner = block.d_model, N, block.d_conv, di
    shard.headdim, shard.nheads, shard.ngroups, shard.chunk_size = block.headdim, h // world, g // world, block.chunk_size
    shard.conv_dim = di + 2 * gN
    shard.in_proj = _linear(shard_rows(block.in_proj.weight, [d_inner, d_inner, g * N, g * N, h], world, rank))
    if block.in_proj.bias is not None:
        shard.in_proj.bias = _param(shard_rows(block.in_proj.bias, [d_inner, d_inner, g * N, g * N, h], world, rank))
    w = block.conv1d.weight                                                     # (conv_dim, 1, d_conv)
    shard.conv1d = nn.Conv1d(shard.conv_dim, shard.conv_dim, block.d_conv, groups=shard.conv_dim,
                             padding=block.d_conv - 1, bias=block.conv1d.bias is not None,
                             device=w.device, dtype=w.dtype)
    shard.conv1d.weight = _param(shard_rows(w, [d_inner, g * N, g * N], world, rank))  # (conv_dim/p-ish, 1, d_conv)
    if block.conv1d.bias is not None:
        shard.conv1d.bias = _param(shard_rows(block.conv1d.bias, [d_inner, g * N, g * N], world, rank))
    for name in ("dt_bias", "A_log", "D"):                                      # (h,) -> (h/p,)
        setattr(shard, name, _param(getattr(block, name).chunk(world)[rank]))
    shard.norm = GatedRMSNorm(di, block.norm.group_size, block.norm.eps, device=w.device, dtype=block.norm.weight.dtype)
    shard.norm.weight = _param(block.norm.weight.chunk(world)[rank])            # (d_inner/p,)
    shard.out_proj = _linear(block.out_proj.weight.chunk(world, dim=1)[rank])   # (d_model, d_inner/p)
    return shard


class TPMamba2Block(nn.Module):
    """One rank's part of a tensor-parallel Mamba-2 block: ``u -> f -> shard -> g (+ bias)``."""

    def __init__(self, shard: Mamba2Block, out_bias: torch.Tensor | None, group=None, sequence_parallel=False):
        super().__init__()
        self.shard, self.group, self.sequence_parallel = shard, group, sequence_parallel
        self.out_bias = None if out_bias is None else _param(out_bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (b, l, d_model) replicated — or (b, l/p, d_model), this rank's tokens, with
        sequence parallelism — to the block's output in the same layout."""
        if self.sequence_parallel:
            u = gather_sequence(u, 1, self.group)          # (b, l, d_model)  all-gather
        else:
            u = copy_to_parallel(u, self.group)            # (b, l, d_model)  f
        out = self.shard(u)                                # (b, l, d_model)  partial sum over this rank's heads
        if self.sequence_parallel:
            out = scatter_sequence(out, 1, self.group)     # (b, l/p, d_model) reduce-scatter
        else:
            out = reduce_from_parallel(out, self.group)    # (b, l, d_model)  g: the one all-reduce
        return out if self.out_bias is None else out + self.out_bias


def shard_mamba2_block(block: Mamba2Block, group=None, sequence_parallel: bool = False) -> TPMamba2Block:
    """This rank's tensor-parallel shard of ``block`` (same weights; call on every rank).

    Requires ``ngroups % world_size == 0`` and ``norm_groups % world_size == 0`` (ValueError
    naming both numbers otherwise). Forward and backward equal the unsharded block; the forward
    issues exactly one all-reduce (or one all-gather + one reduce-scatter with
    ``sequence_parallel``)."""
    if not isinstance(block, Mamba2Block):
        raise TypeError(f"block must be a Mamba2Block, got {type(block).__name__}")
    world, rank = world_and_rank(group)
    shard = _mamba2_shard(block, world, rank)
    return TPMamba2Block(shard, block.out_proj.bias, group, sequence_parallel)


# ---------------------------------------------------------------- Transformer block
def _kv_plan(n_kv: int, world: int) -> str:
    if n_kv % world == 0:
        return "split"
    if world % n_kv == 0:
        return "replicate"
    raise ValueError(f"n_kv_heads={n_kv} and the world size {world}: one must divide the other "
                     f"(split the KV heads, or replicate each on world/n_kv_heads ranks)")


def _transformer_shard(block: TransformerBlock, world: int, rank: int) -> TransformerBlock:
    Hq, Hk, D = block.n_heads, block.n_kv_heads, block.head_dim
    _divides("n_heads", Hq, world)
    d_ff = block.w_down.in_features
    _divides("d_ff", d_ff, world)
    shard = TransformerBlock.__new__(TransformerBlock)  # TransformerBlock.attention/.mlp run unchanged on it
    nn.Module.__init__(shard)
    for name in ("head_dim", "rope", "rope_base", "causal", "attn_fn", "mlp_kind"):
        setattr(shard, name, getattr(block, name))
    shard.n_heads = Hq // world
    shard.attn_norm = copy.deepcopy(block.attn_norm)                            # replicated
    shard.mlp_norm = copy.deepcopy(block.mlp_norm)
    shard.wq = _linear(block.wq.weight.chunk(world)[rank])                      # (Hq/p·D, d_model)
    wk, wv = block.wkv.weight.chunk(2)                                          # (Hk·D, d_model) each
    if _kv_plan(Hk, world) == "split":
        shard.n_kv_heads = Hk // world
        wk, wv = wk.chunk(world)[rank], wv.chunk(world)[rank]                   # (Hk/p·D, d_model)
    else:                                                                       # this rank's query heads use one KV head
        shard.n_kv_heads = 1
        j = rank // (world // Hk)
        wk, wv = wk[j * D:(j + 1) * D], wv[j * D:(j + 1) * D]                   # (D, d_model)
    shard.wkv = _linear(torch.cat([wk, wv]))
    shard.wo = _linear(block.wo.weight.chunk(world, dim=1)[rank])               # (d_model, Hq/p·D)
    if block.mlp_kind == "swiglu":
        shard.w_up = _linear(shard_rows(block.w_up.weight, [d_ff, d_ff], world, rank))  # (2·d_ff/p, d_model)
    else:
        shard.w_up = _linear(block.w_up.weight.chunk(world)[rank])              # (d_ff/p, d_model)
    shard.w_down = _linear(block.w_down.weight.chunk(world, dim=1)[rank])       # (d_model, d_ff/p)
    return shard


class TPTransformerBlock(nn.Module):
    """One rank's part of a tensor-parallel pre-norm block: one all-reduce after attention, one
    after the MLP (with ``sequence_parallel``: an all-gather before and a reduce-scatter after each)."""

    def __init__(self, shard: TransformerBlock, group=None, sequence_parallel: bool = False):
        super().__init__()
        self.shard, self.group, self.sequence_parallel = shard, group, sequence_parallel
        self.attn_norm, self.mlp_norm = shard.attn_norm, shard.mlp_norm

    def _enter(self, x):
        return gather_sequence(x, 1, self.group) if self.sequence_parallel else copy_to_parallel(x, self.group)

    def _leave(self, y):
        return scatter_sequence(y, 1, self.group) if self.sequence_parallel else reduce_from_parallel(y, self.group)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self._leave(self.shard.attention(self._enter(self.attn_norm(x))))

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self._leave(self.shard.mlp(self._enter(self.mlp_norm(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, d_model) replicated, or (B, N/p, d_model) with sequence parallelism."""
        h = x + self.attention(x)   # norms and residuals on this rank's tokens when sequence-parallel
        return h + self.mlp(h)


def shard_transformer_block(block: TransformerBlock, group=None, sequence_parallel: bool = False) -> TPTransformerBlock:
    """This rank's tensor-parallel shard of a :class:`~effsmall.attention.block.TransformerBlock`.

    Requires ``n_heads % p == 0`` and ``d_ff % p == 0``; KV heads are split when
    ``n_kv_heads % p == 0``, replicated when ``p % n_kv_heads == 0`` (ValueError otherwise).
    RoPE positions are global: with ``sequence_parallel`` the all-gather restores the full
    sequence before q and k are rotated."""
    if not isinstance(block, TransformerBlock):
        raise TypeError(f"block must be a TransformerBlock, got {type(block).__name__}")
    world, rank = world_and_rank(group)
    shard = _transformer_shard(block, world, rank)
    return TPTransformerBlock(shard, group, sequence_parallel)


def allreduce_replicated_grads(module: nn.Module, group=None, names=("norm",)) -> None:
    """Sum, over the ranks, the gradients of the parameters that every rank holds whole but that
    saw only this rank's tokens (the norms under sequence parallelism)."""
    for name, prm in module.named_parameters():
        if prm.grad is not None and any(n in name for n in names):
            dist.all_reduce(prm.grad, group=group)
