"""Parameter sharing: tied input/output embeddings and ALBERT-style cross-layer sharing.

- **Tied embeddings** (Press & Wolf 2017): the output layer reuses the embedding matrix E
  (logits = h Eᵀ). In a small model with a 32k vocabulary, E can be a large share of the
  weights; TinyLlama and Phi-3-mini do *not* tie, Gemma and OPT do.
- **Cross-layer sharing** (ALBERT, {cite}`lan2019albert` §3.1): L layers, only U distinct
  sets of weights; layer i uses the weights of layer i mod U. Parameters shrink by L/U, FLOPs
  per token do not change — a trade of quality for memory, not for speed.
"""
from __future__ import annotations

import torch.nn as nn


def tie_embeddings(model: nn.Module) -> nn.Module:
    """Make ``model.lm_head.weight`` the same tensor as ``model.embed.weight``."""
    if not (hasattr(model, "lm_head") and hasattr(model, "embed")):
        raise TypeError("model must have .embed and .lm_head (an effsmall.models LM)")
    if model.lm_head.weight.shape != model.embed.weight.shape:
        raise ValueError("lm_head and embed shapes differ: cannot tie")
    model.lm_head.weight = model.embed.weight
    model.cfg.tie_embeddings = True
    return model


def share_layers(model: nn.Module, n_unique: int) -> nn.Module:
    """ALBERT sharing in place: layer i becomes the module object of layer ``i % n_unique``.

    In a hybrid, layer i and layer i mod n_unique must be of the same kind (choose ``n_unique``
    a multiple of ``attn_every``), else ``ValueError``. Decoding caches stay per layer position,
    so generation is still exact.
    """
    layers = model.layers
    if not isinstance(n_unique, int) or not 1 <= n_unique <= len(layers):
        raise ValueError(f"n_unique must be an int in [1, {len(layers)}], got {n_unique!r}")
    for i in range(n_unique, len(layers)):
        src = layers[i % n_unique]
        if src.is_attention != layers[i].is_attention:
            raise ValueError(f"n_unique={n_unique}: layer {i} and layer {i % n_unique} are different kinds")
        layers[i] = src
    return model
