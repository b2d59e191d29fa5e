"""A KV cache in fixed-size pages (vLLM's PagedAttention, Kwon et al. 2023, §4).

A contiguous cache reserves ``max_len`` slots per sequence up front; most of them stay empty
(a chat reply ends long before the limit), and memory for one sequence cannot be lent to
another. A paged cache reserves memory in pages of ``page_size`` tokens, taken from a shared
pool as a sequence grows and returned when it ends:

    pool  k_pages, v_pages (num_pages, Hk, page_size, D)       shared by all rows
    block_table (B, max_pages) int32                           row b's pages, in order
    seqlens (B,) int32                                         tokens stored per row

Token j of row b sits in page ``block_table[b, j // page_size]``, slot ``j % page_size`` —
exactly what :func:`effsmall.attention.flash_decode` reads with ``block_table=``. The only
waste is the unfilled tail of each row's last page (< page_size tokens per row).

The pool grows by half when it runs out of free pages (one copy, amortized), so a generation
loop never has to know its final length.
"""
from __future__ import annotations

import torch

from effsmall.runtime import cdiv

__all__ = ["PagedKVCache"]


class PagedKVCache:
    """Keys and values of ``batch`` sequences for one attention layer, in pages."""

    def __init__(self, batch: int, kv_heads: int, head_dim: int, *, page_size: int = 64,
                 num_pages: int | None = None, dtype=torch.float32, device="cpu"):
        for name, v in (("batch", batch), ("kv_heads", kv_heads), ("head_dim", head_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(page_size, int) or page_size < 16 or page_size & (page_size - 1):
            raise ValueError(f"page_size must be a power of two >= 16, got {page_size!r}")
        self.batch, self.kv_heads, self.head_dim, self.page_size = batch, kv_heads, head_dim, page_size
        num_pages = num_pages if num_pages is not None else batch
        if num_pages < 1:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        shape = (num_pages, kv_heads, page_size, head_dim)
        self.k_pages = torch.zeros(shape, dtype=dtype, device=device)      # (P, Hk, page, D)
        self.v_pages = torch.zeros(shape, dtype=dtype, device=device)      # (P, Hk, page, D)
        self.free_pages: list[int] = list(range(num_pages - 1, -1, -1))   # a stack: pop() gives page 0 first
        self.pages: list[list[int]] = [[] for _ in range(batch)]           # host copy of the block table
        self.lengths: list[int] = [0] * batch                              # host copy of seqlens
        self.block_table = torch.zeros(batch, 1, dtype=torch.int32, device=device)  # (B, max_pages)
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)          # (B,)

    # ------------------------------------------------------------------ sizes
    @property
    def device(self):
        return self.k_pages.device

    @property
    def dtype(self):
        return self.k_pages.dtype

    @property
    def length(self) -> int:
        """Tokens of the longest row (rows grow together in the models' decode loop)."""
        return max(self.lengths)

    @property
    def page_bytes(self) -> int:
        """Bytes of one page of keys and values."""
        return 2 * self.kv_heads * self.page_size * self.head_dim * self.k_pages.element_size()

    @property
    def pool_bytes(self) -> int:
        """Bytes reserved by the pool (used and free pages)."""
        return self.k_pages.shape[0] * self.page_bytes

    @property
    def used_bytes(self) -> int:
        """Bytes of the pages that rows hold."""
        return sum(len(p) for p in self.pages) * self.page_bytes

    @property
    def token_bytes(self) -> int:
        """Bytes of the keys and values actually stored (tokens × 2·Hk·D·element size)."""
        return sum(self.lengths) * self.page_bytes // self.page_size

    # ------------------------------------------------------------------ pages
    def _grow_pool(self, need: int) -> None:
        old = self.k_pages.shape[0]
        new = max(old + old // 2, old + need)          # 1.5x: amortized O(1) copies per page
        pad = (new - old, *self.k_pages.shape[1:])
        self.k_pages = torch.cat([self.k_pages, self.k_pages.new_zeros(pad)])
        self.v_pages = torch.cat([self.v_pages, self.v_pages.new_zeros(pad)])
        self.free_pages = list(range(new - 1, old - 1, -1)) + self.free_pages

    def reserve(self, row: int, length: int) -> None:
        """Make sure row ``row`` has pages for ``length`` tokens (takes pages from the pool)."""
        self._check_row(row)
        need = cdiv(length, self.page_size) - len(self.pages[row])
        if need <= 0:
            return
        if need > len(self.free_pages):
            self._grow_pool(need - len(self.free_pages))
        self.pages[row] += [self.free_pages.pop() for _ in range(need)]
        self._sync_table()

    def free(self, row: int) -> None:
        """Row ``row`` is finished: its pages go back to the pool, its length to 0."""
        self._check_row(row)
        self.free_pages += reversed(self.pages[row])
        self.pages[row] = []
        self.lengths[row] = 0
        self.seqlens[row] = 0
        self._sync_table()

    def _check_row(self, row):
        if not isinstance(row, int) or not 0 <= row < self.batch:
            raise ValueError(f"row must be an int in [0, {self.batch}), got {row!r}")

    def _sync_table(self) -> None:
        width = max(1, max(len(p) for p in self.pages))
        table = [p + [0] * (width - len(p)) for p in self.pages]
        self.block_table = torch.tensor(table, dtype=torch.int32).to(self.device)

    # ------------------------------------------------------------------ tokens
    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store l new tokens per row after each row's current end: k, v ``(B, Hk, l, D)``."""
        want = (self.batch, self.kv_heads, self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor")
            if t.dim() != 4 or (t.shape[0], t.shape[1], t.shape[3]) != want:
                raise ValueError(f"{name} must be (B={want[0]}, Hk={want[1]}, l, D={want[2]}), got {tuple(t.shape)}")
            if t.device != self.device or t.dtype != self.dtype:
                raise TypeError(f"{name} must be {self.dtype} on {self.device}, got {t.dtype} on {t.device}")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have one shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        l = k.shape[2]
        if l == 0:
            return
        for row in range(self.batch):
            self.reserve(row, self.lengths[row] + l)
        pos = self.seqlens.long()[:, None] + torch.arange(l, device=self.device)       # (B, l) new positions
        page = self.block_table.long().gather(1, pos // self.page_size)                # (B, l) page ids
        slot = pos % self.page_size                                                    # (B, l)
        self.k_pages[page, :, slot] = k.transpose(1, 2)                                # (B, l, Hk, D) into pages
        self.v_pages[page, :, slot] = v.transpose(1, 2)
        self.lengths = [n + l for n in self.lengths]
        self.seqlens += l

    def gather(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values as contiguous tensors ``(B, Hk, length, D)`` (rows padded with zeros)."""
        from effsmall.attention.decode import gather_pages

        n = self.length
        k = gather_pages(self.k_pages, self.block_table, n) if n else self.k_pages.new_zeros(
            self.batch, self.kv_heads, 0, self.head_dim)
        v = gather_pages(self.v_pages, self.block_table, n) if n else torch.zeros_like(k)
        keep = (torch.arange(n, device=self.device)[None, :] < self.seqlens[:, None])[:, None, :, None]
        return k * keep, v * keep

    @classmethod
    def from_contiguous(cls, k: torch.Tensor, v: torch.Tensor, *, page_size: int = 64,
                        spare_pages: int | None = None) -> "PagedKVCache":
        """A paged copy of contiguous k, v ``(B, Hk, t, D)`` (every row t tokens long), with
        ``spare_pages`` free pages for what follows (default: 8 per row)."""
        B, Hk, t, D = k.shape
        num = B * cdiv(max(t, 1), page_size) + (8 * B if spare_pages is None else spare_pages)
        cache = cls(B, Hk, D, page_size=page_size, num_pages=num, dtype=k.dtype, device=k.device)
        cache.append(k, v)
        return cache

    def __repr__(self) -> str:
        return (f"PagedKVCache(batch={self.batch}, lengths={self.lengths}, page_size={self.page_size}, "
                f"pages used {sum(map(len, self.pages))} of {self.k_pages.shape[0]})")
