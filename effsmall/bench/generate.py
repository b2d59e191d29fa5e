"""Suite ``generate``: the three LMs' per-token decode latency next to their memory floor.

CUDA (``python -m effsmall.bench generate --device cuda``): d_model 1024, 12 layers, 16 query /
4 KV heads (D = 64), SwiGLU d_ff 2816, Mamba-2 d_state 128, headdim 64 (32 heads), the hybrid
with attention in every 4th layer, vocabulary 4096, bf16; batch 1 and 16, context 1K, 16K, 64K.

* The caches are a :class:`~effsmall.models.static_decode.DecodeState` **filled with random
  numbers** to the context length (no prefill is run: the step's cost depends on the cache's
  size, not its contents).
* A token is one :class:`~effsmall.models.static_decode.TokenDecoder` call: the step and greedy
  sampling, the token fed back on the device. ``eager_ms``: the step run op by op, ``graph_ms``:
  one CUDA-graph replay per token. Both are wall-clock time per token over a loop of tokens
  issued back to back (the host never waits for the GPU inside the loop, as in ``generate``),
  synchronized at its ends; each timing starts again at the context length.
* The **memory floor**: the bytes a step must move
  (:func:`~effsmall.models.static_decode.bytes_per_token`: every weight once, the attention
  layers' keys and values read, the Mamba-2 states read and written) divided by the
  device-to-device copy rate measured at the start of the run
  (:func:`effsmall.hardware.measure_ceilings`). ``graph_over_floor`` / ``eager_over_floor`` are
  latency ÷ floor; tokens/s count all rows of the batch.
* ``ops_per_token``: the PyTorch operations and Triton launches of one token
  (:func:`effsmall.measure.count_ops`; on a GPU each is a kernel launch), and on CUDA
  ``cuda_kernels_per_token``: the kernels (and device copies) the profiler sees for one eager
  token — a matrix product that cuBLAS splits along K is two.
* ``reference`` rows: ``SequenceLM.step`` at batch 1 after a real prefill of 1K tokens — the eager
  path with a growing cache, and with the paged cache + decode kernels — for comparison.

``EFFSMALL_BENCH_BUDGET_S`` (default 150 s on CUDA; about three minutes in all) bounds the shapes (what would not fit is
recorded as ``kind="skipped"``); every row is appended to ``EFFSMALL_BENCH_PARTIAL`` if set.
CPU (``--device cpu``, ``--quick`` a smoke test): a toy model at contexts 32 and 128, eager only.

``python -m effsmall.bench.generate FILE.json`` prints the table of a saved result.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from effsmall.bench.common import budget_s, record_partial

ARCHS = ("transformer", "mamba2", "hybrid")
CONTEXTS = (1024, 16384, 65536)
BATCHES = (1, 16)
EAGER_TOKENS, GRAPH_TOKENS = 10, 50


def model_config(arch: str, cuda: bool):
    """The measured model (CUDA) or a toy of the same shape of code (CPU)."""
    from effsmall.models import LMConfig

    if cuda:
        return LMConfig(vocab_size=4096, d_model=1024, n_layers=12, arch=arch, n_heads=16, n_kv_heads=4, d_ff=2816,
                        d_state=128, headdim=64, expand=2, chunk_size=64, attn_every=4)
    return LMConfig(vocab_size=128, d_model=64, n_layers=4, arch=arch, n_heads=4, n_kv_heads=2, d_state=16,
                    headdim=16, chunk_size=16, attn_every=4)


def _fill_random(state, context: int, seed: int) -> None:
    """Caches of ``context`` tokens with random contents (keys, values, conv windows, SSM states)."""
    from effsmall.models.static_decode import StaticKVCache

    g = torch.Generator(device=state.seqlens.device).manual_seed(seed)
    for c in state.caches:
        for t in ((c.k, c.v) if isinstance(c, StaticKVCache) else (c.conv_state, c.ssm_state)):
            t.normal_(generator=g)
    state.set_length(context)


def _per_token_s(dec, n: int, sync) -> float:
    """Seconds per token over ``n`` tokens issued back to back."""
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        dec()
    sync()
    return (time.perf_counter() - t0) / n


@torch.no_grad()
def _measure(model, batch: int, context: int, cuda: bool, copy_Bps: float, quick: bool) -> dict:
    from effsmall.models.static_decode import DecodeState, TokenDecoder, bytes_per_token

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    n_eager = 3 if quick else EAGER_TOKENS
    n_graph = 10 if quick else GRAPH_TOKENS
    state = DecodeState(model, batch, capacity=context + 2 + n_eager + 2 + n_graph + 8)
    _fill_random(state, context, seed=context + batch)
    sync()                                               # the fill (GBs at batch 16) done before any timing
    dec = TokenDecoder(model, state)                     # greedy: the token stays on the device
    b = bytes_per_token(model, batch, context)
    floor_s = b["total"] / copy_Bps
    row = dict(kind="generate", arch=model.cfg.arch, batch=batch, context=context, params=model.num_params(),
               dtype=str(model.embed.weight.dtype).replace("torch.", ""), cache="random contents",
               weight_bytes=b["weights"], kv_bytes=b["kv"], state_bytes=b["state"], floor_bytes=b["total"],
               floor_ms=floor_s * 1e3, floor_tokens_per_s=batch / floor_s)
    for _ in range(2):                                   # warm-up: Triton compiles, flash_decode tunes
        dec()
    row.update(_launch_counts(dec, cuda))
    state.set_length(context)
    eager = _per_token_s(dec, n_eager, sync)
    row.update(eager_ms=eager * 1e3, eager_tokens_per_s=batch / eager, eager_over_floor=eager / floor_s)
    if cuda:
        try:
            state.set_length(context)
            dec.capture()
            dec()                                        # first replay (uploads the graph)
            state.set_length(context)
            graph = _per_token_s(dec, n_graph, sync)
            row.update(graph_ms=graph * 1e3, graph_tokens_per_s=batch / graph, graph_over_floor=graph / floor_s)
        except Exception as e:  # noqa: BLE001 - a failed capture is recorded; the eager time stands
            row["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        dec.graph = None
    row["state_bytes_allocated"] = state.nbytes()
    return row


def _launch_counts(dec, cuda: bool) -> dict:
    """``ops_per_token`` (:func:`~effsmall.measure.count_ops` of one token) and, on CUDA,
    ``cuda_kernels_per_token`` (the CUDA kernels and copies ``torch.profiler`` records for one token)."""
    from effsmall.measure import count_ops

    out = {"ops_per_token": count_ops(dec)["total"]}
    if cuda:
        try:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                dec()
                torch.cuda.synchronize()
            out["cuda_kernels_per_token"] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in prof.events())
        except Exception as e:  # noqa: BLE001 - the profiler is optional; the timings stand without it
            out["kernel_count_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


@torch.no_grad()
def _reference_rows(models: dict, device: str, cuda: bool) -> list[dict]:
    """``SequenceLM.step`` after a prefill (batch 1): the growing-cache eager path and the paged
    cache + decode kernels path, per-token seconds over a few steps issued back to back."""
    ctx = 1024 if cuda else 32
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rows = []
    for arch, model in models.items():
        idx = torch.randint(0, model.cfg.vocab_size, (1, ctx), device=device)
        row = dict(kind="reference", arch=arch, batch=1, context=ctx)
        modes = (("eager_path", False), ("paged_kernels", None)) if cuda else (("eager_path", False),)
        for mode, flag in modes:
            try:
                model.decode_kernels = flag
                logits, caches = model.prefill(idx)
                tok = logits[:, -1].argmax(-1)
                for _ in range(2):
                    _, caches = model.step(tok, caches)
                times = []
                for _ in range(3 if cuda else 2):
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(5):
                        _, caches = model.step(tok, caches)
                    sync()
                    times.append((time.perf_counter() - t0) / 5)
                row[f"{mode}_ms"] = statistics.median(times) * 1e3
                del caches
            except Exception as e:  # noqa: BLE001
                row[f"{mode}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            finally:
                model.decode_kernels = None
        rows.append(row)
    return rows


def run(device: str = "cuda", quick: bool = False) -> list[dict]:
    from effsmall.hardware import measure_ceilings
    from effsmall.models import build_model

    cuda = str(device).startswith("cuda")
    t_start = time.time()
    budget = budget_s(150 if cuda else 120)
    rows: list[dict] = []

    def add(row):
        rows.append(row)
        record_partial(row)
        return row

    ceil = measure_ceilings(device, quick=quick or not cuda)
    add(dict(kind="ceiling", copy_Bps=ceil["copy_bandwidth_Bps"]))
    models = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        with torch.device(device):
            model = build_model(model_config(arch, cuda)).eval()
        models[arch] = model.to(torch.bfloat16) if cuda else model
    contexts = CONTEXTS if cuda else (32, 128)
    batches = BATCHES if cuda else (1, 2)
    if quick:
        contexts, batches = contexts[:2], batches[:1] if not cuda else batches
    costs: list[float] = []
    for batch in batches:
        for context in contexts:
            for arch, model in models.items():
                # the next shape's cost: the dearest of the last three (a long context costs more)
                if costs and time.time() - t_start + max(costs[-3:]) > budget:
                    add(dict(kind="skipped", arch=arch, batch=batch, context=context, reason="time budget"))
                    continue
                t0 = time.time()
                try:
                    row = _measure(model, batch, context, cuda, ceil["copy_bandwidth_Bps"], quick)
                except Exception as e:  # noqa: BLE001 - e.g. out of memory: record and go on
                    row = dict(kind="generate", arch=arch, batch=batch, context=context,
                               error=f"{type(e).__name__}: {str(e)[:200]}")
                row["seconds"] = round(time.time() - t0, 2)
                add(row)
                costs.append(time.time() - t0)
                if cuda:
                    torch.cuda.empty_cache()
    if time.time() - t_start < budget - 20:              # the reference path compiles its prefill kernels
        for row in _reference_rows(models, device, cuda):
            add(row)
    else:
        add(dict(kind="skipped", arch="all", batch=1, context=0, reason="time budget (reference rows)"))
    print(table(rows), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
def _get(rows, arch, batch, context):
    return next((r for r in rows if r.get("kind") == "generate" and r["arch"] == arch and r["batch"] == batch
                 and r["context"] == context and r.get("eager_ms")), None)


def summarize(rows: list[dict]) -> dict:
    gen = [r for r in rows if r.get("kind") == "generate" and r.get("eager_ms")]
    out: dict = {"skipped": sum(r.get("kind") == "skipped" for r in rows),
                 "errors": sum(1 for r in rows if r.get("error") or r.get("graph_error"))}
    out["graph_over_floor"] = {f"{r['arch']} B={r['batch']} {r['context'] // 1024}K": round(r["graph_over_floor"], 2)
                               for r in gen if r.get("graph_over_floor")}
    for key in ("ops_per_token", "cuda_kernels_per_token"):   # per architecture, at the first shape measured
        counts = {r["arch"]: r[key] for r in reversed(gen) if r.get(key)}
        if counts:
            out[key] = counts
    # crossover: the transformer's floor passes Mamba-2's where its KV bytes make up the difference
    t1 = [r for r in gen if r["arch"] == "transformer" and r["batch"] == 1]
    m1 = [r for r in gen if r["arch"] == "mamba2" and r["batch"] == 1]
    if t1 and m1:
        t, m = t1[0], m1[0]
        kv_per_token = t["kv_bytes"] / t["context"]
        out["floor_crossover_context_batch1"] = max(0.0, (m["floor_bytes"] - t["weight_bytes"]) / kv_per_token)
        for col in ("graph_ms", "eager_ms"):
            slower = [r["context"] for r in sorted(t1, key=lambda r: r["context"])
                      if r.get(col) and (_get(gen, "mamba2", 1, r["context"]) or {}).get(col)
                      and r[col] > _get(gen, "mamba2", 1, r["context"])[col]]
            out[f"first_context_transformer_slower_{col}_batch1"] = slower[0] if slower else None
    return out


def table(rows: list[dict]) -> str:
    lines = [f"{'arch':>11} {'B':>3} {'ctx':>6} {'floor ms':>9} {'eager ms':>9} {'graph ms':>9} "
             f"{'eager/fl':>9} {'graph/fl':>9} {'graph tok/s':>12} {'ops/tok':>8} {'kern/tok':>8}"]
    f = lambda x, w, p=3: f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else f"{'-':>{w}}"  # noqa: E731
    for r in rows:
        if r.get("kind") == "generate":
            lines.append(f"{r['arch']:>11} {r['batch']:>3} {r['context']:>6} {f(r.get('floor_ms'), 9)} "
                         f"{f(r.get('eager_ms'), 9)} {f(r.get('graph_ms'), 9)} {f(r.get('eager_over_floor'), 9, 2)} "
                         f"{f(r.get('graph_over_floor'), 9, 2)} {f(r.get('graph_tokens_per_s'), 12, 0)} "
                         f"{f(r.get('ops_per_token'), 8, 0)} {f(r.get('cuda_kernels_per_token'), 8, 0)}"
                         + (f"  {r.get('error') or r.get('graph_error')}" if r.get("error") or r.get("graph_error")
                            else ""))
        elif r.get("kind") == "reference":
            lines.append(f"{r['arch']:>11}   1 {r['context']:>6}  SequenceLM.step: eager path "
                         f"{f(r.get('eager_path_ms'), 7, 2)} ms, paged cache + kernels {f(r.get('paged_kernels_ms'), 7, 2)} ms")
        elif r.get("kind") == "skipped":
            lines.append(f"{r['arch']:>11} {r['batch']:>3} {r['context']:>6}  skipped ({r['reason']})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plot (chapter 16)
# ---------------------------------------------------------------------------------------------
COLORS = {"transformer": "tab:blue", "mamba2": "tab:orange", "hybrid": "tab:green"}


def plot_latency(result: dict, axes=None):
    """Per-token latency vs context for the three models (CUDA graph: solid; eager: dotted) and
    their memory floors (dashed), one panel per batch size. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    gen = [r for r in result["rows"] if r.get("kind") == "generate" and r.get("eager_ms")]
    batches = sorted({r["batch"] for r in gen})
    if axes is None:
        fig, axes = plt.subplots(1, len(batches), figsize=(min(7.2, 3.6 * len(batches)), 3.4), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    contexts = sorted({r["context"] for r in gen})
    for ax, B in zip(axes, batches):
        for arch, color in COLORS.items():
            rs = sorted((r for r in gen if r["batch"] == B and r["arch"] == arch), key=lambda r: r["context"])
            if not rs:
                continue
            x = [r["context"] for r in rs]
            if any(r.get("graph_ms") for r in rs):
                ax.plot(x, [r.get("graph_ms") or float("nan") for r in rs], "o-", color=color, ms=4)
            ax.plot(x, [r["eager_ms"] for r in rs], "x:", color=color, alpha=0.7)
            ax.plot(x, [r["floor_ms"] for r in rs], "--", color=color, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(contexts, [f"{c // 1024}K" if c >= 1024 else str(c) for c in contexts])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        ax.set_xlabel("context (tokens)")
        ax.set_title(f"batch {B}", fontsize=9)
    axes[0].set_ylabel("ms per token")
    handles = [Line2D([], [], color=c, lw=2, label=a) for a, c in COLORS.items()]
    handles += [Line2D([], [], color="gray", marker="o", ms=4, label="CUDA graph"),
                Line2D([], [], color="gray", marker="x", ls=":", label="eager"),
                Line2D([], [], color="gray", ls="--", lw=1, label="memory floor")]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.suptitle(f"Decoding one token: {result['env']['device_name']}, {gen[0].get('dtype', '') if gen else ''}",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


if __name__ == "__main__":  # python -m effsmall.bench.generate RESULT.json
    with open(sys.argv[1]) as fh:
        res = json.load(fh)
    print(table(res["rows"]))
    print(json.dumps(res.get("summary", summarize(res["rows"])), indent=1, default=float))
