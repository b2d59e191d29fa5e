"""Tiling explorer (chapter 05): tiled attention's loop order and HBM bytes, in the browser.

The script (``tiling.js``) runs the loops of :func:`effsmall.attention.tiled.tiled_attention`
without the arithmetic and counts the bytes, so its numbers equal
:func:`effsmall.attention.io_traffic`. The spec carries the constants the count depends on
(bytes per element, per row statistic) and io_traffic's own answers for a few inputs, which the
script checks on load.
"""
from __future__ import annotations

from effsmall.widgets.core import Explorer, png_of

# inputs whose io_traffic results travel with the explorer, re-computed by the script on load
_CHECKS = [dict(N=128, D=32, sram_kb=16, block_m=0, block_n=0, causal=True, window=0),
           dict(N=100, D=48, sram_kb=4, block_m=24, block_n=40, causal=False, window=0),
           dict(N=256, D=64, sram_kb=32, block_m=0, block_n=16, causal=True, window=48)]


def io_inputs(N: int, D: int, sram_kb: int, block_m: int = 0, block_n: int = 0, causal: bool = True,
              window: int = 0, dtype_bytes: int = 2) -> dict:
    """The explorer's controls as :func:`~effsmall.attention.io_traffic` keyword arguments
    (block size 0 = Algorithm 1's choice, window w > 0 = each query sees w keys back)."""
    return dict(N=N, D=D, M=sram_kb * 1024, block_m=block_m or None, block_n=block_n or None, causal=causal,
                window=(window, None) if window > 0 else None, dtype_bytes=dtype_bytes)


def tiling_spec(N: int = 128, D: int = 32, sram_kb: int = 16, block_m: int = 0, block_n: int = 0,
                order: str = "fa2", causal: bool = True, window: int = 0) -> dict:
    """The JSON the script receives: starting inputs, constants, io_traffic's answers to check."""
    from effsmall.attention.io_complexity import STAT_BYTES, io_traffic

    checks = []
    for c in _CHECKS:
        for alg in ("standard", "fa1", "fa2"):
            f = io_traffic(algorithm=alg, **io_inputs(**c))
            checks.append({"inputs": {**c, "algorithm": alg}, "terms": f["terms"], "total": f["total"]})
    return {"defaults": dict(N=N, D=D, sram_kb=sram_kb, block_m=block_m, block_n=block_n, order=order,
                             causal=causal, window=window),
            "dtype_bytes": 2, "stat_bytes": STAT_BYTES, "max_N": 1024, "play_ms": 450, "checks": checks}


def _check(N, D, sram_kb, block_m, block_n, order, causal, window):
    for name, val, lo, hi in (("N", N, 16, 1024), ("D", D, 16, 256), ("block_m", block_m, 0, 256),
                              ("block_n", block_n, 0, 256), ("window", window, 0, 1024)):
        if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi:
            raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {val!r}")
    if sram_kb not in [2 ** p for p in range(1, 9)]:
        raise ValueError(f"sram_kb must be a power of two from 2 to 256, got {sram_kb!r}")
    if order not in ("fa1", "fa2"):
        raise ValueError(f"order must be 'fa1' or 'fa2', got {order!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {causal!r}")


def tiling_explorer(N: int = 128, D: int = 32, sram_kb: int = 16, block_m: int = 0, block_n: int = 0,
                    order: str = "fa2", causal: bool = True, window: int = 0, *, fallback: bool = True) -> Explorer:
    """N, D, SRAM size (KB), block sizes B_r / B_c (0 = Algorithm 1's choice), loop order, causal
    mask and a sliding window: the tile grid with skipped tiles greyed, play / step buttons that
    walk the loop order (blocks on chip, blocks moved), the running HBM byte counter and
    io_traffic's terms. The values given here are where the controls start."""
    _check(N, D, sram_kb, block_m, block_n, order, causal, window)
    png = _fallback(N, D, sram_kb, block_m, block_n, order, causal, window) if fallback else None
    return Explorer("tiling", tiling_spec(N, D, sram_kb, block_m, block_n, order, causal, window), png,
                    alt="tile grid of tiled attention, one step of the loop order")


def _fallback(N, D, sram_kb, block_m, block_n, order, causal, window):
    import matplotlib.pyplot as plt

    from effsmall.attention.io_complexity import default_blocks
    from effsmall.attention.viz import draw_step, tile_trace

    bm, bn = default_blocks(N, D, sram_kb * 1024, 2)
    bm, bn = block_m or bm, block_n or bn
    win = (window, None) if window > 0 else None
    steps = tile_trace(min(N, 256), D, bm, bn, order, causal, window=win) if N <= 256 else None
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if steps:
        draw_step(ax, steps, len(steps) // 2, min(N, 256), bm, bn, causal, title=f"{order}, B_r={bm}, B_c={bn}: ",
                  window=win)
    else:
        ax.axis("off")
        ax.text(0.5, 0.5, f"N = {N}: run the explorer with JavaScript", ha="center")
    return png_of(fig)
