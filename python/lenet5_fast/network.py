"""The LeNet-5 variants, declared once on the Python side.

The native library declares the network (``csrc/network.h``, read through ``_C``): every size
(:data:`GEOMETRY`), the variants the fused engines run and, for each, its trainable tensors in
order (:data:`FUSED_VARIANTS`, :func:`param_layout`). This module adds what only Python knows:
each variant's layers -- name, kind, fused activation -- in order (:data:`LAYOUT`), and the
classic variant's criterion, the paper's MAP loss (:func:`map_loss`; ``model`` exports it, and
``fused`` differentiates it for second-order gradients of the fused loss).
``model.LeNet5`` builds its layers from this table and ``fused`` checks a model against it;
nothing else restates them (``reference`` excepted: it is the independent oracle).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _C
from ._validate import Act
from .layers import Convolution, EuclideanRBF, FullConnection, MaxPool, SparseConvolution, Subsampling

__all__ = ["GEOMETRY", "LAYER_NAMES", "Layer", "LAYOUT", "DEFAULT_MAP_J", "map_loss", "FUSED_VARIANTS", "param_layout",
           "param_shapes"]

GEOMETRY: Dict[str, int] = dict(_C.geometry)  # every size, from csrc/network.h
LAYER_NAMES = ("c1", "s2", "c3", "s4", "c5", "f6", "output")


class Layer(NamedTuple):
    name: str
    kind: type
    act: Optional[int] = None  # the activation fused into the layer (None: it takes none)
    fixed_average: bool = False  # a Subsampling whose coefficient 1/4 and bias 0 are fixed buffers


def _layers(*specs) -> Tuple[Layer, ...]:
    layers = tuple(Layer(name, *spec) for name, spec in zip(LAYER_NAMES, specs))
    assert len(layers) == len(LAYER_NAMES)
    return layers


# Each variant's layers, in order (the model's variants are this table's keys).
LAYOUT: Dict[str, Tuple[Layer, ...]] = {
    # the paper's: the squashing everywhere, trainable subsampling, C3 through Table I, RBF output
    "classic": _layers((Convolution, Act.SCALED_TANH), (Subsampling, Act.SCALED_TANH),
                       (SparseConvolution, Act.SCALED_TANH), (Subsampling, Act.SCALED_TANH),
                       (Convolution, Act.SCALED_TANH), (FullConnection, Act.SCALED_TANH), (EuclideanRBF,)),
    # ReLU, 2x2 max-pool, full C3, logits
    "modern": _layers((Convolution, Act.RELU), (MaxPool,), (Convolution, Act.RELU), (MaxPool,),
                      (Convolution, Act.RELU), (FullConnection, Act.RELU), (FullConnection, Act.IDENTITY)),
    # a Keras write-up's: plain tanh, fixed 2x2 average pooling, full C3, logits
    "keras": _layers((Convolution, Act.PLAIN_TANH), (Subsampling, Act.IDENTITY, True),
                     (Convolution, Act.PLAIN_TANH), (Subsampling, Act.IDENTITY, True),
                     (Convolution, Act.PLAIN_TANH), (FullConnection, Act.PLAIN_TANH),
                     (FullConnection, Act.IDENTITY)),
}

# j in the MAP criterion E = y_c + log(exp(-j) + sum_i exp(-y_i)). The paper gives no value;
# with RBF outputs of order 1..300, j = 1 lets the competitive term vanish once every wrong
# class is more than a few units away, while still pushing apart classes that are close.
DEFAULT_MAP_J = 1.0


def map_loss(y: Tensor, target: Tensor, j: float = DEFAULT_MAP_J, reduction: str = "mean") -> Tensor:
    """The paper's MAP criterion (eq. 9) for RBF outputs y[N,10] (distances, smaller = better):
    E = y_correct + log(exp(-j) + sum_i exp(-y_i))."""
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"map_loss: outputs must be a [N, classes] tensor, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    if not isinstance(target, Tensor) or target.dtype.is_floating_point or target.dtype.is_complex \
            or target.dtype == torch.bool:
        raise TypeError(f"map_loss: target must be a tensor of integer class indices, got "
                        f"{target.dtype if isinstance(target, Tensor) else type(target).__name__}")
    if target.shape != (y.shape[0],):
        raise ValueError(f"map_loss: target must have shape [{y.shape[0]}] (one class per output row), "
                         f"got {tuple(target.shape)}")
    if torch.compiler.is_compiling():  # no data-dependent branch in a graph: an assert inside it
        torch._assert_async(((target >= 0) & (target < y.shape[1])).all(),
                            f"map_loss: target classes must be in 0..{y.shape[1] - 1}")
    elif target.numel() and (int(target.min()) < 0 or int(target.max()) >= y.shape[1]):
        raise ValueError(f"map_loss: target classes must be in 0..{y.shape[1] - 1}, got "
                         f"{int(target.min())}..{int(target.max())}")
    target = target.to(device=y.device, dtype=torch.long)
    correct = y.gather(1, target.view(-1, 1)).squeeze(1)
    j_col = torch.full_like(y[:, :1], -float(j))
    competitive = torch.logsumexp(torch.cat([j_col, -y], dim=1), dim=1)
    e = correct + competitive
    if reduction == "mean":
        return e.mean()
    if reduction == "sum":
        return e.sum()
    if reduction == "none":
        return e
    raise ValueError(f"map_loss: unknown reduction {reduction!r}")


# The variants the fused engines run (name -> code) and their trainable tensors in
# model.parameters() order, the engines' order: (name, shape), the shapes naming their free
# sizes "in_channels", "c3_kernels" (the classic table's kernels) and "classes" (the modern
# output's units). Read once here, so that traced code (torch.compile) checks shapes in Python.
FUSED_VARIANTS: Dict[str, int] = dict(_C.variants)
_PARAM_LAYOUT = {v: tuple(_C.param_layout(code)) for v, code in FUSED_VARIANTS.items()}


def param_layout(variant: str) -> Tuple[Tuple[str, tuple], ...]:
    """((name, shape), ...) of a fused variant's trainable tensors, free sizes named."""
    return _PARAM_LAYOUT[variant]


def param_shapes(variant: str, in_channels: int, c3_kernels: int, classes: int) -> List[Tuple[int, ...]]:
    """The shapes of a fused variant's trainable tensors for these sizes, in the engines' order."""
    free = {"in_channels": in_channels, "c3_kernels": c3_kernels, "classes": classes}
    return [tuple(free[d] if isinstance(d, str) else d for d in shape) for _, shape in _PARAM_LAYOUT[variant]]
