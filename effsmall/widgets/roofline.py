"""Roofline explorer (chapter 02): a device from :mod:`effsmall.hardware`, a kernel, its point.

The spec carries every device's peaks and main-memory bandwidth (``DEVICES``), the FLOPs and
bytes of the chapter's operations from :func:`effsmall.hardware.roofline_ops` at each size and
element width, and the book's measured attention kernels (FLOPs and bytes from
:mod:`effsmall.costs`, achieved FLOP/s from the committed benchmark). The script only applies
the roofline formula, attainable = min(peak, intensity × bandwidth), as
:func:`effsmall.hardware.roofline` does.
"""
from __future__ import annotations

from effsmall.widgets.core import Explorer, png_of

SIZES = [2 ** p for p in range(6, 17)]


def roofline_spec(device: str = "H100 SXM", dtype: str = "fp16", size: int = 4096, op: str = "matmul") -> dict:
    """The JSON the script receives: devices, the book's operations and measured kernels."""
    from effsmall import costs, hardware

    devices = [{"name": d.name, "kind": d.kind, "peak_flops": d.peak_flops, "memory": d.main_memory.name,
                "bandwidth_Bps": d.main_memory.bandwidth_Bps} for d in hardware.DEVICES.values()]
    widths = sorted(set(hardware.DTYPE_BYTES.values()))
    ops = []
    for n in SIZES:
        for b in widths:
            for name, c in hardware.roofline_ops(n, dtype_bytes=b).items():
                ops.append({"name": name, "size": n, "dtype_bytes": b, "flops": c.flops, "bytes": c.bytes})
    return {"defaults": {"device": device, "dtype": dtype, "size": size, "op": op}, "devices": devices,
            "dtype_bytes": hardware.DTYPE_BYTES, "sizes": SIZES, "ops": ops, "measured": _measured(costs),
            "checks": [{"device": device, "dtype": dtype,
                        "attainable": hardware.roofline(7.5, hardware.get_device(device).peak(dtype),
                                                        hardware.get_device(device).main_memory.bandwidth_Bps),
                        "intensity": 7.5}]}


def _measured(costs) -> list[dict]:
    """The book's measured FlashAttention forward kernels (effsmall's Triton kernel, H100)."""
    try:
        from effsmall.measure import load_result

        res = load_result("attention", "H100")
    except (FileNotFoundError, ValueError, ImportError):
        return []
    out = []
    for r in res["rows"]:
        if r.get("kind") == "attention" and r.get("impl") == "effsmall" and r.get("mode") == "fwd":
            c = costs.attention(r["N"], r["D"], r["H"], r["B"], fused=True, causal=bool(r["causal"]))
            out.append({"name": f"effsmall flash attention fwd, N={r['N']}, D={r['D']}"
                                + (", causal" if r["causal"] else ""),
                        "device": "H100 SXM", "dtype": "bf16", "flops": c.flops, "bytes": c.bytes,
                        "measured_flops_per_s": r["tflops"] * 1e12})
    return out


def roofline_explorer(device: str = "H100 SXM", dtype: str = "fp16", size: int = 4096, op: str = "matmul", *,
                      fallback: bool = True) -> Explorer:
    """Pick a device and dtype, then one of the chapter's operations at a size, one of the book's
    measured attention kernels, or type FLOPs and bytes: the point moves on the log-log roofline
    and the explorer says whether it is memory- or compute-bound."""
    from effsmall import hardware

    spec = hardware.get_device(device)
    spec.peak(dtype)  # ValueError naming the dtype if the device has no such peak
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if op not in hardware.roofline_ops(64):
        raise ValueError(f"op must be one of {list(hardware.roofline_ops(64))}, got {op!r}")
    png = None
    if fallback:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        hardware.plot_roofline(spec, dtype, size, ax=ax)
        png = png_of(fig)
    return Explorer("roofline", roofline_spec(device, dtype, size, op), png,
                    alt=f"roofline of {device} ({dtype}) with the chapter's operations")
