"""LLM in a Flash at book scale (chapter 14): run a model from disk under a DRAM budget.

- ``ReluLM`` / ``ReluLMConfig`` / ``load_or_train``: a small decoder LM with sparse (shifted) ReLU FFNs
- ``write_store`` / ``FlashStore``: FFN weights on disk, bundled or unbundled, coalesced parallel reads
- ``measure_read_throughput``: the disk's throughput vs chunk size and threads, cold and warm
- ``LowRankPredictor`` / ``train_predictors``: which neurons will fire, from the FFN input
- ``NeuronCache``: preallocated DRAM rows; insert appends, delete moves the last row into the hole
- ``OffloadedLM``: ``generate(prompt, max_new_tokens, dram_budget_bytes, strategy=...)``
- ``offload_cost``: the measured mechanism scaled to a 7B model with the paper's bandwidths
"""
from effsmall._lazy import install

_EXPORTS = {
    "ReluLM": "relu_lm", "ReluLMConfig": "relu_lm", "FULL_CONFIG": "relu_lm", "SMALL_CONFIG": "relu_lm",
    "train_relu_lm": "relu_lm", "load_or_train": "relu_lm", "activation_sparsity": "relu_lm",
    "decode_step": "relu_lm",
    "write_store": "flash_store", "FlashStore": "flash_store", "CorruptStoreError": "flash_store",
    "load_rest": "flash_store", "coalesce": "flash_store", "cache_dir": "flash_store",
    "measure_read_throughput": "throughput", "plot_read_throughput": "throughput", "scratch_file": "throughput",
    "LowRankPredictor": "predictor", "train_predictors": "predictor", "load_or_train_predictors": "predictor",
    "record_activations": "predictor", "quality": "predictor", "teacher_forced_agreement": "predictor",
    "NeuronCache": "neuron_cache",
    "OffloadedLM": "offloaded_lm", "STRATEGIES": "offloaded_lm", "GenerationResult": "offloaded_lm",
    "neurons_added_per_token": "offloaded_lm",
    "offload_cost": "cost_model",
}
install(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
