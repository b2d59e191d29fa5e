"""The state space ladder (chapters 8–11): the (A, B, C, D) recurrence → discretization →
convolution → selective scan (Mamba) → semiseparable matrices → chunked SSD (Mamba-2) → Triton.

SSD shapes (Mamba-2): X ``(b, l, h, p)``, A ``(b, l, h)`` per-step log decay (Δ·A ≤ 0),
B and C ``(b, l, g, n)`` with ``h % g == 0``, states ``(b, h, p, n)``.
"""
from effsmall._lazy import install

_EXPORTS = {
    # lti.py — linear time-invariant SSMs
    "discretize": "lti",
    "ssm_recurrent": "lti",
    "ssm_kernel": "lti",
    "ssm_convolution": "lti",
    "LTISSMLayer": "lti",
    # selective_scan.py — Mamba-1 selective scan in torch
    "selective_scan_sequential": "selective_scan",
    "selective_scan_parallel": "selective_scan",
    # selective_scan_kernel.py
    "selective_scan_triton": "selective_scan_kernel",
    # ssd_recurrence.py — the SSD recurrence and stable segment sums
    "segsum": "ssd_recurrence",
    "ssd_recurrent": "ssd_recurrence",
    # semiseparable.py — SSMs as matrices, the attention-like dual
    "ssm_matrix": "semiseparable",
    "ssd_quadratic": "semiseparable",
    "is_semiseparable": "semiseparable",
    "offdiagonal_ranks": "semiseparable",
    "linear_attention": "semiseparable",
    "structured_masked_attention": "semiseparable",
    # ssd_chunkwise.py — the four-step chunked algorithm in readable torch
    "ssd_chunked": "ssd_chunkwise",
    # ssd_minimal_kernel.py — a ~25-line forward-only Triton kernel: one chunk's four steps
    "ssd_minimal": "ssd_minimal_kernel",
    # ssd_kernels.py — Triton forward and backward
    "ssd_triton": "ssd_kernels",
    # mamba_api.py — drop-in for mamba_ssm's function of the same name
    "mamba_chunk_scan_combined": "mamba_api",
    # mamba2_block.py — the Mamba-2 layer with recurrent step
    "Mamba2Block": "mamba2_block",
    # mamba2_step_kernel.py — one decoding step of a Mamba-2 layer as one Triton kernel
    "mamba2_step": "mamba2_step_kernel",
    "mamba2_block_step": "mamba2_step_kernel",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
