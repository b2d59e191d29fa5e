"""Knowledge distillation {cite}`hinton2015distilling`.

The student learns from the teacher's whole distribution, softened by a temperature T:

    ℒ = α T² KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) CE(z_s, y)

z_t, z_s are teacher and student logits, y the hard labels (next tokens). The T² keeps the
soft term's gradient on the same scale as the hard term's when T changes (the gradient of the
KL term scales as 1/T²). Both terms are means over the (non-ignored) token positions.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from effsmall.runtime import compute_dtype


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """α·T²·KL(p_t^T ‖ p_s^T) + (1−α)·CE(z_s, y) averaged over positions with ``targets != ignore_index``.

    Logits ``(..., vocab)``, targets ``(...)``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    ct = compute_dtype(student_logits)
    zs = student_logits.flatten(0, -2).to(ct)                        # (n, vocab)
    zt = teacher_logits.flatten(0, -2).to(ct).detach()               # (n, vocab)
    y = targets.flatten()                                            # (n,)
    keep = y != ignore_index                                         # (n,)
    log_ps = F.log_softmax(zs[keep] / temperature, -1)
    log_pt = F.log_softmax(zt[keep] / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()           # KL(p_t ‖ p_s) per position
    ce = F.cross_entropy(zs[keep], y[keep])
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


def distill(student: nn.Module, teacher: nn.Module, data: Iterable, steps: int, *, temperature: float = 2.0,
            alpha: float = 0.5, **train_kw) -> dict:
    """Train ``student`` on ``(x, y)`` batches with :func:`distillation_loss` against a frozen
    ``teacher`` (``effsmall.models.train`` underneath: same optimizer, schedule and history).
    The validation loss (``val_data``) is the student's plain next-token cross-entropy."""
    from effsmall.models.training import train

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(model, batch):
        device = next(model.parameters()).device                   # batches live on the CPU
        x, y = (t.to(device, non_blocking=True) for t in batch)
        zs = model(x)
        if not model.training:            # validation: the student's own cross-entropy
            return F.cross_entropy(zs.flatten(0, 1).float(), y.flatten(), ignore_index=-100)
        with torch.no_grad():
            zt = teacher(x)
        return distillation_loss(zs, zt, y, temperature, alpha)

    return train(student, data, steps, loss_fn=loss_fn, desc="distill", **train_kw)
