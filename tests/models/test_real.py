"""The transformers path, offline: a tiny random Llama/Phi-3 built locally, quantized, compared."""
import pytest
import torch

from effsmall.compress import QuantLinear, model_bytes, quantize_model
from effsmall.models.real import hub_id, load_pretrained, tiny_random_model


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_names_map_to_hub_ids():
    assert hub_id("phi-3-mini") == "microsoft/Phi-3-mini-4k-instruct"
    assert hub_id("TinyLlama") == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    with pytest.raises(ValueError):
        hub_id("gpt-17")
    with pytest.raises(TypeError):
        load_pretrained(3)


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_tiny_model_quantized_logits_close(kind):
    model = tiny_random_model(kind)
    x = torch.randint(0, 512, (2, 11))
    with torch.no_grad():
        ref = model(x).logits
        base = model_bytes(model)
        errs = {}
        for bits in (8, 4):
            m = tiny_random_model(kind)              # same seed → same weights
            quantize_model(m, bits=bits, group_size=32)
            assert sum(isinstance(mod, QuantLinear) for mod in m.modules()) >= 2 * 4
            errs[bits] = float((m(x).logits - ref).norm() / ref.norm())
            assert model_bytes(m) < base
    assert errs[8] < 0.02 and errs[4] < 0.3 and errs[8] < errs[4], errs
