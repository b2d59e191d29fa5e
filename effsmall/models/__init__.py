"""Small language models built from the book's kernels (chapter 12).

- ``LMConfig``: one dataclass for all three architectures (bad shapes raise ``ValueError``).
- ``TransformerLM``: every layer attention + SwiGLU MLP (pre-norm, RoPE, GQA, KV cache).
- ``Mamba2LM``: every layer a Mamba-2 block (SSD) + SwiGLU MLP (recurrent state).
- ``HybridLM``: attention in every k-th layer, Mamba-2 in the rest (Jamba).
- ``train``/``evaluate``: a seeded AdamW loop with a tqdm bar, returning the loss history.
- ``SequenceClassifier``: a causal LM body + last-real-token pooling + a linear head.
- ``book`` (a module): the book's trained models — ``python -m effsmall.models.book`` trains them
  on a GPU in one timed command; ``book.load_lm`` / ``book.load_relu_lm`` load the shipped weights.
- ``attention``: the fastest exact attention for the device (FlashAttention Triton on CUDA,
  torch SDPA on CPU), ``model_stats``: parameters, FLOPs/token and memory per context token.
"""
from effsmall._lazy import install

_EXPORTS = {
    # config.py
    "LMConfig": "config",
    # layers.py — the pieces every LM uses
    "RMSNorm": "layers",
    "SwiGLU": "layers",
    "rope": "layers",
    "attention": "layers",
    "attention_backend": "layers",
    "CausalSelfAttention": "layers",
    "KVCache": "layers",
    # lm.py — the three language models
    "SequenceLM": "lm",
    "TransformerLM": "lm",
    "Mamba2LM": "lm",
    "HybridLM": "lm",
    "build_model": "lm",
    "cache_bytes": "lm",
    # training.py
    "train": "training",
    "evaluate": "training",
    "lm_loss": "training",
    "train_cached": "training",
    # classifier.py
    "SequenceClassifier": "classifier",
    # stats.py — parameters, FLOPs/token, memory per context token
    "model_stats": "stats",
    # real.py — Phi-3-mini / TinyLlama through transformers
    "load_pretrained": "real",
    "tiny_random_model": "real",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
