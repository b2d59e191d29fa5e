"""effsmall.data: offline corpus, cached BPE tokenizer, splits, batches, synthetic tasks."""
import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.data import (MQARConfig, OrderTaskConfig, batches, eval_batches, get_tokenizer, load_corpus,
                           mqar, order_task, token_splits)
from effsmall.data.tasks import IGNORE, MARK_A, MARK_B, PAD


def test_corpus_is_deterministic_and_small():
    text = load_corpus()
    assert 200_000 < len(text) < 5_000_000
    assert text == load_corpus.__wrapped__()


def test_tokenizer_round_trips():
    tok = get_tokenizer(2048)
    assert tok.get_vocab_size() == 2048
    s = "def f(x):\n    return x ** 2  # ünïcode ✓"
    assert tok.decode(tok.encode(s).ids) == s
    with pytest.raises(ValueError, match="vocab_size"):
        get_tokenizer(10)


def test_splits_and_batches_deterministic():
    tr, va, tok = token_splits(2048)
    assert tr.dtype == torch.long and len(va) > 0.05 * len(tr)
    assert int(tr.max()) < 2048
    x1, y1 = next(batches(tr, 4, 32, seed=3))
    x2, y2 = next(batches(tr, 4, 32, seed=3))
    assert x1.shape == (4, 32) and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    xs = list(eval_batches(va, 8, 16, max_batches=2))
    assert len(xs) == 2 and torch.equal(xs[0][0][:, 1:], xs[0][1][:, :-1])
    with pytest.raises(ValueError, match="seq_len"):
        next(batches(tr, 2, 0))


@given(P=st.integers(1, 6), extra=st.integers(0, 10), seed=st.integers(0, 100))
def test_mqar_structure(P, extra, seed):
    c = MQARConfig(num_keys=8, num_values=5, num_pairs=P, seq_len=4 * P + extra)
    x, y = mqar(7, c, seed=seed)
    x2, y2 = mqar(7, c, seed=seed)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert x.shape == y.shape == (7, c.seq_len) and int(x.max()) < c.vocab_size
    for b in range(7):
        pairs = {int(x[b, 2 * i]): int(x[b, 2 * i + 1]) for i in range(P)}
        assert len(pairs) == P                                  # distinct keys
        q = (y[b] != IGNORE).nonzero().flatten()
        assert len(q) == P
        for t in q.tolist():
            assert t >= 2 * P and pairs[int(x[b, t])] == int(y[b, t]) == int(x[b, t + 1])


def test_mqar_bad_config():
    with pytest.raises(ValueError, match="seq_len"):
        MQARConfig(num_pairs=8, seq_len=20)
    with pytest.raises(ValueError, match="num_keys"):
        MQARConfig(num_keys=4, num_pairs=8)


def test_order_task_deterministic_and_correct():
    c = OrderTaskConfig(vocab_size=10, min_len=16, max_len=40)
    t, lens, lab = order_task(200, c, seed=1)
    t2, lens2, lab2 = order_task(200, c, seed=1)
    assert torch.equal(t, t2) and torch.equal(lens, lens2) and torch.equal(lab, lab2)
    assert not torch.equal(t, order_task(200, c, seed=2)[0])
    assert 0.3 < lab.float().mean() < 0.7
    for b in range(200):
        row = t[b, :lens[b]]
        assert (t[b, lens[b]:] == PAD).all() and (row != PAD).all()
        ia, ib = (row == MARK_A).nonzero().item(), (row == MARK_B).nonzero().item()
        assert int(lab[b]) == int(ia < ib) and abs(ia - ib) >= lens[b] // 4
    with pytest.raises(ValueError, match="min_len"):
        OrderTaskConfig(min_len=50, max_len=40)


def test_split_ids_interleaves_blocks_and_checks_arguments():
    import pytest
    import torch

    from effsmall.data.splits import split_ids

    ids = torch.arange(300)
    tr, va = split_ids(ids, val_fraction=0.25, block=100)
    assert va.tolist() == [*range(75, 100), *range(175, 200), *range(275, 300)]
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, ids)
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(ids, val_fraction=1.0)
    with pytest.raises(ValueError, match="block"):
        split_ids(ids, block=8)
