"""A small, seeded training loop: AdamW, linear warm-up then cosine decay, gradient clipping."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of ``batch = (x, y)``; targets equal to −100 are ignored (MQAR)."""
    x, y = batch
    device = next(model.parameters()).device                              # batches live on the CPU
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    logits = model(x)                                                     # (b, l, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=-100)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, loss_fn: Callable = lm_loss) -> float:
    """Mean of ``loss_fn`` over ``batches`` (a list, so it can be reused), in eval mode."""
    was = model.training
    model.eval()
    losses = [float(loss_fn(model, b)) for b in batches]
    model.train(was)
    if not losses:
        raise ValueError("batches is empty")
    return sum(losses) / len(losses)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))   # cosine to lr/10


def train(model: nn.Module, data: Iterable, steps: int, *, lr: float = 3e-3, weight_decay: float = 0.1,
          warmup: int | None = None, grad_clip: float = 1.0, seed: int = 0, loss_fn: Callable = lm_loss,
          val_data: list | None = None, eval_every: int | None = None, progress: bool = True,
          desc: str = "train") -> dict:
    """Train ``model`` for ``steps`` optimizer steps on batches drawn from ``data``.

    ``data`` is an iterable of batches (e.g. ``effsmall.data.batches(...)``), ``loss_fn(model,
    batch)`` a scalar loss. With ``val_data`` (a list of batches) the validation loss is measured
    before training, every ``eval_every`` steps and at the end.

    Returns the history ``{"loss": [train loss per step], "val_step": [...], "val_loss": [...]}``.
    Deterministic: the same seed, initial weights and data give the same history on one machine.
    """
    from tqdm import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    warmup = max(1, steps // 10) if warmup is None else warmup
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    hist = {"loss": [], "val_step": [], "val_loss": []}

    def _eval(step):
        if val_data is not None:
            hist["val_step"].append(step)
            hist["val_loss"].append(evaluate(model, val_data, loss_fn))

    _eval(0)
    it = iter(data)
    model.train()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = loss_fn(model, next(it))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        hist["loss"].append(float(loss.detach()))
        bar.set_postfix(loss=f"{hist['loss'][-1]:.3f}", refresh=False)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            _eval(step + 1)
    _eval(steps)
    model.eval()
    return hist


def train_cached(model: nn.Module, key: str, data: Iterable, steps: int, **train_kw) -> dict:
    """:func:`train`, but the trained weights and history are cached under
    ``effsmall.data.cache_dir() / f"{key}.pt"`` and loaded on the next call (chapters use this so
    re-running a notebook does not retrain). Pick a ``key`` that names the config and steps."""
    from effsmall.data.tokenizer import cache_dir

    path = cache_dir() / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=True, map_location="cpu")
        model.load_state_dict(saved["state"])
        model.eval()
        return {k: list(v) for k, v in saved["history"].items()}
    hist = train(model, data, steps, **train_kw)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": model.state_dict(), "history": hist}, tmp)
    tmp.replace(path)
    return hist
