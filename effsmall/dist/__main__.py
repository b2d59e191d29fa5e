"""``torchrun --nproc_per_node N -m effsmall.dist MODULE:FUNCTION [--backend gloo|nccl]``

Runs ``FUNCTION(rank, world_size)`` on every rank under torchrun's ``env://`` rendezvous (the
way past one machine) and prints each rank's result as one JSON line ``{"rank": r, "result": ...}`` (with ``--out DIR``
also into ``DIR/rank<r>.json``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effsmall.dist", description=__doc__)
    p.add_argument("target", help="module:function, e.g. effsmall.dist.checks:check_tp")
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"))
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--out", default=None, help="folder for one JSON file per rank (rank<r>.json)")
    args = p.parse_args(argv)
    module, _, name = args.target.partition(":")
    if not name:
        p.error(f"target must be module:function, got {args.target!r}")
    fn = getattr(importlib.import_module(module), name)
    from effsmall.dist.launcher import run_from_env
    result = run_from_env(fn, backend=args.backend, timeout=args.timeout)
    rank = int(os.environ["RANK"])
    line = json.dumps({"rank": rank, "result": result}, default=float)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"rank{rank}.json"), "w") as f:
            f.write(line)
    os.write(sys.stdout.fileno(), (line + "\n").encode())  # one write: ranks share stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
