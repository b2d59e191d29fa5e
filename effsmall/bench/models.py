"""Benchmark suite ``models`` (chapters 12–13): small LMs trained and compared on one budget.

``python -m effsmall.bench models --device cpu`` (≈10–15 min on a 2-core CPU) measures:

- ``lm``: validation loss curves of Transformer, Mamba-2 and hybrid LMs (same corpus, tokens,
  steps and optimizer);
- ``mqar``: MQAR accuracy of Mamba-2 at several state sizes N vs attention;
- ``order``: the long-range-order classification task, Transformer vs Mamba-2, several seeds;
- ``decode``: time per decoded token and cache bytes as the context grows;
- ``distill``: the best LM distilled into a ≈¼-size student vs the student trained alone;
- ``quant``: fp32 / int8 / int4 (several group sizes) validation loss, perplexity, logit error
  and bytes of the best LM.

Every row has an ``experiment`` key; ``summarize`` collects the tables the chapters print.
Attention runs through torch SDPA on CPU and the Triton FlashAttention kernel on CUDA; SSD
through ``ssd_chunked`` on CPU and ``ssd_triton`` on CUDA (``effsmall.models.layers``).
"""
from __future__ import annotations

import copy
import math
import statistics

import torch

from effsmall.measure import benchmark
from effsmall.compress import distill, model_bytes, quantize_model
from effsmall.compress.quant import QuantLinear
from effsmall.data import MQARConfig, OrderTaskConfig, batches, eval_batches, mqar, order_task, token_splits
from effsmall.models import LMConfig, SequenceClassifier, build_model, cache_bytes, evaluate, train
from effsmall.models.layers import attention_backend

ARCHS = ("transformer", "mamba2", "hybrid")
VOCAB = 2048


def lm_config(arch: str, d_model: int = 64, n_layers: int = 2, **kw) -> LMConfig:
    """The chapter-12 LM shape: 2 layers of width 64 (≈0.23M parameters, 0.13M of them the
    tied 2048×64 embedding)."""
    base = dict(vocab_size=VOCAB, d_model=d_model, n_layers=n_layers, arch=arch, n_heads=4, d_state=16,
                headdim=16, chunk_size=32, attn_every=2)
    base.update(kw)
    return LMConfig(**base)


def _lm_data(seq_len: int, batch: int, device: str, n_val: int):
    tr, va, _ = token_splits(VOCAB)
    val = list(eval_batches(va, 8, seq_len, max_batches=n_val, device=device))
    return tr, val


def bench_lm(device, steps, seq_len=64, batch=8, eval_every=50, n_val=8):
    tr, val = _lm_data(seq_len, batch, device, n_val)
    rows, models = [], {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = build_model(lm_config(arch)).to(device)
        h = train(model, batches(tr, batch, seq_len, seed=0, device=device), steps, lr=3e-3, val_data=val,
                  eval_every=eval_every, desc=f"lm {arch}")
        for s, v in zip(h["val_step"], h["val_loss"]):
            window = h["loss"][max(0, s - eval_every):s] or h["loss"][:1]
            rows.append({"experiment": "lm", "arch": arch, "params": model.num_params(), "step": s,
                         "tokens": s * batch * seq_len, "train_loss": sum(window) / len(window), "val_loss": v})
        models[arch] = model
    return rows, models, (tr, val)


def _mqar_loss(model, batch):
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)


def _mqar_data(cfg, batch, device, seed):
    s = seed
    while True:
        x, y = mqar(batch, cfg, seed=s)
        s += 1
        yield x.to(device), y.to(device)


@torch.no_grad()
def _mqar_acc(model, x, y):
    pred = model(x).argmax(-1)
    mask = y != -100
    return float((pred[mask] == y[mask]).float().mean())


def bench_mqar(device, steps, pairs=(4,), d_states=(1, 4, 16), seq_len=32, batch=32, d_model=64):
    rows = []
    for P in pairs:
        cfg = MQARConfig(num_keys=16, num_values=16, num_pairs=P, seq_len=seq_len)
        xt, yt = mqar(512, cfg, seed=10_000_000)
        xt, yt = xt.to(device), yt.to(device)
        variants = [("transformer", None)] + [("mamba2", n) for n in d_states]
        for arch, N in variants:
            torch.manual_seed(0)
            lc = LMConfig(vocab_size=cfg.vocab_size, d_model=d_model, n_layers=2, arch=arch, n_heads=4,
                          d_state=N or 16, headdim=16, chunk_size=32, d_ff=0)
            model = build_model(lc).to(device)
            train(model, _mqar_data(cfg, batch, device, seed=1), steps, lr=3e-3, loss_fn=_mqar_loss,
                  desc=f"mqar P={P} {arch} N={N}")
            model.eval()
            di = lc.expand * lc.d_model
            state = 2 * seq_len * d_model if arch == "transformer" else di * N   # numbers per layer
            rows.append({"experiment": "mqar", "arch": arch, "d_state": N, "num_pairs": P, "seq_len": seq_len,
                         "state_numbers_per_layer": state, "accuracy": _mqar_acc(model, xt, yt)})
    return rows


def bench_order(device, steps, seeds=(0, 1, 2), batch=32, d_model=32):
    cfg = OrderTaskConfig(vocab_size=16, min_len=32, max_len=64)
    xv, lv, yv = (t.to(device) for t in order_task(1024, cfg, seed=999_999))   # validation split
    rows = []
    for arch in ("transformer", "mamba2"):
        for seed in seeds:
            torch.manual_seed(seed)
            body = build_model(LMConfig(vocab_size=16, d_model=d_model, n_layers=2, arch=arch, n_heads=2,
                                        d_state=16, headdim=16, chunk_size=32, d_ff=0))
            clf = SequenceClassifier(body, 2, pooling="last").to(device)

            def data(s=seed):
                k = 0
                while True:
                    yield tuple(t.to(device) for t in order_task(batch, cfg, seed=1000 * s + k))
                    k += 1

            train(clf, data(), steps, lr=3e-3, loss_fn=SequenceClassifier.loss, seed=seed, desc=f"order {arch} {seed}")
            rows.append({"experiment": "order", "arch": arch, "seed": seed, "val_accuracy": clf.accuracy(xv, lv, yv)})
    return rows


@torch.no_grad()
def bench_decode(device, contexts=(64, 256, 1024, 4096)):
    rows = []
    for arch in ("transformer", "mamba2", "hybrid"):
        torch.manual_seed(0)
        model = build_model(lm_config(arch)).to(device).eval()
        for ctx in contexts:
            idx = torch.randint(0, VOCAB, (1, ctx), device=device)
            _, caches = model.prefill(idx)
            tok = torch.zeros(1, dtype=torch.long, device=device)
            sec = benchmark(lambda: model.step(tok, caches), device=device, min_run_time=0.3)
            rows.append({"experiment": "decode", "arch": arch, "context": ctx, "ms_per_token": sec * 1e3,
                         "cache_bytes": cache_bytes(caches), "weight_bytes": model_bytes(model)})
    return rows


def _student_config(teacher_cfg: LMConfig, teacher_params: int) -> LMConfig:
    """The width (1 layer, same arch family) whose parameter count is closest to ¼ of the teacher's."""
    best = None
    for d in range(8, teacher_cfg.d_model + 1, 8):
        arch = teacher_cfg.arch if teacher_cfg.arch != "hybrid" else "transformer"
        try:
            cfg = lm_config(arch, d_model=d, n_layers=1, n_heads=2, headdim=8, d_state=8)
        except ValueError:
            continue
        n = build_model(cfg).num_params()
        if best is None or abs(n - teacher_params / 4) < abs(best[1] - teacher_params / 4):
            best = (cfg, n)
    return best[0]


def bench_distill(device, steps, models, data, seq_len=64, batch=8):
    tr, val = data
    best_arch = min(models, key=lambda a: evaluate(models[a], val))
    teacher = models[best_arch]
    s_cfg = _student_config(teacher.cfg, teacher.num_params())
    rows = [{"experiment": "distill", "role": "teacher", "arch": best_arch, "params": teacher.num_params(),
             "val_loss": evaluate(teacher, val)}]
    for mode in ("alone", "distilled"):
        torch.manual_seed(0)
        student = build_model(s_cfg).to(device)
        data_it = batches(tr, batch, seq_len, seed=0, device=device)
        if mode == "alone":
            h = train(student, data_it, steps, lr=3e-3, val_data=val, desc="student alone")
        else:
            h = distill(student, teacher, data_it, steps, temperature=2.0, alpha=0.5, lr=3e-3, val_data=val)
        rows.append({"experiment": "distill", "role": f"student {mode}", "arch": s_cfg.arch,
                     "d_model": s_cfg.d_model, "n_layers": s_cfg.n_layers, "params": student.num_params(),
                     "val_loss": h["val_loss"][-1]})
    return rows, teacher


@torch.no_grad()
def bench_quant(device, teacher, val):
    x = torch.cat([b[0] for b in val])
    ref = teacher(x)
    rows = []

    def linear_bytes(m):
        return sum(model_bytes(mod) for mod in m.modules()
                   if isinstance(mod, (torch.nn.Linear, QuantLinear)) and "lm_head" not in str(mod))

    for name, bits, g in [("fp32", None, None), ("int8 per-channel", 8, None), ("int4 g=64", 4, 64), ("int4 g=32", 4, 32), ("int4 g=16", 4, 16)]:
        m = copy.deepcopy(teacher)
        lin_before = sum(p.numel() * 4 for n, p in m.named_parameters() if n.endswith("weight") and p.dim() == 2
                         and "embed" not in n)
        if bits is not None:
            quantize_model(m, bits=bits, group_size=g or 64)
        out = m(x)
        loss = evaluate(m, val)
        qbytes = sum(mod.qweight().nbytes() for mod in m.modules() if isinstance(mod, QuantLinear))
        rows.append({"experiment": "quant", "format": name, "val_loss": loss, "perplexity": math.exp(loss),
                     "rel_logit_error": float((out - ref).norm() / ref.norm()),
                     "linear_weight_bytes": qbytes if bits is not None else lin_before,
                     "model_bytes": model_bytes(m)})
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    s = (lambda n: max(2, n // 50)) if quick else (lambda n: n)
    # Step counts sized for a shared 2-core CPU (≈15 minutes); raise them on a GPU. One torch
    # thread: on a CPU shared with other jobs, two threads per process oversubscribe the cores
    # and made each step ≈5× slower in our runs.
    if not str(device).startswith("cuda"):
        torch.set_num_threads(1)
    rows, models, data = bench_lm(device, s(500), eval_every=s(50))
    rows += bench_mqar(device, s(600))
    rows += bench_order(device, s(150))
    rows += bench_decode(device, (16, 64) if quick else (64, 256, 1024, 4096, 16384))
    d_rows, teacher = bench_distill(device, s(500), models, data)
    rows += d_rows + bench_quant(device, teacher, data[1])
    for r in rows:
        r["attention_backend"] = attention_backend(device)
    return rows


def summarize(rows: list[dict]) -> dict:
    out = {}
    final = {}
    for r in rows:
        if r["experiment"] == "lm":
            final[r["arch"]] = {"params": r["params"], "val_loss": round(r["val_loss"], 3), "tokens": r["tokens"]}
    out["lm_final"] = final
    out["mqar"] = {f"P={r['num_pairs']} {r['arch']}" + (f" N={r['d_state']}" if r["d_state"] else ""):
                   round(r["accuracy"], 3) for r in rows if r["experiment"] == "mqar"}
    order = {}
    for arch in ("transformer", "mamba2"):
        accs = [r["val_accuracy"] for r in rows if r["experiment"] == "order" and r["arch"] == arch]
        if accs:
            order[arch] = {"mean": round(statistics.mean(accs), 3),
                           "std": round(statistics.stdev(accs), 3) if len(accs) > 1 else 0.0, "n_seeds": len(accs)}
    out["order"] = order
    out["decode"] = {f"{r['arch']} ctx={r['context']}": {"ms": round(r["ms_per_token"], 3), "cache_KiB":
                     round(r["cache_bytes"] / 1024, 1)} for r in rows if r["experiment"] == "decode"}
    out["distill"] = {r["role"]: {"params": r["params"], "val_loss": round(r["val_loss"], 3)}
                      for r in rows if r["experiment"] == "distill"}
    out["quant"] = {r["format"]: {"val_loss": round(r["val_loss"], 4), "rel_logit_error": round(r["rel_logit_error"], 4),
                                  "linear_KiB": round(r["linear_weight_bytes"] / 1024, 1)}
                    for r in rows if r["experiment"] == "quant"}
    return out
