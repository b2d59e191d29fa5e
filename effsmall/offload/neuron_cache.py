"""NeuronCache: a preallocated DRAM matrix holding the resident neurons of one layer (LLM in a Flash §3.3).

Rows ``0..n-1`` of ``data`` (``(capacity, record)``) are the resident neurons' bundled records
(row of ``W_up`` ‖ column of ``W_down``), in arbitrary order; ``ids[j]`` says which neuron row
j holds. The FFN then multiplies by the contiguous block ``data[:n]`` with no gather.

- **insert** appends new records at rows ``n, n+1, ...``: O(new) copies.
- **delete** fills each freed row with the *last* resident row and shrinks ``n``: O(deleted)
  copies, no shifting of the rest and no holes.

The matrix is allocated once; :attr:`data_ptr` never changes during generation (asserted).
"""
from __future__ import annotations

import numpy as np
import torch


class NeuronCache:
    def __init__(self, capacity: int, record: int, dtype: torch.dtype = torch.float16):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if record < 1:
            raise ValueError(f"record must be >= 1, got {record!r}")
        self.data = torch.zeros(capacity, record, dtype=dtype)     # (capacity, record), allocated once
        self.ids = np.full(capacity, -1, dtype=np.int64)           # neuron id held by each row
        self.slot: dict[int, int] = {}                             # neuron id -> row
        self.n = 0
        self.data_ptr = self.data.data_ptr()

    @property
    def capacity(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def resident(self) -> set[int]:
        return set(int(i) for i in self.ids[:self.n])

    def __contains__(self, neuron: int) -> bool:
        return neuron in self.slot

    def _check_ptr(self):
        assert self.data.data_ptr() == self.data_ptr, "NeuronCache storage was reallocated"

    def insert(self, ids, rows: torch.Tensor):
        """Append neurons ``ids`` (not resident) with records ``rows`` ``(len(ids), record)`` at the end."""
        ids = [int(i) for i in ids]
        k = len(ids)
        if rows.shape != (k, self.data.shape[1]):
            raise ValueError(f"rows must have shape {(k, self.data.shape[1])}, got {tuple(rows.shape)}")
        if self.n + k > self.capacity:
            raise RuntimeError(f"NeuronCache full: {self.n} resident + {k} new > capacity {self.capacity} "
                               "(raise the DRAM budget or shrink the window)")
        for i in ids:
            if i in self.slot:
                raise ValueError(f"neuron {i} is already resident")
        self.data[self.n:self.n + k] = rows                          # no reallocation: a copy into place
        self.ids[self.n:self.n + k] = ids
        for j, i in enumerate(ids):
            self.slot[i] = self.n + j
        self.n += k
        self._check_ptr()

    def delete(self, ids):
        """Remove neurons ``ids``: each freed row is filled by the current last row, then ``n`` shrinks."""
        for i in ids:
            i = int(i)
            s = self.slot.pop(i, None)
            if s is None:
                raise ValueError(f"neuron {i} is not resident")
            last = self.n - 1
            if s != last:
                self.data[s] = self.data[last]                      # move the last row into the hole
                moved = int(self.ids[last])
                self.ids[s] = moved
                self.slot[moved] = s
            self.ids[last] = -1
            self.n = last
        self._check_ptr()

    def rows(self) -> torch.Tensor:
        """The resident records, ``(n, record)`` — a view, no copy."""
        return self.data[:self.n]
