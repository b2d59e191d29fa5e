"""Pictures for chapter 15: who holds which weights, and who works when."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

from effsmall.dist.ring import block_tasks

RANK_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")


def _box(ax, x, y, w, h, text, color="#eeeeee", fontsize=8):
    ax.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", lw=0.8))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, a, b):
    ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=8, lw=0.8, color="black"))


def draw_tp_blocks(world: int = 2, figsize=(7.5, 3.6)):
    """Mamba-2 vs Mamba-1 under tensor parallelism: each projection's rows/columns coloured by the
    rank that holds them; red boxes are the all-reduces one forward needs."""
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, title in zip(axes, ("Mamba-2: one all-reduce", "Mamba-1: two all-reduces")):
        ax.set_xlim(0, 10)
        ax.set_ylim(0, 10)
        ax.axis("off")
        ax.set_title(title, fontsize=10)
    # Mamba-2: in_proj = [z | x | B | C | dt], each segment split over the ranks (column-parallel)
    ax = axes[0]
    segs = [("z", 2.0), ("x", 2.0), ("B", 1.0), ("C", 1.0), ("Δ", 0.8)]
    x0 = 0.6
    ax.text(0.1, 8.9, "in_proj (column-parallel)", fontsize=8)
    for name, w in segs:
        for r in range(world):
            _box(ax, x0 + r * w / world, 7.6, w / world, 1.0, f"{name}{r}" if w / world > 0.35 else "",
                 RANK_COLORS[r % 4], fontsize=7)
        x0 += w + 0.1
    _box(ax, 0.6, 5.6, 8.8, 1.1, "conv · SSD · gated RMSNorm\nper head / group: local to each rank", "#f5f5f5")
    ax.text(0.1, 4.8, "out_proj (row-parallel)", fontsize=8)
    for r in range(world):
        _box(ax, 0.6 + r * 8.8 / world, 3.6, 8.8 / world, 1.0, f"partial sum {r}", RANK_COLORS[r % 4], fontsize=7)
    _box(ax, 2.6, 1.4, 4.8, 1.1, "all-reduce", "#f4b6b6")
    for a, b in (((5, 7.5), (5, 6.8)), ((5, 5.5), (5, 4.7)), ((5, 3.5), (5, 2.6))):
        _arrow(ax, a, b)
    # Mamba-1: in_proj = [x | z] column-parallel; x_proj maps all of x to (Δ, B, C): a row-parallel
    # product whose partial sums need an all-reduce before the scan can start
    ax = axes[1]
    x0 = 0.6
    ax.text(0.1, 8.9, "in_proj (column-parallel)", fontsize=8)
    for name, w in (("x", 4.3), ("z", 4.3)):
        for r in range(world):
            _box(ax, x0 + r * w / world, 7.6, w / world, 1.0, f"{name}{r}", RANK_COLORS[r % 4], fontsize=7)
        x0 += w + 0.2
    ax.text(2.3, 7.0, "x_proj: Δ, B, C from all of x", fontsize=8)
    for r in range(world):
        _box(ax, 0.6 + r * 4.3 / world, 5.8, 4.3 / world, 0.9, f"partial {r}", RANK_COLORS[r % 4], fontsize=7)
    _box(ax, 5.4, 5.8, 4.0, 0.9, "all-reduce #1", "#f4b6b6")
    _box(ax, 0.6, 4.2, 8.8, 0.9, "selective scan on the rank's channels", "#f5f5f5")
    for r in range(world):
        _box(ax, 0.6 + r * 8.8 / world, 2.8, 8.8 / world, 0.9, f"out_proj partial {r}", RANK_COLORS[r % 4], fontsize=7)
    _box(ax, 2.6, 1.2, 4.8, 0.9, "all-reduce #2", "#f4b6b6")
    for a, b in (((2.0, 7.5), (2.0, 6.8)), ((4.9, 6.25), (5.35, 6.25)), ((5, 5.7), (5, 5.2)),
                 ((5, 4.1), (5, 3.8)), ((5, 2.7), (5, 2.2))):
        _arrow(ax, a, b)
    fig.tight_layout()
    return fig


def work_table(layout: str, world: int, n: int = 8) -> list[list[float]]:
    """Query-key pairs rank r computes at ring step s (causal), in units of a full n×n block."""
    table = []
    for rank in range(world):
        row = []
        for step in range(world):
            src = (rank - step) % world
            pairs = 0.0
            for qs, ks, causal in block_tasks(layout, True, rank, src, n):
                nq, nk = qs.stop - qs.start, ks.stop - ks.start
                pairs += nq * (nq + 1) / 2 if causal else nq * nk
            row.append(pairs / (n * n))
        table.append(row)
    return table


def draw_ring_work(world: int = 4, figsize=(7.5, 3.0)):
    """Work per (rank, ring step) of causal ring attention, contiguous vs zigzag shards."""
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    for ax, layout in zip(axes, ("contiguous", "zigzag")):
        t = work_table(layout, world)
        ax.imshow(t, cmap="Blues", vmin=0, vmax=1)
        for r in range(world):
            for s in range(world):
                ax.text(s, r, f"{t[r][s]:.2f}".rstrip("0").rstrip("."), ha="center", va="center", fontsize=8,
                        color="white" if t[r][s] > 0.6 else "black")
        ax.set_xlabel("ring step")
        ax.set_ylabel("rank")
        ax.set_xticks(range(world))
        ax.set_yticks(range(world))
        total = [sum(row) for row in t]
        ax.set_title(f"{layout}: work per rank " + ", ".join(f"{x:.2f}" for x in total), fontsize=9)
    fig.tight_layout()
    return fig
