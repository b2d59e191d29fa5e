"""OffloadedLM: generate with the FFN weights on disk and a DRAM budget (LLM in a Flash §3).

The non-FFN weights (embeddings, attention, norms) stay in DRAM; the FFN weights live in a
:class:`~effsmall.offload.flash_store.FlashStore`. Each decoding step runs the model layer by
layer and, at each FFN, gets the neurons it needs from one of five strategies:

- ``"naive"``: what a memory-mapped model does under the budget. The first part of the FFN
  weights (in file order) that fits in ``budget − non-FFN bytes`` stays resident; every token
  reads *all* the rest again (large sequential chunks, page cache dropped each token).
- ``"predictor"``: a :class:`~effsmall.offload.predictor.LowRankPredictor` picks the neurons
  each token needs; only those are read (unbundled layout: 2 reads per run of neurons).
- ``"predictor+window"``: neurons predicted for any of the last ``window`` tokens stay in a
  :class:`~effsmall.offload.neuron_cache.NeuronCache`; a token reads only the new ones (§3.1).
  The caches share what the budget leaves, layer by layer in proportion to ``layer_demand``
  (neurons selected per token on calibration text; equal shares without it); if a window's
  union would overflow its cache, the least recently active neurons are evicted first (the
  budget shortens the window). The reads of a layer's new neurons are issued first; the window
  bookkeeping and the FFN over the resident neurons run while they are in flight, then the new
  neurons' part is added (``read_s`` counts only the time the token waits for the disk).
- ``"predictor+window+bundle"``: the same, reading the bundled layout (1 read per run, §3.3).
- ``"oracle"``: the true active set (computed from an in-memory copy of ``W_up``, which the
  budget does not count — a correctness reference, not a deployable strategy), windowed and
  bundled. It must generate exactly what the in-memory model generates.

Every strategy that reads neurons (not ``"naive"``, whose reads are already large sequential
chunks) reads runs of neurons at most ``max_gap_bytes`` apart as one read (:data:`MAX_GAP_BYTES`)
and keeps a layer's reads in flight together through ``queue`` (:data:`READ_QUEUE`); naive reads
through ``naive_queue``.
Per token it records read / compute / cache-management seconds, bytes read and read calls.
Before each token the store's pages are dropped from the OS page cache (``drop_page_cache``),
so every byte "read from flash" really comes from the disk: the page cache would otherwise be
DRAM outside the budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from effsmall.offload.flash_store import FlashStore, load_rest, write_store
from effsmall.offload.neuron_cache import NeuronCache
from effsmall.offload.relu_lm import ReluLM, decode_step

# Runs of needed neurons at most this many bytes apart are read as one: on the measured disk a
# random read costs ≈ 50-110 µs in latency whatever its size up to ≈ 16 KiB (bench read_throughput),
# so bridging a gap of a few records costs less than a second read.
MAX_GAP_BYTES = 16 << 10
# How the neuron reads of one layer are kept in flight together: "kernel" announces them all
# with posix_fadvise(WILLNEED) and then preadv's them from the decoding thread; "threads" hands
# them to a pool. On this disk, for 5-200 scattered records, "kernel" took a third to a half of
# the time (no thread wake-ups, a deeper queue) and left the CPU to the decoding thread.
READ_QUEUE = "kernel"

STRATEGIES = ("naive", "predictor", "predictor+window", "predictor+window+bundle", "oracle")


@dataclass
class GenerationResult:
    strategy: str
    tokens: list[int]
    steps: list[dict] = field(default_factory=list)     # one per measured decoding step
    dram_bytes: int = 0
    window: int = 0

    def summary(self) -> dict:
        n = max(1, len(self.steps))
        tot = sum(s["total_s"] for s in self.steps)
        return {"strategy": self.strategy, "window": self.window, "steps": len(self.steps),
                "tokens_per_s": len(self.steps) / tot if tot else float("nan"),
                "ms_per_token": 1e3 * tot / n,
                "read_ms": 1e3 * sum(s["read_s"] for s in self.steps) / n,
                "compute_ms": 1e3 * sum(s["compute_s"] for s in self.steps) / n,
                "cache_ms": 1e3 * sum(s["cache_s"] for s in self.steps) / n,
                "bytes_per_token": sum(s["bytes"] for s in self.steps) / n,
                "reads_per_token": sum(s["calls"] for s in self.steps) / n,
                "neurons_loaded_per_token": sum(s["neurons"] for s in self.steps) / n,
                "dram_bytes": self.dram_bytes}


class _Timer:
    def __init__(self):
        self.read = self.cache = 0.0
        self.neurons = 0


class OffloadedLM:
    """Build with :meth:`from_model` (writes the stores) or open existing stores with the constructor."""

    def __init__(self, directory: str | Path, cfg, predictors=None, oracle_up=None, threads: int = 8,
                 max_gap_bytes: int = MAX_GAP_BYTES, layer_demand=None, queue: str = READ_QUEUE):
        directory = Path(directory)
        self.cfg = cfg
        self.stores = {name: FlashStore(directory / f"ffn_{name}.ffn", threads=threads, max_gap_bytes=max_gap_bytes,
                                        queue=queue)
                       for name in ("bundled", "unbundled")}
        rest = load_rest(directory / "ffn_bundled.ffn.rest.safetensors")
        model = ReluLM(cfg)
        for blk in model.blocks:               # the FFN matrices are not in DRAM
            blk.up = None
            blk.down = None
        missing, unexpected = model.load_state_dict(rest, strict=False)
        if unexpected or missing:
            raise ValueError(f"non-FFN weights do not match the config: missing {missing}, unexpected {unexpected}")
        self.model = model.eval()
        self.non_ffn_bytes = sum(v.numel() * v.element_size() for v in rest.values())
        self.record_bytes = 4 * cfg.d_model                                     # fp16 up row + down column
        self.ffn_bytes = cfg.n_layers * cfg.d_ff * self.record_bytes
        self.predictors = predictors
        self.oracle_up = oracle_up
        if layer_demand is not None and (len(layer_demand) != cfg.n_layers or min(layer_demand) <= 0):
            raise ValueError(f"layer_demand must hold {cfg.n_layers} positive numbers, got {layer_demand!r}")
        self.layer_demand = None if layer_demand is None else [float(x) for x in layer_demand]
        # naive's large sequential chunks are bandwidth-bound: threads do as well as the kernel
        # queue there (the bench measures both and gives naive the faster)
        self.naive_queue = "threads"

    @classmethod
    def from_model(cls, model: ReluLM, directory: str | Path, predictors=None, threads: int = 8,
                   calibration_ids: torch.Tensor | None = None, **kw) -> "OffloadedLM":
        """Write the stores for ``model`` and open them.

        With ``predictors`` and ``calibration_ids`` (a text's token ids, e.g. training text), each
        layer's share of the neuron caches is set by how many neurons its predictor selects per
        token on that text (:func:`~effsmall.offload.predictor.predicted_per_token`).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        ffn = [model.ffn_weights(l) for l in range(model.cfg.n_layers)]
        write_store(directory / "ffn_bundled.ffn", ffn, "bundled", rest=model.non_ffn_state())
        write_store(directory / "ffn_unbundled.ffn", ffn, "unbundled")
        oracle_up = [u.clone() for u, _ in ffn]
        if predictors is not None and calibration_ids is not None and "layer_demand" not in kw:
            from effsmall.offload.predictor import predicted_per_token
            kw["layer_demand"] = predicted_per_token(model, predictors, calibration_ids)
        return cls(directory, model.cfg, predictors=predictors, oracle_up=oracle_up, threads=threads, **kw)

    @property
    def model_bytes(self) -> int:
        """All weights: non-FFN as held in DRAM plus the FFN weights in fp16 on disk."""
        return self.non_ffn_bytes + self.ffn_bytes

    def close(self):
        for s in self.stores.values():
            s.close()

    # -- set-up per strategy ---------------------------------------------------------------
    def _check(self, prompt, max_new_tokens, budget, strategy, window):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if len(prompt) < 1:
            raise ValueError("prompt must hold at least one token")
        if max_new_tokens < 0 or len(prompt) + max_new_tokens > self.cfg.max_len:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0 with prompt+new <= {self.cfg.max_len}")
        fixed = self.non_ffn_bytes + (self._pred_bytes() if strategy.startswith("predictor") else 0)
        if budget < fixed:
            raise ValueError(f"dram_budget_bytes={budget} is smaller than the weights that must stay in DRAM "
                             f"({fixed} bytes: non-FFN weights{' + predictors' if fixed > self.non_ffn_bytes else ''})")
        if strategy.startswith("predictor") and self.predictors is None:
            raise ValueError(f"strategy {strategy!r} needs predictors (pass predictors=...)")
        if strategy == "oracle" and self.oracle_up is None:
            raise ValueError("strategy 'oracle' needs the in-memory W_up (build with from_model)")
        return budget - fixed

    def _pred_bytes(self) -> int:
        return sum(p.nbytes() for p in self.predictors) if self.predictors else 0

    # -- FFN strategies -----------------------------------------------------------------------
    def _naive_ffn(self, avail, timer):
        L, d_ff, d = self.cfg.n_layers, self.cfg.d_ff, self.cfg.d_model
        store = self.stores["bundled"]
        resident = []
        for l in range(L):                                # the first bytes that fit stay resident
            r = int(min(d_ff, max(0, avail // self.record_bytes)))
            avail -= r * self.record_bytes
            up, down_t = store.read_range(l, 0, r) if r else (np.empty((0, d), np.float16),) * 2
            resident.append((torch.from_numpy(np.ascontiguousarray(up)), torch.from_numpy(np.ascontiguousarray(down_t))))
        dram = sum(u.numel() * 2 + w.numel() * 2 for u, w in resident)
        shift = self.cfg.shift

        def ffn(l, h):
            u, w = resident[l]
            y = w.float().T @ F.relu(u.float() @ h - shift)                          # (d,)
            r = u.shape[0]
            if r < d_ff:
                t0 = time.perf_counter()
                up, down_t = store.read_range(l, r, d_ff, queue=self.naive_queue)     # (d_ff-r, d) each
                timer.read += time.perf_counter() - t0
                timer.neurons += d_ff - r
                up, down_t = torch.from_numpy(up).float(), torch.from_numpy(down_t).float()
                y = y + down_t.T @ F.relu(up @ h - shift)
            return y
        return ffn, dram

    def _predictor_ffn(self, timer):
        store = self.stores["unbundled"]
        shift = self.cfg.shift

        def ffn(l, h):
            ids = self.predictors[l].predict(h).nonzero().view(-1).numpy()            # (n,)
            t0 = time.perf_counter()
            _, up, down_t = store.read_neurons(l, ids)                               # (n, d) each
            timer.read += time.perf_counter() - t0
            timer.neurons += len(ids)
            up, down_t = torch.from_numpy(up).float(), torch.from_numpy(down_t).float()
            return down_t.T @ F.relu(up @ h - shift)                                 # (d,)
        return ffn

    def capacities(self, avail: int) -> list[int]:
        """Neurons each layer's :class:`NeuronCache` holds when ``avail`` bytes are left for the caches.

        The bytes are shared in proportion to :attr:`layer_demand` (by default equal shares): a
        layer whose predictor selects more neurons per token (layer 0 of the benchmark model
        selects over twice as many as the others) needs more rows to keep the same window
        resident. Capped at ``d_ff``.
        """
        cfg = self.cfg
        demand = np.asarray(self.layer_demand if self.layer_demand is not None else np.ones(cfg.n_layers), float)
        rows = avail // self.record_bytes                                        # neurons the budget holds
        caps = [int(min(cfg.d_ff, rows * w / demand.sum())) for w in demand]
        if min(caps) < 1:
            raise ValueError(f"dram_budget_bytes leaves no room for a neuron cache ({avail} bytes free)")
        return caps

    def _window_ffn(self, avail, window, layout, oracle, timer, step_of):
        cfg, d = self.cfg, self.cfg.d_model
        store = self.stores[layout]
        caches = [NeuronCache(cap, 2 * d, n_ids=cfg.d_ff) for cap in self.capacities(avail)]
        last = [np.full(cfg.d_ff, -(10 ** 9), dtype=np.int64) for _ in range(cfg.n_layers)]
        shift = cfg.shift

        def ffn(l, h):
            t = step_of()
            if oracle:
                ids = (F.relu(self.oracle_up[l] @ h - shift) > 0).nonzero().view(-1).numpy()
            else:
                ids = self.predictors[l].predict(h).nonzero().view(-1).numpy()      # (n,) sorted
            c, lst = caches[l], last[l]
            t0 = time.perf_counter()
            new = ids[~c.contains(ids)]                                            # not resident yet
            t1 = time.perf_counter()
            pending = store.read_neurons_async(l, new) if len(new) else None      # the reads start now;
            t2 = time.perf_counter()                                               # meanwhile, on the CPU:
            lst[ids] = t                                                           # window bookkeeping ...
            res = c.ids[:c.n]
            c.delete(res[lst[res] <= t - window])                                  # left the window
            over = c.n + len(new) - c.capacity
            if over > 0:                # the budget bounds the window: evict least recently active first
                res = c.ids[:c.n]
                old = res[lst[res] < t]                                              # not needed now
                if len(old) < over:
                    raise RuntimeError(f"layer {l}: {len(ids)} neurons needed now exceed the NeuronCache "
                                       f"capacity {c.capacity} (raise the DRAM budget)")
                c.delete(old[np.argsort(lst[old], kind="stable")[:over]])
            t2b = time.perf_counter()
            W = c.rows().float()                                                   # (n, 2d)
            y = W[:, d:].T @ F.relu(W[:, :d] @ h - shift)                          # ... and the resident neurons' part
            t3 = t4 = t5 = time.perf_counter()
            if pending is not None:
                _, up, down_t = pending.result()                                   # (k, d) each
                t4 = time.perf_counter()
                rows = torch.from_numpy(np.concatenate([up, down_t], axis=1))      # (k, 2d)
                c.insert(new, rows)
                t5 = time.perf_counter()
                Wn = rows.float()
                y = y + Wn[:, d:].T @ F.relu(Wn[:, :d] @ h - shift)               # (d,) the new neurons
            timer.cache += (t1 - t0) + (t2b - t2) + (t5 - t4)
            timer.read += (t2 - t1) + (t4 - t3)                                    # issuing + waiting, not hidden
            timer.neurons += len(new)
            return y                                                               # (d,)
        return ffn, sum(c.nbytes for c in caches)

    # -- generation --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: list[int], max_new_tokens: int, dram_budget_bytes: int,
                 strategy: str = "predictor+window+bundle", window: int = 4,
                 drop_page_cache: bool = True, measure_prompt: bool = False) -> GenerationResult:
        """Greedy generation; returns tokens and per-token stats (see :class:`GenerationResult`).

        Stats cover the generated tokens; with ``measure_prompt`` also every prompt token (the
        prompt is then a teacher-forced text: real tokens rather than the model's own output).
        """
        avail = self._check(prompt, max_new_tokens, dram_budget_bytes, strategy, window)
        timer = _Timer()
        step = [0]
        if strategy == "naive":
            ffn, dram = self._naive_ffn(avail, timer)
        elif strategy == "predictor":
            ffn, dram = self._predictor_ffn(timer), 0
        else:
            layout = "unbundled" if strategy == "predictor+window" else "bundled"
            ffn, dram = self._window_ffn(avail, window, layout, strategy == "oracle", timer, lambda: step[0])
        dram += self.non_ffn_bytes + (self._pred_bytes() if strategy.startswith("predictor") else 0)
        result = GenerationResult(strategy, list(prompt), dram_bytes=dram, window=window if "window" in strategy or strategy == "oracle" else 0)
        caches = [dict() for _ in self.model.blocks]

        def measured_step(tok, pos):
            step[0] = pos
            if drop_page_cache:
                for s in self.stores.values():
                    s.drop_page_cache()
            before = [(s.stats.bytes_read, s.stats.read_calls) for s in self.stores.values()]
            timer.read = timer.cache = 0.0
            timer.neurons = 0
            t0 = time.perf_counter()
            logits = decode_step(self.model, tok, pos, caches, ffn=ffn)
            nxt = int(logits.argmax())
            total = time.perf_counter() - t0
            after = [(s.stats.bytes_read, s.stats.read_calls) for s in self.stores.values()]
            result.steps.append({"total_s": total, "read_s": timer.read, "cache_s": timer.cache,
                                 "compute_s": total - timer.read - timer.cache, "neurons": timer.neurons,
                                 "bytes": sum(a[0] - b[0] for a, b in zip(after, before)),
                                 "calls": sum(a[1] - b[1] for a, b in zip(after, before))})
            return nxt

        for pos, tok in enumerate(prompt[:-1]):                # the prompt, one token at a time
            if measure_prompt:
                measured_step(tok, pos)
            else:
                step[0] = pos
                decode_step(self.model, tok, pos, caches, ffn=ffn)
        tok, pos = prompt[-1], len(prompt) - 1
        for _ in range(max_new_tokens):
            tok = measured_step(tok, pos)
            result.tokens.append(tok)
            pos += 1
        return result


def neurons_added_per_token(active: torch.Tensor, window: int) -> float:
    """Mean number of neurons a token must load when the last ``window`` tokens' neurons stay resident.

    ``active`` is ``(T, d_ff)`` bool (one layer's active or predicted sets over a text); token t
    loads ``|S_t \\ (S_{t-window} ∪ … ∪ S_{t-1})|`` (LLM in a Flash §3.1, Fig. 4b).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    T = active.shape[0]
    added = []
    for t in range(window, T):
        resident = active[t - window:t].any(0)                                # (d_ff,)
        added.append((active[t] & ~resident).sum().item())
    return sum(added) / max(1, len(added))
