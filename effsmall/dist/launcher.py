"""Start several processes that share one ``torch.distributed`` process group, from anywhere.

Every parallel algorithm of chapter 15 is a function ``fn(rank, world_size, *args)`` that runs
once per process ("rank") and talks to the others only through ``torch.distributed``
collectives. Two ways start such a function:

* :func:`launch` — from a notebook cell or a test: ``torch.multiprocessing`` *spawns*
  ``nprocs`` fresh Python processes, each initialises the process group (gloo on CPU, NCCL with
  one GPU per rank), runs ``fn`` and sends back its (picklable) result. Spawned processes
  import ``fn`` by name, so ``fn`` must live in an importable module (the workers of this
  package live in :mod:`effsmall.dist.checks`), not in the notebook itself.
* ``torchrun --nproc_per_node N -m effsmall.dist module:function`` — the launcher PyTorch ships
  for real jobs (and for several machines): it sets ``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` and
  :func:`init_from_env` reads them (``env://``).

Failures are loud, never silent: a worker that raises makes :func:`launch` raise
``RuntimeError`` with the rank and the worker's traceback (the other workers are stopped), and
every process group gets a ``timeout`` so a collective that one rank never joins raises instead
of hanging the notebook.
"""
from __future__ import annotations

import datetime
import os
import pickle
import queue as queue_mod
import shutil
import tempfile
import time
import traceback
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["launch", "init_from_env", "run_from_env", "default_backend", "device_for_rank",
           "current_device"]


def default_backend() -> str:
    """``"nccl"`` when at least two CUDA GPUs are visible, else ``"gloo"`` (CPU processes)."""
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= 2 else "gloo"


def device_for_rank(rank: int, backend: str) -> torch.device:
    """The device a rank computes on: its own GPU under NCCL, the CPU under gloo."""
    return torch.device("cuda", rank % torch.cuda.device_count()) if backend == "nccl" else torch.device("cpu")


def current_device() -> torch.device:
    """The device this rank computes on: its GPU when the default group runs NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _check_importable(fn) -> None:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not callable(fn):
        raise TypeError(f"fn must be a function, got {type(fn).__name__}")
    if module in (None, "__main__") or "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"fn must be a module-level function of an importable module (spawned processes "
                         f"import it by name), got {module}.{qualname}")


def _setup(rank: int, world_size: int, backend: str, init_method: str, timeout: float) -> None:
    if backend == "nccl":
        torch.cuda.set_device(device_for_rank(rank, backend))
    else:
        torch.set_num_threads(1)  # the workers share the machine's cores
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout))


def _worker(rank, world_size, backend, init_method, timeout, fn, args, results):
    # Version-to-version renames of torch.distributed functions would otherwise print one
    # warning per process into the notebook.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    try:
        _setup(rank, world_size, backend, init_method, timeout)
        out = fn(rank, world_size, *args)
        results.put((rank, "ok", pickle.dumps(out)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent with its traceback
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _stop(procs) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()


def launch(fn, *args, nprocs: int = 2, backend: str = "gloo", timeout: float = 60.0) -> list:
    """Run ``fn(rank, nprocs, *args)`` in ``nprocs`` spawned processes; return the results in rank order.

    ``backend``: ``"gloo"`` (CPU, any machine) or ``"nccl"`` (one CUDA GPU per rank; needs
    ``nprocs <= torch.cuda.device_count()``). ``timeout`` (seconds) bounds every collective:
    one that not all ranks join raises in the ranks that wait. Raises ``RuntimeError`` naming
    the rank and carrying its traceback if any worker fails.
    """
    _check_importable(fn)
    if not isinstance(nprocs, int) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive int, got {nprocs!r}")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl" and (not torch.cuda.is_available() or torch.cuda.device_count() < nprocs):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise ValueError(f"backend='nccl' needs one GPU per rank: nprocs={nprocs} but {n} CUDA devices are visible")
    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # Rendezvous through a file, not a TCP port: no port to race for when launches run side by side.
    rendezvous = tempfile.mkdtemp(prefix="effsmall-launch-")
    init_method = "file://" + os.path.join(rendezvous, "store")
    procs = [ctx.Process(target=_worker, args=(r, nprocs, backend, init_method, timeout, fn, args, results),
                         daemon=True) for r in range(nprocs)]
    for p in procs:
        p.start()
    out: dict = {}
    # Spawning and importing torch takes seconds; a collective that hangs is bounded by `timeout`.
    deadline = time.monotonic() + 2 * timeout + 120
    try:
        while len(out) < nprocs:
            try:
                rank, status, payload = results.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
                if dead:
                    raise RuntimeError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} "
                                       f"before returning a result")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"launch: no result from ranks {sorted(set(range(nprocs)) - set(out))} "
                                       f"after {2 * timeout + 120:.0f} s")
                continue
            if status == "error":
                raise RuntimeError(f"rank {rank} of {nprocs} raised an exception:\n{payload}")
            out[rank] = pickle.loads(payload)
    finally:
        _stop(procs)
        shutil.rmtree(rendezvous, ignore_errors=True)
    return [out[r] for r in range(nprocs)]


def init_from_env(backend: str | None = None, timeout: float = 60.0) -> tuple[int, int]:
    """Initialise the default process group from ``torchrun``'s environment (``env://``).

    Returns ``(rank, world_size)``. ``backend`` defaults to NCCL when the ranks can each have
    a GPU (``LOCAL_RANK`` < visible GPUs), else gloo."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"init_from_env needs torchrun's environment; missing {', '.join(missing)}")
    if not dist.is_initialized():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if backend is None:
            ok = torch.cuda.is_available() and torch.cuda.device_count() > local
            backend = "nccl" if ok and int(os.environ["WORLD_SIZE"]) > 1 else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


def run_from_env(fn, *args, backend: str | None = None, timeout: float = 60.0):
    """Under ``torchrun``: initialise from the environment, run ``fn(rank, world_size, *args)``,
    tear the group down and return this rank's result."""
    rank, world = init_from_env(backend, timeout)
    try:
        return fn(rank, world, *args)
    finally:
        dist.destroy_process_group()
