"""The ops' forward formulas in standard torch operators: one function per op of
:mod:`lenet5_fast.ops`, taking the op's arguments (activation codes included) and computing its
output with differentiable torch operators only.

They are the one place where the op layer writes its arithmetic in torch terms: ``ops`` uses them
as each op's decomposition under ``torch.onnx.export`` (ONNX has no ``lenet5_fast`` ops), so they
use operators every exporter knows and run on fake tensors; being plain autograd code they also
give each op's higher-order derivatives. (The test oracle, :mod:`lenet5_fast.reference`, is a
separate, independent transcription of the paper; this module is not it.)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ._validate import SCALED_TANH, Act

__all__ = ["activation", "conv5x5", "sparse_conv5x5", "dense_from_table", "subsample2x2", "maxpool2x2", "full",
           "euclidean_rbf"]


def activation(a: Tensor, act: int) -> Tensor:
    """The activation with code ``act`` (:class:`lenet5_fast.ops.Act`)."""
    if act == Act.SCALED_TANH:
        amplitude, slope = SCALED_TANH
        return amplitude * torch.tanh(a * slope)
    if act == Act.RELU:
        return torch.relu(a)
    if act == Act.PLAIN_TANH:
        return torch.tanh(a)
    return a


def conv5x5(x: Tensor, weight: Tensor, bias: Tensor, act: int) -> Tensor:
    return activation(F.conv2d(x, weight, bias), act)


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


def sparse_conv5x5(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor, inputs: Tensor, act: int) -> Tensor:
    return activation(F.conv2d(x, dense_from_table(weight, offsets, inputs, x.shape[1]), bias), act)


def subsample2x2(x: Tensor, coef: Tensor, bias: Tensor, act: int) -> Tensor:
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    s = F.avg_pool2d(x[..., :H, :W], 2) * 4
    return activation(s * coef.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), act)


def maxpool2x2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2)


def full(x: Tensor, weight: Tensor, bias: Tensor, act: int) -> Tensor:
    return activation(F.linear(x.flatten(1), weight, bias), act)


def euclidean_rbf(x: Tensor, weight: Tensor) -> Tensor:
    return ((x.flatten(1).unsqueeze(1) - weight.unsqueeze(0)) ** 2).sum(-1)
