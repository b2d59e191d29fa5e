"""SSD chunk explorer (chapter 11): the semiseparable matrix cut into chunks, and what each costs.

The script (``ssd.js``) draws the (L × L) matrix of a selective state space model cut into
Q × Q chunks (diagonal blocks: small masked attention, quadratic in Q; off-diagonal blocks:
rank ≤ N, computed through the states) and counts FLOPs and bytes with the formula of
:func:`effsmall.ssm.ssd_chunkwise.ssd_chunked_cost`; the spec carries that function's answers for
a few inputs, which the script re-computes and compares on load.
"""
from __future__ import annotations

from effsmall.widgets.core import Explorer, png_of

_CHECKS = [dict(L=4096, Q=64, N=128, P=64, H=32), dict(L=1000, Q=48, N=16, P=32, H=3),
           dict(L=16384, Q=1024, N=256, P=128, H=64), dict(L=64, Q=256, N=64, P=16, H=1)]


def ssd_cost(L: int, Q: int, N: int, P: int, H: int) -> dict:
    """The explorer's inputs as a call of ``ssd_chunked_cost`` (batch 1, one group, 16-bit)."""
    from effsmall.ssm.ssd_chunkwise import ssd_chunked_cost

    return ssd_chunked_cost(1, L, H, P, N, Q, g=1, bytes_per_element=2)


def ssd_spec(L: int = 4096, Q: int = 64, N: int = 128, P: int = 64, H: int = 32) -> dict:
    return {"defaults": dict(L=L, Q=Q, N=N, P=P, H=H), "batch": 1, "groups": 1, "bytes_per_element": 2,
            "checks": [{"inputs": c, "cost": ssd_cost(**c)} for c in _CHECKS]}


def ssd_explorer(L: int = 4096, Q: int = 64, N: int = 128, P: int = 64, H: int = 32, *,
                 fallback: bool = True) -> Explorer:
    """Sequence length L, chunk size Q, state size N, head dim P, heads H: the chunked matrix and
    the FLOPs / bytes of the chunked algorithm (``ssd_chunked_cost``) as Q varies."""
    for name, val, ok in (("L", L, [2 ** p for p in range(6, 15)]), ("Q", Q, [2 ** p for p in range(2, 11)])):
        if val not in ok:
            raise ValueError(f"{name} must be a power of two in [{ok[0]}, {ok[-1]}], got {val!r}")
    for name, val, lo, hi, step in (("N", N, 16, 256, 16), ("P", P, 16, 128, 16), ("H", H, 1, 64, 1)):
        if not isinstance(val, int) or isinstance(val, bool) or not lo <= val <= hi or val % step:
            raise ValueError(f"{name} must be a multiple of {step} in [{lo}, {hi}], got {val!r}")
    png = _fallback(L, Q, N, P, H) if fallback else None
    return Explorer("ssd", ssd_spec(L, Q, N, P, H), png,
                    alt="the semiseparable matrix cut into chunks, and FLOPs and state bytes against the chunk size")


def _fallback(L, Q, N, P, H):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon, Rectangle

    nc = min(-(-L // Q), 16)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8, 3.6))
    for i in range(nc):
        for j in range(i):
            ax.add_patch(Rectangle((j, i), 1, 1, fc="#9ecae1", ec="#555", lw=0.4))
        ax.add_patch(Polygon([(i, i), (i, i + 1), (i + 1, i + 1)], fc="#fdae6b", ec="#555", lw=0.4))
    ax.set_xlim(0, nc); ax.set_ylim(nc, 0); ax.set_aspect("equal"); ax.axis("off")
    ax.set_title(f"first {nc} chunks of Q = {Q}: orange quadratic, blue rank ≤ N", fontsize=9)
    Qs = [2 ** p for p in range(2, 11)]
    cs = [ssd_cost(L, q, N, P, H) for q in Qs]
    ax2.loglog(Qs, [c["flops"] for c in cs], "o-", label="FLOPs")
    ax2.loglog(Qs, [c["bytes_states"] for c in cs], "s--", label="state bytes (unfused)")
    ax2.axvline(Q, color="k", lw=0.8)
    ax2.set_xlabel("chunk size Q"); ax2.legend(fontsize=8)
    ax2.set_title(f"L={L}, N={N}, P={P}, H={H}", fontsize=9)
    return png_of(fig)
