"""The one table of the native ops that test_ops, test_simd, test_cuda and test_fuzz iterate over
(pytorch/extension-cpp's ``sample_inputs(device)`` pattern).

For every op: its public forward and backward functions (lenet5_fast.ops), the registered ops
(torch.ops.lenet5_fast), the float64 pure-PyTorch reference of the forward, which forward
arguments are differentiable (the backward's outputs, in order), how a backward call is built
from a forward call, and sample inputs for a device: float64 CPU-made tensors moved there,
awkward shapes included (batch 1, odd sizes, maps of exactly 5x5 or 2x2, batches that are not a
multiple of the SIMD width, arbitrary C3 tables), every activation code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from lenet5_fast import ops, reference
from lenet5_fast.layers import PAPER_C3_TABLE

ACTS = (0, 1, 2, 3)


@dataclass(frozen=True)
class Sample:
    args: tuple  # forward arguments: tensors (float64, int32 tables) first, then act
    name: str


@dataclass(frozen=True)
class OpEntry:
    name: str
    forward: Callable  # ops.<name>
    backward: Callable  # ops.<name>_backward
    reference: Callable  # float64 reference of forward(*args)
    differentiable: Tuple[int, ...]  # forward args with gradients = the backward's outputs, in order
    backward_args: Callable  # (grad, y, forward args, gauss_newton) -> backward(*...) arguments
    sample_inputs: Callable[..., List[Sample]]  # (device, large=False) -> samples

    @property
    def op(self):
        return getattr(torch.ops.lenet5_fast, self.name).default

    @property
    def backward_op(self):
        return getattr(torch.ops.lenet5_fast, self.name + "_backward").default

    def backward_outputs(self, grad, y, args, gauss_newton=False) -> tuple:
        out = self.backward(*self.backward_args(grad, y, args, gauss_newton))
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _rand(gen, *shape, scale=1.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def _moved(args, device):
    return tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)


# The last: O * C = 256 kernels, so the CUDA weight gradient keeps each 5x5 whole (no row split),
# and in float64 more channels than the CUDA kernels stage in shared memory at once.
CONV_SHAPES = [(1, 1, 32, 32, 6), (3, 6, 14, 14, 16), (2, 16, 5, 5, 120), (1, 3, 9, 7, 2), (5, 2, 6, 11, 3),
               (3, 2, 9, 7, 3), (17, 1, 12, 5, 2), (5, 3, 5, 5, 4), (2, 1, 5, 13, 1), (20, 1, 8, 40, 1),
               (2, 16, 6, 7, 16)]
CONV_LARGE = [(300, 1, 32, 32, 6), (300, 6, 14, 14, 16), (300, 16, 5, 5, 120)]


def _conv_samples(device, large=False):
    g = torch.Generator().manual_seed(1)
    out = []
    for N, C, H, W, O in CONV_SHAPES + (CONV_LARGE if large else []):
        for act in ACTS:
            args = (_rand(g, N, C, H, W), _rand(g, O, C, 5, 5, scale=0.2), _rand(g, O), act)
            out.append(Sample(_moved(args, device), f"{N}x{C}x{H}x{W}->{O}-act{act}"))
    return out


TABLES = [(PAPER_C3_TABLE, 6, "tableI"), (((0,), (1, 2), (2, 0, 1)), 3, "small"), (((3,), (0, 3)), 4, "unused_inputs"),
          (((1,),), 2, "one")]
SPARSE_SHAPES = [(1, 14, 14), (19, 10, 10), (3, 7, 9), (2, 5, 5), (4, 5, 12), (4, 10, 13)]


def _sparse_samples(device, large=False):
    g = torch.Generator().manual_seed(2)
    out = []
    for table, C, tname in TABLES:
        off, inp = ops.connection_table_to_csr(table, C)
        for N, H, W in SPARSE_SHAPES + ([(300, 14, 14)] if large else []):
            for act in ACTS:
                args = (_rand(g, N, C, H, W), _rand(g, inp.numel(), 5, 5, scale=0.3), _rand(g, off.numel() - 1),
                        off, inp, act)
                out.append(Sample(_moved(args, device), f"{tname}-{N}x{C}x{H}x{W}-act{act}"))
    return out


POOL_SHAPES = [(1, 6, 28, 28), (3, 16, 10, 10), (2, 2, 7, 5), (1, 1, 2, 2), (17, 3, 7, 5), (3, 2, 35, 3),
               (5, 16, 10, 10), (1, 1, 3, 41)]


def _subsample_samples(device, large=False):
    g = torch.Generator().manual_seed(3)
    out = []
    for N, C, H, W in POOL_SHAPES + ([(300, 6, 28, 28)] if large else []):
        for act in ACTS:
            args = (_rand(g, N, C, H, W), _rand(g, C), _rand(g, C), act)
            out.append(Sample(_moved(args, device), f"{N}x{C}x{H}x{W}-act{act}"))
    return out


def _maxpool_samples(device, large=False):
    g = torch.Generator().manual_seed(4)
    out = []
    for N, C, H, W in POOL_SHAPES + ([(300, 6, 28, 28)] if large else []):
        x = _rand(g, N, C, H, W)
        flat = x.view(-1)
        flat[::7] = flat[1::7][: flat[::7].numel()]  # plenty of ties (values exact in float32 too)
        out.append(Sample(_moved((x.float().double(),), device), f"{N}x{C}x{H}x{W}"))
    return out


FULL_SHAPES = [(1, 120, 84), (7, 84, 10), (2, 3, 1), (33, 16, 5), (17, 400, 120), (3, 5, 1), (2, 1, 1)]


def _full_samples(device, large=False):
    g = torch.Generator().manual_seed(5)
    out = []
    for N, D, O in FULL_SHAPES + ([(300, 120, 84)] if large else []):
        for act in ACTS:
            args = (_rand(g, N, D), _rand(g, O, D, scale=0.1), _rand(g, O), act)
            out.append(Sample(_moved(args, device), f"{N}x{D}->{O}-act{act}"))
    return out


RBF_SHAPES = [(1, 84, 10), (5, 84, 10), (3, 7, 4), (40, 2, 3), (17, 84, 10), (5, 33, 1)]


def _rbf_samples(device, large=False):
    g = torch.Generator().manual_seed(6)
    return [Sample(_moved((_rand(g, N, D), _rand(g, M, D)), device), f"{N}x{D}->{M}")
            for N, D, M in RBF_SHAPES + ([(300, 84, 10)] if large else [])]


ACT_SHAPES = [(1,), (3, 5), (2, 6, 7, 9), (7,), (8,), (9,), (17,), (33,), (1000,)]


def _activation_samples(device, large=False):
    g = torch.Generator().manual_seed(7)
    return [Sample(_moved((_rand(g, *shape, scale=3.0), act), device), f"{'x'.join(map(str, shape))}-act{act}")
            for shape in ACT_SHAPES + ([(300, 6, 28, 28)] if large else []) for act in ACTS]


OPS: Sequence[OpEntry] = (
    OpEntry("conv5x5", ops.conv5x5, ops.conv5x5_backward, reference.conv5x5, (0, 1, 2),
            lambda g, y, a, gn: (g, y, a[0], a[1], a[3], gn, True), _conv_samples),
    OpEntry("sparse_conv5x5", ops.sparse_conv5x5, ops.sparse_conv5x5_backward, reference.sparse_conv5x5, (0, 1, 2),
            lambda g, y, a, gn: (g, y, a[0], a[1], a[3], a[4], a[5], gn, True), _sparse_samples),
    OpEntry("subsample2x2", ops.subsample2x2, ops.subsample2x2_backward, reference.subsample2x2, (0, 1, 2),
            lambda g, y, a, gn: (g, y, a[0], a[1], a[3], gn, True), _subsample_samples),
    OpEntry("maxpool2x2", ops.maxpool2x2, ops.maxpool2x2_backward, lambda x: F.max_pool2d(x, 2), (0,),
            lambda g, y, a, gn: (g, a[0], y), _maxpool_samples),
    OpEntry("full", ops.full, ops.full_backward, reference.full, (0, 1, 2),
            lambda g, y, a, gn: (g, y, a[0], a[1], a[3], gn, True), _full_samples),
    OpEntry("euclidean_rbf", ops.euclidean_rbf, ops.euclidean_rbf_backward, reference.euclidean_rbf, (0, 1),
            lambda g, y, a, gn: (g, a[0], a[1], gn, True, True), _rbf_samples),
    OpEntry("activation", ops.activation, ops.activation_backward, reference.act, (0,),
            lambda g, y, a, gn: (g, y, a[1], gn), _activation_samples),
)
BY_NAME = {e.name: e for e in OPS}


def cases(device="cpu", large=False, where=lambda entry, sample: True):
    """(entry, sample) pairs for pytest.mark.parametrize, with readable ids."""
    out = [(e, s) for e in OPS for s in e.sample_inputs(device, large) if where(e, s)]
    return out, [f"{e.name}-{s.name}" for e, s in out]


def as_dtype(args, dtype, requires_grad: Sequence[int] = ()):
    """The sample's float tensors in dtype (the listed positions as fresh leaves needing grad)."""
    return [a.detach().to(dtype).requires_grad_(i in requires_grad)
            if isinstance(a, torch.Tensor) and a.is_floating_point() else a for i, a in enumerate(args)]
