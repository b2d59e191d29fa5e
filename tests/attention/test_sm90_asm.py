"""sm90_asm compiles the Hopper forward for an sm90 target on any machine (no GPU needed)."""
import pytest

from effsmall.attention import flash_hopper as fh
from effsmall.attention.sm90_asm import hopper_forward_asm, instructions, portable_forward_asm


def test_instructions_reads_opcodes_without_operands():
    ptx = ("\t@%p63 cp.async.bulk.tensor.2d.shared::cluster.global [%r1], [%rd2, {%r3, %r4}], [%r5];\n"
           "\twgmma.fence.sync.aligned;\n"
           "\twgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%r1}, %rd1, %rd2, 0, 1, 1, 0, 0;\n"
           "\twgmma.fence.sync.aligned;\n")
    assert instructions(ptx, "cp.async.bulk") == ["cp.async.bulk.tensor.2d.shared::cluster.global"]
    assert instructions(ptx, "wgmma") == ["wgmma.fence.sync.aligned", "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"]
    assert instructions(ptx, "setmaxnreg") == []


@pytest.mark.skipif(not fh._triton_has_hopper_features(), reason="needs Triton >= 3.4")
@pytest.mark.parametrize("D,causal,ws", [(128, False, True), (64, True, False)])
def test_forward_compiles_to_tma_and_wgmma(D, causal, ws):
    asm = hopper_forward_asm(D, causal)
    ptx = asm["ptx"]
    assert any(op.startswith("cp.async.bulk.tensor") for op in instructions(ptx, "cp.async.bulk"))
    assert any(op.startswith("wgmma.mma_async") for op in instructions(ptx, "wgmma"))
    assert bool(instructions(ptx, "setmaxnreg")) == ws                  # register hand-over between warp groups
    assert ("ttg.warp_specialize" in asm["ttgir"]) == ws
    assert asm["num_warps"] == (12 if ws else fh.DISPATCH_PLANS[(D, causal)].config.num_warps)


@pytest.mark.skipif(not fh._triton_has_hopper_features(), reason="needs Triton >= 3.4")
def test_portable_forward_copies_with_per_thread_cp_async():
    """The portable kernel's pipelined tl.load becomes 16-byte per-thread copies, no TMA."""
    ptx = portable_forward_asm(128, False)["ptx"]
    assert "cp.async.cg.shared.global" in instructions(ptx, "cp.async")
    assert not any(op.startswith("cp.async.bulk.tensor") for op in instructions(ptx, "cp.async"))
    assert any(op.startswith("wgmma.mma_async") for op in instructions(ptx, "wgmma"))
