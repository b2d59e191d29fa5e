"""A byte-level BPE tokenizer trained on the offline corpus with the ``tokenizers`` library.

Byte-level BPE (GPT-2 style): text is first mapped to its UTF-8 bytes (256 base symbols, so
no input is ever out of vocabulary), then the most frequent adjacent pair is merged into a
new symbol, repeatedly, until the vocabulary has ``vocab_size`` entries. A small vocabulary
(2048–4096) keeps the embedding and output layers of a small model small.

The trained tokenizer is cached as JSON under :func:`cache_dir` (``$EFFSMALL_CACHE`` or
``~/.cache/effsmall``), keyed by the vocabulary size and a hash of the corpus, so it is
trained once per machine (a few seconds).
"""
from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

from effsmall.data.corpus import corpus_documents, load_corpus
from effsmall.runtime import cache_dir  # noqa: F401  (re-exported)

SPECIAL_TOKENS = ("<|endoftext|>",)


def _train(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus_documents(), trainer=trainer)
    return tok


@lru_cache(maxsize=8)
def get_tokenizer(vocab_size: int = 2048):
    """A ``tokenizers.Tokenizer`` with ``vocab_size`` entries (257 ≤ vocab_size ≤ 65536).

    ``tok.encode(text).ids`` gives token ids, ``tok.decode(ids)`` the text back; id
    ``tok.token_to_id("<|endoftext|>")`` separates documents.
    """
    if not isinstance(vocab_size, int) or not 257 + len(SPECIAL_TOKENS) <= vocab_size <= 65536:
        raise ValueError(f"vocab_size must be an int in [258, 65536], got {vocab_size!r}")
    from tokenizers import Tokenizer

    digest = hashlib.sha1(load_corpus().encode()).hexdigest()[:12]
    path = cache_dir() / f"bpe-{vocab_size}-{digest}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = _train(vocab_size)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tok.save(str(tmp))
    os.replace(tmp, path)     # atomic: parallel test workers never read a half-written file
    return tok
