"""The emulated CUDA device itself (csrc/cuda_emu; tests/cuda_device.py): its module binds the
same kernels with the same signatures as lenet5_fast._C; each check it makes fails a launch as
the GPU would (divergent barriers and shuffles, partial-warp and partial-mask shuffles, too much
shared memory, launch limits); and the op table's small shapes run every batch-chunk path and
grid-stride loop of the kernels. The faults only the sanitizers see (an out-of-bounds shared or
global access, a missing __syncthreads) are .ci/sanitize's negative controls.
Skipped where there is no emulated device."""
import re

import pytest
import torch

from cuda_device import DEVICE, Emulated, _emulator
from lenet5_fast import _C
from op_table import OPS, as_dtype

def _emulated():
    if isinstance(DEVICE, Emulated):
        return DEVICE
    module = _emulator()  # where a GPU is the tests' device
    return Emulated(module) if module is not None else None


EMU = _emulated()
pytestmark = pytest.mark.skipif(EMU is None, reason="no emulated CUDA device (build with -DLENET5_CUDA_EMU=ON)")


def test_same_bindings_as_C():
    names = sorted(n for n in dir(_C) if n.endswith(("_forward", "_backward")) and not n.startswith("lenet5_"))
    assert len(names) == 14  # the per-op kernels (lenet5_* are the fused CPU engines)
    for name in names:
        ours, theirs = getattr(EMU.kernels, name).__doc__, getattr(_C, name).__doc__
        assert ours == theirs, name
    with pytest.raises(RuntimeError, match="device must be 1"):
        EMU.kernels.activation_forward(0, False, 1, 0, 0, 1, 0)


def test_a_correct_kernel_runs():
    EMU.kernels.run_fault("with_barrier")  # checks its own result


@pytest.mark.parametrize("fault,message", [
    ("divergent_barrier", r"divergent barrier or shuffle in block \(0,0,0\): 32 threads returned; "
                          r"32 threads wait at __syncthreads csrc/cuda_emu/faults.cpp:\d+"),
    ("two_barriers", r"divergent __syncthreads: block \(0,0,0\) thread \(\d+,0,0\) waits at "
                     r"csrc/cuda_emu/faults.cpp:\d+, others at csrc/cuda_emu/faults.cpp:\d+"),
    ("partial_warp_shuffle", r"full-mask shuffle at csrc/cuda_emu/faults.cpp:\d+ in a warp of 16 threads "
                             r"\(block of 48\)"),
    ("partial_mask_shuffle", r"with mask 65535: only full-mask shuffles are emulated"),
    ("big_shared", r"static shared memory of 65536 bytes \(over 48 KiB\)"),
    ("block_too_big", r"invalid configuration argument: .* block \(1025,1,1\)"),
    ("block_z_too_big", r"invalid configuration argument: .* block \(1,1,65\)"),
    ("grid_y_too_big", r"invalid configuration argument: .* grid \(1,65536,1\)"),
    ("grid_z_too_big", r"invalid configuration argument: .* grid \(1,1,65536\)"),
])
def test_each_check_fails_the_launch(fault, message):
    with pytest.raises(RuntimeError, match=message):
        EMU.kernels.run_fault(fault)
    EMU.kernels.run_fault("with_barrier")  # the device works on after a failed launch


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_every_op_runs_on_the_emulated_kernels(entry):
    """Inside run(), each op's forward and backward launch emulated CUDA kernels (an op whose
    kernel ops.py reached some other way would run on the CPU and pass test_cuda.py for nothing)."""
    sample = max(entry.sample_inputs("cpu"), key=lambda s: s.args[0].numel())
    args = as_dtype(sample.args, torch.float32)
    EMU.kernels.record_launches(True)
    try:
        with EMU.run():
            y = entry.forward(*args)
        forward = EMU.kernels.record_launches(True)
        with EMU.run():
            entry.backward_outputs(torch.ones_like(y), y, args)
    finally:
        backward = EMU.kernels.record_launches(False)
    assert forward and backward, (forward, backward)


def _launches_of_the_table():
    """Every launch that the op table's forward and backward (and Gauss-Newton) calls make."""
    EMU.kernels.record_launches(True)
    try:
        with EMU.run():
            for entry in OPS:
                for sample in entry.sample_inputs("cpu"):
                    args = as_dtype(sample.args, torch.float32)
                    y = entry.forward(*args)
                    entry.backward_outputs(torch.ones_like(y), y, args)
    finally:
        launches = EMU.kernels.record_launches(False)
    return launches


def test_the_table_runs_every_chunk_path_and_grid_stride_loop():
    target_blocks, min_items, max_blocks = EMU.kernels.chunking()
    assert (target_blocks, min_items) == (16, 8)  # CMakeLists.txt: small, so that small shapes chunk
    launches = _launches_of_the_table()
    seen = {}
    for kernel, grid, _ in launches:
        seen.setdefault(re.sub(r"<.*", "", kernel), []).append(grid)
    # Weight gradients in one pass and in batch chunks (grid.y or grid.z = chunks), then summed.
    for kernel, axis in [("conv5_backward_filter_kernel", 1), ("gemm_tile_kernel", 2),
                         ("rbf_backward_weight_kernel", 1), ("subsample_backward_param_kernel", 1)]:
        chunks = {g[axis] for g in seen[kernel]}
        assert 1 in chunks and max(chunks) > 1, (kernel, chunks)
    assert "sum_chunks_kernel" in seen
    # Both row splits of the convolution's weight gradient.
    assert {k for k, _, _ in launches if k.startswith("conv5_backward_filter_kernel")} == {
        "conv5_backward_filter_kernel<T, 1, Conn>", "conv5_backward_filter_kernel<T, 5, Conn>"}
    # Grids capped at max_blocks, with the rest left to the grid-stride loops: elementwise, conv, GEMM.
    for kernel in ["activation_forward_kernel", "activation_backward_kernel", "maxpool_forward_kernel",
                   "maxpool_backward_kernel", "subsample_forward_kernel", "subsample_backward_input_kernel",
                   "conv5_forward_kernel", "conv5_backward_data_kernel", "rbf_backward_input_kernel"]:
        assert any(g[0] == max_blocks for g in seen[kernel]), kernel
    assert any(g[0] == max_blocks or g[1] == max_blocks for g in seen["gemm_tile_kernel"])
