"""ReluLM: a small decoder LM whose FFNs are sparse ReLU MLPs, the model LLM in a Flash offloads.

A block is pre-norm attention followed by a pre-norm FFN

    x ← x + W_o · attn(LN₁(x)),     h = LN₂(x),     a = ReLU(W_up h − τ),     x ← x + W_down a

with ``W_up ∈ R^{d_ff×d}`` (row i = neuron i's input weights) and ``W_down ∈ R^{d×d_ff}``
(column i = neuron i's output weights). Neuron i contributes ``a_i · W_down[:, i]``; when
``a_i = 0`` neither row i of ``W_up`` nor column i of ``W_down`` is needed — the sparsity that
LLM in a Flash (Alizadeh et al. 2023, §3) exploits.

Sparsity ≥ 90% comes from a *shifted ReLU* ``ReLU(z − τ)`` (Mirzadeh et al. 2023, "ReLU strikes
back", §4): with LayerNorm'd inputs and ``W_up`` initialised at std ``1/√d``, the pre-activations
``z`` are ≈ N(0, 1), so τ = 1.5 zeroes ≈ 93% of them from the first step, and a small L1
penalty on ``a`` keeps training from drifting back to dense. The shift also makes the
neurons near the threshold contribute *small* values, so a predictor that misses one of them
costs little. Attention uses ``torch.nn.functional.scaled_dot_product_attention`` (CPU SDPA),
causal for training, and a key/value cache for decoding one token at a time.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ReluLMConfig:
    vocab_size: int = 2048
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 5376
    max_len: int = 256
    shift: float = 1.5          # τ of the shifted ReLU
    l1: float = 1e-3            # weight of the mean |a| penalty
    # training
    steps: int = 40
    batch_size: int = 4
    seq_len: int = 64
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_len", "steps",
                     "batch_size", "seq_len"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if self.seq_len > self.max_len:
            raise ValueError(f"seq_len={self.seq_len} must be <= max_len={self.max_len}")

    def key(self) -> str:
        """A short hash of the config: the cache key of trained weights."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def ffn_bytes_fp16(self) -> int:
        return 2 * self.n_layers * 2 * self.d_model * self.d_ff


# The benchmark model (FFN weights 33.0 MB in fp16, 40 steps: ≈ 3 minutes on 2 idle cores) and the small
# model of the tests and the chapter (seconds).
FULL_CONFIG = ReluLMConfig()
SMALL_CONFIG = ReluLMConfig(d_model=64, n_layers=2, n_heads=2, d_ff=4096, max_len=128, steps=120,
                            batch_size=8, seq_len=64, lr=3e-3)


class Block(nn.Module):
    def __init__(self, cfg: ReluLMConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.shift = cfg.n_heads, cfg.shift
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, cfg.d_ff, bias=False)      # W_up: (d_ff, d), row i = neuron i
        self.down = nn.Linear(cfg.d_ff, d, bias=False)    # W_down: (d, d_ff), column i = neuron i
        nn.init.normal_(self.up.weight, std=d ** -0.5)
        nn.init.normal_(self.down.weight, std=0.02)

    def _heads(self, t):                                  # (B, N, d) -> (B, H, N, d/H)
        B, N, d = t.shape
        return t.view(B, N, self.n_heads, d // self.n_heads).transpose(1, 2)

    def attend(self, x, kv=None):
        """``x + attention(LN₁ x)``; with ``kv`` (a dict) appends this call's keys/values to it."""
        B, N, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)  # (B, N, d) each
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (B, H, N, dh)
        causal = True
        if kv is not None:
            if "k" in kv:
                k = torch.cat([kv["k"], k], dim=2)          # (B, H, n_past+N, dh)
                v = torch.cat([kv["v"], v], dim=2)
                causal = N > 1
                if causal:
                    raise ValueError("decoding with a cache takes one token at a time")
            kv["k"], kv["v"] = k, v
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, N, dh)
        return x + self.proj(o.transpose(1, 2).reshape(B, N, d))         # (B, N, d)

    def activations(self, h):
        """``a = ReLU(W_up h − τ)`` for FFN inputs ``h = LN₂(x)``: (..., d) -> (..., d_ff)."""
        return F.relu(self.up(h) - self.shift)


class ReluLM(nn.Module):
    def __init__(self, cfg: ReluLMConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def logits(self, x):                                   # (B, N, d) -> (B, N, vocab)
        return self.ln_f(x) @ self.tok_emb.weight.T       # tied output embedding

    def forward(self, idx, *, masks=None, return_acts=False):
        """Logits ``(B, N, vocab)`` of token ids ``idx`` ``(B, N)``.

        ``masks[l]`` (``(B, N, d_ff)`` of 0/1), if given, multiplies layer l's activations: the
        teacher-forced model that only has the predicted neurons. ``return_acts`` also returns
        per layer the FFN input ``h`` ``(B, N, d)`` and activations ``a`` ``(B, N, d_ff)``.
        """
        B, N = idx.shape
        if N > self.cfg.max_len:
            raise ValueError(f"sequence length {N} exceeds max_len={self.cfg.max_len}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(N, device=idx.device))  # (B, N, d)
        hs, acts = [], []
        for l, blk in enumerate(self.blocks):
            x = blk.attend(x)
            h = blk.ln2(x)                                 # (B, N, d)
            a = blk.activations(h)                         # (B, N, d_ff)
            if masks is not None:
                a = a * masks[l]
            if return_acts:
                hs.append(h)
                acts.append(a)
            x = x + blk.down(a)                            # (B, N, d)
        out = self.logits(x)
        return (out, hs, acts) if return_acts else out

    def non_ffn_state(self) -> dict[str, torch.Tensor]:
        """Every weight except the FFN up/down matrices (what stays in DRAM)."""
        return {k: v for k, v in self.state_dict().items() if not (k.endswith("up.weight") or k.endswith("down.weight"))}

    def ffn_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_up (d_ff, d), W_down (d, d_ff))`` of one layer."""
        blk = self.blocks[layer]
        return blk.up.weight.data, blk.down.weight.data

    @torch.no_grad()
    def round_ffn_to_fp16(self):
        """Round FFN weights to fp16 values (kept in fp32): the in-memory twin of the flash copy."""
        for blk in self.blocks:
            blk.up.weight.copy_(blk.up.weight.half().float())
            blk.down.weight.copy_(blk.down.weight.half().float())
        return self

    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding with a KV cache, all weights in memory: the reference."""
        caches = [dict() for _ in self.blocks]
        out, tok = list(prompt), None
        for pos, t in enumerate(prompt[:-1]):
            decode_step(self, t, pos, caches, ffn=None)
        tok, pos = prompt[-1], len(prompt) - 1
        for _ in range(max_new_tokens):
            logits = decode_step(self, tok, pos, caches, ffn=None)
            tok, pos = int(logits.argmax()), pos + 1
            out.append(tok)
        return out


def decode_step(model: ReluLM, token: int, pos: int, caches: list[dict], ffn=None) -> torch.Tensor:
    """One decoding step: logits ``(vocab,)`` of the next token after ``token`` at position ``pos``.

    ``ffn(layer, h)`` (``h`` of shape ``(d,)``) returns the FFN output ``(d,)``; None uses the
    in-memory weights. This is the hook the offloaded model plugs its flash reads into.
    """
    if pos >= model.cfg.max_len:
        raise ValueError(f"position {pos} exceeds max_len={model.cfg.max_len}")
    x = model.tok_emb.weight[token] + model.pos_emb.weight[pos]  # (d,)
    x = x.view(1, 1, -1)                                         # (1, 1, d)
    for l, blk in enumerate(model.blocks):
        x = blk.attend(x, caches[l])
        h = blk.ln2(x).view(-1)                                  # (d,)
        y = blk.down(blk.activations(h)) if ffn is None else ffn(l, h)  # (d,)
        x = x + y.view(1, 1, -1)
    return model.logits(x).view(-1)                              # (vocab,)


def train_relu_lm(cfg: ReluLMConfig = FULL_CONFIG, *, progress: bool = True) -> tuple[ReluLM, list[float]]:
    """Train a ReluLM on the offline corpus (``effsmall.data``): one call, a tqdm bar, seeded.

    Loss = cross-entropy + ``cfg.l1`` · mean |a| over every FFN activation. Returns the model
    (FFN weights rounded to fp16, eval mode) and the loss curve.
    """
    from tqdm.auto import tqdm

    from effsmall.data import batches, token_splits

    torch.manual_seed(cfg.seed)
    train_ids, _, _ = token_splits(vocab_size=cfg.vocab_size)
    model = ReluLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    it = batches(train_ids, cfg.batch_size, cfg.seq_len, seed=cfg.seed)
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"ReluLM {cfg.key()}", disable=not progress)
    for _ in bar:
        x, y = next(it)                                                # (B, N) each
        logits, _, acts = model(x, return_acts=True)
        ce = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1))
        l1 = torch.stack([a.mean() for a in acts]).mean()
        loss = ce + cfg.l1 * l1
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(ce.item())
        bar.set_postfix(ce=f"{ce.item():.3f}")
    return model.eval().round_ffn_to_fp16(), losses


def load_or_train(cfg: ReluLMConfig = FULL_CONFIG, *, progress: bool = True) -> ReluLM:
    """The trained model, from ``<cache>/relu_lm-<config hash>.safetensors`` or trained once."""
    from safetensors.torch import load_file, save_file

    from effsmall.data import cache_dir

    path = cache_dir() / f"relu_lm-{cfg.key()}.safetensors"
    model = ReluLM(cfg)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    model, losses = train_relu_lm(cfg, progress=progress)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"config": json.dumps(asdict(cfg)), "final_ce": f"{losses[-1]:.4f}"})
    tmp.replace(path)
    return model


@torch.no_grad()
def activation_sparsity(model: ReluLM, idx: torch.Tensor) -> list[float]:
    """Fraction of exactly-zero FFN activations per layer on token ids ``idx`` ``(B, N)``."""
    _, _, acts = model(idx, return_acts=True)
    return [float((a == 0).float().mean()) for a in acts]
