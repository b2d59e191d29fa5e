"""Real small (and not so small) language models as data: their configurations and sizes.

The numbers come from each model's published ``config.json`` (the Hugging Face ids are given),
so parameter counts and memory needs are computed, not typed in. Chapter 1 uses them to show
why small models matter on phones and laptops; chapter 13 asks what fits in fp16/int8/int4;
chapter 14 scales the LLM-in-a-Flash cost model to 7B models.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelCard:
    name: str
    hf_id: str
    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    max_context: int
    ffn: str = "swiglu"          # "swiglu" (3 matrices), "relu"/"gelu" (2 matrices)
    tied_embeddings: bool = False
    learned_positions: int = 0   # rows of a learned position table (OPT), 0 for RoPE
    source: str = ""

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def layer_params(self) -> dict[str, int]:
        d, dh = self.d_model, self.d_head
        attn = d * self.n_heads * dh + 2 * d * self.n_kv_heads * dh + self.n_heads * dh * d
        ffn = (3 if self.ffn == "swiglu" else 2) * d * self.d_ff
        return {"attention": attn, "ffn": ffn, "norms": 2 * d}

    def param_count(self) -> int:
        """Weights (biases ignored: < 0.1% for these models)."""
        per_layer = sum(self.layer_params().values())
        embed = self.vocab * self.d_model * (1 if self.tied_embeddings else 2)
        return self.n_layers * per_layer + embed + self.learned_positions * self.d_model + self.d_model

    def weight_bytes(self, bits: float = 16) -> float:
        return self.param_count() * bits / 8

    def kv_cache_bytes(self, context: int, batch: int = 1, dtype_bytes: int = 2) -> int:
        """K and V of every layer for ``context`` tokens: 2·L·Hk·D·context·batch elements."""
        return 2 * self.n_layers * self.n_kv_heads * self.d_head * context * batch * dtype_bytes

    def ffn_fraction(self) -> float:
        lp = self.layer_params()
        return self.n_layers * lp["ffn"] / self.param_count()


MODEL_CARDS: dict[str, ModelCard] = {c.name: c for c in [
    ModelCard("TinyLlama-1.1B", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", vocab=32000, d_model=2048,
              n_layers=22, n_heads=32, n_kv_heads=4, d_ff=5632, max_context=2048,
              source="TinyLlama config.json; Zhang et al. 2024"),
    ModelCard("Phi-3-mini-4k", "microsoft/Phi-3-mini-4k-instruct", vocab=32064, d_model=3072,
              n_layers=32, n_heads=32, n_kv_heads=32, d_ff=8192, max_context=4096,
              source="Phi-3-mini-4k-instruct config.json; Abdin et al. 2024"),
    ModelCard("Llama-2-7B", "meta-llama/Llama-2-7b-hf", vocab=32000, d_model=4096, n_layers=32,
              n_heads=32, n_kv_heads=32, d_ff=11008, max_context=4096, source="Llama-2-7b config.json"),
    ModelCard("OPT-6.7B", "facebook/opt-6.7b", vocab=50272, d_model=4096, n_layers=32, n_heads=32,
              n_kv_heads=32, d_ff=16384, max_context=2048, ffn="relu", tied_embeddings=True,
              learned_positions=2050, source="OPT-6.7b config.json; used by LLM in a Flash"),
    ModelCard("Falcon-7B", "tiiuae/falcon-7b", vocab=65024, d_model=4544, n_layers=32, n_heads=71,
              n_kv_heads=1, d_ff=18176, max_context=2048, ffn="gelu", tied_embeddings=True,
              source="falcon-7b config.json; used by LLM in a Flash"),
]}


def get_card(name: str) -> ModelCard:
    try:
        return MODEL_CARDS[name]
    except KeyError:
        raise ValueError(f"unknown model card {name!r}; known: {sorted(MODEL_CARDS)}") from None
