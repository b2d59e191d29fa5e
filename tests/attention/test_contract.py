"""The attention contract (effsmall.attention.contract), checked once over every rung of the ladder:
naive, tiled (both loop orders), the tiled backward, Triton flash_attention (+ its forward with
lse), varlen, and the decode rungs (reference and Triton kernel).

Each rung is wrapped as ``rung(q, k, v, causal=, scale=, window=) -> (o, lse or None)`` on dense
``(B, H, N, D)`` inputs. The decode rungs are always causal (their queries are the newest tokens
of the cache), so cases that need ``causal=False`` skip them.
"""
import math

import pytest
import torch

from effsmall.attention import (decode_attention_reference, flash_attention, flash_attention_varlen, flash_decode,
                                naive_attention, tiled_attention, tiled_attention_backward)
from effsmall.attention.contract import check_scale, window_bounds
from effsmall.attention.flash_triton import flash_attention_forward
from effsmall.testing import on_device

_flash, _flash_fwd, _varlen, _decode = (on_device(f) for f in (flash_attention, flash_attention_forward,
                                                               flash_attention_varlen, flash_decode))


def _naive(q, k, v, **kw):
    return naive_attention(q, k, v, **kw), None


def _tiled(order):
    def run(q, k, v, **kw):
        return tiled_attention(q, k, v, order=order, block_m=4, block_n=4, return_lse=True, **kw)
    return run


def _tiled_backward(q, k, v, **kw):
    """The backward rung validates like the forward; its output here is dq (rows that see no key: 0)."""
    try:
        o, lse = tiled_attention(q, k, v, return_lse=True, **kw)
        do = torch.ones_like(o)
    except (TypeError, ValueError):      # a bad call: the backward must reject it the same way
        o = do = lse = None
    dq, _, _ = tiled_attention_backward(q, k, v, o, do, lse, block_m=4, block_n=4, **kw)
    return dq, None


def _flash_rung(q, k, v, **kw):
    return _flash_fwd(q, k, v, **kw)


def _pack(t):
    """(1, H, N, D) -> packed (N, H, D); anything else passes through (bad-input cases)."""
    return t[0].transpose(0, 1) if isinstance(t, torch.Tensor) and t.ndim == 4 and t.shape[0] == 1 else t


def _varlen_rung(q, k, v, **kw):
    nq = q.shape[2] if isinstance(q, torch.Tensor) and q.ndim == 4 else 1
    nk = k.shape[2] if isinstance(k, torch.Tensor) and k.ndim == 4 else 1
    cu = lambda n: torch.tensor([0, n], dtype=torch.int32)  # noqa: E731
    o = _varlen(_pack(q), _pack(k), _pack(v), cu(nq), cu(nk), nq, nk, **kw)
    return o.transpose(0, 1)[None], None                                   # (1, Hq, Nq, D)


def _decode_rung(fn):
    def run(q, k, v, causal=True, **kw):
        if not causal:
            pytest.skip("decoding is always causal")
        B = k.shape[0] if isinstance(k, torch.Tensor) and k.ndim == 4 else 1
        L = k.shape[2] if isinstance(k, torch.Tensor) and k.ndim == 4 else 0
        lens = torch.full((B,), L, dtype=torch.int32)
        return fn(q, k, v, lens, return_lse=True, **kw)
    return run


RUNGS = {"naive": _naive, "tiled-fa1": _tiled("fa1"), "tiled-fa2": _tiled("fa2"), "tiled-backward": _tiled_backward,
         "flash": _flash_rung, "varlen": _varlen_rung,
         "decode-reference": _decode_rung(decode_attention_reference), "flash-decode": _decode_rung(_decode)}
rungs = pytest.mark.parametrize("rung", list(RUNGS))


def _qkv(Hq, Hk, Nq, Nk, D=16, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, Hq, Nq, D, generator=g, dtype=dtype), torch.randn(1, Hk, Nk, D, generator=g, dtype=dtype),
            torch.randn(1, Hk, Nk, D, generator=g, dtype=dtype))


def _ref(q, k, v, **kw):
    return naive_attention(q.double(), k.double(), v.double(), **kw)


# ---------------------------------------------------------------------------------------------
# Rows that see no key: output 0, log-sum-exp -inf, nothing NaN
# ---------------------------------------------------------------------------------------------
@rungs
def test_rows_that_see_no_key(rung):
    q, k, v = _qkv(2, 1, 9, 4)                   # causal, bottom-right, Nq > Nk: rows 0..4 see no key
    o, lse = RUNGS[rung](q, k, v, causal=True)
    assert torch.isfinite(o).all()
    if rung != "tiled-backward":                 # its output is dq: zero there too, checked below
        assert (o[:, :, 5:].double() - _ref(q, k, v, causal=True)[:, :, 5:]).abs().max().item() < 1e-5
    assert torch.equal(o[:, :, :5], torch.zeros_like(o[:, :, :5]))
    if lse is not None:
        assert lse.dtype == torch.float32
        assert torch.isneginf(lse[:, :, :5]).all() and torch.isfinite(lse[:, :, 5:]).all()


@pytest.mark.parametrize("rung", ["naive", "tiled-fa2", "flash", "varlen"])
def test_rows_that_see_no_key_get_zero_gradient(rung):
    q, k, v = (t.requires_grad_() for t in _qkv(2, 1, 9, 4))
    run = (lambda *a, **kw: (_flash(*a, **kw), None)) if rung == "flash" else RUNGS[rung]  # the autograd rung
    o, _ = run(q, k, v, causal=True)
    o.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(q.grad[:, :, :5], torch.zeros_like(q.grad[:, :, :5]))


@rungs
def test_window_hides_every_key_of_some_rows(rung):
    q, k, v = _qkv(2, 2, 20, 6)                  # causal + window (2, 0): rows 0..11 see nothing
    o, lse = RUNGS[rung](q, k, v, causal=True, window=(2, 0))
    assert torch.equal(o[:, :, :12], torch.zeros_like(o[:, :, :12])) and torch.isfinite(o).all()
    if lse is not None:
        assert torch.isneginf(lse[:, :, :12]).all()


# ---------------------------------------------------------------------------------------------
# Large logits: the online softmax never overflows
# ---------------------------------------------------------------------------------------------
@rungs
def test_large_logits_are_exact(rung):
    # integer q, k: every score (~1e4) is exact in fp32, so only the softmax is tested
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-30, 31, (1, 2, 21, 16), generator=g).float()
    k = torch.randint(-30, 31, (1, 2, 21, 16), generator=g).float()
    v = torch.randn(1, 2, 21, 16, generator=g)
    o, lse = RUNGS[rung](q, k, v, causal=True, scale=1.0)
    assert torch.isfinite(o).all()
    if rung != "tiled-backward":
        assert (o.double() - _ref(q, k, v, causal=True, scale=1.0)).abs().max().item() < 1e-5
    if lse is not None:
        s = (q.double() @ k.double().transpose(-1, -2)).masked_fill(torch.ones(21, 21).triu(1).bool(), -math.inf)
        assert ((lse.double() - torch.logsumexp(s, -1)) / lse.double().abs()).abs().max().item() < 1e-6


# ---------------------------------------------------------------------------------------------
# Scale and window mean the same on every rung
# ---------------------------------------------------------------------------------------------
@rungs
@pytest.mark.parametrize("causal, window", [(True, None), (True, (3, None)), (True, (-1, 0)), (False, (2, 1)),
                                            (False, (None, -5))])
def test_scale_and_window_agree_with_naive(rung, causal, window):
    if rung == "tiled-backward":
        pytest.skip("its output is a gradient")
    q, k, v = _qkv(4, 2, 7, 11)
    o, _ = RUNGS[rung](q, k, v, causal=causal, scale=0.3, window=window)
    assert (o.double() - _ref(q, k, v, causal=causal, scale=0.3, window=window)).abs().max().item() < 1e-5


def test_window_bounds_and_scale_rules():
    assert window_bounds(None) == (None, None)
    assert window_bounds(None, causal=True) == (None, 0)
    assert window_bounds((3, 2), causal=True) == (3, 0)
    assert window_bounds((-1, None)) == (None, None)
    assert window_bounds([4, -2]) == (4, None)
    assert check_scale(None, 16) == 0.25 and check_scale(2, 16) == 2.0


# ---------------------------------------------------------------------------------------------
# Bad input: one exception type per kind of mistake, the message names the argument
# ---------------------------------------------------------------------------------------------
MISTAKES = {
    "q not a tensor": (lambda q, k, v: dict(q=[1.0]), TypeError, "q"),
    "q of rank 2": (lambda q, k, v: dict(q=q[0, 0]), ValueError, "q"),
    "integer q": (lambda q, k, v: dict(q=q.long()), TypeError, "q"),
    "dtypes differ": (lambda q, k, v: dict(k=k.double(), v=v.double()), TypeError, "dtype"),
    "heads not a multiple": (lambda q, k, v: dict(q=q[:, :3]), ValueError, "heads"),
    "head dims differ": (lambda q, k, v: dict(q=q[..., :8]), ValueError, "head dim"),
    "window of three": (lambda q, k, v: dict(window=(1, 0, 2)), TypeError, "window"),
    "window of floats": (lambda q, k, v: dict(window=(1.5, 0)), TypeError, "window"),
    "window a float": (lambda q, k, v: dict(window=2.5), TypeError, "window"),
    "window a string": (lambda q, k, v: dict(window="3"), TypeError, "window"),
    "scale a string": (lambda q, k, v: dict(scale="x"), TypeError, "scale"),
    "negative scale": (lambda q, k, v: dict(scale=-1.0), ValueError, "scale"),
    "zero scale": (lambda q, k, v: dict(scale=0.0), ValueError, "scale"),
    "NaN scale": (lambda q, k, v: dict(scale=float("nan")), ValueError, "scale"),
    "infinite scale": (lambda q, k, v: dict(scale=float("inf")), ValueError, "scale"),
}


@rungs
@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_bad_input_gets_one_exception_type_everywhere(rung, mistake):
    make, exc, word = MISTAKES[mistake]
    q, k, v = _qkv(4, 2, 5, 6)
    args = dict(q=q, k=k, v=v, causal=True)
    args.update(make(q, k, v))
    with pytest.raises(exc, match=word):
        RUNGS[rung](**args)
