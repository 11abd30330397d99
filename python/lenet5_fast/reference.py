"""The same networks in plain PyTorch ops — the reference for tests and benchmarks.

``reference.LeNet5`` has the same parameters and buffers, under the same state_dict keys, as
``lenet5_fast.LeNet5``, so one state_dict loads into both. Nothing here calls the native
library: C3 gathers its compact kernels into a dense [16, 6, 5, 5] weight (zeros where the table
has no connection) and runs conv2d; S2/S4 are avg_pool2d * 4 * coef + bias. These formulas are
also the ops' decompositions for ``torch.onnx.export`` (lenet5_fast.ops), so every function here
uses standard operators only and runs on fake tensors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .codes import output_codes
from .layers import PAPER_C3_TABLE
from .model import DEFAULT_MAP_J, LAYER_NAMES, VARIANTS, map_loss
from .ops import connection_table_to_csr

__all__ = ["LeNet5", "squash", "conv5x5", "sparse_conv5x5", "subsample2x2", "euclidean_rbf", "act"]


def squash(a: Tensor) -> Tensor:
    return 1.7159 * torch.tanh(a * (2.0 / 3.0))


def act(a: Tensor, code: int) -> Tensor:
    """The activation with code ``code`` (lenet5_fast.ops.ACTIVATIONS): 0 identity, 1 the paper's
    squashing, 2 ReLU, 3 plain tanh."""
    return squash(a) if code == 1 else torch.relu(a) if code == 2 else torch.tanh(a) if code == 3 else a


def conv5x5(x, weight, bias, code=0):
    return act(F.conv2d(x, weight, bias), code)


def dense_from_table(weight: Tensor, offsets: Tensor, inputs: Tensor, in_maps: int) -> Tensor:
    """Scatters compact kernels weight[K,5,5] into a dense [O, in_maps, 5, 5] weight, zeros where
    the table has no connection (a masked convolution). Comparisons, a gather and a select only:
    it runs on any device and on fake tensors, and exports to standard ONNX operators."""
    K, O = inputs.shape[0], offsets.shape[0] - 1
    dev = weight.device
    k = torch.arange(K, device=dev)
    owner = (k[:, None] >= offsets[1:].to(dev)[None, :]).sum(1)  # the output map of kernel k
    pair = ((owner[:, None, None] == torch.arange(O, device=dev)[None, :, None])
            & (inputs.to(dev)[:, None, None] == torch.arange(in_maps, device=dev)[None, None, :])).to(torch.int32)
    kernel = pair.argmax(0)  # [O, in_maps]: the kernel of each connected (output, input) pair
    connected = pair.amax(0).bool()[:, :, None, None]
    return torch.where(connected, weight[kernel], torch.zeros((), dtype=weight.dtype, device=dev))


def sparse_conv5x5(x, weight, bias, offsets, inputs, code=0):
    return act(F.conv2d(x, dense_from_table(weight, offsets, inputs, x.shape[1]), bias), code)


def subsample2x2(x, coef, bias, code=0):
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    s = F.avg_pool2d(x[..., :H, :W], 2) * 4
    return act(s * coef.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), code)


def full(x, weight, bias, code=0):
    return act(F.linear(x.flatten(1), weight, bias), code)


def euclidean_rbf(x, weight):
    return ((x.flatten(1).unsqueeze(1) - weight.unsqueeze(0)) ** 2).sum(-1)


class _Params(nn.Module):
    pass


class LeNet5(nn.Module):
    def __init__(self, variant: str = "classic", in_channels: int = 1, num_classes: int = 10,
                 c3_table=None, map_j: float = DEFAULT_MAP_J):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"LeNet5: variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.in_channels, self.num_classes, self.map_j = variant, in_channels, num_classes, map_j
        for name in LAYER_NAMES:
            setattr(self, name, _Params())
        P = nn.Parameter
        self.c1.weight, self.c1.bias = P(torch.zeros(6, in_channels, 5, 5)), P(torch.zeros(6))
        if variant == "classic":
            off, inp = connection_table_to_csr(PAPER_C3_TABLE if c3_table is None else c3_table, 6)
            O = off.numel() - 1
            self.s2.coef, self.s2.bias = P(torch.zeros(6)), P(torch.zeros(6))
            self.c3.register_buffer("table_offsets", off)
            self.c3.register_buffer("table_inputs", inp)
            self.c3.weight, self.c3.bias = P(torch.zeros(inp.numel(), 5, 5)), P(torch.zeros(O))
            self.s4.coef, self.s4.bias = P(torch.zeros(O)), P(torch.zeros(O))
            self.c5.weight, self.c5.bias = P(torch.zeros(120, O, 5, 5)), P(torch.zeros(120))
            self.f6.weight, self.f6.bias = P(torch.zeros(84, 120)), P(torch.zeros(84))
            self.output.register_buffer("weight", output_codes())
        else:
            self.c3.weight, self.c3.bias = P(torch.zeros(16, 6, 5, 5)), P(torch.zeros(16))
            self.c5.weight, self.c5.bias = P(torch.zeros(120, 16, 5, 5)), P(torch.zeros(120))
            self.f6.weight, self.f6.bias = P(torch.zeros(84, 120)), P(torch.zeros(84))
            self.output.weight, self.output.bias = P(torch.zeros(num_classes, 84)), P(torch.zeros(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "classic":
            x = conv5x5(x, self.c1.weight, self.c1.bias, 1)
            x = subsample2x2(x, self.s2.coef, self.s2.bias, 1)
            x = sparse_conv5x5(x, self.c3.weight, self.c3.bias, self.c3.table_offsets, self.c3.table_inputs, 1)
            x = subsample2x2(x, self.s4.coef, self.s4.bias, 1)
            x = conv5x5(x, self.c5.weight, self.c5.bias, 1)
            x = full(x, self.f6.weight, self.f6.bias, 1)
            return euclidean_rbf(x, self.output.weight)
        x = F.max_pool2d(conv5x5(x, self.c1.weight, self.c1.bias, 2), 2)
        x = F.max_pool2d(conv5x5(x, self.c3.weight, self.c3.bias, 2), 2)
        x = conv5x5(x, self.c5.weight, self.c5.bias, 2)
        x = full(x, self.f6.weight, self.f6.bias, 2)
        return full(x, self.output.weight, self.output.bias, 0)

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        if self.variant == "classic":
            return map_loss(out, target, self.map_j, reduction)
        return F.cross_entropy(out, target, reduction=reduction)
