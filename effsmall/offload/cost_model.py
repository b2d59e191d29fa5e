"""A cost model: the fractions measured on the book's ReluLM, scaled to a 7B model (LLM in a Flash §2, §4).

Per token, a strategy moves three kinds of bytes:

- **flash → DRAM**: ``naive`` reads every FFN byte not resident, sequentially, at the flash's
  sequential bandwidth ``B_seq``; the sparse strategies read ``f_new · FFN bytes`` in records
  of ``c`` bytes (4·d_model in fp16 when bundled, half that unbundled) at the throughput of
  c-byte random reads, modelled as ``c / (t₀ + c / B_seq)``, with ``t₀`` fitted so 4 KB reads
  run at the measured random-read throughput (1.25 GB/s on the paper's M1 Max SSD);
- **DRAM → compute**: every weight used is streamed once from DRAM: the non-FFN weights, the
  predictor and the FFN neurons computed (``f_compute · FFN bytes``), at ``B_dram``.

Time per token = flash time + DRAM time (no overlap: the conservative case). ``f_new`` and
``f_compute`` (the fractions of FFN neurons read / computed per token) come from the
benchmark of this chapter; the 7B model's shapes come from :mod:`effsmall.modelcards` and the
bandwidths from :mod:`effsmall.hardware`.
"""
from __future__ import annotations


def random_read_throughput(chunk_bytes: float, seq_Bps: float, random4k_Bps: float) -> float:
    """Throughput of random reads of ``chunk_bytes``: ``c / (t₀ + c / B_seq)``, t₀ fitted at 4 KB."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be > 0, got {chunk_bytes!r}")
    t0 = 4096 / random4k_Bps - 4096 / seq_Bps
    return chunk_bytes / (t0 + chunk_bytes / seq_Bps)


def offload_cost(card_name: str = "OPT-6.7B", device_name: str = "Laptop CPU (M1 Max class)",
                 dram_fraction: float = 0.5, f_new: float = 0.02, f_compute: float = 0.1,
                 predictor_rank: int = 128, random4k_Bps: float = 1.25e9, bytes_per_param: int = 2) -> dict:
    """Seconds per token (and tokens/s) of ``naive`` and the windowed strategies, unbundled and bundled.

    ``dram_fraction`` of the model's weights fit in DRAM (the naive resident part);
    ``f_new``: fraction of FFN neurons read per token; ``f_compute``: fraction computed per token.
    """
    from effsmall.hardware import get_device
    from effsmall.modelcards import get_card

    for name, v in (("dram_fraction", dram_fraction), ("f_new", f_new), ("f_compute", f_compute)):
        if not 0 <= v <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    card, dev = get_card(card_name), get_device(device_name)
    flash = next(lv for lv in dev.levels if lv.name.startswith("flash"))
    B_seq, B_dram = flash.bandwidth_Bps, dev.main_memory.bandwidth_Bps
    total = card.weight_bytes(8 * bytes_per_param)
    ffn = card.n_layers * 2 * card.d_model * card.d_ff * bytes_per_param
    non_ffn = total - ffn
    pred = card.n_layers * predictor_rank * (card.d_model + card.d_ff) * bytes_per_param
    resident_ffn = max(0.0, dram_fraction * total - non_ffn)
    rows = {}
    naive_read = (ffn - resident_ffn) / B_seq
    rows["naive"] = {"flash_s": naive_read, "dram_s": total / B_dram, "bytes_read": ffn - resident_ffn}
    for name, chunk in (("predictor+window", 2 * card.d_model * bytes_per_param),
                        ("predictor+window+bundle", 4 * card.d_model * bytes_per_param)):
        rd = f_new * ffn
        rows[name] = {"flash_s": rd / random_read_throughput(chunk, B_seq, random4k_Bps),
                      "dram_s": (non_ffn + pred + f_compute * ffn) / B_dram, "bytes_read": rd, "chunk_bytes": chunk}
    for r in rows.values():
        r["s_per_token"] = r["flash_s"] + r["dram_s"]
        r["tokens_per_s"] = 1 / r["s_per_token"]
    base = rows["naive"]["s_per_token"]
    for r in rows.values():
        r["speedup_vs_naive"] = base / r["s_per_token"]
    return {"model": card.name, "device": dev.name, "weights_GB": total / 1e9, "ffn_GB": ffn / 1e9,
            "flash_seq_GBps": B_seq / 1e9, "flash_4k_GBps": random4k_Bps / 1e9, "dram_GBps": B_dram / 1e9,
            "strategies": rows}
