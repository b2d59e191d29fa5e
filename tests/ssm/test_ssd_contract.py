"""The SSD contract (effsmall.ssm._ssd_checks), checked once over every SSD rung: ssd_recurrent,
ssd_chunked, ssd_triton (interpreted on a CPU) and mamba_chunk_scan_combined.

Each rung is wrapped as ``rung(X, A, B, C, chunk_size, initial_states=None) -> (Y, final_states)``
in the SSD form (X already multiplied by Δ, A the per-step log decay ``a_t = Δ_t·A ≤ 0``).
mamba_chunk_scan_combined takes Δ and a per-head A instead: the wrapper passes ``dt = −a_t``,
``A = −1`` (+1 for the bad call with a positive log decay) and ``x = X / dt``, which is the same problem.
"""
import pytest
import torch

from effsmall.ssm._ssd_testing import ssd_inputs
from effsmall.ssm.mamba_api import mamba_chunk_scan_combined
from effsmall.ssm.ssd_chunkwise import ssd_chunked
from effsmall.ssm.ssd_recurrence import ssd_recurrent
from effsmall.ssm.ssd_kernels import ssd_triton
from effsmall.runtime import interpreting
from effsmall.testing import on_device


def _recurrent(X, A, B, C, chunk_size, initial_states=None):
    return ssd_recurrent(X, A, B, C, initial_states)


def _mamba(X, A, B, C, chunk_size, initial_states=None):
    if isinstance(X, torch.Tensor) and isinstance(A, torch.Tensor) and X.is_floating_point() and A.shape == X.shape[:3]:
        dt = A.abs()                                                       # (b, l, h) Δ_t
        X = X / dt.to(X.dtype)[..., None]                                  # x with x·Δ = X
        A = torch.full((X.shape[2],), -1.0 if bool((A <= 0).all()) else 1.0)  # (h,): a = Δ·A
    else:                                                                  # a bad call: pass it on
        dt = A
    return mamba_chunk_scan_combined(X, dt, A, B, C, chunk_size, initial_states=initial_states,
                                     return_final_states=True)


RUNGS = {"recurrent": _recurrent, "chunked": ssd_chunked, "triton": on_device(ssd_triton), "mamba": _mamba}
rungs = pytest.mark.parametrize("rung", list(RUNGS))


def _fp32(**kw):
    return ssd_inputs(dtype=torch.float32, **kw)


@rungs
@pytest.mark.parametrize("decay", ["strong", "weak", "mixed"])
def test_extreme_decays_agree_with_the_recurrence(rung, decay):
    X, A, B, C, h0 = _fp32(b=1, l=21, h=2, g=1, p=4, n=4, decay=decay)
    if rung == "mamba" and decay == "weak":
        pytest.skip("x = X / Δ with Δ ~ 1e-6 amplifies X beyond fp32's resolution")
    Y, s = RUNGS[rung](X, A, B, C, 8, initial_states=h0)
    Yr, sr = ssd_recurrent(X.double(), A.double(), B.double(), C.double(), h0.double())
    assert torch.isfinite(Y).all() and torch.isfinite(s).all()
    assert (Y.double() - Yr).abs().max().item() < 1e-4
    assert (s.double() - sr).abs().max().item() < 1e-4


MISTAKES = {   # name: (make, exception, word in the message, rungs it does not apply to)
    "X not a tensor": (lambda X, A, B, C, h0: dict(X=X.tolist()), TypeError, "X", {"mamba"}),
    "integer X": (lambda X, A, B, C, h0: dict(X=X.long()), TypeError, "X", {"mamba"}),
    "X of rank 3": (lambda X, A, B, C, h0: dict(X=X[0]), ValueError, "X", {"mamba"}),
    "A of the wrong shape": (lambda X, A, B, C, h0: dict(A=A[:, :-1]), ValueError, r"\bA\b|dt", set()),
    "C unlike B": (lambda X, A, B, C, h0: dict(C=C[..., :-1]), ValueError, "C", set()),
    "heads not a multiple of groups": (lambda X, A, B, C, h0: dict(B=B[:, :, :1].expand(-1, -1, 3, -1),
                                                                   C=C[:, :, :1].expand(-1, -1, 3, -1)),
                                       ValueError, "groups", set()),
    "positive log decay": (lambda X, A, B, C, h0: dict(A=-A), ValueError, "A", set()),
    "initial_states of the wrong shape": (lambda X, A, B, C, h0: dict(initial_states=h0[:, :, :1]),
                                          ValueError, "initial_states", set()),
    "chunk_size zero": (lambda X, A, B, C, h0: dict(chunk_size=0), ValueError, "chunk_size", {"recurrent"}),
    "chunk_size a float": (lambda X, A, B, C, h0: dict(chunk_size=4.0), TypeError, "chunk_size", {"recurrent"}),
}


@rungs
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_bad_input_gets_one_exception_type_everywhere(rung, mistake):
    make, exc, word, not_for = MISTAKES[mistake]
    if rung in not_for:
        pytest.skip("the rung has no such argument in this form")
    if rung == "triton" and mistake == "positive log decay" and not interpreting():
        pytest.skip("compiled on a GPU the sign of A is not checked (a device sync per call)")
    X, A, B, C, h0 = _fp32(l=9)
    args = dict(X=X, A=A, B=B, C=C, chunk_size=4, initial_states=None)
    args.update(make(X, A, B, C, h0))
    with pytest.raises(exc, match=word):
        RUNGS[rung](**args)
