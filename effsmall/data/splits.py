"""Token ids of the corpus, a deterministic train/validation split, and batch iterators.

Language-model batches are windows of ``seq_len + 1`` consecutive tokens: inputs
``x = w[:-1]`` and next-token targets ``y = w[1:]``, both ``(batch_size, seq_len)``.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import torch

from effsmall.data.corpus import corpus_documents
from effsmall.data.tokenizer import SPECIAL_TOKENS, get_tokenizer


@lru_cache(maxsize=8)
def _encoded(vocab_size: int) -> torch.Tensor:
    tok = get_tokenizer(vocab_size)
    eot = tok.token_to_id(SPECIAL_TOKENS[0])
    ids: list[int] = []
    for enc in tok.encode_batch(list(corpus_documents())):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)                           # (n_tokens,)


def token_splits(vocab_size: int = 2048, val_fraction: float = 0.1, block: int = 16384):
    """``(train_ids, val_ids, tokenizer)``: the corpus as 1-D LongTensors.

    The token stream is cut into blocks of ``block`` tokens; the last ``val_fraction`` of each
    block goes to validation. Interleaving like this makes the validation text come from every
    part of the corpus (language reference *and* library docstrings), while no window of the
    validation set overlaps a training window of the same block.
    """
    train, val = split_ids(_encoded(vocab_size), val_fraction, block)
    return train, val, get_tokenizer(vocab_size)


def split_ids(ids: torch.Tensor, val_fraction: float = 0.1, block: int = 16384):
    """``(train_ids, val_ids)``: the last ``val_fraction`` of every ``block`` tokens is validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if block < 64:
        raise ValueError(f"block must be >= 64 tokens, got {block!r}")
    n_val = max(1, int(block * val_fraction))
    train, val = [], []
    for start in range(0, len(ids), block):
        chunk = ids[start:start + block]
        cut = max(0, len(chunk) - n_val)
        train.append(chunk[:cut])
        val.append(chunk[cut:])
    return torch.cat(train), torch.cat(val)


def _check(ids: torch.Tensor, batch_size: int, seq_len: int):
    if ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError(f"ids must be a 1-D LongTensor, got shape {tuple(ids.shape)} dtype {ids.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 1 <= seq_len < len(ids):
        raise ValueError(f"seq_len must be in [1, {len(ids) - 1}], got {seq_len}")


def batches(ids: torch.Tensor, batch_size: int, seq_len: int, seed: int = 0,
            device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random windows: yields ``(x, y)``, each ``(batch_size, seq_len)``, y = x shifted.

    Window starts are drawn uniformly with a ``torch.Generator`` seeded by ``seed``, so the same
    seed gives the same stream of batches on every machine.
    """
    _check(ids, batch_size, seq_len)
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(seq_len + 1)                                   # (seq_len+1,)
    while True:
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=g)  # (batch,)
        w = ids[starts[:, None] + offsets]                                # (batch, seq_len+1)
        yield w[:, :-1].to(device), w[:, 1:].to(device)


def eval_batches(ids: torch.Tensor, batch_size: int, seq_len: int, max_batches: int | None = None,
                 device: str | torch.device = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed, non-overlapping windows from the start of ``ids`` (for validation loss)."""
    _check(ids, batch_size, seq_len)
    n_win = (len(ids) - 1) // seq_len
    w = ids[:n_win * seq_len + 1]
    x = w[:-1].view(n_win, seq_len)                                       # (n_win, seq_len)
    y = w[1:].view(n_win, seq_len)                                        # (n_win, seq_len)
    for i, s in enumerate(range(0, n_win, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        yield x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
