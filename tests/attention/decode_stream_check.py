"""GPU check (run as a script, ~10 s): flash_decode's first-call timing must not read inputs that the
caller's stream has not written yet.

A decode step (``validate=False``, no synchronization) computes its lengths ``seqlens + 1`` on the
current stream just before ``flash_decode``; the first time a problem key is seen, ``_pick`` times
the candidates with ``triton.testing.do_bench_cudagraph``, which calls the kernel on a stream of its
own that does not wait for the caller's. Here the current stream is held busy (``torch.cuda._sleep``)
while the lengths still hold a huge stale value; the write of the real lengths is queued behind it.
A timing stream that does not wait reads the stale value and faults ("an illegal memory access");
one that synchronizes first reads the real lengths. Exit status 0 and "ok" when the outputs are right.

``--unfixed`` times as before the fix (no synchronization): expected to end in "an illegal memory
access" (run it in a process of its own; it ends the process's CUDA context).
"""
import sys

import torch

from effsmall.attention import decode
from effsmall.attention.decode import decode_attention_reference, flash_decode


def main() -> None:
    decode.CONFIGS = ((64, 4, 3),)        # two configs to time (and the fallback): a short check
    dev = "cuda"
    B, Hq, Hk, D, cap, L = 16, 16, 4, 64, 4096, 1000
    g = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, Hq, D, device=dev, generator=g).to(torch.bfloat16)
    k = torch.randn(B, Hk, cap, D, device=dev, generator=g).to(torch.bfloat16)
    v = torch.randn(B, Hk, cap, D, device=dev, generator=g).to(torch.bfloat16)
    lens = torch.full((B,), L, dtype=torch.int32, device=dev)
    flash_decode(q, k, v, lens, autotune=False)       # compiles the kernels; remembers no timing
    lens.fill_(2 ** 30)                               # a stale value, far outside the cache
    torch.cuda.synchronize()
    torch.cuda._sleep(1_000_000_000)                  # the current stream busy for ~0.5 s
    lens.fill_(L)                                     # queued behind the sleep, as a step's seqlens + 1
    out = flash_decode(q, k, v, lens, validate=False)   # a new problem key: times its candidates
    torch.cuda.synchronize()
    ref = decode_attention_reference(q.float(), k.float(), v.float(), lens)
    err = (out.float() - ref).abs().max().item()
    assert err <= 2e-2, f"max |error| {err}"
    print("ok: flash_decode's first-call timing waited for the caller's stream")


def _unsynchronized_gpu_time(fn, device=None) -> float:
    import triton.testing as tt

    return tt.do_bench_cudagraph(fn, rep=10)


if __name__ == "__main__":
    if "--unfixed" in sys.argv:
        decode._gpu_time = _unsynchronized_gpu_time
    main()
