"""Sequence classification with a causal LM body, done correctly (chapter 12's order task).

Pooling: the hidden state at the **last real token** (index ``length − 1``). Sequences are
right-padded, and both causal attention and the SSD recurrence only look backwards, so the
hidden state at a real position never depends on padding — no attention mask is needed, and
pooling must simply never read a padded position. (Reading position ``max_len − 1`` of a
padded row, a common bug, classifies from padding.) ``pooling="mean"`` averages the real
positions only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from effsmall.models.lm import SequenceLM


class SequenceClassifier(nn.Module):
    def __init__(self, body: SequenceLM, n_classes: int = 2, pooling: str = "last"):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {pooling!r}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.body, self.pooling = body, pooling
        self.head = nn.Linear(body.cfg.d_model, n_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens ``(b, L)`` right-padded, lengths ``(b,)`` → class logits ``(b, n_classes)``."""
        if lengths.shape != tokens.shape[:1] or int(lengths.min()) < 1 or int(lengths.max()) > tokens.shape[1]:
            raise ValueError("lengths must have shape (b,) with 1 <= length <= tokens.shape[1]")
        h, _ = self.body.hidden(tokens)                                         # (b, L, d)
        if self.pooling == "last":
            pooled = h[torch.arange(h.shape[0], device=h.device), lengths - 1]  # (b, d)
        else:
            real = (torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]).to(h.dtype)  # (b, L)
            pooled = (h * real[..., None]).sum(1) / lengths[:, None].to(h.dtype)                    # (b, d)
        return self.head(pooled)                                                # (b, n_classes)

    @staticmethod
    def loss(model: "SequenceClassifier", batch) -> torch.Tensor:
        """Cross-entropy of ``batch = (tokens, lengths, labels)`` (a ``loss_fn`` for ``train``)."""
        tokens, lengths, labels = batch
        return F.cross_entropy(model(tokens, lengths).float(), labels)

    @torch.no_grad()
    def accuracy(self, tokens: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> float:
        was = self.training
        self.eval()
        acc = float((self(tokens, lengths).argmax(-1) == labels).float().mean())
        self.train(was)
        return acc
