import numpy as np
import pytest
import torch

from effsmall.offload import STRATEGIES, OffloadedLM, ReluLM, ReluLMConfig
from effsmall.offload.predictor import LowRankPredictor, quality, record_activations, train_predictor
from effsmall.offload.relu_lm import decode_step

CFG = ReluLMConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=320, max_len=48, seq_len=16)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = ReluLM(CFG).eval().round_ffn_to_fp16()        # random weights: ≈93% of activations are 0
    ids = torch.randint(0, CFG.vocab_size, (4000,))
    preds = [train_predictor(h, a, rank=4, steps=60, recall=0.9)
             for h, a in record_activations(model, ids, n_windows=32, seq_len=16)]
    olm = OffloadedLM.from_model(model, tmp_path_factory.mktemp("store"), predictors=preds, threads=2)
    yield model, olm
    olm.close()


def test_decode_step_equals_forward():
    torch.manual_seed(1)
    model = ReluLM(CFG).eval()
    idx = torch.randint(0, CFG.vocab_size, (1, 11))
    full = model(idx)[0]                                                   # (11, vocab)
    caches = [dict() for _ in model.blocks]
    with torch.no_grad():
        steps = torch.stack([decode_step(model, int(t), i, caches) for i, t in enumerate(idx[0])])
    assert (steps - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("prompt", [[5], [1, 2, 3, 4, 5, 6, 7], [63, 0, 31]])
def test_oracle_generation_equals_in_memory_model(setup, prompt):
    model, olm = setup
    ref = model.generate(prompt, 20)
    for window in (1, 3):
        r = olm.generate(prompt, 20, olm.model_bytes // 2, strategy="oracle", window=window)
        assert r.tokens == ref
    naive = olm.generate(prompt, 20, olm.model_bytes // 2, strategy="naive")
    assert naive.tokens == ref


def test_every_strategy_runs_within_budget_and_counts_bytes(setup):
    model, olm = setup
    budget = int(0.75 * olm.model_bytes)   # the random predictors are imprecise: room for their sets
    for s in STRATEGIES:
        r = olm.generate([1, 2, 3], 5, budget, strategy=s, window=2)
        summ = r.summary()
        assert len(r.tokens) == 8 and summ["steps"] == 5
        assert r.dram_bytes <= budget
        assert all(st["read_s"] >= 0 and st["cache_s"] >= 0 for st in r.steps)
        if s == "naive":   # everything that is not resident, every token
            resident = (budget - olm.non_ffn_bytes) // olm.record_bytes * olm.record_bytes
            assert summ["bytes_per_token"] == olm.ffn_bytes - resident
    tf = olm.generate([1, 2, 3, 4], 2, budget, strategy="oracle", measure_prompt=True)
    assert tf.summary()["steps"] == 3 + 2
    big = olm.generate([1, 2, 3], 3, olm.model_bytes, strategy="naive")
    assert big.summary()["bytes_per_token"] == 0                          # all resident: nothing read


def test_bad_arguments_raise_value_error(setup):
    _, olm = setup
    with pytest.raises(ValueError, match="dram_budget_bytes"):
        olm.generate([1], 2, olm.non_ffn_bytes - 1, strategy="naive")
    with pytest.raises(ValueError, match="window"):
        olm.generate([1], 2, olm.model_bytes, strategy="oracle", window=0)
    with pytest.raises(ValueError, match="strategy"):
        olm.generate([1], 2, olm.model_bytes, strategy="mmap")
    with pytest.raises(ValueError, match="prompt"):
        olm.generate([], 2, olm.model_bytes, strategy="naive")
    with pytest.raises(ValueError, match="max_new_tokens"):
        olm.generate([1], CFG.max_len, olm.model_bytes, strategy="naive")


def test_predictor_reaches_recall_on_synthetic_activations():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(64, 12, generator=g)                                   # the "true" up-projection
    h = torch.randn(2000, 12, generator=g)
    active = (h @ W.T - 2.0) > 0                                           # (T, 64): ≈ sparse
    p = train_predictor(h, active, rank=12, steps=300, recall=0.95)
    q = quality(p.predict(h[-400:]), active[-400:])
    assert q["recall"] >= 0.9 and q["predicted_fraction"] < 0.5
    with pytest.raises(ValueError, match="recall"):
        train_predictor(h, active, recall=0.0)
    with pytest.raises(ValueError, match="rank"):
        LowRankPredictor(4, 8, rank=0)


def test_tight_budget_evicts_least_recent_and_stays_exact(setup):
    model, olm = setup
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    budget = olm.non_ffn_bytes + CFG.n_layers * olm.record_bytes * 70     # room for 70 neurons per layer
    r = olm.generate(prompt, 20, budget, strategy="oracle", window=16)
    assert r.tokens == model.generate(prompt, 20)
    assert r.dram_bytes <= budget


def test_cache_budget_is_shared_by_layer_demand(setup, tmp_path):
    model, olm = setup
    avail = 100 * olm.record_bytes
    assert olm.capacities(avail) == [50, 50] if olm.layer_demand is None else True
    uneven = OffloadedLM(olm.stores["bundled"].path.parent, CFG, predictors=olm.predictors,
                         oracle_up=olm.oracle_up, threads=2, layer_demand=[3, 1])
    assert uneven.capacities(avail) == [75, 25]
    assert uneven.capacities(10 ** 9) == [CFG.d_ff] * 2                 # capped at d_ff
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    r = uneven.generate(prompt, 12, olm.non_ffn_bytes + olm._pred_bytes() + 2 * 160 * olm.record_bytes,
                        strategy="oracle", window=4)
    assert r.tokens == model.generate(prompt, 12)
    uneven.close()
    with pytest.raises(ValueError, match="layer_demand"):
        OffloadedLM(olm.stores["bundled"].path.parent, CFG, layer_demand=[1.0])
    calibrated = OffloadedLM.from_model(model, tmp_path, predictors=olm.predictors, threads=2,
                                        calibration_ids=torch.randint(0, CFG.vocab_size, (2000,)))
    assert len(calibrated.layer_demand) == CFG.n_layers and min(calibrated.layer_demand) >= 1
    calibrated.close()
