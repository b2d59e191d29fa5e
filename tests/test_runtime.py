"""Host-side helpers in effsmall.runtime agree with Triton's own."""
import triton

from effsmall.runtime import cdiv, next_power_of_2


def test_host_helpers_match_triton():
    for a in (1, 7, 16, 17, 1000, 4096):
        for b in (1, 16, 64):
            assert cdiv(a, b) == triton.cdiv(a, b)
        assert next_power_of_2(a) == triton.next_power_of_2(a)
    assert next_power_of_2(3, 16) == 16 and next_power_of_2(96, 16) == 128 and next_power_of_2(0) == 1


def test_require_triton_tensor_names_the_argument():
    import pytest
    import torch

    from effsmall.runtime import interpreting, require_triton_tensor

    wrong = torch.zeros(2, device="meta")  # neither where compiled nor where interpreted kernels run
    with pytest.raises(ValueError, match="ssd_triton .* x is on meta: move the inputs"):
        require_triton_tensor("x", wrong, "ssd_triton")
    if interpreting():
        with pytest.raises(TypeError, match="x: bfloat16"):
            require_triton_tensor("x", torch.zeros(2, dtype=torch.bfloat16), "ssd_triton")
        require_triton_tensor("x", torch.zeros(2), "ssd_triton")  # fp32 on CPU: accepted


def test_check_same_device_names_the_odd_one_out():
    import pytest
    import torch

    from effsmall.ssm._ssd_checks import check_same_device

    x = torch.zeros(2)
    check_same_device("x", x, a=torch.ones(1), b=None)  # None is skipped
    with pytest.raises(ValueError, match="dt is on meta but x is on cpu"):
        check_same_device("x", x, a=torch.ones(1), dt=torch.ones(1, device="meta"))


def test_assume_cc_forces_the_turing_decisions(monkeypatch):
    """A T4 (sm75) has no tensor-core tl.dot in Triton: the models train with SDPA there."""
    from effsmall.models import attention_backend
    from effsmall.runtime import compute_capability, tensor_cores_in_triton

    monkeypatch.setenv("EFFSMALL_ASSUME_CC", "7.5")
    assert compute_capability() == (7, 5) and not tensor_cores_in_triton()
    assert attention_backend("cuda") == "sdpa"
    monkeypatch.setenv("EFFSMALL_ASSUME_CC", "9.0")
    assert attention_backend("cuda") == "flash_triton"
    assert attention_backend("cpu") == "sdpa"
    monkeypatch.setenv("EFFSMALL_ASSUME_CC", "seven")
    import pytest

    with pytest.raises(ValueError, match="EFFSMALL_ASSUME_CC"):
        compute_capability()


def _fake_gpu(monkeypatch, cc, name):
    import torch

    import effsmall.runtime as rt

    monkeypatch.setattr(rt, "cuda_available", lambda: True)
    monkeypatch.setattr(rt, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("EFFSMALL_ASSUME_CC", cc)
    monkeypatch.setenv("EFFSMALL_DEVICE_NAME", name)
    return rt.device_policy()


def test_device_policy_on_a_t4_uses_fp16_and_says_what_falls_back(monkeypatch):
    import torch

    p = _fake_gpu(monkeypatch, "7.5", "Tesla T4")
    assert p.is_gpu and p.dtype == torch.float16 and not p.tensor_cores and p.size(1, 2) == 2
    assert "Tesla T4" in p.describe() and "falls back" in p.describe() and "SDPA" in p.describe()


def test_device_policy_on_hopper_uses_bf16(monkeypatch):
    import torch

    p = _fake_gpu(monkeypatch, "9.0", "NVIDIA H200")
    assert p.dtype == torch.bfloat16 and p.tensor_cores and "falls back" not in p.describe()


def test_device_policy_on_cpu_is_the_interpreter():
    import torch

    from effsmall.runtime import device_policy, interpreting

    p = device_policy()
    if not torch.cuda.is_available():
        assert p.device.type == "cpu" and p.dtype == torch.float32 and p.interpreter == interpreting()
        assert p.size(cpu=3, gpu=4) == 3 and "interpreter" in str(p)


def test_set_ci_threads_only_under_ci(monkeypatch):
    import torch

    from effsmall.runtime import set_ci_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("CI", raising=False)
        torch.set_num_threads(2)
        set_ci_threads()
        assert torch.get_num_threads() == 2          # a reader's machine keeps its threads
        monkeypatch.setenv("CI", "true")
        set_ci_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_wrong_device_error_says_what_to_do():
    import pytest
    import torch

    from effsmall.runtime import require_triton_device

    with pytest.raises(ValueError, match="x is on meta: move the inputs"):
        require_triton_device("x", torch.zeros(1, device="meta"), "some_kernel")


def test_untuned_kernels_turns_the_autotune_default_off_and_back():
    import inspect

    from effsmall.attention import flash_attention, flash_attention_varlen, flash_decode
    from effsmall.testing import untuned_kernels

    fns = (flash_attention, flash_attention_varlen, flash_decode)
    assert all(inspect.signature(f).parameters["autotune"].default is True for f in fns)
    with untuned_kernels():
        assert all(f.__kwdefaults__["autotune"] is False for f in fns)
    assert all(f.__kwdefaults__["autotune"] is True for f in fns)
