"""The same networks in plain PyTorch -- the independent oracle for tests and benchmarks.

``reference.LeNet5`` has the same parameters and buffers, under the same state_dict keys, as
``lenet5_fast.LeNet5``, so one state_dict loads into both. This module imports nothing from the
package: every fact the package also holds is written here again, on purpose and from the
source, so that a bug in one of the package's tables cannot hide in both:

* Table I of LeCun et al. (1998), transcribed as the paper prints it (:data:`PAPER_C3_TABLE`);
* the paper's squashing 1.7159 tanh(2a/3) and the MAP criterion (its eq. 9, :func:`map_loss`);
* the RBF codes (:func:`output_codes`). The package's codes are its own drawing of 7x12 digit
  bitmaps in the spirit of the paper's Fig. 3 (which cannot be transcribed bit for bit from the
  printed figure), so there is no outside source to copy; here the same bitmaps are written as
  row bit masks and decoded independently of ``lenet5_fast.codes`` (the tests compare the two);
* the activation codes the ops take (:data:`ACTIVATIONS`), and the CSR form of a table.

Nothing here calls the native library: C3 scatters its compact kernels into a dense
[16, 6, 5, 5] weight (zeros where the table has no connection) and runs conv2d; S2/S4 are
avg_pool2d * 4 * coef + bias.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LeNet5", "PAPER_C3_TABLE", "ACTIVATIONS", "DEFAULT_MAP_J", "squash", "act", "conv5x5", "sparse_conv5x5",
           "subsample2x2", "full", "euclidean_rbf", "map_loss", "output_codes", "table_to_csr"]

# Table I: column o (a C3 map) reads the S2 maps whose row has an X.
_TABLE_I = (
    # C3 map: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
    "X...XXX..XXXX.XX",  # S2 map 0
    "XX...XXX..XXXX.X",  # S2 map 1
    "XXX...XXX..X.XXX",  # S2 map 2
    ".XXX..XXXX..X.XX",  # S2 map 3
    "..XXX..XXXX.XX.X",  # S2 map 4
    "...XXX..XXXX.XXX",  # S2 map 5
)
PAPER_C3_TABLE: Tuple[Tuple[int, ...], ...] = tuple(
    tuple(i for i in range(6) if _TABLE_I[i][o] == "X") for o in range(16))

ACTIVATIONS = {"identity": 0, "scaled_tanh": 1, "relu": 2, "plain_tanh": 3}  # the ops' codes
DEFAULT_MAP_J = 1.0  # j of the MAP criterion when none is given (the package's default)
LAYER_NAMES = ("c1", "s2", "c3", "s4", "c5", "f6", "output")
VARIANTS = ("classic", "modern", "keras")

# The RBF codes: digit d's 12 rows of 7 pixels, each row a 7-bit mask (bit 6: the leftmost
# pixel), 1 ink (+1), 0 paper (-1).
_CODE_ROWS = (
    (0x1c, 0x22, 0x63, 0x41, 0x41, 0x41, 0x41, 0x41, 0x41, 0x63, 0x22, 0x1c),  # 0
    (0x0c, 0x1c, 0x3c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x0c, 0x3f),  # 1
    (0x1c, 0x22, 0x41, 0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x7f),  # 2
    (0x3e, 0x41, 0x01, 0x01, 0x02, 0x1c, 0x02, 0x01, 0x01, 0x01, 0x41, 0x3e),  # 3
    (0x06, 0x0a, 0x12, 0x22, 0x42, 0x42, 0x7f, 0x02, 0x02, 0x02, 0x02, 0x02),  # 4
    (0x7f, 0x40, 0x40, 0x40, 0x7e, 0x01, 0x01, 0x01, 0x01, 0x01, 0x41, 0x3e),  # 5
    (0x1e, 0x20, 0x40, 0x40, 0x5c, 0x62, 0x41, 0x41, 0x41, 0x41, 0x22, 0x1c),  # 6
    (0x7f, 0x01, 0x01, 0x02, 0x02, 0x04, 0x04, 0x08, 0x08, 0x08, 0x08, 0x08),  # 7
    (0x1c, 0x22, 0x41, 0x41, 0x22, 0x1c, 0x22, 0x41, 0x41, 0x41, 0x22, 0x1c),  # 8
    (0x1c, 0x22, 0x41, 0x41, 0x41, 0x23, 0x1d, 0x01, 0x01, 0x01, 0x02, 0x3c),  # 9
)


def output_codes() -> Tensor:
    """[10, 84]: row d is digit d's bitmap, +1 ink / -1 paper, rows top to bottom, each left to right."""
    bits = torch.tensor(_CODE_ROWS)[:, :, None] >> torch.arange(6, -1, -1)  # [10, 12, 7], leftmost first
    return ((bits & 1) * 2 - 1).reshape(10, 84).float()


def table_to_csr(table: Sequence[Sequence[int]]) -> Tuple[Tensor, Tensor]:
    """int32 (offsets, inputs): output map o reads inputs[offsets[o]:offsets[o + 1]]."""
    sizes = [len(row) for row in table]
    offsets = torch.tensor([0] + sizes, dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return offsets, torch.tensor([c for row in table for c in row], dtype=torch.int32)


def squash(a: Tensor) -> Tensor:
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3."""
    return 1.7159 * torch.tanh(a * (2.0 / 3.0))


def act(a: Tensor, code) -> Tensor:
    """The activation with code (or name) ``code`` (:data:`ACTIVATIONS`)."""
    code = ACTIVATIONS[code] if isinstance(code, str) else int(code)
    return {0: lambda: a, 1: lambda: squash(a), 2: lambda: torch.relu(a), 3: lambda: torch.tanh(a)}[code]()


def conv5x5(x, weight, bias, code=0):
    return act(F.conv2d(x, weight, bias), code)


def sparse_conv5x5(x, weight, bias, offsets, inputs, code=0):
    """Kernel k, of output map o (offsets[o] <= k < offsets[o + 1]), placed at [o, inputs[k]] of a
    dense weight that is zero elsewhere."""
    O, dev = offsets.numel() - 1, weight.device
    owner = torch.repeat_interleave(torch.arange(O, device=dev), (offsets[1:] - offsets[:-1]).long().to(dev))
    dense = weight.new_zeros(O, x.shape[1], *weight.shape[1:]).index_put((owner, inputs.long().to(dev)), weight)
    return act(F.conv2d(x, dense, bias), code)


def subsample2x2(x, coef, bias, code=0):
    H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    s = F.avg_pool2d(x[..., :H, :W], 2) * 4
    return act(s * coef.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1), code)


def full(x, weight, bias, code=0):
    return act(F.linear(x.flatten(1), weight, bias), code)


def euclidean_rbf(x, weight):
    return ((x.flatten(1).unsqueeze(1) - weight.unsqueeze(0)) ** 2).sum(-1)


def map_loss(y: Tensor, target: Tensor, j: float = DEFAULT_MAP_J, reduction: str = "mean") -> Tensor:
    """Eq. 9 of the paper on RBF outputs y[N, 10] (distances >= 0):
    E = y_correct + log(exp(-j) + sum_i exp(-y_i))."""
    e = y.gather(1, target.long().view(-1, 1)).squeeze(1) + torch.log(torch.exp(torch.tensor(-float(j), dtype=y.dtype))
                                                                       + torch.exp(-y).sum(1))
    return {"mean": e.mean, "sum": e.sum, "none": lambda: e}[reduction]()


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
            off, inp = table_to_csr(PAPER_C3_TABLE if c3_table is None else c3_table)
            O = off.numel() - 1
            self.s2.coef, self.s2.bias = P(torch.zeros(6)), P(torch.zeros(6))
            self.c3.register_buffer("table_offsets", off)
            self.c3.register_buffer("table_inputs", inp)
            self.c3.weight, self.c3.bias = P(torch.zeros(inp.numel(), 5, 5)), P(torch.zeros(O))
            self.s4.coef, self.s4.bias = P(torch.zeros(O)), P(torch.zeros(O))
            self.c5.weight, self.c5.bias = P(torch.zeros(120, O, 5, 5)), P(torch.zeros(120))
            self.f6.weight, self.f6.bias = P(torch.zeros(84, 120)), P(torch.zeros(84))
            self.output.register_buffer("weight", output_codes())
            return
        if variant == "keras":  # fixed 2x2 average pooling: coefficient 1/4, bias 0, never trained
            for pool, maps in ((self.s2, 6), (self.s4, 16)):
                pool.register_buffer("coef", torch.full((maps,), 0.25))
                pool.register_buffer("bias", torch.zeros(maps))
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
        if self.variant == "keras":  # plain tanh, average pooling, logits
            x = subsample2x2(conv5x5(x, self.c1.weight, self.c1.bias, 3), self.s2.coef, self.s2.bias, 0)
            x = subsample2x2(conv5x5(x, self.c3.weight, self.c3.bias, 3), self.s4.coef, self.s4.bias, 0)
            hidden = 3
        else:  # modern: ReLU, max-pooling, logits
            x = F.max_pool2d(conv5x5(x, self.c1.weight, self.c1.bias, 2), 2)
            x = F.max_pool2d(conv5x5(x, self.c3.weight, self.c3.bias, 2), 2)
            hidden = 2
        x = conv5x5(x, self.c5.weight, self.c5.bias, hidden)
        x = full(x, self.f6.weight, self.f6.bias, hidden)
        return full(x, self.output.weight, self.output.bias, 0)

    def loss(self, out: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        if self.variant == "classic":
            return map_loss(out, target, self.map_j, reduction)
        return F.cross_entropy(out, target, reduction=reduction)
