"""Real small language models through Hugging Face ``transformers``.

``load_pretrained("phi-3-mini")`` / ``load_pretrained("tinyllama")`` download the weights from
the hub (Colab or any machine online; ~7.6 GB and ~2.2 GB in fp16). The *same function*
accepts a ``transformers`` config instead of a name, and then builds a randomly initialised
model locally — that is how the tests and the chapter exercise this code path offline, with
``tiny_random_model("llama")`` or ``tiny_random_model("phi3")`` (a few hundred thousand
parameters, the real architectures' code).
"""
from __future__ import annotations

import torch

from effsmall.modelcards import get_card

ALIASES = {
    "phi-3-mini": "Phi-3-mini-4k",
    "phi-3-mini-4k-instruct": "Phi-3-mini-4k",
    "phi3": "Phi-3-mini-4k",
    "tinyllama": "TinyLlama-1.1B",
    "tinyllama-1.1b": "TinyLlama-1.1B",
}


def hub_id(name: str) -> str:
    """The Hugging Face id of a model named loosely (``"phi-3-mini"``, ``"TinyLlama"``, ...)."""
    key = ALIASES.get(name.lower(), name)
    return get_card(key).hf_id


def load_pretrained(name_or_config, dtype: torch.dtype = torch.float16, device: str = "cpu"):
    """``(model, tokenizer_or_None)`` in eval mode.

    ``name_or_config``: a short name (``"phi-3-mini"``, ``"tinyllama"``), a hub id, or a
    ``transformers.PretrainedConfig`` (random weights, no download, tokenizer ``None``).
    """
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(name_or_config, PretrainedConfig):
        torch.manual_seed(0)
        model, tok = AutoModelForCausalLM.from_config(name_or_config), None
    elif isinstance(name_or_config, str):
        from transformers import AutoTokenizer

        repo = name_or_config if "/" in name_or_config else hub_id(name_or_config)
        model = AutoModelForCausalLM.from_pretrained(repo, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(repo)
    else:
        raise TypeError(f"name_or_config must be a str or a transformers config, got {type(name_or_config).__name__}")
    return model.to(device=device, dtype=dtype).eval(), tok


def tiny_config(kind: str = "llama"):
    """A tiny ``LlamaConfig`` or ``Phi3Config`` with the real models' structure (GQA for Llama)."""
    if kind == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if kind == "phi3":
        from transformers import Phi3Config
        return Phi3Config(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    raise ValueError(f"kind must be 'llama' or 'phi3', got {kind!r}")


def tiny_random_model(kind: str = "llama", dtype: torch.dtype = torch.float32):
    """A randomly initialised tiny Llama/Phi-3 built locally through :func:`load_pretrained`."""
    return load_pretrained(tiny_config(kind), dtype=dtype)[0]
