"""The book's trained models: one script trains them on a GPU, the package ships their weights.

Chapters 12 and 14 need models that were trained long enough to mean something — MQAR run to
convergence over several seeds, language models whose samples read like the corpus, a ReLU
model whose sparsity was *learned* — and that is minutes of GPU time, not seconds of a CI CPU.
This module is that training, in one command with a wall-clock budget::

    python -m effsmall.models.book --device cuda --out DIR            # ≈ 4 minutes on one GPU
    python -m effsmall.models.book --device cpu --quick --out DIR     # the same code, tiny, seconds
    python -m effsmall.models.book --device cuda --parallel --no-weights --out DIR
        # every MQAR model and every LM its own process on the one GPU, each with the whole budget:
        # small models leave a GPU mostly idle, so this trains them all to their step limits (results only)

Three experiments, each given a share of the budget (what finished is saved; every record says
how many steps it ran and why it stopped):

1. **MQAR** — Mamba-2 at several state sizes N and a Transformer, :data:`MQAR_SEEDS` seeds each,
   trained on fresh examples until the held-out accuracy reaches :data:`MQAR_TARGET` (converged)
   or the step/time budget ends.
2. **Language models** — :class:`~effsmall.models.lm.TransformerLM`, ``Mamba2LM`` and ``HybridLM``
   of one shape (:data:`LM_SHAPE`) on the book's corpus; validation curve, the best checkpoint
   (lowest validation loss), and samples.
3. **The sparse ReLU model of chapter 14** (:data:`RELU_CONFIG`): a plain ReLU FFN (no shift),
   so at initialisation about half of the neurons fire; an L1 penalty on the activations makes
   the FFN sparse *during training*. Sparsity is recorded before and after.

Outputs in ``DIR`` (at most four files): ``trained-<device>-<date>.json`` (curves, tables,
samples; goes to ``effsmall/results/``) and, unless ``--no-weights``, ``book_lms.safetensors``,
``book_relu_lm.safetensors`` and ``book_tokenizer.json`` (bf16/fp16 weights and the tokenizer
they were trained with; they go to ``effsmall/weights/``). :func:`load_lm`, :func:`load_relu_lm`
and :func:`book_tokenizer` load the shipped files on any device.

Training runs PyTorch's SDPA and the chunked SSD in torch (``kernels="torch"``): the same
mathematics as the book's Triton kernels (the tests prove them equal), with no kernel
compilation inside the time budget.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from effsmall.data.tasks import IGNORE, MQARConfig, mqar
from effsmall.models.config import LMConfig
from effsmall.models.lm import build_model
from effsmall.offload.relu_lm import ReluLM, ReluLMConfig

ARCHS = ("transformer", "mamba2", "hybrid")
VOCAB = 2048

# ---------------------------------------------------------------------------- configurations
#: The three language models: 4 layers of width 128 (≈ 1.1 M parameters each, 2.3 MB in bf16).
LM_SHAPE = dict(vocab_size=VOCAB, d_model=128, n_layers=4, n_heads=4, d_state=32, headdim=32,
                chunk_size=64, attn_every=2)
LM_TRAIN = dict(steps=3000, batch=32, seq_len=256, lr=3e-3, eval_every=50, n_val=16)

#: MQAR: 8 key-value pairs among 64 keys, 2-layer mixer-only models of width 64 (Zoology's set-up).
MQAR_TASK = MQARConfig(num_keys=64, num_values=64, num_pairs=8, seq_len=64)
MQAR_STATES = (1, 4, 16, 64)
MQAR_SEEDS = (0, 1, 2)
MQAR_TARGET = 0.99
MQAR_TRAIN = dict(steps=3000, batch=128, lr=3e-3, eval_every=100, n_test=1024, d_model=64)

#: Chapter 14's model: a plain ReLU FFN (shift 0), sparse because of the L1 penalty, not the init.
RELU_CONFIG = ReluLMConfig(vocab_size=VOCAB, d_model=128, n_layers=4, n_heads=4, d_ff=2048, max_len=256,
                           shift=0.0, l1=0.1, steps=4000, batch_size=32, seq_len=256, lr=3e-3)

#: The same recipe at CPU size, for a machine without the shipped weights (≈ 1 minute on a laptop).
CPU_RELU_CONFIG = replace(RELU_CONFIG, d_model=64, n_layers=2, n_heads=2, d_ff=4096, max_len=128, steps=300,
                          batch_size=8, seq_len=64)

PROMPTS = ('Return "True" if the object', "The exception is propagated to the", "The import statement")



def is_text(s: str, min_chars: int = 20) -> bool:
    """Whether a continuation reads as words: at least ``min_chars`` characters, at least 60% of
    them letters or spaces, and three different words (a loop of newlines or one repeated
    token is not text)."""
    import re

    words = set(re.findall(r"[A-Za-z]{2,}", s))
    return len(s) >= min_chars and sum(c.isalpha() or c == " " for c in s) >= 0.6 * len(s) and len(words) >= 3


WEIGHTS_PACKAGE = "effsmall.weights"
LM_FILE, RELU_FILE, TOKENIZER_FILE = "book_lms.safetensors", "book_relu_lm.safetensors", "book_tokenizer.json"


def lm_config(arch: str) -> LMConfig:
    """The shape of the shipped language model ``arch``."""
    return LMConfig(arch=arch, **LM_SHAPE)


def mqar_config(arch: str, d_state: int | None, d_model: int = 64, task: MQARConfig = MQAR_TASK) -> LMConfig:
    """A 2-layer, mixer-only model for MQAR (``d_state`` is Mamba-2's N; ignored for attention).

    The output matrix is not tied to the embedding: see :func:`mqar_model`."""
    return LMConfig(vocab_size=task.vocab_size, d_model=d_model, n_layers=2, arch=arch, n_heads=4,
                    d_state=d_state or 16, headdim=16, chunk_size=32, d_ff=0, tie_embeddings=False)


def mqar_model(cfg: LMConfig) -> torch.nn.Module:
    """The MQAR model of ``cfg``, its token embedding at unit scale (``N(0, 1)``, PyTorch's default).

    The language models start their (tied) embedding at std 0.02; in a 2-layer model without MLPs
    that leaves the token's identity a small part of the residual stream next to the first
    mixer's output, and the second layer cannot match a query's key against the stored keys:
    training stalls at the accuracy of shortcuts (guessing among the values in the context).
    At unit scale the key survives the first layer, and attention learns recall in a few hundred steps.
    """
    model = build_model(cfg)
    torch.nn.init.normal_(model.embed.weight, std=1.0)
    return model


# ---------------------------------------------------------------------------- kernels
@contextlib.contextmanager
def torch_kernels():
    """Run the models with torch SDPA and the chunked SSD in torch on every device."""
    from unittest import mock

    from effsmall.ssm.ssd_chunkwise import ssd_chunked

    with mock.patch("effsmall.models.layers.attention_backend", lambda device: "sdpa"), \
            mock.patch("effsmall.ssm.mamba2_block._ssd_fn", lambda *a, **k: ssd_chunked):
        yield


# ---------------------------------------------------------------------------- one training loop
def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))   # cosine to lr/10


def fit(model, loss_fn, next_batch, max_steps: int, lr: float, slot_s: float, *, warmup: int = 30,
        weight_decay: float = 0.1, eval_fn=None, eval_every: int = 100, stop_fn=None, probe: int = 10,
        keep_best: bool = False) -> dict:
    """AdamW with warm-up and cosine decay, fitted to a time slot.

    After three warm-up steps and ``probe`` more the loop measures its step time and plans
    ``min(max_steps, what fits in slot_s)`` steps, so the cosine schedule ends when the slot does; it also stops when the slot
    is spent. ``eval_fn()`` (a float, lower is better unless ``stop_fn`` says otherwise) runs every
    ``eval_every`` steps and at the end; ``stop_fn(value)`` True stops early (converged).
    ``keep_best`` restores the weights of the lowest ``eval_fn`` value at the end.

    Returns ``{"loss": [...], "eval_step": [...], "eval": [...], "steps": n, "planned": n,
    "stopped": "steps" | "converged" | "time", "seconds": s, "best_step": step | None}``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    hist = {"loss": [], "eval_step": [], "eval": [], "steps": 0, "planned": max_steps, "stopped": "steps",
            "best_step": None}
    best, best_state = float("inf"), None
    t0 = time.perf_counter()
    planned = max_steps

    def _eval(step):
        nonlocal best, best_state
        model.eval()
        v = float(eval_fn())
        model.train()
        hist["eval_step"].append(step)
        hist["eval"].append(v)
        if keep_best and v < best:
            best, best_state = v, copy.deepcopy(model.state_dict())
            hist["best_step"] = step
        return v

    model.train()
    step = 0
    while step < planned:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, planned, lr, warmup)
        loss = loss_fn(model, next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["loss"].append(float(loss.detach()))                    # synchronises: honest timing
        step += 1
        if step == 3:                                                # the first steps pay for warm-up
            t_probe = time.perf_counter()
        if step == 3 + probe and planned > step:
            now = time.perf_counter()
            rate = (now - t_probe) / probe                           # seconds per step
            planned = min(max_steps, step + max(1, int(0.85 * (slot_s - (now - t0)) / rate)))
        done = step >= planned
        if eval_fn is not None and (step % eval_every == 0 or done):
            v = _eval(step)
            if stop_fn is not None and stop_fn(v):
                hist["stopped"] = "converged"
                break
        if time.perf_counter() - t0 > slot_s and not done:
            hist["stopped"] = "time"
            if eval_fn is not None and (not hist["eval_step"] or hist["eval_step"][-1] != step):
                _eval(step)
            break
    hist["steps"], hist["planned"] = step, planned
    hist["seconds"] = round(time.perf_counter() - t0, 2)
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return hist


class _Clock:
    """Shares what is left of a wall-clock budget between the experiments still to run."""

    def __init__(self, budget_s: float):
        self.deadline = time.perf_counter() + budget_s

    def left(self) -> float:
        return max(0.0, self.deadline - time.perf_counter())

    def slot(self, share: float, shares_left: float) -> float:
        return self.left() * share / shares_left


# ---------------------------------------------------------------------------- 1. MQAR
def _mqar_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)


@torch.no_grad()
def mqar_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    """Fraction of query positions whose greedy prediction is the paired value."""
    hits = total = 0
    for s in range(0, x.shape[0], batch):
        xb, yb = x[s:s + batch], y[s:s + batch]
        pred = model(xb).argmax(-1)                                       # (b, L)
        mask = yb != IGNORE
        hits += int((pred[mask] == yb[mask]).sum())
        total += int(mask.sum())
    return hits / max(1, total)


def run_mqar(device, slot_s: float, task: MQARConfig = MQAR_TASK, states=MQAR_STATES, seeds=MQAR_SEEDS,
             steps: int = MQAR_TRAIN["steps"], batch: int = MQAR_TRAIN["batch"],
             lr: float | dict = MQAR_TRAIN["lr"],
             eval_every: int = MQAR_TRAIN["eval_every"], n_test: int = MQAR_TRAIN["n_test"],
             d_model: int = MQAR_TRAIN["d_model"], attention: bool = True, log=print) -> list[dict]:
    """One row per (model, seed): final held-out accuracy, steps, why it stopped, the curve.

    Models: Mamba-2 at each state size in ``states``, and attention unless ``attention=False``.
    ``lr``: one peak learning rate, or one per architecture (``{"mamba2": ..., "transformer": ...}``).
    """
    lrs = lr if isinstance(lr, dict) else {"mamba2": lr, "transformer": lr}
    xt, yt = mqar(n_test, task, seed=10_000_000)                          # held out: other seeds
    xt, yt = xt.to(device), yt.to(device)
    variants = [("mamba2", n) for n in states] + ([("transformer", None)] if attention else [])
    runs = [(seed, arch, n) for seed in seeds for arch, n in variants]    # every size of seed 0 first
    rows, t0 = [], time.perf_counter()
    for i, (seed, arch, n) in enumerate(runs):
        left = slot_s - (time.perf_counter() - t0)
        if left <= 0.5:
            log(f"mqar: time is up after {i} of {len(runs)} runs")
            break
        torch.manual_seed(seed)
        cfg = mqar_config(arch, n, d_model, task)
        model = mqar_model(cfg).to(device)
        stream = iter(range(1_000_000 * (seed + 1), 10_000_000))          # fresh examples, per seed

        def next_batch():
            x, y = mqar(batch, task, seed=next(stream))
            return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        h = fit(model, _mqar_loss, next_batch, steps, lrs[arch], left / (len(runs) - i), warmup=50,
                eval_fn=lambda: 1.0 - mqar_accuracy(model, xt, yt), eval_every=eval_every,
                stop_fn=lambda err: err <= 1.0 - MQAR_TARGET)
        acc = 1.0 - h["eval"][-1]
        state = (2 * task.seq_len * d_model if arch == "transformer"
                 else cfg.expand * cfg.d_model * cfg.d_state)            # numbers per layer (KV at full length)
        rows.append({"arch": arch, "d_state": n, "seed": seed, "accuracy": acc, "steps": h["steps"],
                     "stopped": h["stopped"], "seconds": h["seconds"], "state_numbers_per_layer": state,
                     "params": model.num_params(), "eval_step": h["eval_step"],
                     "eval_accuracy": [round(1.0 - e, 4) for e in h["eval"]]})
        log(f"mqar seed={seed} {arch:11s} N={n}: accuracy {acc:.3f} after {h['steps']} steps ({h['stopped']}, "
            f"{h['seconds']:.1f} s)")
    return rows


def mqar_summary(rows: list[dict]) -> dict:
    """Per model: mean, min and max accuracy over seeds, and the mean steps."""
    out = {}
    for r in rows:
        key = "transformer" if r["arch"] == "transformer" else f"mamba2 N={r['d_state']}"
        out.setdefault(key, []).append(r)
    summ = {}
    for key, rs in out.items():
        accs = [r["accuracy"] for r in rs]
        summ[key] = {"mean": sum(accs) / len(accs), "min": min(accs), "max": max(accs), "n_seeds": len(rs),
                     "converged": sum(r["stopped"] == "converged" for r in rs),
                     "mean_steps": sum(r["steps"] for r in rs) / len(rs), "d_state": rs[0]["d_state"],
                     "state_numbers_per_layer": rs[0]["state_numbers_per_layer"]}
    return summ


def describe_mqar(summary: dict) -> str:
    """One sentence that says exactly what an MQAR summary shows about the state size N."""
    ns = sorted((v["d_state"], k) for k, v in summary.items() if v["d_state"] is not None)
    if len(ns) < 2:
        return "Too few state sizes finished to compare them."
    means = [summary[k]["mean"] for _, k in ns]
    ordered = all(b >= a for a, b in zip(means, means[1:]))
    # within the seeds' spread: a larger N's best seed reaches at least a smaller N's worst
    within = all(summary[k2]["max"] >= summary[k1]["min"] for (_, k1), (_, k2) in zip(ns, ns[1:]))
    names = ", ".join(f"N={n}" for n, _ in ns)
    if ordered:
        s = f"Mean accuracy rises from each state size to the next ({names})."
    elif within:
        s = (f"Mean accuracy does not rise from every state size to the next ({names}), but each larger "
             f"state's best seed reaches at least the next smaller state's worst: the inversions are within "
             f"the seeds' spread.")
    else:
        s = f"Mean accuracy is not ordered by state size ({names}), beyond the seeds' spread."
    if "transformer" in summary:
        s += f" Attention reaches {summary['transformer']['mean']:.2f} on average."
    return s


# ---------------------------------------------------------------------------- 2. language models
def _lm_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten())


def _data(device, seq_len, n_val):
    """Train ids, validation batches and the tokenizer: the shipped tokenizer where the package has
    one (so that models trained on any machine, under any Python, share its token ids), else one
    trained here on this machine's corpus."""
    from effsmall.data import eval_batches, token_splits

    if has_weights():
        tok = book_tokenizer()
        train_ids, val_ids = book_token_splits(tok)
    else:
        train_ids, val_ids, tok = token_splits(vocab_size=VOCAB)
    val = [(x.to(device), y.to(device)) for x, y in eval_batches(val_ids, 8, seq_len, max_batches=n_val)]
    return train_ids, val, tok


@torch.no_grad()
def _mean_loss(model, val, loss_fn) -> float:
    return sum(float(loss_fn(model, b)) for b in val) / len(val)


def lm_samples(model, tok, device, n_new: int = 48, temperature: float = 0.8, top_k: int = 40) -> list[dict]:
    """Greedy and sampled continuations of :data:`PROMPTS` (decoded text)."""
    out = []
    model.decode_kernels = False                        # eager decoding: no kernel compilation here
    for i, p in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(p).ids], device=device)
        greedy = model.generate(ids, n_new)[0, ids.shape[1]:].tolist()
        sampled = model.generate(ids, n_new, temperature=temperature, top_k=top_k, seed=i)[0, ids.shape[1]:].tolist()
        out.append({"prompt": p, "greedy": tok.decode(greedy), "sampled": tok.decode(sampled),
                    "greedy_is_text": is_text(tok.decode(greedy[:24]))})
    return out


def run_lms(device, slot_s: float, steps: int = LM_TRAIN["steps"], batch: int = LM_TRAIN["batch"],
            seq_len: int = LM_TRAIN["seq_len"], lr: float = LM_TRAIN["lr"], eval_every: int = LM_TRAIN["eval_every"],
            n_val: int = LM_TRAIN["n_val"], shape: dict | None = None, archs=ARCHS, log=print):
    """Train the LMs ``archs`` (default all three), each in an equal share of ``slot_s``; returns
    ``(rows, models, tokenizer)``."""
    from effsmall.data import batches

    train_ids, val, tok = _data(device, seq_len, n_val)
    rows, models, t0 = [], {}, time.perf_counter()
    for i, arch in enumerate(archs):
        left = slot_s - (time.perf_counter() - t0)
        if left <= 1.0:
            log(f"lms: time is up before {arch}")
            break
        torch.manual_seed(0)
        cfg = LMConfig(arch=arch, **(shape or LM_SHAPE))
        model = build_model(cfg).to(device)
        it = batches(train_ids, batch, seq_len, seed=0, device=device)
        h = fit(model, _lm_loss, lambda: next(it), steps, lr, left / (len(archs) - i),
                eval_fn=lambda: _mean_loss(model, val, _lm_loss), eval_every=eval_every, keep_best=True)
        samples = lm_samples(model, tok, device)
        every = max(1, len(h["loss"]) // 200)
        rows.append({"arch": arch, "params": model.num_params(), "config": asdict(cfg), "steps": h["steps"],
                     "stopped": h["stopped"], "seconds": h["seconds"], "tokens_per_step": batch * seq_len,
                     "best_step": h["best_step"], "best_val_loss": min(h["eval"]),
                     "val_step": h["eval_step"], "val_loss": h["eval"],
                     "train_step": list(range(1, len(h["loss"]) + 1, every)),
                     "train_loss": [sum(h["loss"][j:j + every]) / len(h["loss"][j:j + every])
                                    for j in range(0, len(h["loss"]), every)],
                     "samples": samples})
        models[arch] = model
        log(f"lm {arch:11s}: {h['steps']} steps ({h['stopped']}, {h['seconds']:.1f} s), best validation loss "
            f"{min(h['eval']):.3f} at step {h['best_step']}; sample: {samples[0]['sampled'][:70]!r}")
    return rows, models, tok


# ---------------------------------------------------------------------------- 3. the ReLU model
@torch.no_grad()
def relu_sparsity(model: ReluLM, val) -> list[float]:
    """Fraction of zero FFN activations per layer over validation batches."""
    zeros = None
    n = 0
    for x, _ in val:
        _, _, acts = model(x, return_acts=True)
        z = [float((a == 0).float().sum()) for a in acts]
        zeros = z if zeros is None else [u + v for u, v in zip(zeros, z)]
        n += acts[0].numel()
    return [z / n for z in zeros]


def relu_samples(model: ReluLM, tok, n_new: int = 32) -> list[dict]:
    """Greedy continuations (the decoding chapter 14's strategies must reproduce)."""
    out = []
    for p in PROMPTS:
        ids = tok.encode(p).ids
        new = model.generate(ids, n_new)[len(ids):]
        out.append({"prompt": p, "greedy": tok.decode(new), "greedy_is_text": is_text(tok.decode(new[:24]))})
    return out


def run_relu(device, slot_s: float, cfg: ReluLMConfig = RELU_CONFIG, n_val: int = 16, log=print):
    """Train the ReLU model; returns ``(row, model)`` with sparsity at init and after training."""
    from effsmall.data import batches

    train_ids, val, tok = _data(device, cfg.seq_len, n_val)
    torch.manual_seed(cfg.seed)
    model = ReluLM(cfg).to(device)
    model.eval()
    sp0 = relu_sparsity(model, val)

    def loss_fn(m, batch):
        x, y = batch
        logits, _, acts = m(x, return_acts=True)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        return ce + cfg.l1 * torch.stack([a.mean() for a in acts]).mean()

    it = batches(train_ids, cfg.batch_size, cfg.seq_len, seed=cfg.seed, device=device)
    h = fit(model, loss_fn, lambda: next(it), cfg.steps, cfg.lr, slot_s, weight_decay=0.0,
            eval_fn=lambda: _mean_loss(model, val, _lm_loss), eval_every=100, keep_best=True)
    model.round_ffn_to_fp16()
    sp1 = relu_sparsity(model, val)
    cpu = model.to("cpu").eval()
    samples = relu_samples(cpu, tok)
    row = {"config": asdict(cfg), "steps": h["steps"], "stopped": h["stopped"], "seconds": h["seconds"],
           "best_step": h["best_step"],
           "sparsity_init": sp0, "sparsity_trained": sp1, "val_step": h["eval_step"], "val_loss": h["eval"],
           "samples": samples}
    log(f"relu: {h['steps']} steps ({h['stopped']}, {h['seconds']:.1f} s), validation loss {h['eval'][-1]:.3f}, "
        f"sparsity {min(sp0):.2f}-{max(sp0):.2f} at init -> {min(sp1):.3f}-{max(sp1):.3f}; "
        f"sample: {samples[0]['greedy'][:60]!r}")
    return row, cpu


# ---------------------------------------------------------------------------- shipped weights
def _weights_dir(directory=None):
    """``directory`` (a path) if given, else the package's ``effsmall/weights``."""
    if directory is not None:
        return Path(directory)
    from importlib import resources

    return resources.files(WEIGHTS_PACKAGE)


def has_weights(directory=None) -> bool:
    """Whether the trained weights (:data:`LM_FILE`, :data:`RELU_FILE`, the tokenizer) are there."""
    d = _weights_dir(directory)
    return all(d.joinpath(f).is_file() for f in (LM_FILE, RELU_FILE, TOKENIZER_FILE))


def book_tokenizer(directory=None):
    """The tokenizer the shipped models were trained with (a ``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(_weights_dir(directory).joinpath(TOKENIZER_FILE).read_text())


def book_token_splits(tok=None, val_fraction: float = 0.1, block: int = 16384):
    """``(train_ids, val_ids)`` of this machine's corpus encoded with the shipped tokenizer.

    The shipped tokenizer may come from another Python, whose corpus differs slightly: encoding
    this machine's corpus with it keeps every token id meaning what the model learned."""
    from effsmall.data.corpus import corpus_documents
    from effsmall.data.splits import split_ids
    from effsmall.data.tokenizer import SPECIAL_TOKENS

    tok = tok or book_tokenizer()
    eot = tok.token_to_id(SPECIAL_TOKENS[0])
    ids: list[int] = []
    for enc in tok.encode_batch(list(corpus_documents())):
        ids.extend(enc.ids)
        ids.append(eot)
    return split_ids(torch.tensor(ids, dtype=torch.long), val_fraction, block)


def _load_state(name: str, prefix: str = "", directory=None) -> tuple[dict, dict]:
    from safetensors.torch import load

    raw = _weights_dir(directory).joinpath(name).read_bytes()
    state = load(raw)
    meta = json.loads(_metadata(raw).get("configs", "{}"))
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, meta


def _metadata(raw: bytes) -> dict:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]).get("__metadata__", {})


def load_lm(arch: str, dtype: torch.dtype = torch.float32, device="cpu", directory=None):
    """The shipped, GPU-trained language model ``arch`` (``"transformer"``, ``"mamba2"``, ``"hybrid"``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    state, meta = _load_state(LM_FILE, f"{arch}.", directory)
    if arch not in meta:
        raise ValueError(f"{LM_FILE} holds no {arch!r} model (it has {sorted(meta)})")
    model = build_model(LMConfig(**meta[arch]))
    if model.cfg.tie_embeddings:                     # the tied output matrix is stored once
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    return model.to(device=device, dtype=dtype).eval()


def load_relu_lm(directory=None) -> ReluLM:
    """The shipped ReLU model of chapter 14 (FFN weights fp16-exact, computed in fp32 on the CPU)."""
    state, meta = _load_state(RELU_FILE, "", directory)
    model = ReluLM(ReluLMConfig(**meta["relu"]))
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def save_weights(out: Path, models: dict, relu: ReluLM | None, tok) -> list[Path]:
    """Pack the LMs (bf16) into :data:`LM_FILE`, the ReLU model (fp16) into :data:`RELU_FILE`."""
    from safetensors.torch import save_file

    paths = []
    if models:
        state = {f"{a}.{k}": v.detach().to("cpu", torch.bfloat16).contiguous()
                 for a, m in models.items() for k, v in m.state_dict().items()
                 if not (m.cfg.tie_embeddings and k == "lm_head.weight")}
        meta = {a: asdict(m.cfg) for a, m in models.items()}
        save_file(state, str(out / LM_FILE), metadata={"configs": json.dumps(meta)})
        paths.append(out / LM_FILE)
    if relu is not None:
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in relu.state_dict().items()}
        save_file(state, str(out / RELU_FILE), metadata={"configs": json.dumps({"relu": asdict(relu.cfg)})})
        paths.append(out / RELU_FILE)
    if tok is not None:
        (out / TOKENIZER_FILE).write_text(tok.to_str())
        paths.append(out / TOKENIZER_FILE)
    return paths


# ---------------------------------------------------------------------------- the command
QUICK = dict(
    mqar=dict(task=MQARConfig(num_keys=16, num_values=16, num_pairs=4, seq_len=32), states=(2, 8), seeds=(0, 1),
              steps=6, batch=8, eval_every=3, n_test=32, d_model=32),
    lms=dict(steps=6, batch=4, seq_len=64, eval_every=3, n_val=2,
             shape=dict(LM_SHAPE, d_model=32, n_layers=2, n_heads=2, d_state=8, headdim=16, chunk_size=32)),
    relu=dict(cfg=replace(RELU_CONFIG, d_model=32, n_layers=2, n_heads=2, d_ff=256, max_len=64, steps=6,
                          batch_size=4, seq_len=64), n_val=2),
)
#: CPU-sized models and batches (a few minutes on a laptop): the losses fall and the samples improve.
#: MQAR alone (the committed CPU table: 12 minutes on one core, up to 2000 steps per run; the runs
#: that converge stop early):
#: ``OMP_NUM_THREADS=1 python -m effsmall.models.book --device cpu --medium --only mqar --no-weights --budget-s 1800``.
#: Mamba-2 learns best at a higher learning rate than attention (which diverges to shortcuts at 1e-2).
MEDIUM = dict(
    mqar=dict(task=MQARConfig(num_keys=16, num_values=16, num_pairs=4, seq_len=32), states=(1, 4, 16, 64),
              seeds=(0, 1, 2), steps=2000, batch=32, lr={"mamba2": 1e-2, "transformer": 3e-3}, eval_every=50,
              n_test=256, d_model=64),
    lms=dict(steps=200, batch=8, seq_len=64, eval_every=25, n_val=4,
             shape=dict(LM_SHAPE, d_model=64, n_layers=2, d_state=16, headdim=16, chunk_size=32)),
    relu=dict(cfg=CPU_RELU_CONFIG, n_val=4),
)
SHARES = {"mqar": 0.40, "lms": 0.40, "relu": 0.20}


def main(argv=None) -> dict:
    from effsmall.bench.results import environment, save_result

    ap = argparse.ArgumentParser(prog="python -m effsmall.models.book", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True, help="folder for the JSON, weights and tokenizer")
    ap.add_argument("--budget-s", type=float, default=210.0, help="wall-clock seconds for all training")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the same code")
    ap.add_argument("--medium", action="store_true", help="CPU-sized models: minutes on a laptop")
    ap.add_argument("--only", nargs="*", choices=tuple(SHARES), default=list(SHARES))
    ap.add_argument("--no-weights", action="store_true")
    ap.add_argument("--kernels", choices=("torch", "triton"), default="torch",
                    help="torch: SDPA + chunked SSD in torch (no compilation); triton: the book's kernels")
    ap.add_argument("--mqar-states", nargs="*", type=int, default=None,
                    help="MQAR: the Mamba-2 state sizes N to train (default: MQAR_STATES; none: attention only)")
    ap.add_argument("--no-mqar-attention", action="store_true", help="MQAR: leave out the attention model")
    ap.add_argument("--archs", nargs="*", choices=ARCHS, default=list(ARCHS), help="the language models to train")
    ap.add_argument("--parallel", action="store_true",
                    help="one process per MQAR model and per language model (and one for the ReLU model), all on "
                         "this device and each with the whole budget; their results merged (needs --no-weights)")
    args = ap.parse_args(argv)
    if args.parallel and not args.no_weights:
        ap.error("--parallel trains the models in separate processes and saves results only: add --no-weights")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.parallel:
        return _parallel(args, out)
    device = torch.device(args.device)
    precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    if device.type == "cuda":                      # TF32 matmuls for training, restored on return
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    try:
        return _train_all(args, out, device)
    finally:
        torch.set_float32_matmul_precision(precision)
        torch.backends.cudnn.allow_tf32 = cudnn_tf32


def _json_path(out: Path, env: dict) -> Path:
    """``out/trained-<device slug>-<YYYYMMDD>.json`` for a run in environment ``env``."""
    slug = "".join(c if c.isalnum() else "-" for c in env["device_name"].lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return out / f"trained-{slug}-{env['date'][:10].replace('-', '')}.json"


def _settings(args) -> dict:
    """Keyword arguments of each experiment (``run_mqar``, ``run_lms``, ``run_relu``) for the
    command line ``args``: the size preset, then the command line's choice of models."""
    q = copy.deepcopy(QUICK if args.quick else MEDIUM if args.medium else {k: {} for k in SHARES})
    if args.mqar_states is not None:
        q["mqar"]["states"] = tuple(args.mqar_states)
    if args.no_mqar_attention:
        q["mqar"]["attention"] = False
    q["lms"]["archs"] = tuple(args.archs)
    return q


def _train_all(args, out: Path, device: torch.device) -> dict:
    from effsmall.bench.results import environment, save_result

    clock = _Clock(args.budget_s)
    t_start = time.perf_counter()
    env = environment(str(device))
    result = {"suite": "trained", "env": env, "quick": args.quick, "medium": args.medium, "budget_s": args.budget_s,
              "kernels": args.kernels, "errors": {}}
    json_path = _json_path(out, env)
    q = _settings(args)
    todo = [k for k in SHARES if k in args.only]
    models, relu, tok = {}, None, None

    def save():
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        save_result(result, json_path)

    ctx = torch_kernels() if args.kernels == "torch" else contextlib.nullcontext()
    with ctx:
        for i, name in enumerate(todo):
            slot = clock.slot(SHARES[name], sum(SHARES[k] for k in todo[i:]))
            print(f"== {name}: {slot:.0f} s of {clock.left():.0f} s left", flush=True)
            try:
                if name == "mqar":
                    rows = run_mqar(device, slot, **q["mqar"])
                    train = {k: q["mqar"].get(k, v) for k, v in MQAR_TRAIN.items()}
                    result["mqar"] = {"task": asdict(q["mqar"].get("task", MQAR_TASK)), "target": MQAR_TARGET,
                                      "n_test": train["n_test"], "d_model": train["d_model"], "train": train,
                                      "slot_s": round(slot, 1),
                                      "rows": rows, "summary": mqar_summary(rows)}
                    result["mqar"]["description"] = describe_mqar(result["mqar"]["summary"])
                    print(result["mqar"]["description"], flush=True)
                elif name == "lms":
                    rows, models, tok = run_lms(device, slot, **q["lms"])
                    result["lms"] = {"rows": rows, "prompts": list(PROMPTS)}
                else:
                    row, relu = run_relu(device, slot, **q["relu"])
                    result["relu"] = row
                    if tok is None:
                        from effsmall.data import get_tokenizer
                        tok = get_tokenizer(VOCAB)
            except Exception as e:                       # keep what the other experiments produced
                import traceback

                traceback.print_exc()
                result["errors"][name] = f"{type(e).__name__}: {e}"
            save()
    if not args.no_weights:
        try:
            for p in save_weights(out, models, relu, tok):
                print(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB)")
        except Exception as e:
            result["errors"]["weights"] = f"{type(e).__name__}: {e}"
    save()
    texts = {r["arch"]: any(x["greedy_is_text"] for x in r["samples"]) for r in result.get("lms", {}).get("rows", [])}
    if "relu" in result:
        texts["relu"] = any(x["greedy_is_text"] for x in result["relu"]["samples"])
    print(f"greedy continuation is words for some prompt: {texts}")
    print(f"wrote {json_path}; {result['seconds']:.0f} s in all; errors: {result['errors'] or 'none'}")
    return result


# ---------------------------------------------------------------------------- parallel runs
def _parallel_jobs(args) -> list[list[str]]:
    """The command-line arguments of each process of a ``--parallel`` run."""
    states = _settings(args)["mqar"].get("states", MQAR_STATES)
    jobs = []
    if "mqar" in args.only:
        jobs += [["--only", "mqar", "--mqar-states", str(n), "--no-mqar-attention"] for n in states]
        if not args.no_mqar_attention:
            jobs.append(["--only", "mqar", "--mqar-states"])
    if "lms" in args.only:
        jobs += [["--only", "lms", "--archs", arch] for arch in args.archs]
    if "relu" in args.only:
        jobs.append(["--only", "relu"])
    return jobs


def merge_trained(parts: list[dict]) -> dict:
    """One ``trained`` result from the results of separate processes (``--parallel``): MQAR rows
    and language-model rows concatenated in the book's order, the MQAR summary recomputed."""
    if not parts:
        raise ValueError("merge_trained needs at least one result")
    out = {k: v for k, v in parts[0].items() if k not in ("mqar", "lms", "relu", "errors")}
    out["errors"] = {k: v for p in parts for k, v in p.get("errors", {}).items()}
    mq = [p["mqar"] for p in parts if "mqar" in p]
    if mq:
        rows = sorted((r for m in mq for r in m["rows"]),
                      key=lambda r: (r["seed"], r["arch"] == "transformer", r["d_state"] or 0))
        out["mqar"] = {**{k: v for k, v in mq[0].items() if k not in ("rows", "summary", "description")},
                       "rows": rows, "summary": mqar_summary(rows)}
        out["mqar"]["description"] = describe_mqar(out["mqar"]["summary"])
    lm_rows = [r for p in parts for r in p.get("lms", {}).get("rows", [])]
    if lm_rows:
        out["lms"] = {"rows": sorted(lm_rows, key=lambda r: ARCHS.index(r["arch"])), "prompts": list(PROMPTS)}
    relu = [p["relu"] for p in parts if "relu" in p]
    if relu:
        out["relu"] = relu[0]
    out["seconds"] = max(p.get("seconds", 0.0) for p in parts)
    return out


def _parallel(args, out: Path) -> dict:
    """``--parallel``: the experiments as separate processes on one device (small models leave a
    GPU mostly idle, and each process's Python drives its own model), then one merged JSON."""
    import subprocess
    import sys

    from effsmall.bench.results import environment, save_result

    if not has_weights() and ("lms" in args.only or "relu" in args.only):
        from effsmall.data import get_tokenizer
        get_tokenizer(VOCAB)                          # trained and cached once, before the processes start
    common = [sys.executable, "-m", "effsmall.models.book", "--device", args.device, "--budget-s",
              str(args.budget_s), "--kernels", args.kernels, "--no-weights"]
    common += ["--quick"] * args.quick + ["--medium"] * args.medium
    t0 = time.perf_counter()
    procs = []
    for i, job in enumerate(_parallel_jobs(args)):
        d = out / "parts" / str(i)
        d.mkdir(parents=True, exist_ok=True)
        log = open(d / "log.txt", "w")
        procs.append((job, d, log, subprocess.Popen([*common, "--out", str(d), *job], stdout=log,
                                                    stderr=subprocess.STDOUT)))
    print(f"{len(procs)} processes on {args.device}, {args.budget_s:.0f} s each", flush=True)
    parts, errors = [], {}
    for job, d, log, p in procs:
        rc = p.wait()
        log.close()
        found = sorted(d.glob("trained-*.json"))
        if rc != 0 or not found:
            errors[" ".join(job)] = f"exit code {rc}, see {d / 'log.txt'}"
            continue
        parts.append(json.loads(found[-1].read_text()))
    if not parts:
        raise RuntimeError(f"no process of the parallel run produced a result: {errors}")
    result = merge_trained(parts)
    result["errors"].update(errors)
    result["env"] = environment(args.device)
    result["parallel"] = {"processes": len(procs), "jobs": [" ".join(j) for j, *_ in procs]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path = _json_path(out, result["env"])
    save_result(result, path)
    if "mqar" in result:
        print(result["mqar"]["description"])
    print(f"wrote {path}; {result['seconds']:.0f} s in all; errors: {result['errors'] or 'none'}")
    return result


if __name__ == "__main__":
    main()
