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
    with pytest.raises(ValueError, match="ssd_triton needs .* x is on meta"):
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
