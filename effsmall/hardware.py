"""Devices as data: peak arithmetic, and the capacity and bandwidth of each memory level.

A :class:`DeviceSpec` is a datasheet in code: peak FLOP/s per dtype and a list of
:class:`MemoryLevel` from registers down to flash storage. :func:`measure_ceilings` measures
the two ceilings that matter on the machine you are on (copy bandwidth, matmul FLOP/s), and
:func:`roofline` turns a bandwidth and a peak into the attainable FLOP/s of an operation of a
given arithmetic intensity (Williams, Waterman & Patterson, 2009).

Datasheet numbers are peaks; numbers marked "≈" come from microbenchmark papers or are typical
of the device class (phones and laptops vary). Sources are listed on each spec.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from effsmall import costs

KB, MB, GB, TB = 1e3, 1e6, 1e9, 1e12
KiB, MiB, GiB = 1024, 1024**2, 1024**3


@dataclass(frozen=True)
class MemoryLevel:
    """One level of a memory hierarchy. Capacity and bandwidth are for the whole device."""

    name: str
    capacity_bytes: float
    bandwidth_Bps: float
    latency_ns: float
    note: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    kind: str                       # "gpu", "cpu" or "phone"
    peak_flops: dict[str, float]    # dtype -> dense FLOP/s (tensor cores where they exist)
    levels: tuple[MemoryLevel, ...]  # fastest first
    sources: tuple[str, ...] = field(default_factory=tuple)
    notes: str = ""

    def level(self, name: str) -> MemoryLevel:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise ValueError(f"{self.name} has no memory level {name!r}; levels: {[lv.name for lv in self.levels]}")

    @property
    def main_memory(self) -> MemoryLevel:
        """The level kernels stream from: HBM/GDDR on a GPU, DRAM on a CPU or phone."""
        for lv in self.levels:
            if lv.name in ("HBM", "GDDR6", "DRAM"):
                return lv
        raise ValueError(f"{self.name} has no main memory level")

    @property
    def sram(self) -> MemoryLevel:
        """On-chip scratchpad/cache closest to the compute units (GPU shared memory, CPU L1)."""
        return self.levels[1]

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise ValueError(f"{self.name} lists no peak for dtype {dtype!r}; it has {sorted(self.peak_flops)}")
        return self.peak_flops[dtype]

    def ridge_point(self, dtype: str) -> float:
        """Arithmetic intensity (FLOP/byte) above which an op can be compute-bound on main memory."""
        return self.peak(dtype) / self.main_memory.bandwidth_Bps


# A data-centre host: a server's DRAM behind PCIe and a local NVMe SSD.
_SERVER_HOST = (512 * GB, "over PCIe, one direction")
_SERVER_DISK = MemoryLevel("flash (NVMe)", 4 * TB, 7 * GB, 80_000, "a local PCIe 4 NVMe SSD, sequential reads")


def _gpu(name, peaks, sms, reg_per_sm, smem_per_sm, smem_bw, l2, l2_bw, hbm_name, hbm, hbm_bw, hbm_lat,
         host_bw, sources, notes="", host=_SERVER_HOST, disk=_SERVER_DISK):
    host_bytes, host_note = host
    return DeviceSpec(name, "gpu", peaks, (
        MemoryLevel("registers", sms * reg_per_sm, 8 * smem_bw, 0.5, f"{reg_per_sm // KiB} KiB per SM × {sms} SMs"),
        MemoryLevel("SRAM (shared/L1)", sms * smem_per_sm, smem_bw, 20,
                    f"{smem_per_sm // KiB} KiB per SM × {sms} SMs"),
        MemoryLevel("L2", l2, l2_bw, 150),
        MemoryLevel(hbm_name, hbm, hbm_bw, hbm_lat),
        MemoryLevel("host DRAM (PCIe)", host_bytes, host_bw, 2000, host_note),
        disk,
    ), tuple(sources), notes)


DEVICES: dict[str, DeviceSpec] = {d.name: d for d in [
    _gpu("H100 SXM", {"fp64": 67e12, "fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12,
                      "fp8": 1978.9e12, "int8": 1978.9e12},
         sms=132, reg_per_sm=256 * KiB, smem_per_sm=228 * KiB, smem_bw=33 * TB, l2=50 * MB, l2_bw=10 * TB,
         hbm_name="HBM", hbm=80 * GB, hbm_bw=3.35 * TB, hbm_lat=480, host_bw=64 * GB,
         sources=["NVIDIA H100 Tensor Core GPU datasheet (SXM5, dense tensor FLOP/s)",
                  "NVIDIA Hopper tuning guide: 228 KB shared memory per SM, 50 MB L2",
                  "≈ L2/SRAM bandwidth and latencies: Luo et al., Benchmarking and Dissecting the "
                  "Nvidia Hopper GPU Architecture, 2024"]),
    _gpu("A100 SXM", {"fp64": 19.5e12, "fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12,
                      "int8": 624e12},
         sms=108, reg_per_sm=256 * KiB, smem_per_sm=164 * KiB, smem_bw=19 * TB, l2=40 * MB, l2_bw=5 * TB,
         hbm_name="HBM", hbm=80 * GB, hbm_bw=2.039 * TB, hbm_lat=450, host_bw=32 * GB,
         sources=["NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB)",
                  "NVIDIA Ampere tuning guide: 164 KB shared memory per SM, 40 MB L2",
                  "≈ bandwidths: FlashAttention paper (Dao et al. 2022) quotes 19 TB/s SRAM, 1.5-2.0 TB/s HBM"]),
    _gpu("T4 (Colab)", {"fp32": 8.1e12, "fp16": 65e12, "int8": 130e12},
         sms=40, reg_per_sm=256 * KiB, smem_per_sm=64 * KiB, smem_bw=4 * TB, l2=4 * MB, l2_bw=1.2 * TB,
         hbm_name="GDDR6", hbm=16 * GB, hbm_bw=320 * GB, hbm_lat=600, host_bw=16 * GB,
         sources=["NVIDIA T4 datasheet (Turing, sm75: no bf16, 64 KB shared memory per block)",
                  "Colab's free runtime: a VM with about 12.7 GB of RAM and a network-attached disk"],
         notes="Triton >= 3.3 has no tensor-core tl.dot below compute capability 8.0: FMA only.",
         host=(13 * GB, "the Colab VM's RAM (≈ 12.7 GB), over PCIe"),
         disk=MemoryLevel("disk (network)", 100 * GB, 0.2 * GB, 1_000_000,
                          "the VM's network disk (order of magnitude)")),
    DeviceSpec("Laptop CPU (M1 Max class)", "cpu",
               {"fp64": 0.4e12, "fp32": 0.8e12, "fp16": 1.6e12, "bf16": 1.6e12},
               (MemoryLevel("registers", 8 * 32 * 16, 10 * TB, 0.3, "≈ 32 vector registers × 8 P-cores"),
                MemoryLevel("L1", 8 * 128 * KiB, 2 * TB, 1, "128 KiB data cache per P-core"),
                MemoryLevel("L2", 24 * MiB, 0.8 * TB, 5, "12 MiB per P-cluster"),
                MemoryLevel("DRAM", 64 * GB, 200 * GB, 100, "unified LPDDR5 (400 GB/s chip, ≈200 GB/s for the CPU)"),
                MemoryLevel("flash (SSD)", 2 * TB, 6.1 * GB, 30_000,
                            "sequential; ≈1.25 GB/s at 4 KB random reads (LLM in a Flash, Fig. 2)")),
               ("Apple M1 Max specifications; ≈ CPU peaks are 8 P-cores × 4 NEON FMA pipes",
                "Alizadeh et al. 2023 (LLM in a Flash), flash read throughput measured on an M1 Max")),
    DeviceSpec("Phone (flagship 2024 class)", "phone",
               {"fp32": 2.8e12, "fp16": 5.6e12, "int8": 45e12},
               (MemoryLevel("registers", 64 * KiB, 5 * TB, 0.3, "≈ GPU register files"),
                MemoryLevel("L1", 1 * MiB, 1 * TB, 1, "≈ per-core caches"),
                MemoryLevel("L2", 12 * MiB, 0.3 * TB, 8, "≈ shared CPU cache / system-level cache"),
                MemoryLevel("DRAM", 12 * GB, 76.8 * GB, 120, "LPDDR5X-4800, 64-bit bus"),
                MemoryLevel("flash (UFS 4.0)", 256 * GB, 4.2 * GB, 50_000, "sequential reads")),
               ("≈ Snapdragon 8 Gen 3 class: LPDDR5X 4800 MHz (76.8 GB/s), UFS 4.0 (4.2 GB/s), "
                "Adreno 750 GPU ≈2.8 TFLOP/s fp32, NPU ≈45 TOPS int8",
                "Phi-3 report (Abdin et al. 2024): Phi-3-mini 4-bit runs on an iPhone at 12 tokens/s")),
]}


def get_device(name: str) -> DeviceSpec:
    try:
        return DEVICES[name]
    except KeyError:
        raise ValueError(f"unknown device {name!r}; known: {sorted(DEVICES)}") from None


# ---------------------------------------------------------------- roofline
def roofline(intensity: float, peak_flops: float, bandwidth_Bps: float) -> float:
    """Attainable FLOP/s = min(peak, intensity × bandwidth)."""
    if intensity <= 0 or peak_flops <= 0 or bandwidth_Bps <= 0:
        raise ValueError("intensity, peak_flops and bandwidth_Bps must be positive")
    return min(peak_flops, intensity * bandwidth_Bps)


def roofline_time(cost: costs.Cost, peak_flops: float, bandwidth_Bps: float) -> float:
    """Lower bound on run time: the larger of compute time and memory time."""
    return max(cost.flops / peak_flops, cost.bytes / bandwidth_Bps)


def roofline_ops(size: int = 4096, d_head: int = 64, dtype_bytes: int = 2) -> dict[str, costs.Cost]:
    """The chapter's five operations at one size (n = size for vectors/sequences, size³ matmul)."""
    return {
        "elementwise add": costs.elementwise_add(size * size, dtype_bytes),
        "softmax": costs.softmax(size, size, dtype_bytes),
        "matmul": costs.matmul(size, size, size, dtype_bytes),
        "naive attention": costs.attention(size, d_head, dtype_bytes=dtype_bytes),
        "fused attention": costs.attention(size, d_head, fused=True, dtype_bytes=dtype_bytes),
    }


DTYPE_BYTES = {"fp64": 8, "fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}


def plot_roofline(spec: DeviceSpec, dtype: str = "fp16", size: int = 4096, ax=None, ops=None,
                  measured: dict | None = None, legend: bool = True):
    """Draw the roofline of ``spec`` for ``dtype`` with the chapter's operations placed on it.

    ``measured`` (a ceilings record from :func:`measure_ceilings` or the bench results) adds
    the measured roof as a dashed line. ``legend=False`` leaves the legend to the caller (one
    legend for several panels: the labels then omit the panel-specific intensities).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    ax = ax or plt.subplots(figsize=(7, 4.5))[1]
    peak, bw = spec.peak(dtype), spec.main_memory.bandwidth_Bps
    ops = ops or roofline_ops(size, dtype_bytes=DTYPE_BYTES[dtype])
    x = np.logspace(-2, 4, 200)
    ax.loglog(x, np.minimum(peak, x * bw) / 1e12, "k-", label="datasheet roof")
    if measured:
        mpeak, mbw = measured.get("peak_flops"), measured.get("copy_bandwidth_Bps")
        if mpeak and mbw:
            ax.loglog(x, np.minimum(mpeak, x * mbw) / 1e12, "k--", alpha=0.6, label="measured roof")
    for k, (name, c) in enumerate(ops.items()):
        y = roofline(c.intensity, peak, bw) / 1e12
        ax.plot(c.intensity, y, "o", ms=7, color=f"C{k}",
                label=f"{name} (I={c.intensity:.3g})" if legend else name)
    ax.axvline(spec.ridge_point(dtype), color="gray", lw=0.8, ls=":")
    ax.set_xlabel("arithmetic intensity (FLOP / byte of main memory)")
    ax.set_ylabel("attainable TFLOP/s")
    ax.set_title(f"Roofline: {spec.name}, {dtype}, size {size}")
    if legend:
        ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_hierarchy(specs=None, ax=None):
    """Each device's memory levels drawn to scale: log capacity against log bandwidth."""
    import matplotlib.pyplot as plt

    import math

    specs = specs or list(DEVICES.values())
    ax = ax or plt.subplots(figsize=(7.5, 4.8))[1]
    placed = []  # (log10 capacity, log10 bandwidth) of the labels drawn so far
    for spec in specs:
        caps = [lv.capacity_bytes for lv in spec.levels]
        bws = [lv.bandwidth_Bps for lv in spec.levels]
        ax.loglog(caps, bws, "o-", label=spec.name)
        for lv in spec.levels:
            # One label per neighbourhood: the same level of several devices sits close
            # together, and one name is enough for the cluster (the markers stay).
            pos = (math.log10(lv.capacity_bytes), math.log10(lv.bandwidth_Bps))
            if any(abs(pos[0] - x) < 1.0 and abs(pos[1] - y) < 0.35 for x, y in placed):
                continue
            placed.append(pos)
            ax.annotate(lv.name.split(" ")[0], (lv.capacity_bytes, lv.bandwidth_Bps), fontsize=8,
                        xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("capacity (bytes)")
    ax.set_ylabel("bandwidth (bytes/s)")
    ax.set_title("Memory hierarchies: every step down is bigger and slower", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    return ax


def roofline_explorer(device: str = "H100 SXM", dtype: str = "fp16", size: int = 4096, op: str = "matmul"):
    """The roofline explorer: pick a device, dtype and kernel (or type FLOPs and bytes) and watch
    its point move on the roofline. Runs in the browser (no kernel needed, so it also works in the
    online book); see :func:`effsmall.widgets.roofline_explorer`."""
    from effsmall.widgets import roofline_explorer as explorer

    return explorer(device, dtype, size, op)


# ---------------------------------------------------------------- measurement
def measure_ceilings(device: str | None = None, *, quick: bool = False) -> dict:
    """Measure copy bandwidth and matmul FLOP/s on ``device`` ("cpu" or "cuda").

    Copy bandwidth counts bytes read plus bytes written (2 × tensor bytes per copy). Matmul
    uses n×n×n products; on CUDA fp32 is measured with TF32 off ("fp32") and on ("tf32").
    Returns a dict with ``copy_bandwidth_Bps``, ``matmul_flops`` (dtype -> FLOP/s) and
    ``peak_flops`` (the best of them), plus the sizes used.
    """
    from effsmall.measure import benchmark

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    copy_mb = (1024 if cuda else 64) if not quick else (256 if cuda else 16)
    n_el = copy_mb * MiB // 4
    x = torch.randn(n_el, device=dev)
    y = torch.empty_like(x)
    t = benchmark(lambda: y.copy_(x), device=device)
    rec = {"device": device, "copy_bytes": 2 * x.numel() * 4, "copy_bandwidth_Bps": 2 * x.numel() * 4 / t}
    del x, y
    dtypes = {"fp32": torch.float32}
    if cuda:
        dtypes.update({"tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16})
    n = (8192 if not quick else 4096) if cuda else (1024 if quick else 2048)
    flops = {}
    for name, dtype in dtypes.items():
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
        try:
            t = benchmark(lambda: a @ b, device=device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
        flops[name] = 2 * n**3 / t
    rec.update(matmul_n=n, matmul_flops=flops, peak_flops=max(flops.values()))
    rec["ridge_point"] = rec["peak_flops"] / rec["copy_bandwidth_Bps"]
    return rec


def fraction_of_peak(achieved_flops: float, ceilings: dict, dtype: str = "bf16") -> float:
    """Achieved FLOP/s as a fraction of the measured matmul ceiling for ``dtype``."""
    peak = ceilings["matmul_flops"].get(dtype) or ceilings["peak_flops"]
    return achieved_flops / peak


def human_bytes(n: float) -> str:
    for unit, f in (("TB", TB), ("GB", GB), ("MB", MB), ("KB", KB)):
        if abs(n) >= f:
            return f"{n / f:.3g} {unit}"
    return f"{n:.0f} B"


def human_rate(x: float, unit: str = "FLOP/s") -> str:
    exp = int(math.log10(abs(x)) // 3) if x else 0
    prefix = {0: "", 1: "K", 2: "M", 3: "G", 4: "T", 5: "P"}.get(max(0, min(exp, 5)), "")
    return f"{x / 1000 ** max(0, min(exp, 5)):.3g} {prefix}{unit}"
