"""Drop-in ``nn.Module`` layers on the native ops, initialised as in the paper.

Every trainable weight starts uniform in ``[-2.4/F, 2.4/F]``, F the fan-in of the unit it
feeds (LeCun et al. 1998, section II and appendix C). Each layer

* checks its input's shape at the boundary and says what it expects (any strides, any batch
  size, 0 included);
* runs its backward op for a given incoming term, input and output with
  :meth:`~_Layer.backward_terms` (gradients, or SDLM's Gauss-Newton terms), returning the
  input's term and one term per trainable parameter: what ``optim.gauss_newton_diagonal``
  chains through the network;
* can ``describe()`` itself for a given input shape: maps, map size, trainable parameters and
  connections, as the paper counts them (a connection is one multiply-add into a unit, the bias
  counted as one).
"""
from __future__ import annotations

import operator
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import _C, _validate, ops
from .ops import Act

__all__ = [
    "PAPER_C3_TABLE", "Convolution", "SparseConvolution", "Subsampling", "MaxPool", "ScaledTanh",
    "FullConnection", "EuclideanRBF",
]

# Table I of the paper: PAPER_C3_TABLE[o] lists the S2 maps that C3 map o reads.
PAPER_C3_TABLE: Tuple[Tuple[int, ...], ...] = tuple(
    [tuple((i + k) % 6 for k in range(3)) for i in range(6)]         # maps 0-5: 3 neighbours
    + [tuple((i + k) % 6 for k in range(4)) for i in range(6)]       # maps 6-11: 4 neighbours
    + [(0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5)]                     # maps 12-14: 4, split
    + [tuple(range(6))]                                              # map 15: all six
)

# The paper's output layer: F6's units -> the 10 digit codes (csrc/network.h's geometry).
_PAPER_RBF = (_C.geometry["f6_units"], _C.geometry["classes"])

# What backward_terms returns: the input's term (None when not asked for) and (parameter, term)
# pairs for the layer's trainable parameters.
Terms = Tuple[Optional[Tensor], Tuple[Tuple[Tensor, Tensor], ...]]


def _count(layer: str, name: str, v) -> int:
    """A constructor's size argument: an int >= 1 (a layer of 0 maps or features has no fan-in)."""
    try:
        n = operator.index(v)  # ints, numpy ints; not floats
    except TypeError:
        n = None
    if isinstance(v, bool) or n is None or n < 1:
        raise ValueError(f"{layer}: {name} must be an int >= 1, got {v!r}")
    return n


def _uniform_fan_in_(t: Tensor, fan_in: float) -> None:
    bound = 2.4 / fan_in
    with torch.no_grad():
        t.uniform_(-bound, bound)


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


class _Layer(nn.Module):
    def describe(self, in_shape: Sequence[int]) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward_terms(self, grad: Tensor, x: Tensor, y: Tensor, gauss_newton: bool = False,
                       input_grad: bool = True) -> Terms:  # pragma: no cover - abstract
        """This layer's backward op for output ``y = self(x)`` and the incoming term ``grad``
        (dE/dy, or d2E/dy2 with ``gauss_newton=True``): ``(term of x, ((parameter, term), ...))``
        for the trainable parameters; the term of x is None unless ``input_grad``."""
        raise NotImplementedError

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _expects(self, what: str, x) -> None:
        raise (TypeError if not isinstance(x, Tensor) else ValueError)(
            f"{self._name()} expects {what}, got {_shape(x)}")

    def _maps(self, x, maps: Optional[int], min_hw: int) -> None:
        """x is [N, maps, H, W] with H, W >= min_hw (maps None: any number)."""
        if (isinstance(x, Tensor) and x.dim() == 4 and (maps is None or x.shape[1] == maps)
                and x.shape[2] >= min_hw and x.shape[3] >= min_hw):
            return
        c = "C" if maps is None else maps
        self._expects(f"input [N, {c}, H, W] with H, W >= {min_hw}", x)

    def _features(self, x, features: int) -> Tensor:
        """x as [N, features]: [N, features] itself or [N, ...] with that many values per sample."""
        if isinstance(x, Tensor) and x.dim() >= 2 and x.shape[1:].numel() == features:
            return x.reshape(x.shape[0], features)
        self._expects(f"input [N, {features}] (or [N, ...] with {features} values per sample)", x)

    def _name(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def _params(self, *pairs) -> Tuple[Tuple[Tensor, Tensor], ...]:
        return tuple((p, t) for p, t in pairs if isinstance(p, nn.Parameter) and p.requires_grad)


class Convolution(_Layer):
    """Valid 5x5 convolution, ``in_maps -> out_maps``, with the squashing fused by default."""

    def __init__(self, in_maps: int, out_maps: int, activation=Act.SCALED_TANH):
        super().__init__()
        self.in_maps, self.out_maps = _count("Convolution", "in_maps", in_maps), _count("Convolution", "out_maps", out_maps)
        self.act = ops.activation_code(activation)
        self.weight = nn.Parameter(torch.empty(self.out_maps, self.in_maps, 5, 5))
        self.bias = nn.Parameter(torch.empty(self.out_maps))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.weight, self.in_maps * 25)
        _uniform_fan_in_(self.bias, self.in_maps * 25)

    def forward(self, x: Tensor) -> Tensor:
        self._maps(x, self.in_maps, 5)
        return ops.conv5x5(x, self.weight, self.bias, self.act)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        gx, gw, gb = ops.conv5x5_backward(grad, y, x, self.weight, self.act, gauss_newton, input_grad)
        return (gx if input_grad else None), self._params((self.weight, gw), (self.bias, gb))

    def describe(self, in_shape):
        _, h, w = in_shape
        out = (self.out_maps, h - 4, w - 4)
        units = out[0] * out[1] * out[2]
        return dict(maps=out[0], size=f"{out[1]}x{out[2]}", parameters=self.trainable_parameters(),
                    connections=units * (self.in_maps * 25 + 1), out_shape=out)

    def extra_repr(self) -> str:
        return f"{self.in_maps}, {self.out_maps}, activation={ops.activation_name(self.act)!r}"


class SparseConvolution(_Layer):
    """C3: 5x5 convolution where output map ``o`` reads only the maps ``table[o]`` lists.

    Weights are stored compactly, one 5x5 kernel per connection (``weight[K,5,5]``), and the
    kernels visit only connected pairs. The default table is the paper's Table I (60 kernels +
    16 biases = 1,516 parameters). The table travels in the state_dict as two int32 buffers; it
    is checked once, here (and read again only if the buffers are changed in place).
    """

    def __init__(self, in_maps: int = 6, table: Optional[Sequence[Sequence[int]]] = None,
                 activation=Act.SCALED_TANH):
        super().__init__()
        table = PAPER_C3_TABLE if table is None else table
        self.in_maps = _count("SparseConvolution", "in_maps", in_maps)
        offsets, inputs = ops.connection_table_to_csr(table, self.in_maps)
        self.out_maps = offsets.numel() - 1
        self.act = ops.activation_code(activation)
        self.register_buffer("table_offsets", offsets)
        self.register_buffer("table_inputs", inputs)
        _validate.mark_table_checked(offsets, inputs)
        self.weight = nn.Parameter(torch.empty(inputs.numel(), 5, 5))
        self.bias = nn.Parameter(torch.empty(self.out_maps))
        self.reset_parameters()

    def _apply(self, fn, *args, **kwargs):
        # .to(device), .cuda() ... make new buffers holding the same table: checked if it was.
        before = self.table_offsets, self.table_inputs
        out = super()._apply(fn, *args, **kwargs)
        _validate.carry_table_check(before, (self.table_offsets, self.table_inputs))
        return out

    @property
    def table(self) -> Tuple[Tuple[int, ...], ...]:
        off, inp = self.table_offsets.tolist(), self.table_inputs.tolist()
        return tuple(tuple(inp[off[o]:off[o + 1]]) for o in range(self.out_maps))

    def reset_parameters(self) -> None:
        off = self.table_offsets.tolist()
        with torch.no_grad():
            for o in range(self.out_maps):
                fan_in = (off[o + 1] - off[o]) * 25
                _uniform_fan_in_(self.weight[off[o]:off[o + 1]], fan_in)
                _uniform_fan_in_(self.bias[o:o + 1], fan_in)

    def forward(self, x: Tensor) -> Tensor:
        self._maps(x, self.in_maps, 5)
        return ops.sparse_conv5x5(x, self.weight, self.bias, self.table_offsets, self.table_inputs, self.act)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        gx, gw, gb = ops.sparse_conv5x5_backward(grad, y, x, self.weight, self.table_offsets, self.table_inputs,
                                                 self.act, gauss_newton, input_grad)
        return (gx if input_grad else None), self._params((self.weight, gw), (self.bias, gb))

    def describe(self, in_shape):
        _, h, w = in_shape
        out = (self.out_maps, h - 4, w - 4)
        per_map = out[1] * out[2]
        return dict(maps=out[0], size=f"{out[1]}x{out[2]}", parameters=self.trainable_parameters(),
                    connections=per_map * (self.table_inputs.numel() * 25 + self.out_maps), out_shape=out)

    def extra_repr(self) -> str:
        return (f"{self.in_maps}, {self.out_maps}, kernels={self.table_inputs.numel()}, "
                f"activation={ops.activation_name(self.act)!r}")


class Subsampling(_Layer):
    """S2/S4: each unit sums a 2x2 window, times a trainable coefficient, plus a trainable bias,
    then the squashing (fused)."""

    def __init__(self, maps: int, activation=Act.SCALED_TANH):
        super().__init__()
        self.maps = _count("Subsampling", "maps", maps)
        self.act = ops.activation_code(activation)
        self.coef = nn.Parameter(torch.empty(self.maps))
        self.bias = nn.Parameter(torch.empty(self.maps))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.coef, 4)
        _uniform_fan_in_(self.bias, 4)

    def forward(self, x: Tensor) -> Tensor:
        self._maps(x, self.maps, 2)
        return ops.subsample2x2(x, self.coef, self.bias, self.act)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        gx, gc, gb = ops.subsample2x2_backward(grad, y, x, self.coef, self.act, gauss_newton, input_grad)
        return (gx if input_grad else None), self._params((self.coef, gc), (self.bias, gb))

    def describe(self, in_shape):
        _, h, w = in_shape
        out = (self.maps, h // 2, w // 2)
        return dict(maps=out[0], size=f"{out[1]}x{out[2]}", parameters=self.trainable_parameters(),
                    connections=out[0] * out[1] * out[2] * 5, out_shape=out)

    def extra_repr(self) -> str:
        return f"{self.maps}, activation={ops.activation_name(self.act)!r}"


class MaxPool(_Layer):
    """2x2 max-pooling, stride 2 (modern variant)."""

    def forward(self, x: Tensor) -> Tensor:
        self._maps(x, None, 2)
        return ops.maxpool2x2(x)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        # The Gauss-Newton terms route like the gradient: to each window's maximum.
        return (ops.maxpool2x2_backward(grad, x, y) if input_grad else None), ()

    def describe(self, in_shape):
        c, h, w = in_shape
        out = (c, h // 2, w // 2)
        return dict(maps=c, size=f"{out[1]}x{out[2]}", parameters=0,
                    connections=out[0] * out[1] * out[2] * 4, out_shape=out)


class ScaledTanh(_Layer):
    """The paper's squashing f(a) = 1.7159 tanh(2a/3) as a stand-alone layer."""

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            self._expects("a tensor", x)
        return ops.activation(x, Act.SCALED_TANH)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        return (ops.activation_backward(grad, y, Act.SCALED_TANH, gauss_newton) if input_grad else None), ()

    def describe(self, in_shape):
        return dict(maps=in_shape[0] if len(in_shape) > 1 else 1, size="", parameters=0,
                    connections=0, out_shape=tuple(in_shape))


class FullConnection(_Layer):
    """Fully connected layer (F6: 120 -> 84), squashing fused by default. Flattens its input."""

    def __init__(self, in_features: int, out_features: int, activation=Act.SCALED_TANH):
        super().__init__()
        self.in_features = _count("FullConnection", "in_features", in_features)
        self.out_features = _count("FullConnection", "out_features", out_features)
        self.act = ops.activation_code(activation)
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features))
        self.bias = nn.Parameter(torch.empty(self.out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_fan_in_(self.weight, self.in_features)
        _uniform_fan_in_(self.bias, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return ops.full(self._features(x, self.in_features), self.weight, self.bias, self.act)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        x2 = self._features(x, self.in_features)
        gx, gw, gb = ops.full_backward(grad, y, x2, self.weight, self.act, gauss_newton, input_grad)
        return (gx.reshape(x.shape) if input_grad else None), self._params((self.weight, gw), (self.bias, gb))

    def describe(self, in_shape):
        return dict(maps=self.out_features, size="1x1", parameters=self.trainable_parameters(),
                    connections=self.out_features * (self.in_features + 1), out_shape=(self.out_features,))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, activation={ops.activation_name(self.act)!r}"


class EuclideanRBF(_Layer):
    """Output layer: y_i = sum_j (x_j - w_ij)^2. By default w is fixed (a buffer) and holds the
    paper's +-1 stylized 7x12 digit bitmaps; ``trainable=True`` makes it a Parameter."""

    def __init__(self, in_features: int = _PAPER_RBF[0], out_features: int = _PAPER_RBF[1],
                 weight: Optional[Tensor] = None, trainable: bool = False):
        super().__init__()
        _count("EuclideanRBF", "in_features", in_features)
        _count("EuclideanRBF", "out_features", out_features)
        if weight is None:
            if (in_features, out_features) != _PAPER_RBF:
                raise ValueError(f"EuclideanRBF: give `weight` unless the layer is the paper's "
                                 f"{_PAPER_RBF[0]} -> {_PAPER_RBF[1]}")
            from .codes import output_codes

            weight = output_codes()
        weight = torch.as_tensor(weight, dtype=torch.float32).detach().clone()
        if weight.shape != (out_features, in_features):
            raise ValueError(f"EuclideanRBF: weight must be ({out_features}, {in_features}), got {tuple(weight.shape)}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        if trainable:
            self.weight = nn.Parameter(weight)
        else:
            self.register_buffer("weight", weight)

    def forward(self, x: Tensor) -> Tensor:
        return ops.euclidean_rbf(self._features(x, self.in_features), self.weight)

    def backward_terms(self, grad, x, y, gauss_newton=False, input_grad=True) -> Terms:
        x2 = self._features(x, self.in_features)
        weight_grad = isinstance(self.weight, nn.Parameter) and self.weight.requires_grad
        gx, gw = ops.euclidean_rbf_backward(grad, x2, self.weight, gauss_newton, input_grad, weight_grad)
        return (gx.reshape(x.shape) if input_grad else None), self._params((self.weight, gw))

    def describe(self, in_shape):
        return dict(maps=self.out_features, size="1x1", parameters=self.trainable_parameters(),
                    connections=self.out_features * self.in_features, out_shape=(self.out_features,))

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, trainable={isinstance(self.weight, nn.Parameter)}"
