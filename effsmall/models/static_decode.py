"""Decoding that a CUDA graph can capture: static caches, positions on the device, sampling on
the device (chapter 16, "the whole model decodes").

A decoding step of a small model is a few hundred small kernels — per layer a norm, a few
matrix-vector products, RoPE, a cache write, attention or the SSM step, the MLP. Each launch
costs the host several microseconds of Python and driver work; the GPU finishes most of them
faster than the host issues the next one, so an eager step is host time. A **CUDA graph**
records the kernels of one step once (``torch.cuda.graph``) and replays the whole list with one
call: the host's cost per token becomes a single launch. Replay repeats *exactly* the recorded
kernels on *exactly* the recorded memory, so everything a step touches must stay in place
between tokens:

* the caches are preallocated (:class:`DecodeState`): keys and values ``(B, Hk, capacity, D)``
  per attention layer, the conv window and SSM state per Mamba-2 layer, updated in place;
* the position of the next token is a device tensor (``DecodeState.seqlens``, one per row),
  read by RoPE and by the cache write and advanced by the step itself — no Python int changes
  between tokens;
* the next token is chosen on the device (:func:`sample_tokens`: argmax, or Gumbel-max with
  noise drawn into a fixed buffer before each replay) and written into the buffer the next
  replay embeds — no ``.item()``, no host synchronization inside the loop.

:class:`TokenDecoder` runs one token (step + sampling) eagerly — the readable path, also used
on CPU — or, after :meth:`TokenDecoder.capture`, by replaying its graph: the same kernels on the
same data. :func:`generate_static` is ``SequenceLM.generate(..., use_cuda_graph=True)`` on CUDA.

On the decode-kernel path (``SequenceLM.decode_kernels``: CUDA sm80+, or forced for tests) a
layer is as few launches as the pieces allow (:func:`decode_op_counts` counts them):

* the residual add and the next RMSNorm are one kernel (:func:`~effsmall.models.fused.add_rmsnorm`),
  writing the residual stream in place into ``DecodeState.x`` and the norm into ``DecodeState.u``;
* projections that read the same input are one matrix product — ``[W_q; W_kv]`` and
  ``[W_gate; W_up]``, concatenated once when the state is built (:class:`StepWeights`; Mamba-2's
  ``in_proj`` already is one) — and ``SiLU(gate) ⊙ up`` is one kernel
  (:func:`~effsmall.models.fused.swiglu_packed`);
* attention: RoPE of q and k and the cache write in one kernel that reads the position from
  ``seqlens`` (:func:`~effsmall.models.fused.rope_append`), then :func:`~effsmall.attention.flash_decode`
  over the buffer (plus its merge kernel when it splits the keys);
* Mamba-2: conv window, SiLU, Δ, the state update and the skip in one kernel
  (``mamba2_step``), the window kept as a ring so that it too is updated in place, then the
  gated norm (:func:`~effsmall.models.fused.gated_rmsnorm`);
* per token besides the layers: ``seqlens += 1``, the embedding, the final norm, the output
  projection and the argmax written straight into the token buffer.

That is 9 operations per layer with an MLP (attention or Mamba-2) and 5 more per token: 113 for
the 12-layer benchmark models, against 154 with one product per projection and PyTorch's SiLU and
multiply, and 540 to 740 with the PyTorch layers. Elsewhere the same step runs the PyTorch layers
(attention over the buffer with the unused slots masked), the reference the kernels are tested
against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from effsmall.measure import count_ops
from effsmall.models.layers import KVCache
from effsmall.nn import apply_rope, rope_tables
from effsmall.runtime import compute_dtype
from effsmall.ssm.mamba2_block import Mamba2Cache
from effsmall.ssm.mamba2_step_kernel import ring_from_window, window_from_ring

__all__ = ["StepWeights", "step_weights", "StaticKVCache", "DecodeState", "decode_step", "sample_tokens",
           "TokenDecoder", "generate_static", "bytes_per_token", "count_ops", "decode_op_counts"]


class StepWeights(NamedTuple):
    """One layer's matrices as the decode-kernel path multiplies them: the projections that read
    the same input concatenated once, when the :class:`DecodeState` is built, so each pair is one
    matrix product per token (the model's own parameters are left as they are)."""
    qkv: torch.Tensor | None        # attention: [W_q; W_kv]  ((h + 2·hk)·D, d_model), else None
    gate_up: torch.Tensor | None    # SwiGLU: [W_gate; W_up]  (2·d_ff, d_model), None without an MLP


def step_weights(layer) -> StepWeights:
    """The :class:`StepWeights` of one ``Layer`` (copies of its current weights)."""
    return StepWeights(layer.mixer.qkv_weight() if layer.is_attention else None,
                       layer.mlp.gate_up_weight() if layer.mlp is not None else None)


@dataclass
class StaticKVCache:
    """Keys and values of one attention layer in a fixed-capacity buffer, ``k, v (B, Hk, capacity,
    D)``; row b holds ``DecodeState.seqlens[b]`` tokens, the rest is unused."""
    k: torch.Tensor
    v: torch.Tensor


class DecodeState:
    """Everything a decoding step reads and writes, allocated once: one cache per layer
    (:class:`StaticKVCache` or ``Mamba2Cache``), ``seqlens (B,) int32`` — the tokens stored per
    row, i.e. the position of the next one — the RoPE tables for every position up to
    ``capacity``, each layer's :class:`StepWeights` (concatenated copies of the model's weights
    as they are when the state is built: the decode-kernel path reads these), and the buffers
    ``x``, ``u (B, d_model)`` its fused norms write the residual stream and their output into.

    A Mamba-2 layer's conv window is kept as a **ring**: input j of row b in slot j mod d_conv
    (:func:`~effsmall.ssm.mamba2_step_kernel.window_from_ring` reads it out oldest first), so
    that a step writes one slot in place instead of shifting the window into a copy.

    ``length`` is the host's copy of the longest row: :meth:`reserve` checks capacity on the host
    before a token is decoded (a replayed graph cannot raise)."""

    def __init__(self, model, batch: int, capacity: int):
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}")
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        cfg = model.cfg
        w = model.embed.weight
        self.batch, self.capacity, self.length = batch, capacity, 0
        self.caches: list = []
        for layer in model.layers:
            if layer.is_attention:
                shape = (batch, cfg.n_kv_heads, capacity, cfg.d_head)
                self.caches.append(StaticKVCache(w.new_zeros(shape), w.new_zeros(shape)))
            else:
                self.caches.append(layer.mixer.allocate_cache(batch))
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=w.device)          # (B,)
        self.rope_cos, self.rope_sin = rope_tables(capacity, cfg.d_head, cfg.rope_base, device=w.device,
                                                   dtype=compute_dtype(w.dtype))      # (capacity, D/2) each
        self.weights = [step_weights(layer) for layer in model.layers]
        self.x = w.new_zeros(batch, cfg.d_model)     # (B, d_model) the residual stream (decode-kernel path)
        self.u = w.new_zeros(batch, cfg.d_model)     # (B, d_model) the normalized input of the next block

    @classmethod
    def from_prefill(cls, model, caches: list, length: int, capacity: int) -> "DecodeState":
        """A state holding the caches of a prompt of ``length`` tokens per row (``KVCache`` /
        ``Mamba2Cache`` per layer, as ``model.hidden(idx, want_cache=True)`` returns them), with
        room for ``capacity`` tokens in all."""
        if length > capacity:
            raise ValueError(f"the prompt has {length} tokens, more than capacity={capacity}")
        batch = next(c.k.shape[0] if isinstance(c, KVCache) else c.ssm_state.shape[0] for c in caches)
        state = cls(model, batch, capacity)
        state.set_length(length)
        for dst, src in zip(state.caches, caches):
            if isinstance(src, KVCache):
                dst.k[:, :, :length] = src.k                               # (B, Hk, length, D)
                dst.v[:, :, :length] = src.v
            else:
                ring_from_window(src.conv_state, state.seqlens, out=dst.conv_state)   # window → ring
                dst.ssm_state.copy_(src.ssm_state)
        return state

    def set_length(self, n: int) -> None:
        """Every row holds n tokens (a prompt's length, or a benchmark's context)."""
        if not 0 <= n <= self.capacity:
            raise ValueError(f"length must lie in [0, capacity={self.capacity}], got {n}")
        self.seqlens.fill_(n)
        self.length = n

    def reserve(self, n: int = 1) -> None:
        """Raise ValueError unless n more tokens fit (checked on the host, before they are decoded)."""
        if self.length + n > self.capacity:
            raise ValueError(f"the static cache is full: {self.length} tokens stored, {n} more asked for, "
                             f"capacity {self.capacity}")

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of what a step changes besides cache slots past the end: positions and SSM states."""
        out = [self.seqlens.clone()]
        for c in self.caches:
            if isinstance(c, Mamba2Cache):
                out += [c.conv_state.clone(), c.ssm_state.clone()]
        return out

    def restore(self, snap: list[torch.Tensor]) -> None:
        """Undo steps taken since :meth:`snapshot` (keys and values they wrote lie past the restored
        lengths, where the next steps overwrite them before anything reads them)."""
        it = iter(snap)
        self.seqlens.copy_(next(it))
        for c in self.caches:
            if isinstance(c, Mamba2Cache):
                c.conv_state.copy_(next(it))
                c.ssm_state.copy_(next(it))

    def nbytes(self) -> int:
        """Bytes the state holds (caches at full capacity)."""
        total = 0
        for c in self.caches:
            ts = (c.k, c.v) if isinstance(c, StaticKVCache) else (c.conv_state, c.ssm_state)
            total += sum(t.numel() * t.element_size() for t in ts)
        return total


# ---------------------------------------------------------------------------------------------
# One step, in place: the work a CUDA graph captures
# ---------------------------------------------------------------------------------------------
def _attention_step(attn, w: StepWeights, u: torch.Tensor, cache: StaticKVCache, state: DecodeState,
                    kernels: bool) -> torch.Tensor:
    """One token of one attention layer: u ``(B, d_model)`` → ``(B, d_model)``; writes the token's
    key and value at position ``lens[b] − 1`` (``lens = state.seqlens``, already advanced by the
    step) and attends over the ``lens[b]`` stored tokens."""
    B, lens = u.shape[0], state.seqlens
    if kernels:  # q, k, v in one product; RoPE and the cache write in one kernel; split-KV attention
        from effsmall.attention import flash_decode
        from effsmall.models.fused import rope_append

        q, kv = F.linear(u, w.qkv).split([attn.h * attn.d, 2 * attn.hk * attn.d], dim=-1)   # (B, h·D), (B, 2·hk·D)
        q = rope_append(q, kv, state.rope_cos, state.rope_sin, lens, cache.k, cache.v)      # (B, h, D)
        y = flash_decode(q, cache.k, cache.v, lens, validate=False)                          # (B, h, D)
        return attn.wo(y.reshape(B, attn.h * attn.d))                                        # (B, d_model)
    # the reference: the same steps in PyTorch
    pos = lens.long() - 1                                                       # (B,) this token's position
    cos, sin = state.rope_cos[pos][:, None, None], state.rope_sin[pos][:, None, None]   # (B, 1, 1, D/2)
    q = attn.wq(u).view(B, attn.h, 1, attn.d)                                   # (B, h, 1, D)
    k, v = attn.wkv(u).view(B, 2, attn.hk, 1, attn.d).unbind(1)                 # (B, hk, 1, D) ×2
    qk = apply_rope(torch.cat([q, k], dim=1), cos, sin)                         # (B, h+hk, 1, D): one rotation
    q, k = qk.split([attn.h, attn.hk], dim=1)                                   # (B, h, 1, D), (B, hk, 1, D)
    slot = pos.view(B, 1, 1, 1).expand(B, attn.hk, 1, attn.d)                   # (B, hk, 1, D)
    cache.k.scatter_(2, slot, k)                                                # row b's token at pos[b]
    cache.v.scatter_(2, slot, v)
    # attention over the whole buffer, slots past each row's length masked out
    rep = attn.h // attn.hk
    keys = cache.k.repeat_interleave(rep, dim=1)                                # (B, h, capacity, D)
    vals = cache.v.repeat_interleave(rep, dim=1)
    seen = torch.arange(keys.shape[2], device=u.device)[None, :] < lens[:, None]   # (B, capacity)
    y = F.scaled_dot_product_attention(q, keys, vals, attn_mask=seen[:, None, None, :])[:, :, 0]  # (B, h, D)
    return attn.wo(y.reshape(B, attn.h * attn.d))                               # (B, d_model)


def _mlp_step(mlp, w: StepWeights, u: torch.Tensor, kernels: bool) -> torch.Tensor:
    """The SwiGLU MLP of one token, u ``(B, d_model)`` → ``(B, d_model)``; on the kernel path the
    gate and up projections are one product and ``SiLU(gate) ⊙ up`` one kernel."""
    if not kernels:
        return mlp(u)
    from effsmall.models.fused import swiglu_packed

    return mlp.down(swiglu_packed(F.linear(u, w.gate_up)))           # (B, 2·d_ff) → (B, d_ff) → (B, d_model)


def _mamba_step(block, u: torch.Tensor, cache: Mamba2Cache, state: DecodeState, kernels: bool) -> torch.Tensor:
    """One token of one Mamba-2 layer, states updated in place: u ``(B, d_model)`` → ``(B, d_model)``.
    The conv window is the state's ring (``state.seqlens`` inputs per row, with this token)."""
    if not kernels:  # the reference: Mamba2Block.step on the window read out of the ring
        window = window_from_ring(cache.conv_state, state.seqlens - 1)    # (B, conv_dim, d_conv) before the token
        y, new = block.step(u, Mamba2Cache(window, cache.ssm_state))
        ring_from_window(new.conv_state, state.seqlens, out=cache.conv_state)
        cache.ssm_state.copy_(new.ssm_state)
        return y
    from effsmall.models.fused import gated_rmsnorm
    from effsmall.ssm.mamba2_step_kernel import mamba2_step

    z, xBC, dt = block._split_proj(block.in_proj(u))      # (B, d_inner), (B, conv_dim), (B, h): views
    y, _, _ = mamba2_step(xBC, dt, cache.conv_state, cache.ssm_state, block.conv1d.weight, block.conv1d.bias,
                          block.dt_bias, block.A_log, block.D, nheads=block.nheads, headdim=block.headdim,
                          ngroups=block.ngroups, d_state=block.d_state, inplace_ssm=True,
                          ring_lens=state.seqlens)       # y (B, h, P); window and state updated in place
    return block.out_proj(gated_rmsnorm(block.norm, y.flatten(-2), z))   # (B, d_model)


def _add_norm(x: torch.Tensor, y: torch.Tensor | None, norm, state: DecodeState, kernels: bool):
    """The residual add and the next norm: ``(x + y, norm(x + y))`` (``y = None``: nothing to add).
    One fused kernel on the decode-kernel path instead of nine, writing into the state's buffers
    ``state.x`` (the residual stream, in place) and ``state.u``."""
    if kernels:
        from effsmall.models.fused import add_rmsnorm

        return add_rmsnorm(x, norm.weight, norm.eps, residual=y, out=(state.x, state.u))
    x = x if y is None else x + y
    return x, norm(x)


def _layer_step(layer, w: StepWeights, x: torch.Tensor, y: torch.Tensor | None, cache, state: DecodeState,
                kernels: bool):
    """One layer of the step: ``x += y`` (the previous block's pending output, if any), then the
    mixer and the MLP; returns the residual stream ``x (B, d_model)`` and the last block's output
    ``y (B, d_model)``, not yet added."""
    x, u = _add_norm(x, y, layer.norm1, state, kernels)               # x += y; u = norm1(x)
    if layer.is_attention:
        y = _attention_step(layer.mixer, w, u, cache, state, kernels)
    else:
        y = _mamba_step(layer.mixer, u, cache, state, kernels)
    if layer.mlp is not None:
        x, u = _add_norm(x, y, layer.norm2, state, kernels)
        y = _mlp_step(layer.mlp, w, u, kernels)
    return x, y


def decode_step(model, token: torch.Tensor, state: DecodeState) -> torch.Tensor:
    """Logits ``(B, vocab)`` of the next token after ``token (B,)``; appends it to every layer's
    cache and advances ``state.seqlens`` — all on the device, nothing read back to the host, no
    allocation that depends on the context. The same layers as ``SequenceLM.step``, with each
    residual add carried into the norm after it (``_add_norm``).

    ``state.seqlens`` is advanced first (one in-place add): from then on it holds each row's
    length *with* this token, which the attention layers read (the token's position is one less)."""
    kernels = model._use_decode_kernels()
    state.seqlens.add_(1)                                             # (B,) lengths with this token
    x, y = model.embed(token), None                                   # residual stream (B, d_model), pending add
    for layer, w, cache in zip(model.layers, state.weights, state.caches):
        x, y = _layer_step(layer, w, x, y, cache, state, kernels)
    _, u = _add_norm(x, y, model.norm, state, kernels)
    return model.lm_head(u)                                           # (B, vocab)


def sample_tokens(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
                  noise: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """The next token per row, on the device: ``argmax`` when ``temperature <= 0``; otherwise a
    sample of softmax(logits / T) (restricted to the ``top_k`` largest) by the Gumbel-max trick,
    ``argmax(logits / T + g)`` with ``g = −log(−log U)``, U ~ uniform from ``noise (B, vocab)``
    (drawn by the caller, so a captured graph reads fresh noise from a fixed buffer). ``out``:
    a ``(B,)`` int64 buffer to write the tokens into (the decoder's token, without a copy)."""
    if temperature <= 0:
        return torch.argmax(logits, -1, out=out)                      # (B,)
    if noise is None or noise.shape != logits.shape:
        raise ValueError(f"sampling with temperature > 0 needs uniform noise of the logits' shape "
                         f"{tuple(logits.shape)}, got {None if noise is None else tuple(noise.shape)}")
    z = logits.float() / temperature                                  # (B, vocab)
    if top_k is not None:
        kth = z.topk(min(top_k, z.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    gumbel = -torch.log(-torch.log(noise.clamp(1e-20, 1.0 - 1e-7)))  # (B, vocab)
    return torch.argmax(z + gumbel, -1, out=out)                      # (B,)


class TokenDecoder:
    """Decode one token per call — step, sample, feed back — eagerly or by replaying a CUDA graph.

    ``decoder.token (B,)`` holds the token to decode next; each call runs :func:`decode_step` on
    it and overwrites it with the sampled next token (returned). ``capture()`` (CUDA only) records
    one call in a ``torch.cuda.CUDAGraph``; later calls replay it."""

    def __init__(self, model, state: DecodeState, temperature: float = 0.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        w = model.embed.weight
        self.model, self.state = model, state
        self.temperature, self.top_k, self.generator = float(temperature), top_k, generator
        self.token = torch.zeros(state.batch, dtype=torch.long, device=w.device)       # (B,)
        self.noise = (torch.empty(state.batch, model.cfg.vocab_size, device=w.device)
                      if self.temperature > 0 else None)                               # (B, vocab) uniform
        self.graph = None

    def draw_noise(self) -> None:
        """Fresh uniform noise for the next sample (temperature > 0), into the fixed buffer."""
        if self.noise is not None:
            self.noise.uniform_(generator=self.generator)

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """Sample from ``logits (B, vocab)`` into ``self.token`` (e.g. the prompt's last logits)."""
        self.draw_noise()
        return sample_tokens(logits, self.temperature, self.top_k, self.noise, out=self.token)

    def _run(self) -> None:                                          # the captured work of one token
        logits = decode_step(self.model, self.token, self.state)      # (B, vocab)
        sample_tokens(logits, self.temperature, self.top_k, self.noise, out=self.token)

    @torch.no_grad()
    def capture(self, warmup: int = 1) -> None:
        """Record one token in a CUDA graph. The first ``warmup`` tokens run eagerly on a side
        stream (Triton compiles and tunes, cuBLAS picks its kernels: nothing may synchronize
        during capture), then the state is restored, so capturing changes no result."""
        if self.token.device.type != "cuda":
            raise ValueError("CUDA graphs need a model on a CUDA device")
        self.state.reserve(warmup)
        snap, token = self.state.snapshot(), self.token.clone()
        if self.noise is not None:
            self.noise.fill_(0.5)                 # warm-up noise; the generator's stream is left alone
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        self.state.restore(snap)
        self.token.copy_(token)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._run()

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        self.state.reserve(1)
        self.draw_noise()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        self.state.length += 1
        return self.token


@torch.no_grad()
def generate_static(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                    top_k: int | None = None, seed: int = 0, cuda_graph: bool = True) -> torch.Tensor:
    """``model.generate`` through a :class:`DecodeState` sized for the prompt plus
    ``max_new_tokens``: prefill in parallel, then one :class:`TokenDecoder` call per token
    (a CUDA-graph replay when ``cuda_graph`` and the model is on CUDA). Greedy tokens equal the
    eager path's; sampled tokens come from the Gumbel-max sampler (same distribution, another
    random stream than the eager path's ``torch.multinomial``)."""
    model._check_tokens(idx)
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    b, l = idx.shape
    out = torch.empty(b, l + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :l] = idx
    if max_new_tokens == 0:
        return out
    h, caches = model.hidden(idx, want_cache=True)                   # prompt in parallel: KVCache / Mamba2Cache
    state = DecodeState.from_prefill(model, caches, length=l, capacity=l + max_new_tokens)
    del caches
    g = torch.Generator(device=idx.device).manual_seed(seed)
    dec = TokenDecoder(model, state, temperature, top_k, g)
    out[:, l] = dec.sample(model.lm_head(h)[:, -1])                  # first new token, from the prompt
    if max_new_tokens > 1 and cuda_graph and idx.device.type == "cuda":
        dec.capture()
    for i in range(1, max_new_tokens):
        out[:, l + i] = dec()                                        # device to device: no synchronization
    return out


def bytes_per_token(model, batch: int, context: int) -> dict:
    """Bytes one decoding step must move at least (its memory floor ÷ bandwidth): every weight read
    once (the tied embedding once, as the output projection), each attention layer's keys and
    values for ``context`` tokens read, each Mamba-2 layer's SSM state and conv window read and
    written. ``{"weights", "kv", "state", "total"}``."""
    cfg = model.cfg
    w = model.embed.weight
    params = {id(p): p for p in model.parameters()}.values()
    weights = sum(p.numel() * p.element_size() for p in params)
    kv = state = 0
    for layer in model.layers:
        if layer.is_attention:
            kv += 2 * batch * cfg.n_kv_heads * context * cfg.d_head * w.element_size()
        else:
            blk = layer.mixer
            ssm_elem = 8 if w.dtype == torch.float64 else 4
            state += 2 * batch * (blk.nheads * blk.headdim * blk.d_state * ssm_elem
                                  + blk.conv_dim * blk.d_conv * w.element_size())
    return dict(weights=weights, kv=kv, state=state, total=weights + kv + state)


@torch.no_grad()
def decode_op_counts(model, batch: int = 1, temperature: float = 0.0) -> dict:
    """The operations one decoded token issues (:func:`count_ops`: PyTorch operations plus Triton
    launches; on a GPU each is a kernel), on the path ``model._use_decode_kernels()`` picks:

    ``{"token": one :class:`TokenDecoder` call (the step and sampling — what a CUDA graph
    replays), "step": :func:`decode_step` alone, "layers": one entry per layer, "per_layer": the
    most of any layer by kind (``{"attention": n, "mamba2": n}``), "fixed": token − Σ layers (the
    embedding, positions, final norm, output projection, sampling)}``, each a total. Counted on a
    fresh state after one warm-up token (a GPU's one-time tuning launches are not counted)."""
    state = DecodeState(model, batch, capacity=8)
    dec = TokenDecoder(model, state, temperature=temperature,
                       generator=torch.Generator(device=state.seqlens.device).manual_seed(0))
    dec()                                                             # warm-up: compile, tune
    kernels = model._use_decode_kernels()
    token_ops = count_ops(dec)["total"]
    step_ops = count_ops(lambda: decode_step(model, dec.token, state))["total"]
    x = model.embed(dec.token)                                        # (B, d_model)
    state.seqlens.add_(1)                                             # as decode_step does before its layers
    layers = []
    for layer, w, cache in zip(model.layers, state.weights, state.caches):
        layers.append(count_ops(lambda: _layer_step(layer, w, x, x, cache, state, kernels))["total"])
    per_layer: dict = {}
    for layer, n in zip(model.layers, layers):
        kind = "attention" if layer.is_attention else "mamba2"
        per_layer[kind] = max(per_layer.get(kind, 0), n)
    return dict(token=token_ops, step=step_ops, layers=layers, per_layer=per_layer, fixed=token_ops - sum(layers))
