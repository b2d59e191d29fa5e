"""Counting collectives: how many ran, and how many bytes they moved.

:func:`count_collectives` temporarily wraps the collectives of ``torch.distributed``
(``all_reduce``, ``all_gather_into_tensor``, ``reduce_scatter_tensor``, ``all_to_all_single``,
``send``/``recv``/``isend``/``irecv``/``batch_isend_irecv``, ``broadcast`` and their list
variants) so that every call made while the context is open is recorded on this rank.

Two byte counts per kind:

* ``bytes`` — the payload: the full tensor that the collective is about (the all-reduced
  tensor, the gathered output, the reduce-scattered input, the all-to-all input, a sent tensor);
* ``wire_bytes`` — what one rank sends with the bandwidth-optimal (ring) algorithm on ``p``
  ranks: all-reduce ``2(p−1)/p·n`` (a reduce-scatter then an all-gather), all-gather and
  reduce-scatter ``(p−1)/p·n``, all-to-all ``(p−1)/p·n``, a send ``n``. With it, "sequence
  parallelism moves as much as the tensor-parallel all-reduce" is an equality of two numbers.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch.distributed as dist

__all__ = ["count_collectives", "CollectiveCounts", "uncounted"]

# torch.distributed name -> (kind, how the payload is found, wire factor as a function of p)
_RING = lambda p: (p - 1) / p  # noqa: E731
_SPECS = {
    "all_reduce": ("all_reduce", "tensor", lambda p: 2 * (p - 1) / p),
    "all_gather_into_tensor": ("all_gather", "output_tensor", _RING),
    "all_gather_single": ("all_gather", "output_tensor", _RING),
    "all_gather": ("all_gather", "tensor_list", _RING),
    "reduce_scatter_tensor": ("reduce_scatter", "input", _RING),
    "reduce_scatter_single": ("reduce_scatter", "input", _RING),
    "reduce_scatter": ("reduce_scatter", "input_list", _RING),
    "all_to_all_single": ("all_to_all", "input", _RING),
    "all_to_all": ("all_to_all", "input_tensor_list", _RING),
    "broadcast": ("broadcast", "tensor", lambda p: 1.0),
    "send": ("send", "tensor", lambda p: 1.0),
    "isend": ("send", "tensor", lambda p: 1.0),
    "recv": ("recv", "tensor", lambda p: 0.0),
    "irecv": ("recv", "tensor", lambda p: 0.0),
}
_state = threading.local()


@dataclass
class CollectiveCounts:
    """Calls, payload bytes and per-rank wire bytes, keyed by kind (``"all_reduce"``, ...)."""
    calls: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)
    wire_bytes: Counter = field(default_factory=Counter)

    def add(self, kind: str, nbytes: int, wire: float) -> None:
        self.calls[kind] += 1
        self.bytes[kind] += int(nbytes)
        self.wire_bytes[kind] += int(round(wire))

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_wire_bytes(self) -> int:
        return sum(self.wire_bytes.values())

    def as_dict(self) -> dict:
        return {"calls": dict(self.calls), "bytes": dict(self.bytes), "wire_bytes": dict(self.wire_bytes)}

    def __str__(self) -> str:
        if not self.calls:
            return "no collectives"
        return ", ".join(f"{self.calls[k]} {k} ({self.bytes[k]:,} B)" for k in sorted(self.calls))


def _nbytes(x) -> int:
    if isinstance(x, (list, tuple)):
        return sum(t.numel() * t.element_size() for t in x)
    return x.numel() * x.element_size()


@contextlib.contextmanager
def uncounted():
    """Collectives issued inside are not recorded (bookkeeping such as shape checks)."""
    old = getattr(_state, "off", False)
    _state.off = True
    try:
        yield
    finally:
        _state.off = old


def _wrap(fn, name: str, counters: list):
    kind, arg, factor = _SPECS[name]
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        if not getattr(_state, "off", False):
            bound = sig.bind_partial(*args, **kwargs).arguments
            p = dist.get_world_size(bound.get("group"))
            n = _nbytes(bound[arg])
            for c in counters:
                c.add(kind, n, factor(p) * n)
        return fn(*args, **kwargs)
    return wrapped


def _wrap_batch(fn, counters: list):
    @functools.wraps(fn)
    def wrapped(p2p_op_list):
        if not getattr(_state, "off", False):
            for op in p2p_op_list:
                send = getattr(op.op, "__name__", "") == "isend"
                n = _nbytes(op.tensor)
                for c in counters:
                    c.add("send" if send else "recv", n, n if send else 0)
        return fn(p2p_op_list)
    return wrapped


_active: list = []  # the CollectiveCounts of every open context (contexts may nest)
_lock = threading.Lock()
_originals: dict = {}


@contextlib.contextmanager
def count_collectives():
    """Record the ``torch.distributed`` collectives this rank issues inside the block.

    >>> with count_collectives() as c:
    ...     out = tp_block(x)
    >>> c.calls["all_reduce"], c.bytes["all_reduce"]
    """
    counts = CollectiveCounts()
    with _lock:
        if not _active:  # first open context: install the wrappers once
            for name in _SPECS:
                if hasattr(dist, name):
                    _originals[name] = getattr(dist, name)
                    setattr(dist, name, _wrap(_originals[name], name, _active))
            _originals["batch_isend_irecv"] = dist.batch_isend_irecv
            dist.batch_isend_irecv = _wrap_batch(dist.batch_isend_irecv, _active)
        _active.append(counts)
    try:
        yield counts
    finally:
        with _lock:
            _active.remove(counts)
            if not _active:
                for name, fn in _originals.items():
                    setattr(dist, name, fn)
                _originals.clear()
