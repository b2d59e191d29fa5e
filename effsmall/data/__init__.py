"""Data for the small language models of chapters 12–14, all offline and deterministic.

- ``load_corpus()``: English+code text that ships with Python itself (the ``pydoc`` topic
  pages and the docstrings of a fixed list of standard-library modules), about 1 MB.
- ``get_tokenizer(vocab_size=2048)``: a byte-level BPE tokenizer trained on that corpus with
  the ``tokenizers`` library, cached under ``$EFFSMALL_CACHE`` (default ``~/.cache/effsmall``).
- ``token_splits(vocab_size=2048, val_fraction=0.1)``: the corpus as token ids, split into a
  training and a validation part (the last 10% of every document block goes to validation).
- ``batches(ids, batch_size, seq_len, seed)``: an endless iterator of random (x, y) windows,
  y = x shifted by one token; ``eval_batches`` gives fixed, non-overlapping windows.
- ``mqar(...)``: multi-query associative recall (Zoology / Mamba-2); ``order_task(...)``:
  a sequence classification task whose label depends on long-range order.

Example::

    from effsmall.data import token_splits, batches
    train_ids, val_ids, tok = token_splits(vocab_size=2048)
    x, y = next(batches(train_ids, batch_size=8, seq_len=128, seed=0))   # (8, 128) each
"""
from effsmall._lazy import install

_EXPORTS = {
    # corpus.py — text Python ships with
    "load_corpus": "corpus",
    "corpus_documents": "corpus",
    # tokenizer.py — byte-level BPE, cached
    "get_tokenizer": "tokenizer",
    "cache_dir": "tokenizer",
    # splits.py — token ids, train/validation, batch iterators
    "token_splits": "splits",
    "batches": "splits",
    "eval_batches": "splits",
    # tasks.py — synthetic tasks
    "mqar": "tasks",
    "MQARConfig": "tasks",
    "order_task": "tasks",
    "OrderTaskConfig": "tasks",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
