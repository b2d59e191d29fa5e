"""Command line: ``python -m effsmall.bench <suite> [--device cpu|cuda] [--out FILE] [--quick]``."""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time

from effsmall.bench import SUITES as _SUITES
from effsmall.measure import environment, save_result

SUITES = tuple(dict.fromkeys((*_SUITES, "gemv", "generate")))   # + chapter 13's quantized GEMV, the LMs' decoding


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m effsmall.bench", description=__doc__)
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", default=None, help="JSON file to write (default: <suite>-<device>-<date>.json)")
    p.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    args = p.parse_args(argv)

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda asked for, but torch sees no CUDA device")
    try:
        suite = importlib.import_module(f"effsmall.bench.{args.suite}")
    except ModuleNotFoundError as e:
        p.error(f"suite {args.suite!r} is not available in this version: {e}")
    env = environment(device)
    t0 = time.time()
    rows = suite.run(device=device, quick=args.quick)
    result = {"suite": args.suite, "env": env, "quick": args.quick, "seconds": round(time.time() - t0, 2),
              "rows": rows}
    if hasattr(suite, "summarize"):
        result["summary"] = suite.summarize(rows)
    slug = re.sub(r"[^a-z0-9]+", "-", env["device_name"].lower()).strip("-")
    out = args.out or f"{args.suite}-{slug}-{env['date'][:10].replace('-', '')}.json"
    save_result(result, out)
    print(json.dumps(result.get("summary", rows[:5]), indent=1, default=float))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
