"""Pictures of tiled attention: the tile grid, what sits in SRAM at each step, bytes moved.

Everything drawn here comes from running :func:`~effsmall.attention.tiled.tiled_attention`
with an :class:`~effsmall.attention.tiled.HBMCounter`: the order of the tiles, which blocks were
loaded from HBM at each step and the running byte count are the implementation's own, not a
separate simulation.
"""
from __future__ import annotations

import math

import torch

from effsmall.attention.tiled import HBMCounter, kv_block_range, tiled_attention

_DTYPES = {2: torch.float16, 4: torch.float32}


def tile_trace(N: int, D: int, block_m: int, block_n: int, order: str = "fa2", causal: bool = False,
               dtype_bytes: int = 2, window=None) -> list[dict]:
    """Run tiled attention on random data and split its HBM log into steps, one per tile.

    Step ``s`` has ``i, j`` (the tile), ``reads``/``writes`` (names of blocks moved in that
    step, e.g. ``"Q"``, ``"O"``) and ``bytes`` (running total of HBM bytes after the step).
    """
    if dtype_bytes not in _DTYPES:
        raise ValueError(f"dtype_bytes must be 2 or 4, got {dtype_bytes!r}")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, N, D, generator=g).to(_DTYPES[dtype_bytes]) for _ in range(3))
    counter = HBMCounter()
    tiled_attention(q, k, v, causal=causal, block_m=block_m, block_n=block_n, order=order, window=window,
                    counter=counter)
    row_bytes = {"Q": D * dtype_bytes, "K": D * dtype_bytes, "V": D * dtype_bytes, "O": D * dtype_bytes,
                 "l": 4, "m": 4, "lse": 4}
    steps, pending, total = [], {"reads": [], "writes": []}, 0
    for op, name, a, b in counter.events:
        if op == "compute":  # a new step: it owns the reads (and fa1's initial writes) before it
            steps.append({"i": a, "j": b, "reads": pending["reads"], "writes": pending["writes"], "bytes": total})
            pending = {"reads": [], "writes": []}
            continue
        total += (b - a) * row_bytes[name]
        if op == "write" and steps:  # written back after the current tile was computed
            steps[-1]["writes"].append(name)
            steps[-1]["bytes"] = total
        else:
            pending["reads" if op == "read" else "writes"].append(name)
    if steps:
        steps[-1]["bytes"] = total
    for s in steps:
        s["total"] = total
    return steps


def draw_step(ax, steps: list[dict], s: int, N: int, block_m: int, block_n: int, causal: bool,
              title: str = "", window=None) -> None:
    """Draw the tile grid after step ``s``: done tiles, the current tile, blocks on chip."""
    from matplotlib.patches import Rectangle

    Tr, Tc = math.ceil(N / block_m), math.ceil(N / block_n)
    jlo, jhi = kv_block_range(N, N, block_m, block_n, causal, window)
    ax.clear()
    ax.set_xlim(-2.2, Tc + 2.2)
    ax.set_ylim(Tr + 0.3, -3.4)
    ax.set_aspect("equal")
    ax.axis("off")
    done = {(st["i"], st["j"]) for st in steps[:s]}
    cur = steps[s]
    for i in range(Tr):
        for j in range(Tc):
            skip = not (int(jlo[i]) <= j <= int(jhi[i]))
            color = "#dddddd" if skip else ("#9ecae1" if (i, j) in done else "white")
            ax.add_patch(Rectangle((j, i), 1, 1, fc=color, ec="#888888", lw=0.5, hatch="//" if skip else None))
    ax.add_patch(Rectangle((cur["j"], cur["i"]), 1, 1, fc="#08519c", ec="black", lw=1.5))
    moved = set(cur["reads"]) | set(cur["writes"])

    def strip(x, y, w, h, name, active):
        hot = name in moved
        fc = ("#e6550d" if hot else "#31a354") if active else "white"
        ax.add_patch(Rectangle((x, y), w, h, fc=fc, ec="#555555", lw=0.5))

    for i in range(Tr):  # Q on the left, O on the right (row blocks)
        strip(-1.9, i, 0.8, 1, "Q", i == cur["i"])
        strip(Tc + 1.1, i, 0.8, 1, "O", i == cur["i"])
    for j in range(Tc):  # K and V above (column blocks)
        strip(j, -2.9, 1, 0.8, "V", j == cur["j"])
        strip(j, -1.9, 1, 0.8, "K", j == cur["j"])
    ax.text(-1.5, Tr + 0.2, "Q", ha="center", va="top", fontsize=8)
    ax.text(Tc + 1.5, Tr + 0.2, "O", ha="center", va="top", fontsize=8)
    ax.text(-0.3, -1.5, "K", ha="right", va="center", fontsize=8)
    ax.text(-0.3, -2.5, "V", ha="right", va="center", fontsize=8)
    ax.set_title(f"{title}step {s + 1}/{len(steps)}: tile ({cur['i']},{cur['j']})\n"
                 f"HBM bytes so far {cur['bytes']:,} of {cur['total']:,}", fontsize=9)


_LEGEND = ("blue: S tile being computed (light: done, hatched: skipped by the mask); "
           "green: block on chip, orange: block moved to/from HBM in this step")


def animate_tiles(N: int = 64, D: int = 16, block_m: int = 16, block_n: int = 16, causal: bool = True,
                  dtype_bytes: int = 2, interval: int = 600):
    """Side-by-side animation of the fa1 and fa2 loop orders (``matplotlib.animation``).

    Returns a ``FuncAnimation``; ``HTML(anim.to_jshtml())`` shows it without a live kernel.
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    traces = {o: tile_trace(N, D, block_m, block_n, o, causal, dtype_bytes) for o in ("fa1", "fa2")}
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), dpi=60)
    fig.text(0.5, 0.02, _LEGEND, ha="center", fontsize=7, wrap=True)

    def update(s):
        for ax, (o, steps) in zip(axes, traces.items()):
            draw_step(ax, steps, s, N, block_m, block_n, causal, title=f"{o}: ")
        return []

    anim = FuncAnimation(fig, update, frames=len(traces["fa2"]), interval=interval, blit=False)
    plt.close(fig)
    return anim


def explorer(**start):
    """The tiling explorer: N, D, SRAM size, block sizes (0 = Algorithm 1's choice), loop order,
    causal mask and window; play / step through the tiles with the running HBM byte count.

    It runs in the browser (no kernel needed, so it also works in the online book); keyword
    arguments set where the controls start, see :func:`effsmall.widgets.tiling_explorer`.
    """
    from effsmall.widgets import tiling_explorer

    return tiling_explorer(**start)
