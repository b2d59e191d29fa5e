import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from effsmall.offload.neuron_cache import NeuronCache

RECORD = 3


def _row(i):
    return torch.full((RECORD,), float(i), dtype=torch.float16) + torch.arange(RECORD, dtype=torch.float16) / 4


ops = st.lists(st.tuples(st.booleans(), st.sets(st.integers(0, 40), max_size=6)), max_size=25)


@given(ops)
def test_insert_delete_matches_reference_set_without_reallocation(seq):
    c = NeuronCache(capacity=41, record=RECORD)
    ptr = c.data.data_ptr()
    ref: set[int] = set()
    for is_insert, ids in seq:
        if is_insert:
            new = sorted(ids - ref)
            c.insert(new, torch.stack([_row(i) for i in new]) if new else torch.empty(0, RECORD, dtype=torch.float16))
            ref |= set(new)
        else:
            gone = sorted(ids & ref)
            c.delete(gone)
            ref -= set(gone)
        assert c.resident() == ref and c.n == len(ref)
        probe = np.arange(50)                                                 # vectorised membership
        assert (c.contains(probe) == np.isin(probe, sorted(ref))).all()
        assert c.data.data_ptr() == ptr                                       # never reallocated
        for j in range(c.n):                                                  # each row holds its neuron
            assert torch.equal(c.data[j], _row(int(c.ids[j])))
            assert c.slot[int(c.ids[j])] == j


def test_ids_beyond_n_ids_grow_the_bookkeeping_not_the_data():
    c = NeuronCache(3, RECORD, n_ids=4)
    ptr = c.data.data_ptr()
    c.insert([1, 1000], torch.stack([_row(1), _row(1000)]))
    assert 1000 in c and 999 not in c and c.contains([1000, 5000]).tolist() == [True, False]
    c.delete([1000])
    assert c.resident() == {1} and c.data.data_ptr() == ptr
    with pytest.raises(ValueError, match="repeat"):
        c.insert([2, 2], torch.stack([_row(2), _row(2)]))


def test_delete_moves_last_row_into_hole():
    c = NeuronCache(4, RECORD)
    c.insert([7, 8, 9], torch.stack([_row(7), _row(8), _row(9)]))
    c.delete([7])
    assert c.ids[:c.n].tolist() == [9, 8]
    assert torch.equal(c.rows()[0], _row(9))


def test_bad_arguments_and_overflow():
    with pytest.raises(ValueError, match="capacity"):
        NeuronCache(0, 4)
    with pytest.raises(ValueError, match="record"):
        NeuronCache(4, 0)
    c = NeuronCache(2, RECORD)
    with pytest.raises(ValueError, match="rows"):
        c.insert([1], torch.zeros(2, RECORD, dtype=torch.float16))
    c.insert([1, 2], torch.stack([_row(1), _row(2)]))
    with pytest.raises(RuntimeError, match="capacity"):
        c.insert([3], _row(3)[None])
    with pytest.raises(ValueError, match="not resident"):
        c.delete([5])
    with pytest.raises(ValueError, match="already resident"):
        c.delete([1]) or c.insert([2], _row(2)[None])


def test_batched_delete_equals_one_by_one():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = NeuronCache(30, RECORD), NeuronCache(30, RECORD)
        ids = rng.choice(100, size=25, replace=False).tolist()
        for c in (a, b):
            c.insert(ids, torch.stack([_row(i) for i in ids]))
        gone = rng.choice(ids, size=rng.integers(0, 25), replace=False).tolist()
        a.delete(gone)
        for i in gone:
            b.delete([i])
        assert a.resident() == b.resident() == set(ids) - set(gone)
        for j in range(a.n):
            assert torch.equal(a.data[j], _row(int(a.ids[j])))
    with pytest.raises(ValueError, match="repeat"):
        a.delete([int(a.ids[0])] * 2)
