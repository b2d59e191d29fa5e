"""Suite ``ceilings``: measured copy bandwidth and matmul FLOP/s of the current device."""
from __future__ import annotations

from effsmall.hardware import measure_ceilings


def run(device: str, quick: bool = False) -> list[dict]:
    rec = measure_ceilings(device, quick=quick)
    rows = [dict(op="copy", bytes=rec["copy_bytes"], bytes_per_s=rec["copy_bandwidth_Bps"])]
    for dtype, f in rec["matmul_flops"].items():
        rows.append(dict(op="matmul", dtype=dtype, n=rec["matmul_n"], flops_per_s=f))
    return rows


def summarize(rows: list[dict]) -> dict:
    copy = next(r for r in rows if r["op"] == "copy")
    mm = {r["dtype"]: r["flops_per_s"] for r in rows if r["op"] == "matmul"}
    peak = max(mm.values())
    return {"copy_bandwidth_Bps": copy["bytes_per_s"], "matmul_flops": mm, "peak_flops": peak,
            "ridge_point": peak / copy["bytes_per_s"]}
