"""``torchrun --nproc_per_node N -m effsmall.dist MODULE:FUNCTION [--backend gloo|nccl]``

Runs ``FUNCTION(rank, world_size)`` on every rank under torchrun's ``env://`` rendezvous (the
way past one machine) and prints each rank's result as one JSON line ``{"rank": r, "result": ...}``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effsmall.dist", description=__doc__)
    p.add_argument("target", help="module:function, e.g. effsmall.dist.checks:check_tp")
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"))
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args(argv)
    module, _, name = args.target.partition(":")
    if not name:
        p.error(f"target must be module:function, got {args.target!r}")
    fn = getattr(importlib.import_module(module), name)
    from effsmall.dist.launch import run_from_env
    import os
    result = run_from_env(fn, backend=args.backend, timeout=args.timeout)
    print(json.dumps({"rank": int(os.environ["RANK"]), "result": result}, default=float), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
