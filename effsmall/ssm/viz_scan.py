"""Pictures for chapter 09: the dependency graphs of the two parallel scans.

Each dot is a position t at one step of the algorithm; an arrow from (s, row) to (t, row+1)
is one application of the affine operator (a₁, b₁) • (a₂, b₂) = (a₁a₂, a₂b₁ + b₂). The rows
are the depth (parallel time); the number of arrows is the work.
"""
from __future__ import annotations


def hillis_steele_edges(L: int) -> list[list[tuple[int, int]]]:
    """Per step (offset s = 1, 2, 4, …): the pairs (t − s, t) combined, for t ≥ s."""
    steps, s = [], 1
    while s < L:
        steps.append([(t - s, t) for t in range(s, L)])
        s *= 2
    return steps


def blelloch_edges(L: int) -> list[list[tuple[int, int]]]:
    """Up-sweep levels (pairs at stride 2^k) then down-sweep levels, as ``affine_scan_blelloch``
    computes them for L a power of two: position t = 2^k (i+1) − 1 stands for element i of the
    level-k sub-problem."""
    levels, k = [], 0
    while (1 << (k + 1)) <= L:
        w = 1 << k
        levels.append([(t - w, t) for t in range(L) if (t + 1) % (2 * w) == 0])
        k += 1
    for k in reversed(range(k)):
        w = 1 << k
        levels.append([(t - w, t) for t in range(L)
                       if (t + 1) % (2 * w) == w and t >= 3 * w - 1])
    return [edges for edges in levels if edges]


def draw_scan_graphs(L: int = 8):
    """Two panels, Hillis–Steele and Blelloch, for L positions; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    graphs = {"Hillis–Steele": hillis_steele_edges(L), "Blelloch (up-sweep, then down-sweep)": blelloch_edges(L)}
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.4))
    for ax, (title, levels) in zip(axes, graphs.items()):
        depth = len(levels)
        for row in range(depth + 1):
            ax.scatter(range(L), [row] * L, s=60, color="0.3", zorder=3)
        for row, edges in enumerate(levels):
            touched = {t for _, t in edges}
            for t in range(L):
                if t not in touched:
                    ax.plot([t, t], [row, row + 1], color="0.85", lw=1, zorder=1)
            for s, t in edges:
                ax.annotate("", xy=(t, row + 1), xytext=(s, row),
                            arrowprops=dict(arrowstyle="->", color="C0", lw=1.4))
                ax.annotate("", xy=(t, row + 1), xytext=(t, row),
                            arrowprops=dict(arrowstyle="->", color="C1", lw=1.0))
        work = sum(len(e) for e in levels)
        ax.set_title(f"{title}\ndepth {depth}, {work} combines", fontsize=10)
        ax.set_xticks(range(L))
        ax.set_xlabel("position t")
        ax.set_yticks(range(depth + 1))
        ax.set_ylabel("step")
        ax.invert_yaxis()
    fig.tight_layout()
    return fig
