"""Three small language models sharing one skeleton (chapter 12).

    tokens (b, l) ─ embed ─→ x (b, l, d)
    for each layer i:   x = x + mixer_i(RMSNorm(x))      mixer: attention or Mamba-2 (SSD)
                        x = x + SwiGLU(RMSNorm(x))       (skipped when d_ff = 0)
    logits = RMSNorm(x) · Eᵀ                             (tied with the embedding E)

The only difference between :class:`TransformerLM`, :class:`Mamba2LM` and :class:`HybridLM` is
which layers are attention (``LMConfig.is_attention``). Decoding keeps one cache per layer:
a :class:`~effsmall.models.layers.KVCache` for attention (grows with the context) or a
``Mamba2Cache`` for SSD (a conv window and the state h ``(b, heads, P, N)``: constant size).
``prefill`` + ``step`` give exactly the logits of the full ``forward`` (tested in fp32/fp64).
On CUDA (``SequenceLM.decode_kernels``) decoding runs the chapter-16 kernels: attention layers
keep a :class:`~effsmall.attention.PagedKVCache` read by ``flash_decode``, Mamba-2 layers step
with the fused ``mamba2_step``; on CPU the eager path above is unchanged.

Kernels: attention uses :func:`effsmall.models.layers.attention` (Triton FlashAttention on
CUDA, torch SDPA on CPU); Mamba-2 layers are ``effsmall.ssm.Mamba2Block`` (chunked SSD:
``ssd_triton`` on CUDA, ``ssd_chunked`` on CPU; the recurrence for ``step``).
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from effsmall.attention.paged_cache import PagedKVCache
from effsmall.models.config import LMConfig
from effsmall.models.layers import CausalSelfAttention, KVCache, RMSNorm, SwiGLU
from effsmall.runtime import tensor_cores_in_triton
from effsmall.ssm.mamba2_block import Mamba2Block, Mamba2Cache


class Layer(nn.Module):
    """One pre-norm residual layer: a sequence mixer (attention or Mamba-2) then an MLP."""

    def __init__(self, cfg: LMConfig, attention: bool):
        super().__init__()
        self.is_attention = attention
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        if attention:
            self.mixer = CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.rope_base)
        else:
            self.mixer = Mamba2Block(cfg.d_model, d_state=cfg.d_state, d_conv=cfg.d_conv, expand=cfg.expand,
                                     headdim=cfg.headdim, chunk_size=cfg.chunk_size)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.d_ff else None
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff) if cfg.d_ff else None

    def _mix(self, u: torch.Tensor, cache, want_cache: bool, kernels: bool = False):
        if self.is_attention:
            return self.mixer(u, cache)
        if cache is None:                                   # parallel (chunked SSD) path
            if want_cache:
                return self.mixer(u, return_cache=True)
            return self.mixer(u), None
        step = self.mixer.step
        if kernels:                                         # the fused Triton step (decode kernels)
            from effsmall.ssm.mamba2_step_kernel import mamba2_block_step
            step = functools.partial(mamba2_block_step, self.mixer)
        outs = []
        for t in range(u.shape[1]):                         # recurrent path, one token at a time
            y, cache = step(u[:, t], cache)                 # (b, d)
            outs.append(y)
        return torch.stack(outs, dim=1), cache              # (b, l, d)

    def forward(self, x: torch.Tensor, cache=None, want_cache: bool = False, kernels: bool = False):
        y, cache = self._mix(self.norm1(x), cache, want_cache, kernels)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, cache


class SequenceLM(nn.Module):
    """The shared skeleton; use :class:`TransformerLM`, :class:`Mamba2LM` or :class:`HybridLM`."""

    arch: str | None = None
    #: Decode with the Triton decoding kernels (paged KV cache + ``flash_decode``, fused
    #: ``mamba2_step``)? None: on CUDA sm80+ (fp16/bf16/fp32), never on CPU; True forces them (the
    #: Triton interpreter on CPU, for tests); False keeps the eager reference path everywhere.
    decode_kernels: bool | None = None
    page_size: int = 64

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if not isinstance(cfg, LMConfig):
            raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        if self.arch is not None and cfg.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs cfg.arch={self.arch!r}, got {cfg.arch!r}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Layer(cfg, cfg.is_attention(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _check_tokens(self, idx: torch.Tensor):
        if not isinstance(idx, torch.Tensor) or idx.dtype != torch.long:
            raise TypeError("idx must be a LongTensor of token ids")
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must have shape (batch, length >= 1), got {tuple(idx.shape)}")

    def _use_decode_kernels(self) -> bool:
        w = self.embed.weight
        if self.decode_kernels is not None:
            return self.decode_kernels
        return (w.device.type == "cuda" and w.dtype in (torch.float16, torch.bfloat16, torch.float32)
                and tensor_cores_in_triton(w.device.index or 0))   # sm80+, as the attention kernels

    def hidden(self, idx: torch.Tensor, caches: list | None = None, want_cache: bool = False):
        """Final hidden states ``(b, l, d_model)`` and the per-layer caches (or None)."""
        self._check_tokens(idx)
        x = self.embed(idx)                                  # (b, l, d)
        kernels = caches is not None and self._use_decode_kernels()
        new = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, None if caches is None else caches[i], want_cache, kernels)
            new.append(c)
        return self.norm(x), (new if want_cache or caches is not None else None)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits ``(b, l, vocab)`` of the whole sequence (parallel: SDPA/flash and chunked SSD)."""
        return self.lm_head(self.hidden(idx)[0])

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor):
        """Run a prompt ``(b, l)`` in parallel; return ``(logits (b, l, vocab), caches)``."""
        h, caches = self.hidden(idx, want_cache=True)
        if self._use_decode_kernels():   # attention layers continue in a paged cache read by flash_decode
            caches = [PagedKVCache.from_contiguous(c.k, c.v, page_size=self.page_size) if isinstance(c, KVCache)
                      else c for c in caches]
        return self.lm_head(h), caches

    @torch.no_grad()
    def step(self, token: torch.Tensor, caches: list):
        """Decode one token per row, ``token (b,)`` → ``(logits (b, vocab), caches)``.

        With the decode kernels (on CUDA) attention layers append to their ``PagedKVCache`` in
        place: continue from the caches a step returns, do not step twice from the same ones."""
        h, caches = self.hidden(token[:, None], caches)       # (b, 1, d)
        return self.lm_head(h[:, 0]), caches

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0, use_cache: bool = True,
                 use_cuda_graph: bool = False) -> torch.Tensor:
        """Continue ``idx (b, l)`` by ``max_new_tokens`` tokens → ``(b, l + max_new_tokens)``.

        ``temperature = 0`` is greedy. ``use_cache=False`` recomputes the full forward for every
        new token (O(l²) work for attention) — the reference the cached path must match.
        ``use_cuda_graph=True`` on CUDA decodes with static caches and replays one token's
        kernels as a CUDA graph (:func:`effsmall.models.static_decode.generate_static`; the same
        greedy tokens); elsewhere it is ignored and the loop below runs.
        """
        self._check_tokens(idx)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if use_cuda_graph and use_cache and idx.device.type == "cuda":
            from effsmall.models.static_decode import generate_static
            return generate_static(self, idx, max_new_tokens, temperature, top_k, seed)
        g = torch.Generator(device=idx.device).manual_seed(seed)
        out = idx
        logits, caches = self.prefill(idx) if use_cache else (self(idx), None)
        last = logits[:, -1]                                   # (b, vocab)
        for _ in range(max_new_tokens):
            nxt = _sample(last, temperature, top_k, g)          # (b,)
            out = torch.cat([out, nxt[:, None]], dim=1)         # (b, l+1)
            if use_cache:
                last, caches = self.step(nxt, caches)
            else:
                last = self(out)[:, -1]
        return out

    def num_params(self) -> int:
        """Distinct parameters (tied/shared tensors counted once)."""
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, g: torch.Generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]


class TransformerLM(SequenceLM):
    """Every layer attention (pre-norm Llama-style: RoPE, GQA, SwiGLU, KV cache)."""
    arch = "transformer"


class Mamba2LM(SequenceLM):
    """Every layer Mamba-2 ({cite}`dao2024mamba2`): constant-size recurrent state for decoding."""
    arch = "mamba2"


class HybridLM(SequenceLM):
    """Attention every ``attn_every`` layers, Mamba-2 elsewhere ({cite}`lieber2024jamba`)."""
    arch = "hybrid"


def build_model(cfg: LMConfig) -> SequenceLM:
    """The model class matching ``cfg.arch``."""
    return {"transformer": TransformerLM, "mamba2": Mamba2LM, "hybrid": HybridLM}[cfg.arch](cfg)


def cache_bytes(caches: list) -> int:
    """Bytes held by decoding caches (KV tensors, conv windows and SSM states); the same on every
    device (a paged cache counts its stored tokens)."""
    total = 0
    for c in caches:
        if isinstance(c, KVCache):
            total += c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size()
        elif isinstance(c, PagedKVCache):
            total += c.token_bytes      # the tokens stored; its pages hold < one page more per row
        elif isinstance(c, Mamba2Cache):
            total += c.conv_state.numel() * c.conv_state.element_size()
            total += c.ssm_state.numel() * c.ssm_state.element_size()
    return total
