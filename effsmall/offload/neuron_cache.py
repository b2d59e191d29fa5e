"""NeuronCache: a preallocated DRAM matrix holding the resident neurons of one layer (LLM in a Flash §3.3).

Rows ``0..n-1`` of ``data`` (``(capacity, record)``) are the resident neurons' bundled records
(row of ``W_up`` ‖ column of ``W_down``), in arbitrary order; ``ids[j]`` says which neuron row
j holds. The FFN then multiplies by the contiguous block ``data[:n]`` with no gather.

- **insert** appends new records at rows ``n, n+1, ...``: O(new) copies.
- **delete** fills each freed row with the *last* resident row and shrinks ``n``: O(deleted)
  copies, no shifting of the rest and no holes (k deletions at once: one indexed copy).

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
        """Remove neurons ``ids``: each freed row is filled by a row from the end, then ``n`` shrinks.

        One id at a time this is "move the last row into the hole". For k ids at once the same
        idea in one step: the rows ``n-k..n-1`` that survive move into the holes below ``n-k``
        (one indexed copy instead of k).
        """
        ids = [int(i) for i in ids]
        if len(set(ids)) != len(ids):
            raise ValueError("ids must not repeat")
        for i in ids:
            if i not in self.slot:
                raise ValueError(f"neuron {i} is not resident")
        if not ids:
            return
        freed = {self.slot.pop(i) for i in ids}
        n2 = self.n - len(ids)
        holes = sorted(s for s in freed if s < n2)
        movers = [j for j in range(n2, self.n) if j not in freed]
        if holes:
            h, m = torch.tensor(holes), torch.tensor(movers)
            self.data[h] = self.data[m]                              # rows from the end fill the holes
            self.ids[holes] = self.ids[movers]
            for s in holes:
                self.slot[int(self.ids[s])] = s
        self.ids[n2:self.n] = -1
        self.n = n2
        self._check_ptr()

    def rows(self) -> torch.Tensor:
        """The resident records, ``(n, record)`` — a view, no copy."""
        return self.data[:self.n]
