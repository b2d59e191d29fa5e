"""Tiled attention in pure torch: the two FlashAttention loop orders, with an HBM byte counter.

Split Q into row blocks Qᵢ of B_r = ``block_m`` rows and K, V into column blocks
Kⱼ, Vⱼ of B_c = ``block_n`` rows. For each tile, Sᵢⱼ = τ Qᵢ Kⱼᵀ is
B_r × B_c and lives only "in SRAM"; the online softmax (chapter 4) merges tiles with a
running row max mᵢ and row sum ℓᵢ, so the N × N matrices S and P never exist.

* ``order="fa1"`` — FlashAttention Algorithm 1 (Dao et al. 2022, §3.1): the **outer** loop runs
  over K/V blocks, the inner over Q blocks. O, ℓ, m live in HBM and every tile re-reads
  and re-writes Oᵢ, ℓᵢ, mᵢ, each time normalized.
* ``order="fa2"`` — FlashAttention-2 (Dao 2023, §3.1): the outer loop runs over Q blocks; the
  accumulator Õᵢ, mᵢ, ℓᵢ stay on chip, O is normalized once at the end and
  written once, together with lseᵢ = mᵢ + log ℓᵢ.

Tiles that the causal mask or window hide completely are skipped (block skipping). Tensors
named ``*_hbm`` stand for HBM; every slice read from or written to them goes through an
optional :class:`HBMCounter`, so chapter 5 can compare the bytes this code moves with the
formula of :func:`effsmall.attention.io_complexity.io_traffic`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from effsmall.attention.contract import Window, check_attention, window_bounds
from effsmall.attention.naive import repeat_kv
from effsmall.runtime import compute_dtype


@dataclass
class HBMCounter:
    """Counts bytes moved between "HBM" tensors and on-chip tiles, and logs every step.

    ``bytes`` maps a term such as ``"read Q"`` or ``"write O"`` to a byte count (element size
    of the tensor moved). ``events`` lists ``(op, name, start, stop)`` with ``op`` in
    ``read``/``write``/``compute``; for ``compute``, name is ``"S"`` and start/stop are the
    tile's ``(row block, column block)``. ``skipped`` counts fully masked tiles never computed.
    """
    bytes: dict = field(default_factory=dict)
    events: list = field(default_factory=list)
    skipped: int = 0
    computed: int = 0

    def _add(self, op: str, name: str, t: torch.Tensor, start: int, stop: int) -> None:
        key = f"{op} {name}"
        # a tile of (B, H, rows, ...) moves numel elements of the tensor's dtype
        self.bytes[key] = self.bytes.get(key, 0) + t.numel() * t.element_size()
        self.events.append((op, name, start, stop))

    def read(self, name, t, start, stop):
        self._add("read", name, t, start, stop)

    def write(self, name, t, start, stop):
        self._add("write", name, t, start, stop)

    def compute(self, i: int, j: int) -> None:
        self.computed += 1
        self.events.append(("compute", "S", i, j))

    @property
    def reads(self) -> int:
        return sum(v for k, v in self.bytes.items() if k.startswith("read"))

    @property
    def writes(self) -> int:
        return sum(v for k, v in self.bytes.items() if k.startswith("write"))

    @property
    def total(self) -> int:
        return self.reads + self.writes


def kv_block_range(Nq: int, Nk: int, block_m: int, block_n: int, causal: bool = False,
                   window: Window = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each Q block i, the K/V blocks ``jlo[i]..jhi[i]`` (inclusive) it must visit.

    The keys seen by rows ``a..b`` of a block form one interval
    ``[a + Nk - Nq - left, b + Nk - Nq + right] ∩ [0, Nk)`` (left = ∞ without a window, right =
    0 when causal), so the visible tiles of a row block are contiguous; ``jhi < jlo`` means none.
    Returns two int64 tensors of length T_r = ⌈N_q / B_r⌉.
    """
    Tr = math.ceil(Nq / block_m)
    first = torch.arange(Tr, dtype=torch.int64) * block_m + (Nk - Nq)  # (Tr,) first row, key coords
    last = torch.clamp(torch.arange(1, Tr + 1, dtype=torch.int64) * block_m, max=Nq) - 1 + (Nk - Nq)
    left, right = window_bounds(window, causal)
    lo = torch.zeros(Tr, dtype=torch.int64) if left is None else torch.clamp(first - left, min=0)
    hi = torch.full((Tr,), Nk - 1, dtype=torch.int64) if right is None else torch.clamp(last + right, max=Nk - 1)
    empty = hi < lo
    jlo = lo // block_n  # (Tr,)
    jhi = torch.where(empty, jlo - 1, hi // block_n)  # (Tr,)
    return jlo, jhi


def _check_blocks(block_m, block_n, order):
    for name, b in (("block_m", block_m), ("block_n", block_n)):
        if not isinstance(b, int) or isinstance(b, bool) or b < 1:
            raise ValueError(f"{name} must be a positive int, got {b!r}")
    if order not in ("fa1", "fa2"):
        raise ValueError(f"order must be 'fa1' or 'fa2', got {order!r}")


def _tile_scores(q_i, k_j, scale, r0, c0, Nq, Nk, causal, window):
    """Sᵢⱼ = τ Qᵢ Kⱼᵀ with the mask applied (``-inf`` where hidden)."""
    S = scale * (q_i @ k_j.transpose(-1, -2))  # (B, H, br, bc)
    if causal or window is not None:
        i = torch.arange(r0, r0 + q_i.shape[2], device=S.device)[:, None] + (Nk - Nq)  # (br, 1) key coords
        j = torch.arange(c0, c0 + k_j.shape[2], device=S.device)[None, :]  # (1, bc)
        left, right = window_bounds(window, causal)
        hidden = torch.zeros(i.shape[0], j.shape[1], dtype=torch.bool, device=S.device)  # (br, bc)
        if left is not None:
            hidden |= j < i - left
        if right is not None:
            hidden |= j > i + right
        S = S.masked_fill(hidden, float("-inf"))  # (B, H, br, bc)
    return S


def _finite_or_zero(m):
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, block_m: int = 64, block_n: int = 64,
                    order: str = "fa2", return_lse: bool = False, window: Window = None,
                    counter: HBMCounter | None = None):
    """Attention computed tile by tile with the online softmax; equal to ``naive_attention``.

    Returns ``o`` ``(B, Hq, Nq, D)`` in q's dtype, or ``(o, lse)`` with ``lse`` float32
    (float64 for float64 inputs) ``(B, Hq, Nq)`` when ``return_lse`` (``-inf`` and o = 0 for rows that see no key, the package's convention). Pass an
    :class:`HBMCounter` to record the bytes read and written and the order of the tiles.
    """
    scale = check_attention(q, k, v, causal=causal, scale=scale, window=window).scale
    _check_blocks(block_m, block_n, order)
    B, Hq, Nq, D = q.shape
    Nk = k.shape[2]
    k = repeat_kv(k, Hq // k.shape[1])  # (B, Hq, Nk, D): GQA shares each kv head across its group
    v = repeat_kv(v, Hq // v.shape[1])  # (B, Hq, Nk, D)
    jlo, jhi = kv_block_range(Nq, Nk, block_m, block_n, causal, window)
    Tr, Tc = math.ceil(Nq / block_m), math.ceil(Nk / block_n)
    if counter is not None:
        counter.skipped += Tr * Tc - int((jhi - jlo + 1).clamp(min=0).sum())
    run = _fa1 if order == "fa1" else _fa2
    o, lse = run(q, k, v, scale, block_m, block_n, causal, window, jlo.tolist(), jhi.tolist(), Tc, counter)
    return (o, lse) if return_lse else o


def _fa2(q, k, v, scale, Br, Bc, causal, window, jlo, jhi, Tc, counter):
    """Outer loop over Q blocks; accumulators stay on chip (FlashAttention-2, Algorithm 1)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    ct = compute_dtype(q.dtype)
    o_hbm = torch.empty_like(q)  # (B, H, Nq, D), written once per row block
    lse_hbm = torch.empty(B, H, Nq, dtype=compute_dtype(q.dtype), device=q.device)  # (B, H, Nq)
    for i, r0 in enumerate(range(0, Nq, Br)):
        r1 = min(r0 + Br, Nq)
        acc = torch.zeros(B, H, r1 - r0, D, dtype=ct, device=q.device)  # (B, H, br, D) unnormalized O_i
        m = torch.full((B, H, r1 - r0, 1), float("-inf"), dtype=ct, device=q.device)  # (B, H, br, 1)
        l = torch.zeros_like(m)  # (B, H, br, 1)
        if jhi[i] >= jlo[i]:
            q_i = q[:, :, r0:r1].to(ct)  # (B, H, br, D) load Q_i once
            if counter is not None:
                counter.read("Q", q[:, :, r0:r1], r0, r1)
        for j in range(jlo[i], jhi[i] + 1):
            c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
            k_j, v_j = k[:, :, c0:c1].to(ct), v[:, :, c0:c1].to(ct)  # (B, H, bc, D) each
            if counter is not None:
                counter.read("K", k[:, :, c0:c1], c0, c1)
                counter.read("V", v[:, :, c0:c1], c0, c1)
                counter.compute(i, j)
            S = _tile_scores(q_i, k_j, scale, r0, c0, Nq, Nk, causal, window)  # (B, H, br, bc)
            m_new = torch.maximum(m, S.amax(dim=-1, keepdim=True))  # (B, H, br, 1)
            m_safe = _finite_or_zero(m_new)
            alpha = torch.exp(m - m_safe)  # (B, H, br, 1) rescale of the old accumulators
            P = torch.exp(S - m_safe)  # (B, H, br, bc) unnormalized probabilities
            l = alpha * l + P.sum(dim=-1, keepdim=True)
            acc = alpha * acc + P @ v_j  # (B, H, br, D)
            m = m_new
        o_i = acc / torch.where(l > 0, l, torch.ones_like(l))  # (B, H, br, D) normalize once
        lse_i = torch.where(l > 0, m + torch.log(l), torch.full_like(m, float("-inf")))
        o_hbm[:, :, r0:r1] = o_i.to(q.dtype)
        lse_hbm[:, :, r0:r1] = lse_i.squeeze(-1).to(lse_hbm.dtype)  # (B, H, br)
        if counter is not None:
            counter.write("O", o_hbm[:, :, r0:r1], r0, r1)
            counter.write("lse", lse_hbm[:, :, r0:r1], r0, r1)
    return o_hbm, lse_hbm


def _fa1(q, k, v, scale, Br, Bc, causal, window, jlo, jhi, Tc, counter):
    """Outer loop over K/V blocks; O, l, m re-read and re-written per tile (FlashAttention, Alg. 1)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    ct = compute_dtype(q.dtype)
    o_hbm = torch.zeros_like(q)  # (B, H, Nq, D) line 2: O = 0 in HBM
    l_hbm = torch.zeros(B, H, Nq, dtype=compute_dtype(q.dtype), device=q.device)  # (B, H, Nq) l = 0
    m_hbm = torch.full((B, H, Nq), float("-inf"), dtype=compute_dtype(q.dtype), device=q.device)  # m = -inf
    if counter is not None:
        counter.write("O", o_hbm, 0, Nq)
        counter.write("l", l_hbm, 0, Nq)
        counter.write("m", m_hbm, 0, Nq)
    rows_of = [[i for i in range(len(jlo)) if jlo[i] <= j <= jhi[i]] for j in range(Tc)]
    for j in range(Tc):
        if not rows_of[j]:
            continue
        c0, c1 = j * Bc, min((j + 1) * Bc, Nk)
        k_j, v_j = k[:, :, c0:c1].to(ct), v[:, :, c0:c1].to(ct)  # (B, H, bc, D) line 6: load K_j, V_j
        if counter is not None:
            counter.read("K", k[:, :, c0:c1], c0, c1)
            counter.read("V", v[:, :, c0:c1], c0, c1)
        for i in rows_of[j]:
            r0, r1 = i * Br, min((i + 1) * Br, Nq)
            # line 8: load Q_i, O_i, l_i, m_i from HBM
            q_i = q[:, :, r0:r1].to(ct)  # (B, H, br, D)
            o_i = o_hbm[:, :, r0:r1].to(ct)  # (B, H, br, D)
            l_i = l_hbm[:, :, r0:r1, None].to(ct)  # (B, H, br, 1)
            m_i = m_hbm[:, :, r0:r1, None].to(ct)  # (B, H, br, 1)
            if counter is not None:
                for name, t in (("Q", q), ("O", o_hbm), ("l", l_hbm), ("m", m_hbm)):
                    counter.read(name, t[:, :, r0:r1], r0, r1)
                counter.compute(i, j)
            S = _tile_scores(q_i, k_j, scale, r0, c0, Nq, Nk, causal, window)  # (B, H, br, bc) line 9
            m_t = S.amax(dim=-1, keepdim=True)  # (B, H, br, 1) line 10: tile max m~_ij
            P = torch.exp(S - _finite_or_zero(m_t))  # (B, H, br, bc) P~_ij
            l_t = P.sum(dim=-1, keepdim=True)  # (B, H, br, 1) l~_ij
            m_new = torch.maximum(m_i, m_t)  # (B, H, br, 1) line 11
            m_safe = _finite_or_zero(m_new)
            a, b = torch.exp(m_i - m_safe), torch.exp(m_t - m_safe)  # rescales of old and new parts
            l_new = a * l_i + b * l_t
            # line 12: O_i = diag(l_new)^-1 (diag(l_i) e^{m_i - m_new} O_i + e^{m~_ij - m_new} P~_ij V_j)
            o_i = (l_i * a * o_i + b * (P @ v_j)) / torch.where(l_new > 0, l_new, torch.ones_like(l_new))
            # line 13: write O_i, l_i, m_i back to HBM
            o_hbm[:, :, r0:r1] = o_i.to(q.dtype)
            l_hbm[:, :, r0:r1] = l_new.squeeze(-1).to(l_hbm.dtype)
            m_hbm[:, :, r0:r1] = m_new.squeeze(-1).to(m_hbm.dtype)
            if counter is not None:
                for name, t in (("O", o_hbm), ("l", l_hbm), ("m", m_hbm)):
                    counter.write(name, t[:, :, r0:r1], r0, r1)
    # epilogue (not part of Algorithm 1, not counted): lse from the stored statistics
    lse = torch.where(l_hbm > 0, m_hbm + torch.log(l_hbm), torch.full_like(m_hbm, float("-inf")))
    return o_hbm, lse  # (B, H, Nq, D), (B, H, Nq)
