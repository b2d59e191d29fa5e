"""Training: validation loss goes down in seconds on a tiny config, and runs are deterministic."""
import torch

from effsmall.data import batches, eval_batches, token_splits
from effsmall.models import LMConfig, build_model, train


def run(arch, steps=40, seed=0):
    tr, va, tok = token_splits(2048)
    torch.manual_seed(seed)
    model = build_model(LMConfig(vocab_size=2048, d_model=32, n_layers=2, arch=arch, n_heads=2, d_state=8,
                                 headdim=16, chunk_size=16, attn_every=2))
    val = list(eval_batches(va, 8, 32, max_batches=2))
    return train(model, batches(tr, 8, 32, seed=seed), steps, lr=1e-2, val_data=val, progress=False)


def test_training_reduces_validation_loss():
    for arch in ("transformer", "hybrid"):
        h = run(arch)
        assert len(h["loss"]) == 40 and h["val_step"] == [0, 40]
        assert h["val_loss"][-1] < h["val_loss"][0] - 0.5, (arch, h["val_loss"])


def test_training_is_deterministic():
    a, b = run("mamba2", steps=6), run("mamba2", steps=6)
    assert a == b
