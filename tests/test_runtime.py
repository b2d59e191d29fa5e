"""Host-side helpers in effsmall.runtime agree with Triton's own."""
import triton

from effsmall.runtime import cdiv, next_power_of_2


def test_host_helpers_match_triton():
    for a in (1, 7, 16, 17, 1000, 4096):
        for b in (1, 16, 64):
            assert cdiv(a, b) == triton.cdiv(a, b)
        assert next_power_of_2(a) == triton.next_power_of_2(a)
    assert next_power_of_2(3, 16) == 16 and next_power_of_2(96, 16) == 128 and next_power_of_2(0) == 1
