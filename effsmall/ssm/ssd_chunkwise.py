"""Chunked SSD: the block decomposition of Mamba-2 (Dao & Gu 2024, §6) in readable torch.

Cut the sequence into chunks of Q = ``chunk_size`` steps. The semiseparable matrix
M = L ∘ (C Bᵀ) then splits into Q×Q blocks:

1. **diagonal blocks** (intra-chunk): Y_diag = (L ∘ C Bᵀ) X inside each chunk — quadratic,
   attention-like, all matmuls;
2. **chunk states**: the state each chunk produces on its own, s_c = Σ_t exp(a_{t+1}+…+a_end) x_t B_tᵀ;
3. **state passing**: a short recurrence over chunks, h_c = exp(Σ a over chunk c) h_{c-1} + s_c —
   a scalar-decay SSM of length l/Q, evaluated with its own small decay matrix exp(segsum);
4. **state to output**: the off-diagonal blocks are low rank through the state,
   Y_off[t] = exp(a_start + … + a_t) · h_{c-1} C_t.

Y = Y_diag + Y_off equals the recurrence exactly for every chunk size (chunking is a choice of
evaluation order, not of model). Packed sequences (``seq_idx``): a new sequence starts wherever
seq_idx[t] != seq_idx[t-1]; the state is reset to zero there (decay across the boundary is cut),
so each sequence gives what ``ssd_recurrent`` gives on it alone. ``initial_states`` feed the first
sequence of each row; ``final_states`` are the state after the last step (of the last sequence).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from effsmall.runtime import cdiv
from effsmall.ssm._ssd_checks import check_ssd_inputs, segment_ids
from effsmall.runtime import compute_dtype
from effsmall.ssm.ssd_recurrence import segsum


def _pad_to_chunks(t: torch.Tensor, pad: int, value: float = 0.0) -> torch.Tensor:
    """Pad the time axis (dim 1) at the end by ``pad`` steps."""
    if pad == 0:
        return t
    widths = [0, 0] * (t.dim() - 2) + [0, pad]  # F.pad lists the last dims first
    return F.pad(t, widths, value=value)


def ssd_chunked(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
                initial_states: torch.Tensor | None = None, seq_idx: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD forward. Same maths and shapes as :func:`ssd_recurrent`, plus ``seq_idx (b, l)``.

    Any ``l``: the tail is padded with x = 0, B = C = 0 and a = 0 (decay 1), which leaves the
    outputs and the final state unchanged. Returns ``(Y (b, l, h, p), final_states (b, h, p, n))``.
    """
    b, l, h, p, g, n = check_ssd_inputs(X, A, B, C, initial_states, seq_idx, chunk_size)
    ct = compute_dtype(X, A, B, C)
    Q = chunk_size
    nc = cdiv(l, Q)  # number of chunks
    pad = nc * Q - l
    x = _pad_to_chunks(X.to(ct), pad).reshape(b, nc, Q, h, p)  # (b, c, Q, h, p)
    a = _pad_to_chunks(A.to(ct), pad).reshape(b, nc, Q, h).permute(0, 3, 1, 2)  # (b, h, c, Q)
    Bh = _pad_to_chunks(B.to(ct), pad).repeat_interleave(h // g, dim=2).reshape(b, nc, Q, h, n)  # (b, c, Q, h, n)
    Ch = _pad_to_chunks(C.to(ct), pad).repeat_interleave(h // g, dim=2).reshape(b, nc, Q, h, n)  # (b, c, Q, h, n)
    if seq_idx is not None:
        seg = segment_ids(seq_idx)  # (b, l)
        seg = torch.cat([seg, seg[:, -1:].expand(b, pad)], dim=1).reshape(b, nc, Q)  # (b, c, Q)
    else:
        seg = torch.zeros(b, nc, Q, dtype=torch.int64, device=X.device)  # (b, c, Q)

    # decay[..., i, j] = exp(a_{j+1} + ... + a_i): the diagonal blocks of L, cut at sequence starts.
    decay = torch.exp(segsum(a))  # (b, h, c, Q, Q)
    same_seq = seg[:, :, :, None] == seg[:, :, None, :]  # (b, c, Q, Q)
    decay = decay * same_seq[:, None]

    # 1. diagonal blocks: Y_diag[t] = Σ_{s ≤ t} (C_t·B_s) L[t, s] x_s
    scores = torch.einsum("bcthn,bcshn->bhcts", Ch, Bh)  # (b, h, c, Q, Q)
    Y_diag = torch.einsum("bhcts,bcshp->bcthp", scores * decay, x)  # (b, c, Q, h, p)

    # 2. chunk states: what each chunk writes into the state by its end (decay from s to the end).
    to_end = decay[..., -1, :]  # (b, h, c, Q): exp(a_{s+1} + ... + a_{Q-1}), 0 if a sequence starts after s
    Bw = Bh * to_end.permute(0, 2, 3, 1)[..., None]  # (b, c, Q, h, n): B_s scaled by its decay to the end
    states = torch.einsum("bcshn,bcshp->bchpn", Bw, x)  # (b, c, h, p, n)

    # 3. state passing: h_in[c] = exp(Σ a over chunk c-1) h_in[c-1] + s_{c-1} is itself a scalar-decay
    #    SSM over chunks, so it is evaluated the same way: one (c+1)×(c+1) decay matrix from segsum.
    seg_before = torch.cat([torch.zeros_like(seg[:, :1, 0]), seg[:, :-1, -1]], dim=1)  # (b, c): sequence of the step before chunk c
    survives = seg[:, :, -1] == seg_before  # (b, c): no sequence starts inside chunk c
    chunk_log = a.sum(dim=-1).masked_fill(~survives[:, None], float("-inf"))  # (b, h, c): log decay across chunk c
    chunk_decay = torch.exp(segsum(F.pad(chunk_log, (1, 0))))  # (b, h, c+1, c+1); index 0 is the initial state
    h0 = (torch.zeros(b, 1, h, p, n, dtype=ct, device=X.device) if initial_states is None
          else initial_states.to(ct)[:, None])  # (b, 1, h, p, n)
    h_all = torch.einsum("bhij,bjhpn->bihpn", chunk_decay, torch.cat([h0, states], dim=1))  # (b, c+1, h, p, n)
    h_prev, final_states = h_all[:, :-1], h_all[:, -1]  # (b, c, h, p, n) entering each chunk, (b, h, p, n)

    # 4. state to output: Y_off[t] = exp(a_0 + ... + a_t) · h_prev C_t, only while still in the carried sequence.
    from_start = torch.exp(torch.cumsum(a, dim=-1))  # (b, h, c, Q)
    from_start = from_start * (seg == seg_before[:, :, None])[:, None]  # (b, h, c, Q)
    Y_off = torch.einsum("bcthn,bchpn->bcthp", Ch, h_prev) * from_start.permute(0, 2, 3, 1)[..., None]  # (b, c, Q, h, p)

    Y = (Y_diag + Y_off).reshape(b, nc * Q, h, p)[:, :l]  # (b, l, h, p)
    return Y.to(X.dtype), final_states


def ssd_chunked_cost(b: int, l: int, h: int, p: int, n: int, chunk_size: int, g: int = 1,
                     bytes_per_element: int = 2) -> dict:
    """FLOPs and HBM bytes of the four chunked steps (multiply-add = 2 FLOPs).

    Per chunk of Q steps and head: C Bᵀ (2Q²n), masked (·)X (2Q²p), chunk state Bᵀ(decay·x)
    (2Qpn), state to output C h (2Qpn); state passing 2pn per chunk. The minimal HBM traffic
    reads X, A, B, C and writes Y; a step-by-step implementation also writes and reads the
    (b, c, h, p, n) chunk states (in fp32) between kernels. Small Q: more states; large Q: more
    quadratic FLOPs — the trade-off the chunk size tunes.
    """
    nc = cdiv(l, chunk_size)
    Q = chunk_size
    flops_intra = b * h * nc * (2 * Q * Q * n + 2 * Q * Q * p) // 2  # causal half of the Q×Q block
    flops_states = b * h * nc * 2 * Q * p * n
    flops_out = b * h * nc * 2 * Q * p * n
    flops_pass = b * h * nc * 2 * p * n
    io = bytes_per_element * (2 * b * l * h * p + 2 * b * l * g * n) + 4 * b * l * h
    state_bytes = 4 * b * nc * h * p * n
    return {"flops": flops_intra + flops_states + flops_out + flops_pass,
            "flops_intra": flops_intra, "flops_states": flops_states + flops_out + flops_pass,
            "bytes_min": io, "bytes_states": 2 * state_bytes, "bytes_unfused": io + 2 * state_bytes}
