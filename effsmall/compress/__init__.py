"""Making small models smaller (chapter 13).

- ``distillation_loss``/``distill``: knowledge distillation {cite}`hinton2015distilling`.
- ``quantize_int8``/``quantize_int4``/``dequantize``, ``pack_int4``/``unpack_int4``,
  ``QuantLinear``/``quantize_model``: weight-only quantization.
- ``quant_gemv``/``quant_linear``: the Triton GEMV that reads int8/int4 weights and dequantizes
  them in registers (``dequant_matmul_reference`` is its naive rung).
- ``tie_embeddings``/``share_layers``: parameter sharing (ALBERT {cite}`lan2019albert`).
- ``memory_table``/``fits``: what a real model needs in fp16/int8/int4 vs a device's memory.
"""
from effsmall._lazy import install

_EXPORTS = {
    # distillation.py
    "distillation_loss": "distillation",
    "distill": "distillation",
    # quant.py
    "quantize_int8": "quant",
    "quantize_int4": "quant",
    "dequantize": "quant",
    "pack_int4": "quant",
    "unpack_int4": "quant",
    "QuantizedTensor": "quant",
    "QuantLinear": "quant",
    "quantize_model": "quant",
    "model_bytes": "quant",
    # dequant_gemv.py
    "quant_gemv": "dequant_gemv",
    "quant_linear": "dequant_gemv",
    "dequant_matmul_reference": "dequant_gemv",
    # sharing.py
    "tie_embeddings": "sharing",
    "share_layers": "sharing",
    # memory.py
    "memory_table": "memory",
    "model_memory": "memory",
    "fits": "memory",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
