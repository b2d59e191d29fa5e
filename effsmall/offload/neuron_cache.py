"""NeuronCache: a preallocated DRAM matrix holding the resident neurons of one layer (LLM in a Flash §3.3).

Rows ``0..n-1`` of ``data`` (``(capacity, record)``) are the resident neurons' bundled records
(row of ``W_up`` ‖ column of ``W_down``), in arbitrary order; ``ids[j]`` says which neuron row
j holds. The FFN then multiplies by the contiguous block ``data[:n]`` with no gather.

- **insert** appends new records at rows ``n, n+1, ...``: O(new) copies.
- **delete** fills each freed row with the *last* resident row and shrinks ``n``: O(deleted)
  copies, no shifting of the rest and no holes (k deletions at once: one indexed copy).

The matrix is allocated once; :attr:`data_ptr` never changes during generation (asserted).
The bookkeeping is vectorised: ``slot[i]`` (an array over neuron ids) gives the row of neuron i
or -1, so membership of a whole predicted set (:meth:`NeuronCache.contains`), insert and delete
are a few numpy operations however many neurons move — per-token overhead, not per neuron.
"""
from __future__ import annotations

import numpy as np
import torch


class NeuronCache:
    def __init__(self, capacity: int, record: int, dtype: torch.dtype = torch.float16, n_ids: int = 0):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if record < 1:
            raise ValueError(f"record must be >= 1, got {record!r}")
        self.data = torch.zeros(capacity, record, dtype=dtype)     # (capacity, record), allocated once
        self.ids = np.full(capacity, -1, dtype=np.int64)           # neuron id held by each row
        # slot[i] = the row holding neuron i, -1 if not resident: bookkeeping by array indexing,
        # one numpy operation per insert/delete however many ids (it grows if ids exceed n_ids)
        self.slot = np.full(max(n_ids, capacity), -1, dtype=np.int64)
        self._mark = np.zeros(len(self.slot), dtype=np.int64)      # scratch for the repeat check
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
        return 0 <= neuron < len(self.slot) and self.slot[neuron] >= 0

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Vectorised membership: a bool array, True where ``ids[j]`` is resident."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = ids < len(self.slot)
        out = np.zeros(len(ids), dtype=bool)
        out[inside] = self.slot[ids[inside]] >= 0
        return out

    def _check_ptr(self):
        assert self.data.data_ptr() == self.data_ptr, "NeuronCache storage was reallocated"

    def _ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) and ids.min() < 0:
            raise ValueError(f"neuron ids must be >= 0, got {int(ids.min())}")
        if len(ids) and ids.max() >= len(self.slot):               # bookkeeping only; data never moves
            self.slot = np.concatenate([self.slot, np.full(int(ids.max()) + 1 - len(self.slot), -1, np.int64)])
            self._mark = np.zeros(len(self.slot), dtype=np.int64)
        k = np.arange(len(ids))
        self._mark[ids] = k                                         # O(k) repeat check: with a repeated id
        if (self._mark[ids] != k).any():                            # the later write wins, the earlier differs
            raise ValueError("ids must not repeat")
        return ids

    def insert(self, ids, rows: torch.Tensor):
        """Append neurons ``ids`` (not resident) with records ``rows`` ``(len(ids), record)`` at the end."""
        ids = self._ids(ids)
        k = len(ids)
        if rows.shape != (k, self.data.shape[1]):
            raise ValueError(f"rows must have shape {(k, self.data.shape[1])}, got {tuple(rows.shape)}")
        if self.n + k > self.capacity:
            raise RuntimeError(f"NeuronCache full: {self.n} resident + {k} new > capacity {self.capacity} "
                               "(raise the DRAM budget or shrink the window)")
        if (self.slot[ids] >= 0).any():
            raise ValueError(f"neuron {int(ids[self.slot[ids] >= 0][0])} is already resident")
        self.data[self.n:self.n + k] = rows                          # no reallocation: a copy into place
        self.ids[self.n:self.n + k] = ids
        self.slot[ids] = np.arange(self.n, self.n + k)
        self.n += k
        self._check_ptr()

    def delete(self, ids):
        """Remove neurons ``ids``: each freed row is filled by a row from the end, then ``n`` shrinks.

        One id at a time this is "move the last row into the hole". For k ids at once the same
        idea in one step: the rows ``n-k..n-1`` that survive move into the holes below ``n-k``
        (one indexed copy instead of k).
        """
        if len(ids) == 0:
            return
        ids = self._ids(ids)
        freed = self.slot[ids]                                       # (k,) rows being freed
        if (freed < 0).any():
            raise ValueError(f"neuron {int(ids[freed < 0][0])} is not resident")
        self.slot[ids] = -1
        n2 = self.n - len(ids)
        holes = np.sort(freed[freed < n2])                           # freed rows below the new end
        tail = np.ones(self.n - n2, dtype=bool)
        tail[freed[freed >= n2] - n2] = False
        movers = n2 + np.flatnonzero(tail)                           # surviving rows at the end
        if len(holes):
            self.data[torch.from_numpy(holes)] = self.data[torch.from_numpy(movers)]  # rows from the end fill the holes
            self.ids[holes] = self.ids[movers]
            self.slot[self.ids[holes]] = holes
        self.ids[n2:self.n] = -1
        self.n = n2
        self._check_ptr()

    def rows(self) -> torch.Tensor:
        """The resident records, ``(n, record)`` — a view, no copy."""
        return self.data[:self.n]
