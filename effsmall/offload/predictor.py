"""LowRankPredictor: which FFN neurons will fire, predicted from the FFN input (LLM in a Flash §3.1).

For layer l, ``p = σ(B (A h) + c)`` with ``A ∈ R^{r×d}``, ``B ∈ R^{d_ff×r}``: a rank-r
classifier of "neuron i is active" (``a_i > 0``) from the FFN input ``h = LN₂(x)`` (the
attention output after the norm). It costs ``r (d + d_ff)`` multiply-adds per token instead of
``d · d_ff`` for the true up-projection, and it is trained with binary cross-entropy on
activations recorded from the model. The decision threshold is chosen per layer for high
*recall* (few active neurons missed): a false positive costs a read, a false negative costs
accuracy.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LowRankPredictor(nn.Module):
    def __init__(self, d_model: int, d_ff: int, rank: int = 32):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank!r}")
        self.A = nn.Linear(d_model, rank, bias=False)     # (r, d)
        self.B = nn.Linear(rank, d_ff)                    # (d_ff, r) and c (d_ff,)
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, h):                                 # (..., d) -> (..., d_ff) logits
        return self.B(self.A(h))

    @torch.no_grad()
    def predict(self, h):                                 # (..., d) -> (..., d_ff) bool
        # forward() without the module-call overhead (it runs once per layer per decoded token)
        return torch.sigmoid(F.linear(F.linear(h, self.A.weight), self.B.weight, self.B.bias)) >= self.threshold

    def nbytes(self, bytes_per_param: int = 2) -> int:
        return bytes_per_param * sum(p.numel() for p in self.parameters())


@torch.no_grad()
def record_activations(model, ids: torch.Tensor, n_windows: int = 48, seq_len: int = 64, seed: int = 0):
    """Per layer ``(h (T, d), active (T, d_ff) bool)`` from random windows of token ids ``ids``."""
    from effsmall.data import batches

    x, _ = next(batches(ids, n_windows, seq_len, seed=seed))           # (n_windows, seq_len)
    _, hs, acts = model(x, return_acts=True)
    return [(h.reshape(-1, h.shape[-1]), a.reshape(-1, a.shape[-1]) > 0) for h, a in zip(hs, acts)]


def quality(pred: torch.Tensor, true: torch.Tensor) -> dict:
    """Recall (active neurons predicted), precision, and predicted fraction of neurons."""
    tp = (pred & true).sum().item()
    return {"recall": tp / max(1, true.sum().item()), "precision": tp / max(1, pred.sum().item()),
            "predicted_fraction": pred.float().mean().item(), "active_fraction": true.float().mean().item()}


def train_predictor(h: torch.Tensor, active: torch.Tensor, rank: int = 32, steps: int = 150, batch: int = 512,
                    lr: float = 1e-2, recall: float = 0.99, seed: int = 0) -> LowRankPredictor:
    """Fit a predictor on ``h (T, d)`` → ``active (T, d_ff)``; last 20% of rows calibrate the threshold.

    The threshold is the largest probability at which recall on the held-out rows is ≥ ``recall``.
    """
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall!r}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    T = h.shape[0]
    perm = torch.randperm(T, generator=g)
    n_fit = int(0.8 * T)
    fit, cal = perm[:n_fit], perm[n_fit:]
    p = LowRankPredictor(h.shape[1], active.shape[1], rank)
    opt = torch.optim.Adam(p.parameters(), lr=lr)
    y = active.float()
    for _ in range(steps):
        idx = fit[torch.randint(0, n_fit, (batch,), generator=g)]
        loss = F.binary_cross_entropy_with_logits(p(h[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        prob = torch.sigmoid(p(h[cal]))[active[cal]]                   # probabilities of truly active
        t = torch.quantile(prob.float(), 1 - recall) if prob.numel() else torch.tensor(0.5)
        p.threshold.fill_(float(t))
    return p.eval()


def train_predictors(model, ids: torch.Tensor, rank: int = 32, recall: float = 0.99, **kw) -> list[LowRankPredictor]:
    """One predictor per layer, trained on activations recorded on ``ids`` (training text)."""
    return [train_predictor(h, a, rank=rank, recall=recall, seed=l, **kw)
            for l, (h, a) in enumerate(record_activations(model, ids))]


def load_or_train_predictors(model, rank: int = 32, recall: float = 0.99,
                             ids: torch.Tensor | None = None) -> list[LowRankPredictor]:
    """Predictors cached under the cache dir, keyed by model config and (rank, recall).

    ``ids``: the training text's token ids (default: the corpus with this machine's tokenizer);
    when given, the cache key also names a hash of the weights and of ``ids``.
    """
    import hashlib

    from safetensors.torch import load_file, save_file

    from effsmall.data import cache_dir, token_splits

    cfg = model.cfg
    tag = ""
    if ids is not None:
        digest = hashlib.sha256(ids.numpy().tobytes())
        for v in model.state_dict().values():
            digest.update(v.detach().float().numpy().tobytes())
        tag = "-" + digest.hexdigest()[:12]
    path = cache_dir() / f"relu_lm-{cfg.key()}{tag}-pred-r{rank}-{recall}.safetensors"
    preds = [LowRankPredictor(cfg.d_model, cfg.d_ff, rank) for _ in range(cfg.n_layers)]
    if path.exists():
        sd = load_file(str(path))
        for l, p in enumerate(preds):
            p.load_state_dict({k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(f"{l}.")})
        return [p.eval() for p in preds]
    train_ids = token_splits(vocab_size=cfg.vocab_size)[0] if ids is None else ids
    preds = train_predictors(model, train_ids, rank=rank, recall=recall)
    save_file({f"{l}.{k}": v.contiguous() for l, p in enumerate(preds) for k, v in p.state_dict().items()}, str(path))
    return preds


@torch.no_grad()
def predicted_per_token(model, predictors, ids: torch.Tensor, n_windows: int = 8, seq_len: int = 64,
                        seed: int = 0) -> list[float]:
    """Mean number of neurons each layer's predictor selects per token on text ``ids``.

    :class:`~effsmall.offload.offloaded_lm.OffloadedLM` shares the neuron caches' budget in
    these proportions (a layer that needs more neurons per token gets more rows).
    """
    recs = record_activations(model, ids, n_windows=n_windows, seq_len=min(seq_len, model.cfg.max_len), seed=seed)
    return [max(1.0, p.predict(h).sum(-1).float().mean().item()) for (h, _), p in zip(recs, predictors)]


@torch.no_grad()
def teacher_forced_agreement(model, predictors, ids: torch.Tensor, seq_len: int = 64, max_windows: int = 16) -> dict:
    """Held-out text, teacher-forced: next-token agreement and perplexity with only predicted neurons.

    The predicted model multiplies each layer's activations by its predictor's mask (neurons
    outside the predicted set contribute nothing) — the worst case of the offloaded model,
    which with a window computes on a superset.
    """
    from effsmall.data import eval_batches

    agree = n = 0
    nll_ref = nll_pred = 0.0
    for x, y in eval_batches(ids, max_windows, seq_len, max_batches=1):
        ref = model(x)                                                   # (B, N, vocab)
        pred = _predicted_forward(model, predictors, x)
        agree += (ref.argmax(-1) == pred.argmax(-1)).sum().item()
        n += y.numel()
        nll_ref += F.cross_entropy(ref.reshape(-1, ref.shape[-1]), y.reshape(-1), reduction="sum").item()
        nll_pred += F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1), reduction="sum").item()
    import math
    return {"agreement": agree / n, "ppl_ref": math.exp(nll_ref / n), "ppl_pred": math.exp(nll_pred / n),
            "tokens": n}


def _predicted_forward(model, predictors, x):
    B, N = x.shape
    h = model.tok_emb(x) + model.pos_emb(torch.arange(N))               # (B, N, d)
    for blk, p in zip(model.blocks, predictors):
        h = blk.attend(h)
        z = blk.ln2(h)                                                   # (B, N, d)
        a = blk.activations(z) * p.predict(z)                            # (B, N, d_ff)
        h = h + blk.down(a)
    return model.logits(h)
