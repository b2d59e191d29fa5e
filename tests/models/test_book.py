"""The book's training script (effsmall.models.book): the --quick path runs exactly the GPU code."""
import json
import time

import pytest
import torch

from effsmall.models import book


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    result = book.main(["--device", "cpu", "--quick", "--out", str(out), "--budget-s", "120"])
    return out, result


def test_quick_run_writes_every_output(quick_run):
    out, result = quick_run
    assert result["errors"] == {}
    names = sorted(p.name for p in out.iterdir())
    assert names[:3] == sorted([book.LM_FILE, book.RELU_FILE, book.TOKENIZER_FILE])
    js = [p for p in out.iterdir() if p.suffix == ".json" and p.name.startswith("trained-")]
    assert len(js) == 1 and len(names) == 4
    data = json.loads(js[0].read_text())
    assert data["suite"] == "trained" and data["env"]["device"] == "cpu"
    # MQAR: every (model, seed) of the quick grid, with its steps and why it stopped
    rows = data["mqar"]["rows"]
    assert {(r["arch"], r["d_state"]) for r in rows} == {("mamba2", 2), ("mamba2", 8), ("transformer", None)}
    assert {r["seed"] for r in rows} == {0, 1}
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["stopped"] in ("steps", "converged", "time") for r in rows)
    assert data["mqar"]["n_test"] == 32 and data["mqar"]["d_model"] == 32
    assert set(data["mqar"]["summary"]) == {"mamba2 N=2", "mamba2 N=8", "transformer"}
    assert isinstance(data["mqar"]["description"], str)
    # the three LMs: curves and samples
    assert [r["arch"] for r in data["lms"]["rows"]] == list(book.ARCHS)
    for r in data["lms"]["rows"]:
        assert len(r["val_step"]) == len(r["val_loss"]) >= 2 and r["best_val_loss"] == min(r["val_loss"])
        assert [s["prompt"] for s in r["samples"]] == list(book.PROMPTS)
    # the ReLU model: sparsity before and after training, per layer
    relu = data["relu"]
    assert len(relu["sparsity_init"]) == len(relu["sparsity_trained"]) == relu["config"]["n_layers"]
    assert all(0.4 < s < 0.6 for s in relu["sparsity_init"])          # plain ReLU: half the neurons fire


def test_shipped_format_round_trips(quick_run):
    out, _ = quick_run
    assert book.has_weights(out)
    tok = book.book_tokenizer(out)
    ids = torch.tensor([tok.encode("The import statement").ids])
    for arch in book.ARCHS:
        m = book.load_lm(arch, directory=out)
        assert m.cfg.arch == arch and not m.training
        assert m(ids).shape == (1, ids.shape[1], m.cfg.vocab_size)
        m64 = book.load_lm(arch, dtype=torch.float64, directory=out)
        assert (m(ids).double() - m64(ids)).abs().max() < 1e-3        # bf16 weights, loaded exactly
    relu = book.load_relu_lm(out)
    assert relu.cfg.shift == 0.0
    # FFN weights are fp16 values: the flash copy of chapter 14 is exact
    for blk in relu.blocks:
        assert torch.equal(blk.up.weight, blk.up.weight.half().float())
    with pytest.raises(ValueError, match="arch"):
        book.load_lm("rnn", directory=out)


def test_book_token_splits_use_the_given_tokenizer():
    from effsmall.data import token_splits

    tr0, va0, tok = token_splits(book.VOCAB)                            # trained on this machine's corpus
    tr, va = book.book_token_splits(tok)
    assert torch.equal(tr, tr0) and torch.equal(va, va0)               # same corpus, same tokenizer


def test_training_uses_the_shipped_tokenizer(quick_run):
    """Models trained anywhere (another Python's corpus, a GPU machine) share the shipped token ids."""
    out, _ = quick_run
    if not book.has_weights():
        pytest.skip("this checkout ships no trained weights")
    assert book.book_tokenizer(out).to_str() == book.book_tokenizer().to_str()


def test_parallel_jobs_cover_every_model():
    import argparse

    args = argparse.Namespace(quick=False, medium=False, mqar_states=None, no_mqar_attention=False,
                              only=["mqar", "lms", "relu"], archs=list(book.ARCHS))
    jobs = [" ".join(j) for j in book._parallel_jobs(args)]
    assert jobs == [*(f"--only mqar --mqar-states {n} --no-mqar-attention" for n in book.MQAR_STATES),
                    "--only mqar --mqar-states", *(f"--only lms --archs {a}" for a in book.ARCHS), "--only relu"]
    with pytest.raises(SystemExit):                                     # parallel runs save results only
        book.main(["--parallel", "--out", "unused"])


def test_merge_trained_reassembles_a_split_run(quick_run):
    _, result = quick_run
    rows, lms = result["mqar"]["rows"], result["lms"]["rows"]
    mamba = dict(result, mqar=dict(result["mqar"], rows=[r for r in rows if r["arch"] == "mamba2"][::-1]),
                 lms={"rows": lms[1:]}, errors={})
    attn = {k: v for k, v in result.items() if k not in ("mqar", "relu")}
    attn.update(mqar=dict(result["mqar"], rows=[r for r in rows if r["arch"] == "transformer"]),
                lms={"rows": lms[:1]}, errors={"x": "y"})
    merged = book.merge_trained([mamba, attn])
    assert merged["mqar"]["rows"] == sorted(rows, key=lambda r: (r["seed"], r["arch"] == "transformer",
                                                                 r["d_state"] or 0))
    assert merged["mqar"]["summary"] == result["mqar"]["summary"]
    assert merged["mqar"]["description"] == result["mqar"]["description"]
    assert merged["lms"]["rows"] == lms and merged["relu"] == result["relu"] and merged["errors"] == {"x": "y"}
    with pytest.raises(ValueError):
        book.merge_trained([])


def test_fit_plans_to_its_time_slot_and_stops_on_convergence():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()

    def slow_batch():
        time.sleep(0.01)
        return x, y

    h = book.fit(model, loss, slow_batch, 10_000, 1e-2, slot_s=0.3, probe=5)
    assert h["planned"] < 10_000 and h["steps"] <= h["planned"] and h["seconds"] < 1.5
    h = book.fit(model, loss, lambda: (x, y), 500, 1e-2, 60.0, eval_fn=lambda: 0.0, eval_every=10,
                 stop_fn=lambda v: v <= 0.0)
    assert h["stopped"] == "converged" and h["steps"] == 10
    with pytest.raises(ValueError, match="max_steps"):
        book.fit(model, loss, lambda: (x, y), 0, 1e-2, 1.0)


def test_fit_keeps_the_best_checkpoint():
    model = torch.nn.Linear(2, 1, bias=False)
    vals = iter([3.0, 1.0, 2.0])
    seen = {}

    def ev():
        v = next(vals)
        seen[v] = model.weight.detach().clone()
        return v

    h = book.fit(model, lambda m, b: m(b).pow(2).mean(), lambda: torch.ones(4, 2), 30, 0.1, 60.0,
                 eval_fn=ev, eval_every=10, keep_best=True, warmup=1)
    assert h["best_step"] == 20 and torch.equal(model.weight, seen[1.0])


def _summary(means, spread=0.02):
    s = {f"mamba2 N={n}": {"d_state": n, "mean": m, "min": m - spread, "max": m + spread}
         for n, m in means.items()}
    s["transformer"] = {"d_state": None, "mean": 1.0, "min": 1.0, "max": 1.0}
    return s


def test_describe_mqar_says_what_the_numbers_show():
    assert book.describe_mqar(_summary({2: 0.3, 4: 0.5, 8: 0.9})).startswith("Mean accuracy rises")
    assert "within the seeds' spread" in book.describe_mqar(_summary({2: 0.3, 4: 0.29, 8: 0.9}))
    assert "beyond the seeds' spread" in book.describe_mqar(_summary({2: 0.6, 4: 0.3, 8: 0.9}))
    assert "Attention reaches 1.00" in book.describe_mqar(_summary({2: 0.3, 4: 0.5}))


def test_mqar_accuracy_counts_only_queries():
    from effsmall.data import MQARConfig, mqar

    cfg = MQARConfig(num_keys=8, num_values=8, num_pairs=2, seq_len=12)
    x, y = mqar(5, cfg, seed=0)

    class Oracle(torch.nn.Module):                     # predicts the target wherever there is one
        def forward(self, idx):
            return torch.nn.functional.one_hot(y.clamp(min=0), cfg.vocab_size).float()

    assert book.mqar_accuracy(Oracle(), x, y) == 1.0


def test_mqar_model_has_an_untied_unit_scale_embedding():
    from effsmall.data import MQARConfig

    task = MQARConfig(num_keys=16, num_values=16, num_pairs=4, seq_len=32)
    torch.manual_seed(0)
    for arch, n in (("transformer", None), ("mamba2", 4)):
        cfg = book.mqar_config(arch, n, 32, task)
        assert cfg.vocab_size == task.vocab_size and not cfg.tie_embeddings and cfg.d_ff == 0
        model = book.mqar_model(cfg)
        assert model.lm_head.weight is not model.embed.weight
        assert 0.9 < float(model.embed.weight.std()) < 1.1                # N(0, 1), not the LMs' 0.02
    assert book.mqar_config("mamba2", 4, 32, task).d_state == 4


def test_torch_kernels_pick_the_torch_paths():
    from effsmall.models import layers
    from effsmall.ssm import mamba2_block
    from effsmall.ssm.ssd_chunkwise import ssd_chunked

    with book.torch_kernels():
        assert layers.attention_backend("cuda") == "sdpa"
        assert mamba2_block._ssd_fn(torch.device("cuda"), torch.bfloat16) is ssd_chunked
    assert layers.attention_backend("cpu") == "sdpa"


@pytest.mark.gpu
def test_book_training_runs_on_the_gpu(tmp_path):
    precision = torch.get_float32_matmul_precision()
    result = book.main(["--device", "cuda", "--quick", "--out", str(tmp_path), "--budget-s", "60"])
    assert result["errors"] == {}
    assert book.has_weights(tmp_path)
    assert torch.get_float32_matmul_precision() == precision     # TF32 for training only, restored


def test_is_text_rejects_loops_of_newlines():
    assert book.is_text(" is raised when the object has no attribute of that name")
    assert not book.is_text("\n" * 32)
    assert not book.is_text(" the the the the the the the the")
    assert not book.is_text(" ok")
