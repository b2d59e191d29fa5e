"""Parameters, FLOPs per token and memory per token of context of an :class:`LMConfig`.

Counted from the shapes (and checked against ``model.num_params()`` in the tests):

- attention layer: W_q, W_kv, W_o: ``d·h·D + 2·d·hk·D + h·D·d`` weights; a decoded token at
  context t costs ``2·(params) + 4·t·h·D`` FLOPs (q·K and P·V); its KV cache holds
  ``2·hk·D`` numbers per token of context;
- Mamba-2 layer: in_proj ``d·(2·d_inner + 2·N + heads)``, conv, out_proj ``d_inner·d``; a token
  costs ``2·(params) + 6·d_inner·N`` FLOPs (state update and read-out), independent of t;
  its state is ``heads·P·N + conv_dim·d_conv`` numbers whatever the context;
- MLP (SwiGLU): ``3·d·d_ff``; embeddings ``vocab·d`` (once when tied).
"""
from __future__ import annotations

from effsmall.models.config import LMConfig


def _layer_params(cfg: LMConfig, attention: bool) -> dict[str, int]:
    d = cfg.d_model
    if attention:
        D = cfg.d_head
        mixer = d * cfg.n_heads * D + 2 * d * cfg.n_kv_heads * D + cfg.n_heads * D * d
    else:
        di, N = cfg.expand * d, cfg.d_state
        nh = di // cfg.headdim
        conv_dim = di + 2 * N
        mixer = d * (2 * di + 2 * N + nh) + conv_dim * (cfg.d_conv + 1) + 3 * nh + di + di * d
    mlp = 3 * d * cfg.d_ff if cfg.d_ff else 0
    norms = d * (2 if cfg.d_ff else 1)
    return {"mixer": mixer, "mlp": mlp, "norms": norms}


def model_stats(cfg: LMConfig, context: int = 1024, dtype_bytes: int = 4) -> dict:
    """A dict: ``params``, ``flops_per_token`` (decoding at ``context``), ``kv_bytes_per_token``
    (grows with context), ``state_bytes`` (constant) and ``decode_cache_bytes`` at ``context``."""
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    params = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2) + cfg.d_model
    matmul_params = cfg.vocab_size * cfg.d_model      # the output layer
    flops = 0
    kv_per_token = state = 0
    for i in range(cfg.n_layers):
        att = cfg.is_attention(i)
        lp = _layer_params(cfg, att)
        params += sum(lp.values())
        matmul_params += lp["mixer"] + lp["mlp"]
        if att:
            flops += 4 * context * cfg.n_heads * cfg.d_head
            kv_per_token += 2 * cfg.n_kv_heads * cfg.d_head * dtype_bytes
        else:
            di = cfg.expand * cfg.d_model
            flops += 6 * di * cfg.d_state
            state += ((di // cfg.headdim) * cfg.headdim * cfg.d_state
                      + (di + 2 * cfg.d_state) * cfg.d_conv) * dtype_bytes
    flops += 2 * matmul_params
    return {"params": params, "flops_per_token": flops, "kv_bytes_per_token": kv_per_token,
            "state_bytes": state, "decode_cache_bytes": kv_per_token * context + state}
