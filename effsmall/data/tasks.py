"""Synthetic tasks that isolate one ability of a sequence model.

**MQAR** — multi-query associative recall ({cite}`arora2023zoology`, used in
{cite}`dao2024mamba2` §9.1). A sequence starts with P key–value pairs ``k1 v1 k2 v2 … kP vP``;
later, some keys appear again (queries) and the model must predict the value that was paired
with each. A model with a fixed-size state must store P associations in it; attention can look
them up. Token ids: ``0`` filler, keys ``1..num_keys``, values ``num_keys+1..num_keys+num_values``.
Targets are ``-100`` (ignored by ``cross_entropy``) except at query positions, where the
target is the paired value; the value also follows the query in the input, like text would.

**Order task** — binary sequence classification whose label depends on long-range order:
random noise tokens with one ``A`` and one ``B`` marker at least ``length // 4`` apart; the
label is 1 if A comes before B. Sequences have random lengths and are right-padded with ``0``,
so a classifier must pool correctly (for a causal model: the hidden state at the last real
token, index ``length - 1``) and never look at padding. Token ids: ``0`` pad, ``1`` A, ``2`` B,
noise ``3..vocab_size-1``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100


@dataclass(frozen=True)
class MQARConfig:
    num_keys: int = 64
    num_values: int = 64
    num_pairs: int = 8
    seq_len: int = 64
    num_queries: int | None = None     # default: every pair is queried once

    def __post_init__(self):
        q = self.queries
        if self.num_keys < self.num_pairs:
            raise ValueError(f"num_keys={self.num_keys} must be >= num_pairs={self.num_pairs} (keys are distinct)")
        if self.num_values < 1 or self.num_pairs < 1:
            raise ValueError("num_values and num_pairs must be >= 1")
        if not 1 <= q <= self.num_pairs:
            raise ValueError(f"num_queries must be in [1, num_pairs={self.num_pairs}], got {q}")
        if self.seq_len < 2 * self.num_pairs + 2 * q:
            raise ValueError(f"seq_len={self.seq_len} too short: needs 2·num_pairs + 2·num_queries = "
                             f"{2 * self.num_pairs + 2 * q} positions")

    @property
    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    @property
    def vocab_size(self) -> int:
        return 1 + self.num_keys + self.num_values


def mqar(n: int, config: MQARConfig = MQARConfig(), seed: int = 0):
    """``n`` MQAR examples: ``(inputs, targets)``, both ``(n, seq_len)`` LongTensors."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    c, g = config, torch.Generator().manual_seed(seed)
    P, Q, L = c.num_pairs, c.queries, c.seq_len
    keys = torch.rand(n, c.num_keys, generator=g).argsort(-1)[:, :P] + 1            # (n, P) distinct
    values = torch.randint(0, c.num_values, (n, P), generator=g) + 1 + c.num_keys   # (n, P)
    inputs = torch.zeros(n, L, dtype=torch.long)
    inputs[:, 0:2 * P:2], inputs[:, 1:2 * P:2] = keys, values
    targets = torch.full((n, L), IGNORE, dtype=torch.long)
    # queries go into disjoint 2-token slots after the context: (query key, its value)
    n_slots = (L - 2 * P) // 2
    slot = torch.rand(n, n_slots, generator=g).argsort(-1)[:, :Q].sort(-1).values   # (n, Q)
    pos = 2 * P + 2 * slot                                                          # (n, Q)
    which = torch.rand(n, P, generator=g).argsort(-1)[:, :Q]                        # (n, Q) pair ids
    qk, qv = keys.gather(1, which), values.gather(1, which)                         # (n, Q)
    inputs.scatter_(1, pos, qk)
    inputs.scatter_(1, pos + 1, qv)
    targets.scatter_(1, pos, qv)
    return inputs, targets


@dataclass(frozen=True)
class OrderTaskConfig:
    vocab_size: int = 16
    min_len: int = 32
    max_len: int = 64

    def __post_init__(self):
        if self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4 (pad, A, B, noise), got {self.vocab_size}")
        if not 8 <= self.min_len <= self.max_len:
            raise ValueError(f"need 8 <= min_len <= max_len, got min_len={self.min_len}, max_len={self.max_len}")


PAD, MARK_A, MARK_B = 0, 1, 2


def order_task(n: int, config: OrderTaskConfig = OrderTaskConfig(), seed: int = 0):
    """``n`` examples of the order task: ``(tokens (n, max_len), lengths (n,), labels (n,))``.

    Labels are balanced in expectation (A first with probability ½).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    c, g = config, torch.Generator().manual_seed(seed)
    lengths = torch.randint(c.min_len, c.max_len + 1, (n,), generator=g)           # (n,)
    tokens = torch.randint(3, c.vocab_size, (n, c.max_len), generator=g)            # (n, max_len)
    ar = torch.arange(c.max_len)
    tokens[ar[None, :] >= lengths[:, None]] = PAD
    # two marker positions i < j with j − i ≥ length // 4
    gap_min = lengths // 4                                                          # (n,)
    u = torch.rand(n, 2, generator=g)
    i = (u[:, 0] * (lengths - gap_min)).long()                                      # in [0, len − gap)
    j = i + gap_min + (u[:, 1] * (lengths - i - gap_min)).long()                    # in [i + gap, len)
    labels = (torch.rand(n, generator=g) < 0.5).long()                              # 1: A first
    first = torch.where(labels == 1, MARK_A, MARK_B)
    rows = torch.arange(n)
    tokens[rows, i], tokens[rows, j] = first, MARK_A + MARK_B - first
    return tokens, lengths, labels
