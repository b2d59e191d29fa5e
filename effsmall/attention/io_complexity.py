"""Counting HBM traffic: standard attention vs FlashAttention's two loop orders.

FlashAttention's Theorem 2 (Dao et al. 2022, §3.2): with sequence length N, head dimension D
and SRAM of M elements (D ≤ M ≤ ND), standard attention makes
Θ(ND + N²) HBM accesses while FlashAttention makes Θ(N²D² / M). The reason:
Algorithm 1 picks B_c = ⌈M / 4D⌉, B_r = min(B_c, D) so that the four tiles
Qᵢ, Kⱼ, Vⱼ, Oᵢ fit on chip; there are T_c = N / B_c column blocks and every one of
them re-reads all of Q and O, i.e. T_c · ND = 4N²D²/M elements.

:func:`io_traffic` counts these bytes exactly, term by term, for the same loops that
:func:`effsmall.attention.tiled.tiled_attention` runs (one batch element and head; Q, K, V, O
of ``dtype_bytes`` bytes, the row statistics m, l, lse in float32), so the formula can be
checked against the bytes the torch implementation actually moved (its ``HBMCounter``).
"""
from __future__ import annotations

import math

import torch

from effsmall.attention.contract import Window
from effsmall.attention.tiled import kv_block_range

STAT_BYTES = 4  # m, l, lse are float32


def default_blocks(N: int, D: int, M: int, dtype_bytes: int = 2) -> tuple[int, int]:
    """Algorithm 1's block sizes for SRAM of M **bytes**: B_c = ⌈M / 4D⌉ elements'
    worth (M / dtype_bytes elements), B_r = min(B_c, D); both at most N."""
    block_n = math.ceil(M / (4 * D * dtype_bytes))
    block_m = min(block_n, D)
    return max(1, min(block_m, N)), max(1, min(block_n, N))


def _sizes(n: int, b: int) -> torch.Tensor:
    """Sizes of the blocks of length b covering n (the last may be shorter)."""
    t = math.ceil(n / b)
    return torch.clamp(n - torch.arange(t, dtype=torch.int64) * b, max=b)  # (t,)


def io_traffic(N: int, D: int, M: int, *, algorithm: str = "standard", block_m: int | None = None,
               block_n: int | None = None, dtype_bytes: int = 2, causal: bool = False,
               window: Window = None) -> dict:
    """HBM bytes read and written by one attention head of length N and head dim D.

    ``algorithm``: ``"standard"`` (S and P written to and read back from HBM), ``"fa1"`` (outer
    loop over K/V blocks, O/l/m re-read and re-written per tile) or ``"fa2"`` (outer loop over
    Q blocks). ``M`` is the SRAM size in bytes; block sizes default to Algorithm 1's. With
    ``causal``, tiles hidden by the mask are skipped (the standard algorithm still writes all
    of S and P); ``window=(left, right)`` skips the tiles a sliding window hides, as
    :func:`~effsmall.attention.tiled.tiled_attention` does. Returns ``{"algorithm", "N", "D", "M", "block_m", "block_n", "reads",
    "writes", "total", "terms"}``, ``terms`` mapping e.g. ``"read Q"`` to bytes.
    """
    for name, val in (("N", N), ("D", D), ("M", M), ("dtype_bytes", dtype_bytes)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    if algorithm not in ("standard", "fa1", "fa2"):
        raise ValueError(f"algorithm must be 'standard', 'fa1' or 'fa2', got {algorithm!r}")
    dm, dn = default_blocks(N, D, M, dtype_bytes)
    block_m = dm if block_m is None else block_m
    block_n = dn if block_n is None else block_n
    for name, val in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}")
    b, row = dtype_bytes, D * dtype_bytes  # bytes per element, per row of Q/K/V/O
    if algorithm == "standard":
        terms = {"read Q": N * row, "read K": N * row, "write S": N * N * b, "read S": N * N * b,
                 "write P": N * N * b, "read P": N * N * b, "read V": N * row, "write O": N * row}
    else:
        r = _sizes(N, block_m)  # (Tr,) rows per Q block
        c = _sizes(N, block_n)  # (Tc,) rows per K/V block
        jlo, jhi = kv_block_range(N, N, block_m, block_n, causal, window)
        n_vis = (jhi - jlo + 1).clamp(min=0)  # (Tr,) tiles visited per Q block
        csum = torch.cat([torch.zeros(1, dtype=torch.int64), c.cumsum(0)])  # (Tc + 1,)
        if algorithm == "fa2":
            kv_rows = int(torch.where(n_vis > 0, csum[(jhi + 1).clamp(min=0)] - csum[jlo.clamp(max=len(c))], 0).sum())
            q_rows = int(r[n_vis > 0].sum())
            terms = {"read Q": q_rows * row, "read K": kv_rows * row, "read V": kv_rows * row,
                     "write O": N * row, "write lse": N * STAT_BYTES}
        else:
            tile_rows = int((r * n_vis).sum())  # rows of Q (and O, l, m) moved over all visited tiles
            used = torch.zeros(len(c) + 1, dtype=torch.int64)  # difference array over K/V blocks
            vis = n_vis > 0
            used.index_add_(0, jlo[vis], torch.ones_like(jlo[vis]))
            used.index_add_(0, jhi[vis] + 1, -torch.ones_like(jhi[vis]))
            kv_rows = int(c[used.cumsum(0)[:-1] > 0].sum())  # each visited K/V block is loaded once
            terms = {"read Q": tile_rows * row, "read K": kv_rows * row, "read V": kv_rows * row,
                     "read O": tile_rows * row, "read l": tile_rows * STAT_BYTES,
                     "read m": tile_rows * STAT_BYTES,
                     "write O": (N + tile_rows) * row, "write l": (N + tile_rows) * STAT_BYTES,
                     "write m": (N + tile_rows) * STAT_BYTES}  # the N: initialization (line 2)
    reads = sum(v for k, v in terms.items() if k.startswith("read"))
    writes = sum(v for k, v in terms.items() if k.startswith("write"))
    return {"algorithm": algorithm, "N": N, "D": D, "M": M, "block_m": block_m, "block_n": block_n,
            "reads": reads, "writes": writes, "total": reads + writes, "terms": terms}


def plot_io_theorem(N: int = 4096, D: int = 64, Ms=None, *, dtype_bytes: int = 2, ax=None):
    """Plot HBM bytes vs SRAM size M (bytes) for the three algorithms, with Theorem 2's curves.

    Standard attention is flat at Θ(ND + N²); FlashAttention falls as
    Θ(N²D²/M) until the whole K/V fits (B_c = N). Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    if Ms is None:
        Ms = [2 ** p for p in range(10, 21)]  # 1 KB .. 1 MB
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    for alg, style in (("standard", "k-"), ("fa1", "C0o-"), ("fa2", "C1s-")):
        ys = [io_traffic(N, D, M, algorithm=alg, dtype_bytes=dtype_bytes)["total"] for M in Ms]
        ax.loglog(Ms, ys, style, label=alg, ms=4)
    elems = [M / dtype_bytes for M in Ms]
    ax.loglog(Ms, [N * N * D * D / m * dtype_bytes for m in elems], "C0:", label=r"$N^2D^2/M$")
    ax.loglog(Ms, [(N * D + N * N) * dtype_bytes for _ in Ms], "k:", label=r"$ND + N^2$")
    ax.set_xlabel("SRAM size M (bytes)")
    ax.set_ylabel("HBM bytes moved")
    ax.set_title(f"HBM traffic, N = {N}, D = {D}, {8 * dtype_bytes}-bit")
    ax.legend(fontsize=8)
    return ax
