"""The LeNet-5 network, its loss, and its per-layer summary.

``LeNet5()`` is the paper's network (variant "classic"): 32x32 input, C1 conv 6@28x28,
S2 trainable subsampling, C3 sparse conv 16@10x10 through Table I, S4, C5 120 maps, F6 84
units, every one followed by the squashing 1.7159 tanh(2a/3) (fused into the op), and an
output layer of 10 Euclidean RBF units over fixed +-1 7x12 digit bitmaps. Its ``forward``
returns the 10 RBF distances (smaller is better); ``loss`` is the paper's MAP criterion.

``LeNet5(variant="modern")``: ReLU, 2x2 max-pool, full C3, linear 10-way output (logits) for
cross-entropy, ``in_channels`` configurable. Never the default.

``LeNet5(variant="keras")``: a Keras write-up's layout: plain tanh, fixed 2x2 average pooling
(S2/S4 with coefficient 1/4 and bias 0 as buffers), full C3, logits for softmax cross-entropy.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import fused
from .layers import (PAPER_C3_TABLE, Convolution, EuclideanRBF, FullConnection, MaxPool,
                     SparseConvolution, Subsampling)
from .network import DEFAULT_MAP_J, GEOMETRY, LAYER_NAMES, LAYOUT, Layer, map_loss

__all__ = ["LeNet5", "map_loss", "DEFAULT_MAP_J", "summary", "LAYER_NAMES"]

VARIANTS = tuple(LAYOUT)  # "classic", "modern", "keras": each variant's layers in network.LAYOUT


# The maps (or units) each layer that has its own produces (a pooling layer keeps its input's);
# a fully connected output has the model's num_classes.
_UNITS = {"c1": GEOMETRY["c1_maps"], "c3": GEOMETRY["c3_maps"], "c5": GEOMETRY["c5_units"], "f6": GEOMETRY["f6_units"],
          "output": GEOMETRY["classes"]}


def _build(layer: Layer, maps: int, num_classes: int, c3_table) -> nn.Module:
    """The module of one network.LAYOUT entry, on ``maps`` input maps (or features)."""
    units = num_classes if layer.name == "output" and layer.kind is FullConnection else _UNITS.get(layer.name)
    if layer.kind is Convolution:
        return Convolution(maps, units, layer.act)
    if layer.kind is SparseConvolution:
        return SparseConvolution(maps, PAPER_C3_TABLE if c3_table is None else c3_table, layer.act)
    if layer.kind is FullConnection:
        return FullConnection(maps, units, layer.act)
    if layer.kind is EuclideanRBF:
        return EuclideanRBF(maps, units)
    if layer.kind is MaxPool:
        return MaxPool()
    pool = Subsampling(maps, layer.act)
    if layer.fixed_average:  # the 2x2 average: the window sum times 1/4, plus 0, never trained
        del pool.coef, pool.bias
        pool.register_buffer("coef", torch.full((pool.maps,), 0.25))
        pool.register_buffer("bias", torch.zeros(pool.maps))
    return pool


def check_input(model: "LeNet5", x) -> None:
    """x must be a batch of [in_channels, 32, 32] images (any batch size, 0 included): the
    error says so at the model's boundary rather than deep inside a layer."""
    size = GEOMETRY["input"]
    if isinstance(x, Tensor) and x.dim() == 4 and tuple(x.shape[1:]) == (model.in_channels, size, size):
        return
    got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
    hint = " (MNIST 28x28 must be padded by 2: lenet5_fast.data.preprocess)" if model.in_channels == 1 else ""
    raise (ValueError if isinstance(x, Tensor) else TypeError)(
        f"LeNet5 expects [N, {model.in_channels}, {size}, {size}]{hint}, got {got}")


class LeNet5(nn.Module):
    def __init__(self, variant: str = "classic", in_channels: int = 1, num_classes: int = GEOMETRY["classes"],
                 c3_table=None, map_j: float = DEFAULT_MAP_J):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"LeNet5: variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.map_j = float(map_j)
        if variant == "classic" and num_classes != GEOMETRY["classes"]:
            raise ValueError(f"LeNet5: the classic variant's RBF output codes are the {GEOMETRY['classes']} digits")
        maps = in_channels  # each layer's input maps (or features), from the layer before (checked there)
        for layer in LAYOUT[variant]:
            module = _build(layer, maps, num_classes, c3_table)
            setattr(self, layer.name, module)
            maps = getattr(module, "out_maps", None) or getattr(module, "out_features", None) or maps

    @classmethod
    def from_pretrained(cls, name: str = None) -> "LeNet5":
        """A network with the weights shipped in the package (``lenet5_fast.weights.list()``:
        "paper", "paper-distort", "modern-adam"; default ``weights.DEFAULT``, "paper-distort"),
        sha256-checked, in eval mode."""
        from . import weights

        return weights.load(name or weights.DEFAULT)

    def layers(self) -> List[nn.Module]:
        modules = self._modules  # (nn.Module.__getattr__ costs about 1 us a layer)
        return [modules[n] for n in LAYER_NAMES]

    def forward(self, x: Tensor) -> Tensor:
        """The network's output: through the fused engine (one native op, forward and backward)
        when ``fused.plan`` accepts the model and input, else layer by layer."""
        out = fused.run(self, x)
        if out is not None:
            return out
        check_input(self, x)
        for layer in self.layers():
            x = layer(x)
        return x

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """MAP loss on RBF distances (classic) or cross-entropy on logits (modern)."""
        if self.variant == "classic":
            return map_loss(out, target, self.map_j, reduction)
        return F.cross_entropy(out, target.to(out.device), reduction=reduction)

    def loss_of(self, x: Tensor, target: Tensor, reduction: str = "mean", outputs: bool = False):
        """``self.loss(self(x), target, reduction)``, the same value and gradients, with the fast
        path for training: where the fused engines take the model and a gradient is wanted
        (classic or modern, CPU float32, reduction "mean" or "sum"), one native call runs the
        forward, the loss (MAP or cross-entropy, computed by the engine) and the backward, image
        by image or tile by tile while the activations are in cache; ``backward()`` then only
        scales the gradients it computed. Elsewhere (no grad, "none", keras, GPU, float64,
        hooks, ``fused.disabled()``) it is exactly ``self.loss(self(x), ...)``. With ``outputs``
        returns ``(loss, out)``, ``out`` the network's output for ``x`` with no gradient."""
        got = fused.run_loss(self, x, target, reduction)
        if got is None:
            out = self(x)
            got = self.loss(out, target, reduction), out.detach()
        return got if outputs else got[0]

    def scores(self, out: Tensor) -> Tensor:
        """Higher-is-better class scores from the raw output."""
        return -out if self.variant == "classic" else out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Class index per image (through the fused native forward when it supports the model)."""
        out = self(x)
        return out.argmin(dim=1) if self.variant == "classic" else out.argmax(dim=1)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, in_channels={self.in_channels}"


def summary(model: nn.Module, input_size: int = GEOMETRY["input"]) -> dict:
    """Per-layer maps, size, trainable parameters and connections, computed from the model."""
    if not all(hasattr(model, n) for n in ("in_channels", *LAYER_NAMES)):
        raise TypeError(f"summary: the model must be a lenet5_fast.LeNet5, got {type(model).__name__}")
    if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 1:
        raise ValueError(f"summary: input_size must be an int >= 1, got {input_size!r}")
    shape = (model.in_channels, input_size, input_size)
    rows = []
    for name in LAYER_NAMES:
        layer = getattr(model, name)
        d = layer.describe(shape)
        shape = d.pop("out_shape")
        if min(shape) < 1:
            raise ValueError(f"summary: a {input_size}x{input_size} input is too small for the network: "
                             f"{name.upper()} would output {'x'.join(map(str, shape))} (32x32 is the paper's)")
        rows.append(dict(name=name.upper() if name != "output" else "output", kind=type(layer).__name__, **d))
    return dict(
        variant=getattr(model, "variant", "?"),
        input=f"{model.in_channels}x{input_size}x{input_size}",
        layers=rows,
        total_parameters=sum(r["parameters"] for r in rows),
        total_connections=sum(r["connections"] for r in rows),
    )


def format_summary(s: dict) -> str:
    lines = [f"LeNet-5 ({s['variant']}), input {s['input']}",
             f"{'layer':<8}{'kind':<19}{'maps':>6}{'size':>8}{'parameters':>13}{'connections':>14}"]
    for r in s["layers"]:
        lines.append(f"{r['name']:<8}{r['kind']:<19}{r['maps']:>6}{r['size']:>8}"
                     f"{r['parameters']:>13,}{r['connections']:>14,}")
    lines.append(f"{'total':<41}{s['total_parameters']:>13,}{s['total_connections']:>14,}")
    return "\n".join(lines)
