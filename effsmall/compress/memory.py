"""What a real model needs in memory: weights in fp16/int8/int4 plus the KV cache at a context
length, against a device's memory (from :mod:`effsmall.modelcards` and :mod:`effsmall.hardware`).

Bits per weight include the scales: int8 per-channel adds one fp16 scale per output row
(negligible), int4 group-wise adds one fp16 scale per ``group_size`` weights, i.e.
4 + 16/group_size bits (4.25 at 64). The KV cache is kept in fp16.
"""
from __future__ import annotations

from effsmall.hardware import get_device
from effsmall.modelcards import ModelCard, get_card

FORMATS = ("fp16", "int8", "int4")
DEFAULT_DEVICES = ("Phone (flagship 2024 class)", "T4 (Colab)")
# ≈ share of main memory one app can use: a phone's OS and other apps keep about half of its
# DRAM (mobile OSes kill large apps well before the RAM is full); a GPU gives nearly all.
USABLE_FRACTION = {"Phone (flagship 2024 class)": 0.5}


def bits_per_weight(fmt: str, group_size: int = 64) -> float:
    if fmt == "fp16":
        return 16.0
    if fmt == "int8":
        return 8.0
    if fmt == "int4":
        return 4.0 + 16.0 / group_size
    raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")


def model_memory(card: ModelCard | str, fmt: str = "fp16", context: int = 2048, batch: int = 1,
                 group_size: int = 64) -> dict:
    """Bytes of weights (in ``fmt``) and of the fp16 KV cache at ``context`` tokens."""
    card = get_card(card) if isinstance(card, str) else card
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    w = card.param_count() * bits_per_weight(fmt, group_size) / 8
    kv = card.kv_cache_bytes(context, batch=batch, dtype_bytes=2)
    return {"model": card.name, "params": card.param_count(), "format": fmt, "context": context,
            "weight_bytes": w, "kv_bytes": kv, "total_bytes": w + kv}


def usable_bytes(device: str, usable_fraction: float | None = None) -> float:
    """Main memory one model may use: ``usable_fraction`` (default :data:`USABLE_FRACTION`,
    else 1) of the device's DRAM/HBM."""
    frac = USABLE_FRACTION.get(device, 1.0) if usable_fraction is None else usable_fraction
    if not 0 < frac <= 1:
        raise ValueError(f"usable_fraction must be in (0, 1], got {frac}")
    return frac * get_device(device).main_memory.capacity_bytes


def fits(total_bytes: float, device: str, usable_fraction: float | None = None) -> bool:
    """Whether ``total_bytes`` fit in the usable part of the device's main memory."""
    return total_bytes <= usable_bytes(device, usable_fraction)


def memory_table(models=("TinyLlama-1.1B", "Phi-3-mini-4k"), formats=FORMATS, context: int | None = None,
                 devices=DEFAULT_DEVICES, usable_fraction: float | None = None, group_size: int = 64) -> list[dict]:
    """One row per (model, format): GB of weights, of KV cache (at ``context``, default the
    model's maximum) and in total, and whether it fits each device."""
    rows = []
    for name in models:
        card = get_card(name)
        ctx = card.max_context if context is None else context
        for fmt in formats:
            m = model_memory(card, fmt, ctx, group_size=group_size)
            row = {"model": name, "format": fmt, "context": ctx, "params_B": round(m["params"] / 1e9, 3),
                   "weights_GB": round(m["weight_bytes"] / 1e9, 2), "kv_GB": round(m["kv_bytes"] / 1e9, 2),
                   "total_GB": round(m["total_bytes"] / 1e9, 2)}
            for dev in devices:
                row[f"fits {dev}"] = fits(m["total_bytes"], dev, usable_fraction)
            rows.append(row)
    return rows
