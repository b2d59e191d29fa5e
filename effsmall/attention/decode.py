"""Decoding attention: a few new query tokens against a long KV cache (split-KV flash-decoding).

While a model generates, each step brings one query token (or a few, when drafts are verified)
per sequence. Its attention reads every cached key and value once and does ~2 FLOPs per byte
read: the cost is the KV cache's size divided by the memory bandwidth. FlashAttention's grid
(one program per block of 64–128 queries) would start only ``B · Hk`` programs, far fewer than
a GPU has SMs, and leave most of the bandwidth unused. Flash-decoding (Dao et al. 2023,
"Flash-Decoding for long-context inference") also splits the *keys*:

    split s of the cache ─ online softmax over its keys ─→ (O_s, lse_s)      S programs per head
    O = Σ_s e^{lse_s − lse} O_s,   lse = log Σ_s e^{lse_s}                    the LSE merge

The merge is :func:`effsmall.attention.merge_attention_states_many`'s rule (chapter 4's
rescaling, the same merge ring attention uses); :func:`merge_splits` is that rule as one small
Triton kernel, tested equal to the torch function.

Shapes and conventions:

* ``q (B, Hq, D)`` one token per row, or ``(B, Hq, Nq, D)`` — the Nq newest tokens of each row,
  whose keys are already in the cache (causal, aligned to the end of the row);
* contiguous cache ``k_cache, v_cache (B, Hk, capacity, D)``, row b valid up to
  ``cache_seqlens[b]``; or a **paged** cache ``(num_pages, Hk, page_size, D)`` with
  ``block_table (B, max_pages)`` int32: token j of row b lives in page ``block_table[b, j // page_size]``
  at slot ``j % page_size`` (vLLM's PagedAttention, Kwon et al. 2023);
* ``Hq % Hk == 0`` (GQA): the G = Hq/Hk query heads of one KV head are packed into one tile, so
  each key tile is read once for all of them and ``tl.dot`` sees a (G·Nq) × D matrix;
* ``window=(w, 0)`` (or the shorthand ``window=w``): query at position p sees keys p − w … p;
  ``window``, ``scale`` and the empty-row convention are the package's
  (:mod:`effsmall.attention.contract`): decoding is always causal, ``scale`` defaults to D^−½,
  a query that sees no key (``cache_seqlens[b] = 0``) gets zeros and ``lse = −inf``.

Launch: one program per (split, KV head, row); :func:`choose_num_splits` picks the splits from
the SM count and the work (two programs per SM, at least 256 keys per split). The visible range
of a row (all of it, or the window) is cut into key tiles that never straddle a page, and the
tiles are dealt out evenly to the splits, so a sliding window costs only its own tiles. On a
GPU the tile size and warps are timed once per problem key and remembered (``_pick``).
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from effsmall.attention.contract import check_heads, check_kernel_tensors, check_scale, window_bounds
from effsmall.attention.flash_triton import LOG2E
from effsmall.runtime import cdiv, interpreting, next_power_of_2, require_triton_tensor

__all__ = ["decode_attention_reference", "flash_decode", "merge_splits", "choose_num_splits", "split_candidates",
           "gather_pages", "decode_cost"]

def decode_cost(batch: int, L: int, Hq: int, Hk: int, D: int, dtype_bytes: int = 2):
    """FLOPs and bytes of one decode step's attention (one query token per row, L cached keys):
    4·B·Hq·L·D FLOPs (q·Kᵀ and p·V per query head), 2·B·Hk·L·D elements of K and V read once.
    Its intensity, ``2·Hq / (Hk·dtype_bytes)`` FLOP/byte, depends on neither B nor L."""
    from effsmall.costs import Cost

    return Cost(flops=4 * batch * Hq * L * D, bytes=2 * batch * Hk * L * D * dtype_bytes)


# ---------------------------------------------------------------------------------------------
# Input contract (shared by the reference and the kernel)
# ---------------------------------------------------------------------------------------------
class DecodeArgs(NamedTuple):
    """The checked decode inputs: q as ``(B, Hq, Nq, D)``, the cache layout, scale and window."""
    q4: torch.Tensor
    paged: bool
    page_size: int          # 0 for a contiguous cache
    capacity: int           # the most keys a row's cache can hold
    scale: float
    window: int | None      # keys further back than this are invisible (None: no window)


def _check(q, k_cache, v_cache, cache_seqlens, block_table, window, scale, validate=True) -> DecodeArgs:
    """Validate the decode contract (``validate``: also the values of cache_seqlens and
    block_table, which costs a device synchronization) and return the :class:`DecodeArgs`."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("cache_seqlens", cache_seqlens)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() not in (3, 4):
        raise ValueError(f"q must be (B, Hq, D) or (B, Hq, Nq, D), got shape {tuple(q.shape)}")
    q4 = q[:, :, None] if q.dim() == 3 else q                             # (B, Hq, Nq, D)
    B, Hq, Nq, D = q4.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache and v_cache must be 4-d and of one shape, got {tuple(k_cache.shape)} "
                         f"and {tuple(v_cache.shape)}")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype):
        raise TypeError(f"q, k_cache and v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    Hk = k_cache.shape[1]
    if k_cache.shape[3] != D:
        raise ValueError(f"head dim of the cache ({k_cache.shape[3]}) must equal q's ({D})")
    check_heads(Hq, Hk, "k_cache")
    if cache_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"cache_seqlens must be an int32/int64 tensor, got {cache_seqlens.dtype}")
    if cache_seqlens.shape != (B,):
        raise ValueError(f"cache_seqlens must have shape ({B},), got {tuple(cache_seqlens.shape)}")
    devices = {t.device for t in (q, k_cache, v_cache, cache_seqlens)}
    if block_table is not None:
        if not isinstance(block_table, torch.Tensor):
            raise TypeError(f"block_table must be a torch.Tensor, got {type(block_table).__name__}")
        if block_table.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"block_table must be an int32/int64 tensor, got {block_table.dtype}")
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table must have shape ({B}, max_pages), got {tuple(block_table.shape)}")
        devices.add(block_table.device)
    if len(devices) != 1:
        raise ValueError(f"q, k_cache, v_cache, cache_seqlens, block_table must be on one device, "
                         f"got {sorted(map(str, devices))}")
    paged = block_table is not None
    if paged:
        page_size = k_cache.shape[2]
        if page_size < 16 or page_size & (page_size - 1):
            raise ValueError(f"page_size (k_cache.shape[2]) must be a power of two >= 16, got {page_size}")
        capacity = block_table.shape[1] * page_size
    else:
        if k_cache.shape[0] != B:
            raise ValueError(f"a contiguous cache must have batch {B} (q's), got {k_cache.shape[0]}")
        page_size, capacity = 0, k_cache.shape[2]
    if validate and cache_seqlens.numel():
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < 0 or hi > capacity:
            raise ValueError(f"cache_seqlens must lie in [0, {capacity}] (the cache's capacity), got [{lo}, {hi}]")
    if validate and paged and block_table.numel():
        used = _used_pages(block_table, cache_seqlens, page_size)
        if used.any():
            ids = block_table[used]
            if int(ids.min()) < 0 or int(ids.max()) >= k_cache.shape[0]:
                raise ValueError(f"block_table points outside the page pool [0, {k_cache.shape[0]}): "
                                 f"got ids in [{int(ids.min())}, {int(ids.max())}]")
    if isinstance(window, numbers.Integral) and not isinstance(window, bool):
        window = (int(window), 0)                                         # the shorthand w = (w, 0)
    left, _ = window_bounds(window, causal=True)
    return DecodeArgs(q4, paged, page_size, capacity, check_scale(scale, D), left)


def _used_pages(block_table, cache_seqlens, page_size):
    """(B, max_pages) bool: the pages a row's valid tokens occupy."""
    n_pages = (cache_seqlens.to(torch.int64) + page_size - 1) // page_size          # (B,)
    return torch.arange(block_table.shape[1], device=block_table.device)[None, :] < n_pages[:, None]


def gather_pages(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` tokens of every row of a paged cache, contiguous: ``(B, Hk, length, D)``."""
    page = cache.shape[2]
    n = cdiv(length, page)
    pages = cache[block_table[:, :n].long()]                                       # (B, n, Hk, page, D)
    return pages.permute(0, 2, 1, 3, 4).flatten(2, 3)[:, :, :length]               # (B, Hk, length, D)


# ---------------------------------------------------------------------------------------------
# The naive reference
# ---------------------------------------------------------------------------------------------
def decode_attention_reference(q, k_cache, v_cache, cache_seqlens, *, block_table=None, window=None,
                               scale=None, return_lse=False):
    """Attention of the newest query tokens over each row's cache, one row at a time, in fp64.

    Row b: keys ``0 … L_b − 1`` (L_b = ``cache_seqlens[b]``); query i of Nq sits at position
    p = L_b − Nq + i and sees keys j with ``max(0, p − window) ≤ j ≤ p``. Returns o in q's dtype
    (and lse (B, Hq[, Nq]) in fp32, −inf where no key is visible).
    """
    q4, paged, _, _, scale, window = _check(q, k_cache, v_cache, cache_seqlens, block_table, window, scale)
    B, Hq, Nq, D = q4.shape
    G = Hq // k_cache.shape[1]
    out = torch.zeros(B, Hq, Nq, D, dtype=torch.float64, device=q.device)
    lse = torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float64, device=q.device)
    for b in range(B):
        L = int(cache_seqlens[b])
        if L == 0:
            continue
        if paged:
            k = gather_pages(k_cache, block_table[b:b + 1], L)[0]                  # (Hk, L, D)
            v = gather_pages(v_cache, block_table[b:b + 1], L)[0]
        else:
            k, v = k_cache[b, :, :L], v_cache[b, :, :L]                            # (Hk, L, D)
        k = k.double().repeat_interleave(G, dim=0)                                 # (Hq, L, D)
        v = v.double().repeat_interleave(G, dim=0)
        s = q4[b].double() @ k.transpose(-1, -2) * scale                           # (Hq, Nq, L)
        pos = L - Nq + torch.arange(Nq, device=q.device)[:, None]                  # (Nq, 1) query positions
        j = torch.arange(L, device=q.device)[None, :]                              # (1, L)
        vis = j <= pos
        if window is not None:
            vis &= j >= pos - window
        s = s.masked_fill(~vis, float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)                                       # (Hq, Nq)
        p = torch.exp(s - torch.where(torch.isfinite(row_lse), row_lse, 0)[..., None])
        out[b] = p @ v                                                             # (Hq, Nq, D)
        lse[b] = row_lse
    o = out.to(q.dtype)
    if q.dim() == 3:
        o, lse = o[:, :, 0], lse[:, :, 0]
    return (o, lse.float()) if return_lse else o


# ---------------------------------------------------------------------------------------------
# Triton: split kernel, merge kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _tile(acc, l_i, m_i, q, pos, t, lo, hi, b, k_head, v_head, TABLE, stride_tb,
          stride_kb, stride_kn, stride_vb, stride_vn, qk_scale, WINDOW, offs_d,
          D: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
          HAS_WINDOW: tl.constexpr, PREC: tl.constexpr):
    """One key tile t (keys t·BLOCK_N …): load K, V (from its page), one online-softmax step."""
    offs_n = tl.arange(0, BLOCK_N)
    n = t * BLOCK_N + offs_n                                                       # (BLOCK_N,) key positions
    if PAGED:
        page = tl.load(TABLE + b * stride_tb + (t * BLOCK_N) // PAGE).to(tl.int64)
        slot = (t * BLOCK_N) % PAGE + offs_n
        k_ptr = k_head + page * stride_kb + slot[:, None] * stride_kn
        v_ptr = v_head + page * stride_vb + slot[:, None] * stride_vn
    else:
        k_ptr = k_head + b.to(tl.int64) * stride_kb + n[:, None] * stride_kn
        v_ptr = v_head + b.to(tl.int64) * stride_vb + n[:, None] * stride_vn
    n_ok = (n >= lo) & (n < hi)
    kv_mask = n_ok[:, None] & (offs_d[None, :] < D)
    k = tl.load(k_ptr + offs_d[None, :], mask=kv_mask, other=0.0)                 # (BLOCK_N, BLOCK_D)
    v = tl.load(v_ptr + offs_d[None, :], mask=kv_mask, other=0.0)                 # (BLOCK_N, BLOCK_D)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale                   # (BLOCK_H, BLOCK_N) log2 units
    vis = (n[None, :] <= pos[:, None]) & n_ok[None, :]
    if HAS_WINDOW:
        vis = vis & (n[None, :] >= pos[:, None] - WINDOW)
    s = tl.where(vis, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)                           # row sees nothing yet: no NaN
    p = tl.math.exp2(s - m_use[:, None])                                           # (BLOCK_H, BLOCK_N)
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)   # (BLOCK_H, BLOCK_D)
    return acc, l_i, m_new


@triton.jit
def _split_kernel(Q, K, V, SEQLENS, TABLE, O, LSE,
                  stride_qb, stride_qh, stride_qn,
                  stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn,
                  stride_tb,
                  stride_ob, stride_oh, stride_on, stride_os,
                  stride_lb, stride_lh, stride_ln,
                  qk_scale, WINDOW, NUM_SPLITS,
                  NQ: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  PAGE: tl.constexpr, PAGED: tl.constexpr, HAS_WINDOW: tl.constexpr, PREC: tl.constexpr,
                  INTERP: tl.constexpr):
    """One (row b, KV head, split) program: online softmax of the G·Nq packed query rows over the
    split's share of the visible keys; writes the split's normalized O and natural-log lse."""
    split = tl.program_id(0)
    hk = tl.program_id(1)
    b = tl.program_id(2)
    L = tl.load(SEQLENS + b).to(tl.int32)

    r = tl.arange(0, BLOCK_H)                      # packed rows: head g = r // NQ, query i = r % NQ
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = r < G * NQ
    head = hk * G + r // NQ
    qi = r % NQ
    pos = L - NQ + qi                              # (BLOCK_H,) each row's position in the sequence
    q = tl.load(Q + b * stride_qb + head[:, None] * stride_qh + qi[:, None] * stride_qn + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)          # (BLOCK_H, BLOCK_D)

    # The visible range of the whole packed tile, cut into tiles of BLOCK_N aligned to BLOCK_N
    # (so a tile never straddles a page), and the tiles dealt out evenly to the splits.
    hi = L
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(L - NQ - WINDOW, 0)
    lo_tile = lo // BLOCK_N
    n_tiles = tl.cdiv(hi, BLOCK_N) - lo_tile
    per_split = tl.cdiv(n_tiles, NUM_SPLITS)
    t0 = lo_tile + split * per_split
    t1 = tl.minimum(t0 + per_split, lo_tile + n_tiles)

    m_i = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, BLOCK_D), tl.float32)
    k_head = K + hk * stride_kh
    v_head = V + hk * stride_vh
    if INTERP:   # interpreted: a while loop over the same tiles (effsmall.runtime.INTERP_FLAG)
        t = t0
        while t < t1:
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, pos, t, lo, hi, b, k_head, v_head, TABLE, stride_tb,
                                  stride_kb, stride_kn, stride_vb, stride_vn, qk_scale, WINDOW, offs_d,
                                  D, BLOCK_N, PAGE, PAGED, HAS_WINDOW, PREC)
            t += 1
    else:
        for t in tl.range(t0, t1):
            acc, l_i, m_i = _tile(acc, l_i, m_i, q, pos, t, lo, hi, b, k_head, v_head, TABLE, stride_tb,
                                  stride_kb, stride_kn, stride_vb, stride_vn, qk_scale, WINDOW, offs_d,
                                  D, BLOCK_N, PAGE, PAGED, HAS_WINDOW, PREC)

    safe_l = tl.where(l_i > 0, l_i, 1.0)
    o = acc / safe_l[:, None]                                                      # (BLOCK_H, BLOCK_D)
    lse = tl.where(l_i > 0, (m_i + tl.math.log2(safe_l)) / LOG2E, float("-inf"))
    o_ptr = O + b * stride_ob + head[:, None] * stride_oh + qi[:, None] * stride_on + split * stride_os
    tl.store(o_ptr + offs_d[None, :], o.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))
    l_ptr = LSE + b * stride_lb + head * stride_lh + qi * stride_ln + split
    tl.store(l_ptr, lse, mask=row_ok)


@triton.jit
def _merge_kernel(O_PART, LSE_PART, O, LSE, D, S, stride_pr, stride_ps, stride_lr, stride_or,
                  BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """One query row: O = Σ_s w_s O_s with w = softmax(lse_s) over the splits (empty split: −inf)."""
    row = tl.program_id(0)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(LSE_PART + row * stride_lr + s, mask=s < S, other=float("-inf"))   # (BLOCK_S,)
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m)                                                            # (BLOCK_S,)
    total = tl.sum(w, 0)
    safe = tl.where(total > 0, total, 1.0)
    o = tl.load(O_PART + row * stride_pr + s[:, None] * stride_ps + d[None, :],
                mask=(s[:, None] < S) & (d[None, :] < D), other=0.0).to(tl.float32)  # (BLOCK_S, BLOCK_D)
    out = tl.sum(o * (w / safe)[:, None], 0)                                       # (BLOCK_D,)
    tl.store(O + row * stride_or + d, out.to(O.dtype.element_ty), mask=d < D)
    tl.store(LSE + row, tl.where(total > 0, m + tl.log(safe), float("-inf")))


def merge_splits(o_part: torch.Tensor, lse_part: torch.Tensor, out_dtype=None):
    """Triton form of ``merge_attention_states_many(o_part, lse_part, dim=-1)`` (splits on lse's last dim).

    o_part ``(..., S, D)`` fp32 partial outputs, lse_part ``(..., S)`` → (o ``(..., D)`` in
    ``out_dtype`` (default o_part's), lse ``(...)`` fp32). One program per query row.
    """
    require_triton_tensor("o_part", o_part, "merge_splits")
    if tuple(o_part.shape[:-1]) != tuple(lse_part.shape):
        raise ValueError(f"lse_part must be o_part's shape without D: {tuple(o_part.shape)} vs {tuple(lse_part.shape)}")
    *lead, S, D = o_part.shape
    op = o_part.reshape(-1, S, D)
    if op.stride(-1) != 1:
        op = op.contiguous()
    lp = lse_part.reshape(-1, S).float().contiguous()
    rows = op.shape[0]
    o = torch.empty(rows, D, dtype=out_dtype or o_part.dtype, device=o_part.device)
    lse = torch.empty(rows, dtype=torch.float32, device=o_part.device)
    if rows:
        _merge_kernel[(rows,)](op, lp, o, lse, D, S, op.stride(0), op.stride(1), lp.stride(0), o.stride(0),
                               BLOCK_S=next_power_of_2(S), BLOCK_D=next_power_of_2(D, 16))
    return o.reshape(*lead, D), lse.reshape(lead)


# ---------------------------------------------------------------------------------------------
# Host side: how many splits, and the launch
# ---------------------------------------------------------------------------------------------
INTERPRETER_SMS = 4    # the CPU interpreter has no SMs; pretend a small GPU so splits are exercised
MIN_KEYS_PER_SPLIT = 256
MAX_SPLITS = 64


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return INTERPRETER_SMS


_SMS: dict = {}


def _cuda_sms(index: int) -> int:
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SMS[index]


def choose_num_splits(batch: int, kv_heads: int, keys: int, sms: int, block_n: int = 64) -> int:
    """Splits per (row, KV head) so the grid fills the GPU without splitting work too thin.

    Rule: aim for 2 programs per SM (one computing while the other's loads are in flight):
    ``S = ⌈2·SMs / (B·Hk)⌉``, but give each split at least ``MIN_KEYS_PER_SPLIT`` keys (the merge
    and the split's fixed costs must stay small next to its reads), at least one tile, and at
    most ``MAX_SPLITS``. ``keys`` is the most keys one row can see: the capacity, or the window
    plus the query tokens. A batch that already fills the GPU gets S = 1 (no merge at all).
    """
    want = cdiv(2 * sms, max(batch * kv_heads, 1))
    most = max(1, min(cdiv(keys, MIN_KEYS_PER_SPLIT), cdiv(keys, block_n), MAX_SPLITS))
    return max(1, min(want, most))


def _dot_precision(q: torch.Tensor) -> str:
    """fp32: exact ("ieee") unless ``torch.set_float32_matmul_precision`` allows TF32; fp16/bf16
    multiply on tensor cores whatever this says (as in :mod:`effsmall.attention.flash_triton`)."""
    if interpreting():
        return "ieee"
    if q.dtype != torch.float32:
        return "tf32"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


# (BLOCK_N, num_warps, num_stages) tried the first time a problem key is seen on a GPU; the
# fastest is remembered and launched directly afterwards (no autotuner work on the host per call).
# A paged tile's page-id load takes a pipeline stage of its own: 5 stages keep 3 K/V tiles in flight.
CONFIGS = ((64, 4, 3), (64, 4, 5), (128, 4, 2), (128, 4, 3), (128, 8, 3), (32, 4, 4), (16, 4, 4))
_BEST: dict = {}         # problem key -> (num_splits, config), the fastest measured
_PLANS: dict = {}        # call signature -> _Plan, once the signature's contract has been checked


def _configs(paged: bool, page_size: int):
    """Configs whose key tiles fit in a page (a tile must not straddle two pages)."""
    if interpreting():
        return [(min(64, page_size) if paged else 64, 4, 1)]
    fits = [c for c in CONFIGS if (not paged or c[0] <= page_size) and (c[0] > 16 or (paged and page_size == 16))]
    return fits + [(min(32, page_size) if paged else 32, 4, 1)]   # no pipelining: fits small GPUs (T4)


def split_candidates(batch: int, kv_heads: int, keys: int, sms: int, block_n: int = 64) -> tuple:
    """The split counts a GPU times once per problem: :func:`choose_num_splits`'s S and its
    neighbours S/2 and 2S (one or four programs per SM instead of two), within the same limits.
    The rule's guess is good at long contexts; at short ones the launch's ramp-up and the merge
    decide, and only a measurement knows them."""
    s0 = choose_num_splits(batch, kv_heads, keys, sms, block_n)
    most = max(1, min(cdiv(keys, block_n), MAX_SPLITS))
    return (s0,) + tuple(sorted({max(1, s0 // 2), min(2 * s0, most)} - {s0}))


def _gpu_time(fn, device=None) -> float:
    """Milliseconds of GPU time per call of ``fn``: replayed from a CUDA graph
    (:func:`effsmall.measure.benchmark` with ``cuda_graph=True``; a decode step's launches cost the
    host more than the GPU, so eager timing would measure only the host); eager timing if the
    graph cannot be captured (e.g. while another capture is running).

    The device is synchronized first (``benchmark`` does it): ``do_bench_cudagraph`` calls ``fn``
    on a stream of its own that does not wait for the caller's, and a caller that does not
    synchronize (a decode step with ``validate=False``) may still have the kernels that write
    ``fn``'s inputs queued (its lengths ``seqlens + 1``, its rotated q) — a length read from
    memory not yet written sends the split kernel's loads anywhere."""
    from effsmall.measure import benchmark

    dev = str(device) if device is not None else "cuda"
    try:
        return benchmark(fn, dev, cuda_graph=True, rep_ms=10) * 1e3
    except Exception:  # noqa: BLE001 - e.g. called while another capture is running
        torch.cuda.synchronize(device)
        return benchmark(fn, dev, warmup_ms=3, rep_ms=15) * 1e3


def _capturing() -> bool:
    """Whether the current CUDA stream is being captured into a graph (nothing may synchronize)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _pick(key, candidates, run, autotune: bool, device=None):
    """Run with the remembered fastest ``(num_splits, config)`` for ``key``; the first time, time
    every candidate that compiles (GPU time) and remember the fastest (``autotune=False``: run
    the first candidate). The timing synchronizes the device (:func:`_gpu_time`), so it is
    skipped inside a CUDA-graph capture (the first candidate runs, nothing is remembered):
    warm a shape up before capturing it."""
    best = _BEST.get(key)
    if best is None and autotune and len(candidates) > 1 and not _capturing():
        times = {}
        for cand in candidates:
            try:
                run(*cand)
                times[cand] = _gpu_time(lambda cand=cand: run(*cand), device)
            except Exception:  # noqa: BLE001 - a config may not fit (shared memory, registers)
                continue
        best = min(times, key=times.get) if times else candidates[-1]
        _BEST[key] = best
    return run(*(best or candidates[0]))


class _Plan(NamedTuple):
    """What one call signature needs beyond its tensors (found once, then reused)."""
    B: int
    Hq: int
    Hk: int
    Nq: int
    D: int
    paged: bool
    page_size: int
    scale: float
    window: int | None
    block_h: int
    block_d: int
    precision: str
    interp: bool
    candidates: tuple          # ((num_splits, (BLOCK_N, warps, stages)), ...) in trial order
    key: tuple                 # the problem key under which the fastest candidate is remembered


def _signature(q, k_cache, v_cache, cache_seqlens, block_table, window, scale, num_splits) -> tuple:
    """Everything the contract checks and the plan depends on, except the tensors' values."""
    table = None if block_table is None else (block_table.shape, block_table.dtype, block_table.device,
                                              block_table.stride())
    return (q.shape, q.stride(), q.dtype, q.device, k_cache.shape, k_cache.stride(), k_cache.dtype, k_cache.device,
            v_cache.shape, v_cache.stride(), v_cache.dtype, v_cache.device, cache_seqlens.shape,
            cache_seqlens.dtype, cache_seqlens.device, table, window, scale, num_splits,
            torch.get_float32_matmul_precision())


def _make_plan(q, k_cache, v_cache, cache_seqlens, block_table, window, scale, num_splits, validate) -> _Plan:
    q4, paged, page_size, capacity, scale, window = _check(q, k_cache, v_cache, cache_seqlens, block_table, window,
                                                           scale, validate)
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        require_triton_tensor(name, t, "flash_decode")
    check_kernel_tensors("flash_decode", 256, hint="; decode_attention_reference runs float64",
                         q=q4, k_cache=k_cache, v_cache=v_cache)
    if num_splits is not None and (not isinstance(num_splits, numbers.Integral) or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    B, Hq, Nq, D = q4.shape
    Hk = k_cache.shape[1]
    configs = _configs(paged, page_size)
    keys = capacity if window is None else min(capacity, window + Nq)
    if num_splits is not None:
        splits = (int(num_splits),)
    elif interpreting():
        splits = (choose_num_splits(B, Hk, keys, _sm_count(q.device), configs[0][0]),)
    else:
        splits = split_candidates(B, Hk, keys, _sm_count(q.device), configs[0][0])
    block_h = next_power_of_2((Hq // Hk) * Nq, 16)
    key = (q.device, q.dtype, D, block_h, paged, page_size, window is not None, num_splits,
           next_power_of_2(keys), next_power_of_2(B * Hk))
    return _Plan(B, Hq, Hk, Nq, D, paged, page_size, scale, window, block_h, next_power_of_2(D, 16),
                 _dot_precision(q), interpreting(), tuple((S, c) for S in splits for c in configs), key)


def flash_decode(q, k_cache, v_cache, cache_seqlens, *, block_table=None, num_splits=None, window=None,
                 scale=None, return_lse=False, validate=True, autotune=True):
    """Split-KV attention of q's tokens over a (paged) KV cache; see the module docstring.

    ``num_splits=None`` starts from :func:`choose_num_splits` and, on a GPU, times it against its
    neighbours once per problem (:func:`split_candidates`). Returns o with q's shape and dtype (and
    lse (B, Hq[, Nq]) fp32 with ``return_lse=True``). Exact in fp32; fp16/bf16 inputs multiply on
    tensor cores and accumulate in fp32.

    ``validate=True`` checks that every length fits the cache and every page id used lies in the
    pool (ValueError otherwise); that reads device values, a synchronization per call. A caller
    that guarantees them (:class:`~effsmall.attention.PagedKVCache`, a CUDA-graph capture) passes
    ``validate=False``; then shapes, dtypes and devices are checked once per call signature and
    the plan is remembered, so a decode loop pays only for its launches. ``autotune=False``
    launches the first candidate that fits instead of timing them.
    """
    sig = None
    plan = None
    if not validate and isinstance(q, torch.Tensor) and all(
            isinstance(t, torch.Tensor) for t in (k_cache, v_cache, cache_seqlens)) and (
            block_table is None or isinstance(block_table, torch.Tensor)):
        sig = _signature(q, k_cache, v_cache, cache_seqlens, block_table, window, scale, num_splits)
        plan = _PLANS.get(sig)
    if plan is None:
        plan = _make_plan(q, k_cache, v_cache, cache_seqlens, block_table, window, scale, num_splits, validate)
        if sig is not None:
            if len(_PLANS) > 4096:     # a caller whose shapes change every call: keep the memory bounded
                _PLANS.clear()
            _PLANS[sig] = plan
    out, lse = _launch(plan, q, k_cache, v_cache, cache_seqlens, block_table, autotune)
    if q.dim() == 3:
        out, lse = out[:, :, 0], lse[:, :, 0]
    return (out, lse) if return_lse else out


def _launch(plan: _Plan, q, k_cache, v_cache, cache_seqlens, block_table, autotune: bool):
    """Allocate the partial results, run the split kernel (and the merge when S > 1)."""
    B, Hq, Nq, D = plan.B, plan.Hq, plan.Nq, plan.D
    q4 = q[:, :, None] if q.dim() == 3 else q                                   # (B, Hq, Nq, D)
    if q4.stride(-1) != 1:
        q4 = q4.contiguous()
    dev = q.device
    table = block_table if plan.paged else cache_seqlens   # a placeholder pointer when contiguous

    def run(S, cfg):
        block_n, warps, stages = cfg
        out = torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev)
        if S == 1:   # the split's output is the answer: written directly, no merge
            o_part, lse_part = out[:, :, :, None], torch.empty(B, Hq, Nq, 1, dtype=torch.float32, device=dev)
        else:
            o_part = torch.empty(B, Hq, Nq, S, D, dtype=torch.float32, device=dev)   # (B, Hq, Nq, S, D)
            lse_part = torch.empty(B, Hq, Nq, S, dtype=torch.float32, device=dev)    # (B, Hq, Nq, S)
        _split_kernel[(S, plan.Hk, B)](
            q4, k_cache, v_cache, cache_seqlens, table, o_part, lse_part,
            q4.stride(0), q4.stride(1), q4.stride(2),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            table.stride(0) if plan.paged else 0,
            o_part.stride(0), o_part.stride(1), o_part.stride(2), o_part.stride(3),
            lse_part.stride(0), lse_part.stride(1), lse_part.stride(2),
            plan.scale * LOG2E.value, plan.window if plan.window is not None else 0, S,
            NQ=Nq, G=Hq // plan.Hk, D=D, BLOCK_H=plan.block_h, BLOCK_N=block_n, BLOCK_D=plan.block_d,
            PAGE=max(plan.page_size, 1), PAGED=plan.paged, HAS_WINDOW=plan.window is not None,
            PREC=plan.precision, num_warps=warps, num_stages=stages, INTERP=plan.interp)
        if S == 1:
            return out, lse_part[..., 0]
        lse = torch.empty(B, Hq, Nq, dtype=torch.float32, device=dev)
        rows = B * Hq * Nq                       # o_part, lse_part, out, lse are contiguous: one row each
        _merge_kernel[(rows,)](o_part, lse_part, out, lse, D, S, S * D, D, S, D,
                               BLOCK_S=next_power_of_2(S), BLOCK_D=plan.block_d)
        return out, lse

    if B == 0 or Hq == 0:
        return (torch.empty(B, Hq, Nq, D, dtype=q.dtype, device=dev),
                torch.full((B, Hq, Nq), float("-inf"), dtype=torch.float32, device=dev))
    return _pick(plan.key, plan.candidates, run, autotune, dev)
