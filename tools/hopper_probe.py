"""One run on a Hopper GPU that says what each switch of the Hopper FlashAttention rung pays.

    python tools/hopper_probe.py --out $OUT/hopper.json            # on the H200: ends by ~235 s
                                                                   # (--budget-s 220, watchdog +15 s)
    python tools/hopper_probe.py --dry-run --out /tmp/hopper.json  # any CPU, interpreter, < 2 min

What it does, in this order (the most informative rows first, a hard time budget on the rest):

1. Starts ``--workers`` compile processes that compile every kernel the run will need for sm90
   (this module's variants, and the autotuning candidates of today's ``flash_attention``) ahead
   of time into Triton's on-disk cache, so that the timed process mostly loads compiled kernels.
   A variant that fails to compile is recorded with the head of its traceback; the run goes on.
2. Screen at N = 4K for each (D, causal) group in the order D=128 non-causal, D=64 non-causal,
   D=128 causal, D=64 causal: every forward variant (TMA off / host / device descriptors × warp
   specialisation × split causal loops × grid order × tiles) is checked against today's
   ``flash_attention`` output at that shape (max |Δ| < 2e-2 in bf16) and against SDPA's math
   backend on float64 copies of a small shape (N = 512), then timed; then the backward variants
   (the atomic-dQ kernel with several tiles and TMA modes, and today's FA2 backward) behind the
   best forward, gradients checked against today's (relative max |Δ| < 3e-2). Today's kernel,
   cuDNN (SDPA) and FlexAttention (within ``--flex-budget-s`` of compiling) are timed alongside.
3. Sweep the other sequence lengths (512, 16K, 1K, 8K, 2K) with the best two forward variants
   and the best backward of each kind (atomic dQ, FA2) of each group, plus the baselines, as
   long as the budget lasts (``--budget-s``): a shape is started only if the slowest shape so far
   would still fit. Today's kernel is timed twice at each screen (the method's spread).
4. Prints a table (TFLOP/s; ratios to cuDNN, today's kernel, Flex) and writes JSON (device,
   date, versions, every row, compile reports, per-feature on/off ratios, the summary).

Timing is GPU time: a CUDA graph of the call replayed (``effsmall.measure.benchmark(...,
cuda_graph=True)``, median). FLOPs as :func:`effsmall.bench.attention.attention_flops`
(4·B·H·N²·D, halved when causal, ×3.5 for forward + backward). Shapes as the attention suite:
bf16, B·N = 16K tokens, H = 2048 / D.

``--dry-run`` (alias ``--device cpu``) runs the same code on a CPU under the Triton interpreter
with tiny shapes, a few variants and two compile workers that compile two kernels for sm90 (to
check the worker path); no cuDNN, no Flex. It checks that the script has no Python errors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

T_START = time.time()
PEAK_TFLOPS = 790.0                       # bf16 matrix-product ceiling measured on the H200 (KINDS.md)
TOKENS, HIDDEN = 16 * 1024, 2048
GROUPS = ((128, False), (64, False), (128, True), (64, True))   # the order the screen runs in
SCREEN_N = 4096
SWEEP_N = (512, 16384, 1024, 8192, 2048)                       # extremes first
FWD_TOL, BWD_REL_TOL = 2e-2, 3e-2


def _finite(x):
    """``x`` with NaN and infinities (a failed check's errors) as None, so the file is strict JSON."""
    if isinstance(x, float):
        return x if x == x and abs(x) != float("inf") else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def elapsed() -> float:
    return time.time() - T_START


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def err_head(e: BaseException, lines: int = 4) -> str:
    """The first line of an exception and the last lines of its traceback, one string."""
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    text = "".join(tb).strip().splitlines()
    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return (msg + " | " + " / ".join(x.strip() for x in text[-lines:]))[:1200]


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------
def fwd_variant(tma, ws, cfg, split=None, grid="m_rev"):
    return dict(tma=tma, warp_specialize=ws, causal_split=split, grid=grid, config=tuple(cfg))


def fwd_name(v) -> str:
    split = {None: "", True: "+split", False: "+nosplit"}[v["causal_split"]]
    bm, bn, w, s = v["config"]
    return f"{v['tma']}{'+ws' if v['warp_specialize'] else ''}{split}/{v['grid']}/{bm}x{bn}w{w}s{s}"


def bwd_variant(backward, tma="host", cfg=(32, 128, 8, 2)):
    return dict(backward=backward, bwd_tma=tma, bwd_config=tuple(cfg) if backward == "atomic" else None)


def bwd_name(v) -> str:
    if v["backward"] == "fa2":
        return "fa2(autotuned)"
    bm, bn, w, s = v["bwd_config"]
    return f"atomic/{v['bwd_tma']}/{bm}x{bn}w{w}s{s}"


def screen_fwd(D: int, causal: bool, dry: bool) -> list[dict]:
    """The forward variants screened for one (D, causal) group, most promising first."""
    if dry:
        return [fwd_variant("device", True, (16, 16, 4, 2)), fwd_variant("host", False, (16, 32, 8, 2)),
                fwd_variant("off", False, (16, 32, 8, 2)), fwd_variant("host", False, (16, 32, 8, 2), None, "persistent"),
                fwd_variant("device", False, (32, 16, 4, 2), False, "bh")]
    big = (128, 128, 8, 2)
    ws_cfgs = [(128, 64, 4, 2), (128, 64, 4, 3), (128, 128, 4, 2)] if D == 128 else \
        [(128, 128, 4, 2), (128, 64, 4, 2), (128, 128, 4, 3)]
    vs = [fwd_variant("device", True, c) for c in ws_cfgs]                 # FA3-style: producer + 2 consumers
    vs.append(fwd_variant("device", False, ws_cfgs[0], None if not causal else False))  # the same, not specialised
    if not causal:
        for tma in ("host", "off"):
            vs += [fwd_variant(tma, False, c) for c in (big, (128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 4, 2))]
        vs += [fwd_variant("device", False, big),
               fwd_variant("host", False, big, grid="m"),
               fwd_variant("host", False, big, grid="persistent2" if D == 64 else "persistent")]
    else:
        for tma in ("host", "off"):
            vs += [fwd_variant(tma, False, c, True) for c in (big, (128, 64, 4, 3))]
        vs += [fwd_variant("host", False, (128, 128, 8, 3), True),
               fwd_variant("host", False, big, False),                      # one masked loop
               fwd_variant("device", True, ws_cfgs[0], True),               # expected to fail on Triton 3.6
               fwd_variant("host", False, big, True, "m"),                  # query blocks in order (not LPT)
               fwd_variant("host", False, big, True, "bh"),
               fwd_variant("host", False, big, True, "persistent2" if D == 64 else "persistent")]
    return vs


def screen_bwd(D: int, dry: bool) -> list[dict]:
    if dry:
        return [bwd_variant("atomic", "host", (16, 32, 4, 2)), bwd_variant("fa2")]
    return [bwd_variant("atomic", "host", (32, 128, 8, 2)), bwd_variant("atomic", "host", (64, 128, 8, 2)),
            bwd_variant("atomic", "host", (64, 64, 8, 2)), bwd_variant("atomic", "host", (32, 128, 8, 3)),
            bwd_variant("atomic", "off", (32, 128, 8, 2)), bwd_variant("atomic", "device", (32, 128, 8, 2)),
            bwd_variant("fa2")]


# ---------------------------------------------------------------------------------------------
# Ahead-of-time compilation in worker processes (fills Triton's on-disk cache)
# ---------------------------------------------------------------------------------------------
def _aot_compile(kernel, args, kwargs, target):
    """Compile ``kernel`` for ``target`` as a launch would, without a GPU (the package's
    :func:`effsmall.attention.sm90_asm.aot_compile`, imported once the interpreter flag is set)."""
    from effsmall.attention.sm90_asm import aot_compile

    return aot_compile(kernel, args, kwargs, target)


def _resource_report(ck) -> dict:
    """Warps (after warp specialisation), shared memory, and registers / spill stack from
    ``cuobjdump -res-usage`` on the cubin (Triton ships cuobjdump)."""
    import re

    import triton

    md = ck.metadata
    out = dict(num_warps=md.num_warps, shared=md.shared)
    ttgir = ck.asm.get("ttgir", "")
    out["warp_specialized"] = "ttg.warp_specialize" in ttgir
    cub = ck.asm.get("cubin")
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cub and tool.exists():
        with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
            f.write(cub)
        try:
            res = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
            m = re.search(r"REG:(\d+)\s+STACK:(\d+)", res)
            if m:
                out.update(regs=int(m.group(1)), spill_stack_bytes=int(m.group(2)))
        finally:
            os.unlink(f.name)
    return out


def _aot_job(job: dict, target) -> dict:
    """Compile one job (see :func:`make_jobs`) for ``target``; returns a report."""
    import torch

    import effsmall.attention.flash_hopper as fh
    import effsmall.attention.flash_triton as ft
    from effsmall.attention.flash_triton import check_flash_inputs

    D, causal, N, B, H = job["D"], job["causal"], job["N"], job["B"], job["H"]
    q, k, v = (torch.empty(B, H, N, D, dtype=torch.bfloat16) for _ in range(3))
    scale, lo, hi = check_flash_inputs(q, k, v, causal=causal)
    got = {}
    if job["kind"] in ("hfwd", "hbwd"):
        def launch(kernel, grid, args, kwargs, cfg, warmup):
            got["ck"] = _aot_compile(kernel, args, dict(kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages),
                                     target)
        saved = (fh._launch, fh._ensure_allocator)
        fh._launch, fh._ensure_allocator = launch, (lambda: None)
        try:
            plan = fh.make_plan(**job["plan"])
            if job["kind"] == "hfwd":
                fh.launch_hopper_forward(q, k, v, lo, hi, scale, plan, warmup=True)
            else:
                o, lse, do = torch.empty_like(q), torch.empty(B, H, N), torch.empty_like(q)
                fh.launch_hopper_backward(do, q, k, v, o, lse, lo, hi, scale, plan, warmup=True)
        finally:
            fh._launch, fh._ensure_allocator = saved
    elif job["kind"] == "ftpre":   # the Δ = rowsum(dO ∘ O) preprocess both backwards launch
        lse = torch.empty(B, H, N)
        got["ck"] = _aot_compile(ft._bwd_preprocess, (q, q, lse, q, *q.stride()[:3], *q.stride()[:3], lse.stride(0),
                                                      lse.stride(1), H, N),
                                 dict(D=D, BLOCK_D=D, VARLEN=False, BLOCK_M=64), target)
    else:                           # "ft": one autotuning candidate of today's kernels
        kind = job["ft_kind"]
        cap = {}

        def capture(tuned, k_, tune_key, autotune, grid_fn, *args, **kwargs):
            cap[k_] = (args, kwargs)

        class _NoLaunch:
            def __getitem__(self, grid):
                return lambda *a, **kw: None
        saved = (ft._launch, ft._bwd_preprocess)
        ft._launch, ft._bwd_preprocess = capture, _NoLaunch()
        try:
            if kind == "fwd":
                ft.launch_forward(q, k, v, lo, hi, scale)
            else:
                o, lse, do = torch.empty_like(q), torch.empty(B, H, N), torch.empty_like(q)
                ft.launch_backward(do, q, k, v, o, lse, lo, hi, scale)
        finally:
            ft._launch, ft._bwd_preprocess = saved
        args, kwargs = cap[kind]
        bm, bn, w, s = job["config"]
        # the autotuner launches with Config.all_kwargs(): the tile sizes, num_warps, num_ctas, num_stages
        got["ck"] = _aot_compile(ft._KERNELS[kind], args,
                                 dict(kwargs, BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_ctas=1, num_stages=s), target)
    return _resource_report(got["ck"])


def aot_worker(jobs_path: str, out_path: str, arch: int) -> None:
    """Worker process: compile the jobs in ``jobs_path`` in order, one JSON line each."""
    os.environ["TRITON_INTERPRET"] = "0"
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    jobs = json.loads(Path(jobs_path).read_text())
    with open(out_path, "a") as out:
        for job in jobs:
            out.write(json.dumps(dict(id=job["id"], started=True)) + "\n")
            out.flush()
            t = time.time()
            try:
                rep = _aot_job(job, target)
                row = dict(id=job["id"], ok=True, s=round(time.time() - t, 2), report=rep)
            except BaseException as e:  # noqa: BLE001 - a failed compile is a result
                row = dict(id=job["id"], ok=False, s=round(time.time() - t, 2), error=err_head(e))
            out.write(json.dumps(row) + "\n")
            out.flush()


class CompilePool:
    """Compile jobs in ``n`` worker processes (round-robin shards, in priority order). A worker
    that dies is restarted once on the rest of its shard; its current job counts as failed."""

    def __init__(self, jobs: list[dict], n: int, arch: int, tmp: Path):
        self.jobs = {j["id"]: j for j in jobs}
        self.results: dict = {}
        self.started: dict = {}
        self.arch, self.tmp = arch, tmp
        self.procs = []
        shards = [jobs[i::n] for i in range(n)] if n > 0 else []
        for i, shard in enumerate(shards):
            if shard:
                self._spawn(i, shard, retry=True)

    def _spawn(self, i, shard, retry):
        jobs_path = self.tmp / f"jobs{i}-{len(self.procs)}.json"
        out_path = self.tmp / f"out{i}-{len(self.procs)}.jsonl"
        jobs_path.write_text(json.dumps(shard))
        env = dict(os.environ, TRITON_INTERPRET="0", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
        p = subprocess.Popen([sys.executable, __file__, "--aot-worker", str(jobs_path), str(out_path),
                              "--arch", str(self.arch)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(dict(proc=p, out=out_path, shard=shard, retry=retry, pos=0))

    def poll(self) -> None:
        for w in list(self.procs):
            if w["out"].exists():
                with open(w["out"]) as f:
                    f.seek(w["pos"])
                    chunk = f.read()
                    done = chunk.rfind("\n") + 1
                    w["pos"] += len(chunk[:done].encode())
                for line in chunk[:done].splitlines():
                    row = json.loads(line)
                    if row.get("started"):
                        self.started[row["id"]] = w
                    else:
                        self.results[row["id"]] = row
            if w["proc"].poll() is not None and w.get("dead") is None:
                w["dead"] = True
                missing = [j for j in w["shard"] if j["id"] not in self.results]
                if missing:
                    crashed = next((j for j in missing if self.started.get(j["id"]) is w), None)
                    if crashed is not None:   # the compile of this kernel took the worker down
                        self.results[crashed["id"]] = dict(id=crashed["id"], ok=False, crashed=True,
                                                           error=f"compile worker died (exit {w['proc'].returncode}) "
                                                                 "while compiling this kernel")
                    rest = [j for j in missing if j is not crashed]
                    if rest and w["retry"]:
                        self._spawn(len(self.procs), rest, retry=False)
                    else:                     # unknown: the timed process compiles these itself
                        for j in rest:
                            self.results[j["id"]] = dict(id=j["id"], ok=None, error="compile worker gone")

    def wait(self, job_id: str, timeout: float) -> dict | None:
        """The job's report, waiting up to ``timeout`` s (None: not compiled in time)."""
        if job_id not in self.jobs:
            return None
        t_end = time.time() + timeout
        while True:
            self.poll()
            if job_id in self.results:
                return self.results[job_id]
            if time.time() > t_end:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        for w in self.procs:
            if w["proc"].poll() is None:
                w["proc"].terminate()
        for w in self.procs:
            try:
                w["proc"].wait(timeout=5)
            except subprocess.TimeoutExpired:
                w["proc"].kill()


def job_id(kind: str, D: int, causal: bool, name: str) -> str:
    return f"{kind}|D{D}|{'c' if causal else 'n'}|{name}"


def _today_jobs(D, causal, base, n_rep, kinds, smem_limit) -> list[dict]:
    """Compile jobs for the autotuning candidates of today's kernels (``flash_triton``) at one
    sequence-length bucket, pruned for this GPU's shared memory as its autotuner prunes them."""
    import torch

    import effsmall.attention.flash_triton as ft

    elt = torch.empty(0, dtype=torch.bfloat16).element_size()

    class _Q:  # what ft._prune reads of Q: the element size (the limit is this GPU's)
        def element_size(self):
            return elt
    saved = ft._smem_limit
    ft._smem_limit = lambda t: smem_limit
    jobs = []
    try:
        for ft_kind in kinds:
            configs = {"fwd": ft.FWD_CONFIGS, "dkdv": ft.DKDV_CONFIGS, "dq": ft.DQ_CONFIGS}[ft_kind]
            for c in ft._prune(ft_kind)(configs, {"Q": _Q()}, BLOCK_D=D):
                cfg = (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)
                jobs.append(dict(base, N=n_rep, B=max(1, TOKENS // n_rep), id=job_id("ft", D, causal, f"{ft_kind}/{n_rep}/{cfg}"),
                                 kind="ft", ft_kind=ft_kind, config=cfg))
    finally:
        ft._smem_limit = saved
    return jobs


def make_jobs(groups, smem_limit: int) -> list[dict]:
    """Every kernel the GPU run compiles, in the order it needs them: per group, today's forward
    candidates, the screened forward variants, today's backward candidates and the backward
    variants; then today's candidates for the short-sequence bucket (needed by the sweep)."""
    jobs: list[dict] = []
    for D, causal in groups:
        base = dict(D=D, causal=causal, N=SCREEN_N, B=TOKENS // SCREEN_N, H=HIDDEN // D)
        jobs += _today_jobs(D, causal, base, SCREEN_N, ("fwd",), smem_limit)
        jobs += [dict(base, id=job_id("hfwd", D, causal, fwd_name(v)), kind="hfwd", plan=v)
                 for v in screen_fwd(D, causal, False)]
        jobs += _today_jobs(D, causal, base, SCREEN_N, ("dkdv", "dq"), smem_limit)
        jobs.append(dict(base, id=job_id("ftpre", D, causal, "pre"), kind="ftpre"))
        jobs += [dict(base, id=job_id("hbwd", D, causal, bwd_name(v)), kind="hbwd",
                      plan=dict(tma="host", warp_specialize=False, **v))
                 for v in screen_bwd(D, False) if v["backward"] == "atomic"]
    for D, causal in groups:
        base = dict(D=D, causal=causal, H=HIDDEN // D)
        jobs += _today_jobs(D, causal, base, 512, ("fwd", "dkdv", "dq"), smem_limit)
    return jobs


def today_job_ids(jobs, D, causal, N, mode) -> list[str]:
    n_rep = SCREEN_N if N > 1024 else 512
    kinds = ("fwd",) if mode == "fwd" else ("fwd", "dkdv", "dq")
    return [j["id"] for j in jobs if j["kind"] == "ft" and j["D"] == D and j["causal"] == causal
            and j["N"] == n_rep and j["ft_kind"] in kinds]


# ---------------------------------------------------------------------------------------------
# Timing and checks
# ---------------------------------------------------------------------------------------------
class Timer:
    def __init__(self, device: str, rep_ms: float):
        self.device, self.rep_ms = device, rep_ms

    def __call__(self, fn, rep_ms: float | None = None) -> float:
        """Seconds per call: CUDA-graph replay median on a GPU; one timed call on a CPU."""
        if self.device == "cuda":
            from effsmall.measure import benchmark

            return benchmark(fn, "cuda", cuda_graph=True, rep_ms=rep_ms or self.rep_ms)
        t = time.perf_counter()   # CPU (dry run): one call, already warmed up by the caller
        fn()
        return time.perf_counter() - t


def flops(B, H, N, D, causal, mode) -> float:
    from effsmall.bench.attention import attention_flops

    return attention_flops(B, H, N, D, causal, mode)


class Probe:
    def __init__(self, args):
        import torch

        self.args = args
        self.dry = args.dry_run
        self.device = "cpu" if self.dry else "cuda"
        self.dtype = torch.float32 if self.dry else torch.bfloat16
        self.timer = Timer(self.device, args.rep_ms)
        self.rows: list[dict] = []
        self.compile: dict = {}
        self.chosen: dict = {}
        self.skipped: list[dict] = []
        self.flex_spent = 0.0
        self.flex_fn = None
        self.pool: CompilePool | None = None
        self.env: dict = {}
        self.shape_s: list[float] = []
        self.current = "setting up"

    # -- set-up -------------------------------------------------------------------------------
    def setup(self):
        import torch
        import triton

        from effsmall.measure import environment

        self.env = environment(self.device)
        self.env.update(triton=triton.__version__, torch=torch.__version__, argv=sys.argv[1:], dry_run=self.dry)
        smem = None
        if self.device == "cuda":
            props = torch.cuda.get_device_properties(0)
            cc = torch.cuda.get_device_capability(0)
            smem = props.shared_memory_per_block_optin
            self.env.update(capability=f"{cc[0]}.{cc[1]}", smem_per_block_optin=smem,
                            l2_bytes=getattr(props, "L2_cache_size", None))
            arch = cc[0] * 10 + cc[1]
            if cc[0] != 9:
                log(f"WARNING: compute capability {cc} is not Hopper: the Hopper rung is not meant for it")
        else:
            arch, smem = 90, 232448   # an H100/H200's opt-in shared memory per block
        import effsmall.attention.flash_hopper as fh

        self.env["hopper_features_in_triton"] = fh._triton_has_hopper_features()
        log(f"device {self.env.get('device_name')} torch {torch.__version__} triton {triton.__version__}")
        n_workers = self.args.workers
        if self.dry:
            n_workers = 2 if self.args.aot_in_dry_run else 0
        self.jobs = []
        if n_workers > 0:
            jobs = make_jobs(GROUPS, smem)
            if self.dry:   # two real sm90 compiles (a warp-specialised variant, a candidate of today's kernel)
                jobs = [next(j for j in jobs if j["kind"] == "hfwd"), next(j for j in jobs if j["kind"] == "ft")]
            self.jobs = jobs
            self.tmp = Path(tempfile.mkdtemp(prefix="hopper_probe_"))
            self.pool = CompilePool(jobs, n_workers, arch, self.tmp)
            log(f"{len(jobs)} compile jobs in {n_workers} worker processes")
        if self.device == "cuda":   # while the workers start
            self.env["matmul_bf16_tflops_measured"] = self.matmul_ceiling()
            log(f"bf16 8192^3 matmul: {self.env['matmul_bf16_tflops_measured']} TFLOP/s")

    @staticmethod
    def matmul_ceiling() -> float | None:
        """bf16 8192³ matrix product on random data, TFLOP/s (how the card runs today; the
        percentages use the fixed 790 measured before, METHOD.md)."""
        import torch
        import triton.testing as tt

        try:
            a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
            ms = tt.do_bench(lambda: a @ b, warmup=25, rep=100, return_mode="median")
            return 2 * 8192 ** 3 / (ms * 1e-3) / 1e12
        except Exception:  # noqa: BLE001 - informative only
            return None

    def close(self):
        if self.pool is not None:
            self.pool.poll()
            for jid, rep in self.pool.results.items():   # registers / spills / warps of every finished compile
                self.compile.setdefault(jid, rep)
            self.pool.close()

    # -- records ------------------------------------------------------------------------------
    def add(self, row: dict) -> dict:
        self.rows.append(row)
        return row

    def compile_report(self, kind, D, causal, name, wait_s: float) -> dict | None:
        """The compile worker's report for a kernel (waiting for it), or None without workers."""
        if self.pool is None:
            return None
        jid = job_id(kind, D, causal, name)
        t = time.time()
        rep = self.pool.wait(jid, wait_s)
        if rep is not None:
            self.compile[jid] = dict(rep, waited_s=round(time.time() - t, 2))
        if rep is not None and rep.get("ok") is None:
            return None     # not known: compile in this process
        return rep

    def wait_today(self, D, causal, N, mode, wait_s=60.0):
        """Let the compile workers finish today's autotuning candidates before its autotuner
        runs (then it loads them from the cache instead of compiling one after another)."""
        if self.pool is None:
            return
        for jid in today_job_ids(self.jobs, D, causal, N, mode):
            rep = self.pool.wait(jid, wait_s)
            if rep is not None:
                self.compile[jid] = rep

    # -- inputs -------------------------------------------------------------------------------
    def inputs(self, N, D, small=False):
        import torch

        if self.dry:
            B, H = 1, 2
        else:
            B, H = (1, HIDDEN // D) if small else (TOKENS // N, HIDDEN // D)
        g = torch.Generator(device=self.device).manual_seed(N * 7 + D)
        q, k, v, do = (torch.randn(B, H, N, D, device=self.device, dtype=self.dtype, generator=g) for _ in range(4))
        return B, H, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do

    # -- the implementations ------------------------------------------------------------------
    def fn_today(self, causal):
        from effsmall.attention import flash_attention

        return lambda q, k, v: flash_attention(q, k, v, causal=causal, hopper=False)

    def fn_hopper(self, causal, fwd: dict, bwd: dict | None = None):
        import effsmall.attention.flash_hopper as fh
        from effsmall.attention.flash_triton import check_flash_inputs

        plan = fh.make_plan(**fwd, **(bwd or {}))

        def f(q, k, v):
            scale, lo, hi = check_flash_inputs(q, k, v, causal=causal)
            return fh._FlashAttentionHopper.apply(q, k, v, lo, hi, scale, plan, True)
        return f

    def fn_cudnn(self, causal):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def f(q, k, v):
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return f

    def fn_flex(self, causal):
        from effsmall.bench.attention import _flex_impl

        if self.flex_fn is None:
            self.flex_fn = _flex_impl()
        return lambda q, k, v: self.flex_fn(q, k, v, causal)

    @staticmethod
    def call(fn, q, k, v, do, mode):
        import torch

        if mode == "fwd":
            return lambda: fn(q, k, v)
        return lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), do)

    def time_row(self, impl, variant, fn, q, k, v, do, D, N, B, H, causal, mode, **extra) -> dict:
        """Warm up, time, and record one (implementation, shape, mode)."""
        row = dict(kind="time", impl=impl, variant=variant, D=D, N=N, B=B, H=H, causal=causal, mode=mode, **extra)
        self.current = f"timing {impl} {variant} {mode} D={D} N={N} causal={causal}"
        call = self.call(fn, q, k, v, do, mode)
        try:
            t0 = time.time()
            call()
            self.sync()
            row["first_call_s"] = round(time.time() - t0, 2)
            s = self.timer(call, self.args.rep_ms * (2 if mode == "fwdbwd" else 1))
            fl = flops(B, H, N, D, causal, mode)
            row.update(ms=s * 1e3, tflops=fl / s / 1e12, pct_of_790=100 * fl / s / 1e12 / PEAK_TFLOPS)
        except Exception as e:  # noqa: BLE001 - a variant may fail to compile or run; record it
            row.update(ms=None, error=err_head(e))
            log(f"  {impl} {variant} {mode} D={D} N={N} causal={causal}: FAILED {row['error'][:300]}")
        return self.add(row)

    def sync(self):
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    # -- correctness ---------------------------------------------------------------------------
    def check_fwd(self, fn, ref_out, q, k, v, D, N, causal, name) -> dict:
        """Max |Δ| against today's output at this shape, and against SDPA (math, float64) on a small shape."""
        import torch
        import torch.nn.functional as F

        row = dict(kind="check", impl="hopper", variant=name, D=D, N=N, causal=causal, mode="fwd")
        self.current = f"checking {name} fwd D={D} N={N} causal={causal}"
        try:
            with torch.no_grad():
                out = fn(q, k, v)
                row["max_abs_vs_today"] = (out.float() - ref_out.float()).abs().max().item()
                row["nan"] = bool(torch.isnan(out).any())
                Ns = 32 if self.dry else 512
                _, _, qs, ks, vs, _ = self.inputs(Ns, D, small=True)
                ref = F.scaled_dot_product_attention(qs.double(), ks.double(), vs.double(), is_causal=causal)
                row["max_abs_vs_math_fp32"] = (fn(qs, ks, vs).double() - ref).abs().max().item()
            row["ok"] = (not row["nan"] and row["max_abs_vs_today"] < FWD_TOL and row["max_abs_vs_math_fp32"] < FWD_TOL)
        except Exception as e:  # noqa: BLE001
            row.update(ok=False, error=err_head(e))
        self.compiled_info(row)
        return self.add(row)

    def check_bwd(self, fn, ref_grads, q, k, v, do, D, N, causal, name) -> dict:
        import torch

        row = dict(kind="check", impl="hopper", variant=name, D=D, N=N, causal=causal, mode="fwdbwd")
        self.current = f"checking {name} fwdbwd D={D} N={N} causal={causal}"
        try:
            grads = torch.autograd.grad(fn(q, k, v), (q, k, v), do)
            rels = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(grads, ref_grads)]
            row.update(rel_vs_today=dict(zip(("dq", "dk", "dv"), rels)), ok=all(r < BWD_REL_TOL for r in rels))
        except Exception as e:  # noqa: BLE001
            row.update(ok=False, error=err_head(e))
        self.compiled_info(row, "_hopper_bwd_kernel")
        return self.add(row)

    def compiled_info(self, row, kernel="_hopper_fwd_kernel"):
        import effsmall.attention.flash_hopper as fh

        ck = fh.last_compiled.pop(kernel, None)
        if ck is None or self.device != "cuda":
            return
        try:
            row.update(compiled_num_warps=ck.metadata.num_warps, n_regs=ck.n_regs, n_spills=ck.n_spills,
                       shared=ck.metadata.shared)
        except Exception:  # noqa: BLE001 - introspection is a bonus
            pass

    # -- the run ------------------------------------------------------------------------------
    def screen(self, D, causal):
        """Every variant of one group at the headline length."""
        import torch

        N = 48 if self.dry else SCREEN_N
        B, H, q, k, v, do = self.inputs(N, D)
        log(f"screen D={D} causal={causal} N={N} (B={B}, H={H})")
        today = self.fn_today(causal)
        self.wait_today(D, causal, N, "fwd")
        t_today = self.time_row("today", "flash_attention", today, q, k, v, do, D, N, B, H, causal, "fwd")
        with torch.no_grad():
            ref_out = today(q, k, v)
        results = []
        for var in screen_fwd(D, causal, self.dry):
            name = fwd_name(var)
            if self.over_budget(reserve=15):
                self.skipped.append(dict(what="fwd variant", D=D, causal=causal, variant=name, reason="time budget"))
                continue
            rep = self.compile_report("hfwd", D, causal, name, wait_s=90)
            if rep is not None and not rep.get("ok"):
                self.add(dict(kind="check", impl="hopper", variant=name, D=D, N=N, causal=causal, mode="fwd", ok=False,
                              compile_error=rep.get("error")))
                log(f"  {name}: compile failed: {str(rep.get('error'))[:200]}")
                continue
            fn = self.fn_hopper(causal, var)
            chk = self.check_fwd(fn, ref_out, q, k, v, D, N, causal, name)
            if not chk.get("ok"):
                log(f"  {name}: check failed {({k_: chk.get(k_) for k_ in ('max_abs_vs_today', 'max_abs_vs_math_fp32', 'error')})}")
                if chk.get("error"):
                    continue
            row = self.time_row("hopper", name, fn, q, k, v, do, D, N, B, H, causal, "fwd", switches=var,
                                correct=chk.get("ok"), compiled_num_warps=chk.get("compiled_num_warps"),
                                n_spills=chk.get("n_spills"))
            self.save()
            if row.get("ms") and chk.get("ok"):
                results.append((row["ms"], var, name))
                log(f"  {name:42s} {row['tflops']:7.1f} TFLOP/s  {(t_today.get('ms') or 0) / row['ms']:.3f}x today")
        t_today2 = self.time_row("today", "flash_attention", today, q, k, v, do, D, N, B, H, causal, "fwd", repeat=2)
        if t_today.get("ms") and t_today2.get("ms"):
            log(f"  today timed twice: {t_today['ms']:.3f} / {t_today2['ms']:.3f} ms (spread of the method)")
        results.sort(key=lambda r: r[0])
        fwd_best = [r[1] for r in results[:2]]
        self.chosen[(D, causal)] = dict(fwd=fwd_best, bwd=None)
        self.baselines(D, N, B, H, causal, q, k, v, do, "fwd")
        if not fwd_best:
            return
        # backward variants behind the best forward
        self.wait_today(D, causal, N, "fwdbwd")
        with torch.enable_grad():
            ref_grads = torch.autograd.grad(today(q, k, v), (q, k, v), do)
        self.time_row("today", "flash_attention", today, q, k, v, do, D, N, B, H, causal, "fwdbwd")
        bres = []
        for bv in screen_bwd(D, self.dry):
            name = f"{fwd_name(fwd_best[0])} + {bwd_name(bv)}"
            if self.over_budget(reserve=15):
                self.skipped.append(dict(what="bwd variant", D=D, causal=causal, variant=name, reason="time budget"))
                continue
            if bv["backward"] == "atomic":
                rep = self.compile_report("hbwd", D, causal, bwd_name(bv), wait_s=90)
                if rep is not None and not rep.get("ok"):
                    self.add(dict(kind="check", impl="hopper", variant=name, D=D, N=N, causal=causal, mode="fwdbwd",
                                  ok=False, compile_error=rep.get("error")))
                    log(f"  {name}: compile failed: {str(rep.get('error'))[:200]}")
                    continue
            fn = self.fn_hopper(causal, fwd_best[0], bv)
            chk = self.check_bwd(fn, ref_grads, q, k, v, do, D, N, causal, name)
            if not chk.get("ok"):
                log(f"  {name}: grad check failed {chk.get('rel_vs_today') or chk.get('error', '')[:300]}")
                if chk.get("error"):
                    continue
            row = self.time_row("hopper", name, fn, q, k, v, do, D, N, B, H, causal, "fwdbwd",
                                switches=dict(fwd_best[0], **bv), correct=chk.get("ok"), n_spills=chk.get("n_spills"))
            if row.get("ms") and chk.get("ok"):
                bres.append((row["ms"], bv, name))
                log(f"  {name:60s} {row['tflops']:7.1f} TFLOP/s")
        bres.sort(key=lambda r: r[0])
        self.chosen[(D, causal)]["bwd"] = bres[0][1] if bres else None
        # the best of the other backward kind too: the sweep times both (fixed costs differ with N)
        other = [r for r in bres if bres and r[1]["backward"] != bres[0][1]["backward"]]
        self.chosen[(D, causal)]["bwd_alt"] = other[0][1] if other else None
        self.baselines(D, N, B, H, causal, q, k, v, do, "fwdbwd")

    def baselines(self, D, N, B, H, causal, q, k, v, do, mode):
        if self.device != "cuda":
            return
        self.time_row("cudnn", "sdpa_cudnn", self.fn_cudnn(causal), q, k, v, do, D, N, B, H, causal, mode)
        if mode == "fwd" and not self.args.no_flex and self.flex_spent < self.args.flex_budget_s \
                and not self.over_budget(reserve=40):
            t = time.time()
            self.time_row("flex", "flex_attention(compiled)", self.fn_flex(causal), q, k, v, do, D, N, B, H, causal, mode)
            self.flex_spent += time.time() - t

    def sweep_shape(self, D, causal, N):
        import torch

        choice = self.chosen.get((D, causal))
        if not choice or not choice["fwd"]:
            return
        B, H, q, k, v, do = self.inputs(N, D)
        log(f"shape D={D} causal={causal} N={N} (B={B}, H={H})")
        today = self.fn_today(causal)
        self.wait_today(D, causal, N, "fwdbwd")
        with torch.no_grad():
            ref_out = today(q, k, v)
        self.time_row("today", "flash_attention", today, q, k, v, do, D, N, B, H, causal, "fwd")
        for var in choice["fwd"]:
            fn = self.fn_hopper(causal, var)
            chk = self.check_fwd(fn, ref_out, q, k, v, D, N, causal, fwd_name(var))
            self.time_row("hopper", fwd_name(var), fn, q, k, v, do, D, N, B, H, causal, "fwd", switches=var,
                          correct=chk.get("ok"))
        self.baselines(D, N, B, H, causal, q, k, v, do, "fwd")
        self.time_row("today", "flash_attention", today, q, k, v, do, D, N, B, H, causal, "fwdbwd")
        for bv in (choice["bwd"], choice.get("bwd_alt")):
            if bv is None:
                continue
            fn = self.fn_hopper(causal, choice["fwd"][0], bv)
            self.time_row("hopper", f"{fwd_name(choice['fwd'][0])} + {bwd_name(bv)}", fn, q, k, v, do, D, N, B, H,
                          causal, "fwdbwd", switches=dict(choice["fwd"][0], **bv))
        self.baselines(D, N, B, H, causal, q, k, v, do, "fwdbwd")
        del q, k, v, do
        if self.device == "cuda":
            torch.cuda.empty_cache()

    def over_budget(self, reserve: float = 0.0) -> bool:
        return elapsed() + reserve > self.args.budget_s

    def run(self):
        groups = GROUPS if not self.dry else ((64, False), (128, True))
        for D, causal in groups:
            if self.over_budget(reserve=30):
                self.skipped.append(dict(what="screen", D=D, causal=causal, reason="time budget"))
                continue
            try:
                self.screen(D, causal)
            except Exception as e:  # noqa: BLE001 - one group's failure must not end the run
                log(f"screen D={D} causal={causal} FAILED: {err_head(e)}")
                self.skipped.append(dict(what="screen", D=D, causal=causal, reason=err_head(e)))
            self.save()
        sweep = SWEEP_N if not self.dry else (32,)
        for N in sweep:
            for D, causal in groups:
                est = max(self.shape_s, default=10.0)
                if self.over_budget(reserve=est + 5):
                    self.skipped.append(dict(what="shape", D=D, N=N, causal=causal, reason="time budget"))
                    continue
                t = time.time()
                try:
                    self.sweep_shape(D, causal, N)
                except Exception as e:  # noqa: BLE001
                    log(f"shape D={D} causal={causal} N={N} FAILED: {err_head(e)}")
                    self.skipped.append(dict(what="shape", D=D, N=N, causal=causal, reason=err_head(e)))
                self.shape_s.append(time.time() - t)
                self.save()
        if self.dry and self.pool is not None:
            for j in self.jobs:
                rep = self.pool.wait(j["id"], max(5.0, self.args.budget_s - elapsed()))
                self.compile[j["id"]] = rep or dict(ok=False, error="not compiled within the budget")
                log(f"sm90 compile check {j['id']}: {'ok ' + json.dumps(rep.get('report')) if rep and rep.get('ok') else rep}")

    # -- output -------------------------------------------------------------------------------
    def summary(self) -> dict:
        from effsmall.measure import geomean

        times = [r for r in self.rows if r.get("kind") == "time" and r.get("ms")]
        by = {}
        for r in times:
            key = (r["D"], r["N"], r["causal"], r["mode"])
            slot = by.setdefault(key, {})
            if r["impl"] == "hopper":
                if not r.get("correct", True):
                    continue
                best = slot.get("hopper")
                if best is None or r["ms"] < best["ms"]:
                    slot["hopper"] = r
                chosen = self.chosen.get((r["D"], r["causal"]))
                if chosen and chosen["fwd"]:
                    fixed = fwd_name(chosen["fwd"][0])
                    if r["mode"] == "fwdbwd":
                        fixed = f"{fixed} + {bwd_name(chosen['bwd'])}" if chosen["bwd"] else None
                    if r["variant"] == fixed:
                        slot["hopper_fixed"] = r
            elif r["impl"] not in slot or r["ms"] < slot[r["impl"]]["ms"]:
                slot[r["impl"]] = r
        out: dict = {"shapes": []}
        for (D, N, causal, mode), slot in sorted(by.items()):
            h = slot.get("hopper")
            entry = dict(D=D, N=N, causal=causal, mode=mode)
            for name in ("today", "cudnn", "flex", "hopper", "hopper_fixed"):
                if name in slot:
                    entry[f"{name}_tflops"] = slot[name]["tflops"]
            if h is not None:
                entry["hopper_variant"] = h["variant"]
                for base in ("cudnn", "today", "flex"):
                    if base in slot:
                        entry[f"hopper_vs_{base}"] = slot[base]["ms"] / h["ms"]
                    if base in slot and "hopper_fixed" in slot:
                        entry[f"fixed_vs_{base}"] = slot[base]["ms"] / slot["hopper_fixed"]["ms"]
            if "today" in slot and "cudnn" in slot:
                entry["today_vs_cudnn"] = slot["cudnn"]["ms"] / slot["today"]["ms"]
            out["shapes"].append(entry)
        for mode in ("fwd", "fwdbwd"):
            es = [e for e in out["shapes"] if e["mode"] == mode]
            for col in ("hopper_vs_cudnn", "hopper_vs_today", "hopper_vs_flex", "fixed_vs_cudnn", "fixed_vs_today",
                        "fixed_vs_flex", "today_vs_cudnn"):
                vals = [e[col] for e in es if e.get(col)]
                if vals:
                    out[f"{mode}_{col}_geomean"] = geomean(vals)
                    out[f"{mode}_{col}_min"] = min(vals)
                    out[f"{mode}_{col}_n"] = len(vals)
            best = max((e for e in es if e.get("hopper_tflops")), key=lambda e: e["hopper_tflops"], default=None)
            if best:
                out[f"{mode}_best_hopper_tflops"] = best["hopper_tflops"]
                out[f"{mode}_best_hopper_pct_of_790"] = 100 * best["hopper_tflops"] / PEAK_TFLOPS
                out[f"{mode}_best_hopper_shape"] = dict(D=best["D"], N=best["N"], causal=best["causal"])
        out["feature_effects"] = self.feature_effects()
        out["chosen"] = {f"D{D}{'c' if c else 'n'}": dict(fwd=[fwd_name(v) for v in ch["fwd"]],
                                                          bwd=bwd_name(ch["bwd"]) if ch["bwd"] else None,
                                                          bwd_alt=bwd_name(ch["bwd_alt"]) if ch.get("bwd_alt") else None)
                         for (D, c), ch in self.chosen.items()}
        return out

    def feature_effects(self) -> list[dict]:
        """Screen pairs that differ in one switch: the time ratio (off / on, > 1: the switch pays)."""
        screen = [r for r in self.rows if r.get("kind") == "time" and r["impl"] == "hopper" and r.get("ms")
                  and r["mode"] == "fwd" and r["N"] == (48 if self.dry else SCREEN_N) and r.get("correct")]
        effects = []
        keys = ("tma", "warp_specialize", "causal_split", "grid", "config")
        for i, a in enumerate(screen):
            for b in screen[i + 1:]:
                if (a["D"], a["causal"]) != (b["D"], b["causal"]):
                    continue
                sa, sb = a["switches"], b["switches"]
                diff = [kk for kk in keys if sa.get(kk) != sb.get(kk)]
                if len(diff) == 1:
                    effects.append(dict(D=a["D"], causal=a["causal"], switch=diff[0], a=str(sa[diff[0]]),
                                        b=str(sb[diff[0]]), a_ms=a["ms"], b_ms=b["ms"], b_over_a_speed=a["ms"] / b["ms"]))
        return effects

    def save(self):
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = dict(suite="hopper_probe", env=self.env, seconds=round(elapsed(), 1), budget_s=self.args.budget_s,
                    rows=self.rows, compile=self.compile, skipped=self.skipped, summary=self.summary())
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(_finite(data), indent=1, default=str, allow_nan=False) + "\n")
        tmp.replace(out)

    def table(self) -> str:
        s = self.summary()
        lines = ["", "D   causal mode    N      today  cudnn   flex  hopper   h/cudnn h/today h/flex  variant"]
        for e in s["shapes"]:
            f = lambda k: f"{e[k]:6.0f}" if e.get(k) else "     -"  # noqa: E731
            g = lambda k: f"{e[k]:7.3f}" if e.get(k) else "      -"  # noqa: E731
            lines.append(f"{e['D']:<3} {str(e['causal']):6} {e['mode']:7} {e['N']:<6} {f('today_tflops')} "
                         f"{f('cudnn_tflops')} {f('flex_tflops')} {f('hopper_tflops')}   {g('hopper_vs_cudnn')} "
                         f"{g('hopper_vs_today')} {g('hopper_vs_flex')}  {e.get('hopper_variant', '')}")
        lines.append("(TFLOP/s; h/x = x's time / hopper's time, > 1: hopper faster; hopper = fastest correct variant "
                     "measured at that shape)")
        for k in sorted(s):
            if k.endswith("_geomean") or k.endswith("_min") or "best_hopper" in k:
                v = s[k]
                lines.append(f"  {k} = {v:.3f}" if isinstance(v, float) else f"  {k} = {v}")
        lines.append(f"  chosen: {s['chosen']}")
        eff = s["feature_effects"]
        if eff:
            lines.append("feature effects at the screen length (speed of b relative to a, > 1: b faster):")
            for e in eff:
                lines.append(f"  D={e['D']} causal={e['causal']} {e['switch']}: {e['a']} -> {e['b']}: "
                             f"{e['b_over_a_speed']:.3f}")
        if self.skipped:
            lines.append(f"skipped (time budget): {len(self.skipped)} items")
        return "\n".join(lines)


def start_watchdog(probe: Probe, limit_s: float) -> None:
    """If the run is still going ``limit_s`` after its start (a hung kernel, a compile that never
    ends), write the JSON and the table of what was measured, say where it hung, and exit."""
    import threading

    def watch():
        while elapsed() < limit_s:
            time.sleep(1.0)
        log(f"WATCHDOG: still running after {limit_s:.0f} s, in: {probe.current}")
        try:
            probe.skipped.append(dict(what="run", reason=f"watchdog after {limit_s:.0f} s in: {probe.current}"))
            probe.save()
            print(probe.table(), flush=True)
        finally:
            if probe.pool is not None:
                probe.pool.close()
            os._exit(3)
    threading.Thread(target=watch, daemon=True).start()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="hopper.json", help="JSON file to write (default: hopper.json)")
    ap.add_argument("--budget-s", type=float, default=220.0,
                    help="seconds from the start after which no shape or variant is started (default 220)")
    ap.add_argument("--grace-s", type=float, default=15.0,
                    help="past budget + grace a watchdog writes what was measured and exits (default 15)")
    ap.add_argument("--dry-run", action="store_true", help="CPU + Triton interpreter, tiny shapes")
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help="cpu: same as --dry-run")
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention (its compiles are slow)")
    ap.add_argument("--flex-budget-s", type=float, default=45.0, help="seconds FlexAttention may take in all")
    ap.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 4) - 2)),
                    help="ahead-of-time compile processes (0: compile in the timed process)")
    ap.add_argument("--rep-ms", type=float, default=12.0, help="CUDA-graph replay time per measurement (ms)")
    ap.add_argument("--no-aot-in-dry-run", dest="aot_in_dry_run", action="store_false",
                    help="dry run: skip the two sm90 compile jobs that check the worker path")
    ap.add_argument("--aot-worker", nargs=2, metavar=("JOBS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--arch", type=int, default=90, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.aot_worker:
        aot_worker(*args.aot_worker, args.arch)
        return 0
    if args.device == "cpu":
        args.dry_run = True
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.no_flex = True
    import torch  # noqa: F401  (after TRITON_INTERPRET is settled)

    import effsmall  # noqa: F401  (sets TRITON_INTERPRET=1 without CUDA)

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run (or --device cpu) on a CPU", file=sys.stderr)
        return 2
    probe = Probe(args)
    start_watchdog(probe, args.budget_s + args.grace_s)
    try:
        probe.setup()
        probe.run()
    except KeyboardInterrupt:
        log("interrupted: writing what was measured")
    finally:
        probe.close()
        probe.save()
    print(probe.table(), flush=True)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
