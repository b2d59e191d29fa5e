"""One model, several devices (chapter 15): tensor, sequence and context parallelism for
Mamba-2 and attention, on ``torch.distributed`` (gloo on CPU, NCCL on GPUs).

- ``launcher.py``          start ``fn(rank, world_size, *args)`` in several processes (or under torchrun)
- ``counting.py``          count the collectives a piece of code issues, and their bytes
- ``comm.py``              the collectives as autograd functions (Megatron's f and g, all-gather /
                           reduce-scatter, all-to-all, point-to-point)
- ``tensor_parallel.py``   sharded Mamba-2 and Transformer blocks (one all-reduce per sublayer),
                           optionally sequence-parallel
- ``context_parallel.py`` one long sequence over several devices: SSD state passing, conv halo
- ``ring.py``              ring attention with contiguous or zigzag (load-balanced) layouts
- ``ulysses.py``           all-to-all (head-parallel) attention
- ``checks.py``            the workers that chapter 15 and the tests launch
- ``viz.py``               the chapter's pictures (who holds which weights; ring work per step)
"""
from effsmall._lazy import install

_EXPORTS = {
    # launcher.py
    "launch": "launcher",
    "init_from_env": "launcher",
    "run_from_env": "launcher",
    "default_backend": "launcher",
    "current_device": "launcher",
    # counting.py
    "count_collectives": "counting",
    "CollectiveCounts": "counting",
    # comm.py
    "copy_to_parallel": "comm",
    "reduce_from_parallel": "comm",
    "gather_sequence": "comm",
    "scatter_sequence": "comm",
    "all_to_all": "comm",
    "shift_right": "comm",
    # tensor_parallel.py
    "shard_mamba2_block": "tensor_parallel",
    "shard_transformer_block": "tensor_parallel",
    "allreduce_replicated_grads": "tensor_parallel",
    # context_parallel.py
    "context_parallel_ssd": "context_parallel",
    "context_parallel_conv1d": "context_parallel",
    "context_parallel_mamba2": "context_parallel",
    # ring.py
    "ring_attention": "ring",
    "zigzag_shard": "ring",
    "zigzag_unshard": "ring",
    "contiguous_shard": "ring",
    # ulysses.py
    "ulysses_attention": "ulysses",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
