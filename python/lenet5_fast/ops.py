"""The native kernels as PyTorch custom ops (namespace ``lenet5_fast``).

Every op is registered with :func:`torch.library.custom_op`, with a fake (meta) kernel so it
traces under ``torch.compile(fullgraph=True)``, and with an autograd formula whose backward is
itself a custom op (so the backward also compiles, and SDLM can call it with
``gauss_newton=True``). Inputs are validated here — dtype, device, shape, contiguity, empty
batch — before any pointer reaches C++; the same checks run in the fake kernels, so a bad call
fails the same way eagerly and under compile.

Activation codes (``act``): 0 identity, 1 scaled tanh ``1.7159 tanh(2a/3)`` (the paper's
squashing), 2 ReLU, 3 plain ``tanh(a)``; the formulas are in ``csrc/activations.h``.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "lenet5_fast's native library (lenet5_fast._C) is missing or failed to load: "
        f"{e}. Reinstall with `pip install .` from the source tree."
    ) from e

__all__ = [
    "ACTIVATIONS", "activation_code", "conv5x5", "sparse_conv5x5", "subsample2x2", "maxpool2x2",
    "full", "euclidean_rbf", "activation", "connection_table_to_csr", "cuda_available",
]

ACTIVATIONS = {"identity": 0, "none": 0, "scaled_tanh": 1, "tanh": 1, "relu": 2, "plain_tanh": 3}
ACTIVATION_NAMES = ("identity", "scaled_tanh", "relu", "plain_tanh")  # by code
_FLOATS = (torch.float32, torch.float64)


def activation_code(act) -> int:
    """Maps an activation name (or code) to the integer code the kernels take."""
    if isinstance(act, bool) or not isinstance(act, (int, str)):
        raise TypeError(f"activation must be a name in {sorted(ACTIVATIONS)} or a code 0-3, got {act!r}")
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[act]
    if act not in (0, 1, 2, 3):
        raise ValueError(f"activation code must be 0, 1, 2 or 3, got {act}")
    return act


def cuda_available() -> bool:
    """True when this build has CUDA kernels and a GPU is visible."""
    return bool(_C.with_cuda) and torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# validation (runs on real and fake tensors alike)

def _check_tensor(op: str, name: str, t, ndim: int, dtype=None, device=None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"lenet5_fast.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"lenet5_fast.{op}: {name} must be float32 or float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"lenet5_fast.{op}: {name} has dtype {t.dtype} but the input is {dtype}")
    if t.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"lenet5_fast.{op}: {name} is on {t.device}; only CPU and CUDA are supported")
    if device is not None and t.device != device:
        raise ValueError(f"lenet5_fast.{op}: {name} is on {t.device} but the input is on {device}")
    if t.dim() != ndim:
        raise ValueError(f"lenet5_fast.{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"lenet5_fast.{op}: {name} must be contiguous (call .contiguous() first)")


def _check_shape(op: str, name: str, t: Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"lenet5_fast.{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_out_maps(op: str, O: int) -> None:
    # Zero outputs would hand the kernels null output pointers (undefined behaviour in memcpy).
    if O == 0:
        raise ValueError(f"lenet5_fast.{op}: weight has no outputs (its first dimension is 0)")


def _check_input(op: str, x: Tensor, ndim: int, min_hw: int = 0) -> None:
    _check_tensor(op, "input", x, ndim)
    if x.shape[0] == 0:
        raise ValueError(f"lenet5_fast.{op}: empty batch (input shape {tuple(x.shape)})")
    if any(s == 0 for s in x.shape[1:]):
        raise ValueError(f"lenet5_fast.{op}: input has a zero-sized dimension: {tuple(x.shape)}")
    if min_hw and (x.shape[-1] < min_hw or x.shape[-2] < min_hw):
        raise ValueError(f"lenet5_fast.{op}: input maps must be at least {min_hw}x{min_hw}, got shape {tuple(x.shape)}")


def _check_grad_and_output(op: str, grad, y, x: Tensor, shape: Sequence[int]) -> None:
    """A backward op's incoming gradient and the forward's output: like x, of the output's shape."""
    for name, t in (("grad", grad), ("output", y)):
        _check_tensor(op, name, t, len(shape), x.dtype, x.device)
        _check_shape(op, name, t, shape)


def _check_table_tensors(op: str, offsets, inputs) -> None:
    for name, t in (("table offsets", offsets), ("table inputs", inputs)):
        if not isinstance(t, Tensor) or t.dtype != torch.int32 or t.dim() != 1 or not t.is_contiguous():
            raise TypeError(f"lenet5_fast.{op}: {name} must be a contiguous 1-D int32 tensor")


def _check_table(op: str, offsets: Tensor, inputs: Tensor, in_maps: int, out_maps: int) -> None:
    _check_table_tensors(op, offsets, inputs)
    if offsets.shape[0] != out_maps + 1:
        raise ValueError(f"lenet5_fast.{op}: table offsets must have {out_maps + 1} entries, got {offsets.shape[0]}")
    if inputs.shape[0] == 0:  # no kernels: the weight gradient would be a null pointer
        raise ValueError(f"lenet5_fast.{op}: the table has no connections (table inputs is empty)")
    # Table contents are checked on the CPU only: reading a CUDA table here would synchronise
    # the stream. Tables on the GPU come from SparseConvolution, which checked them when built.
    if offsets.device.type != "cpu" or inputs.device.type != "cpu" or _is_fake(offsets) or _is_fake(inputs):
        return
    off = offsets.cpu()
    inp = inputs.cpu()
    if int(off[0]) != 0 or bool((off[1:] < off[:-1]).any()) or int(off[-1]) != inp.shape[0]:
        raise ValueError(f"lenet5_fast.{op}: table offsets must rise from 0 to len(inputs)={inp.shape[0]}")
    if inp.numel() and (int(inp.min()) < 0 or int(inp.max()) >= in_maps):
        raise ValueError(f"lenet5_fast.{op}: table inputs must be map indices in [0, {in_maps})")


def _is_fake(t: Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _launch(t: Tensor) -> Tuple[int, bool, int]:
    """(device code, is float64, extra) for a kernel call: extra is threads or the CUDA stream."""
    f64 = t.dtype == torch.float64
    if t.device.type == "cpu":
        return 0, f64, max(1, torch.get_num_threads())
    if t.device.type == "cuda":
        if not _C.with_cuda:
            raise RuntimeError(
                "lenet5_fast: got a CUDA tensor but this build has no CUDA kernels "
                "(it was built without nvcc). Rebuild on a machine with the CUDA toolkit, "
                "or move the tensors to the CPU."
            )
        return 1, f64, torch.cuda.current_stream(t.device).cuda_stream
    raise ValueError(f"lenet5_fast: unsupported device {t.device}")


def _ptr(t: Tensor) -> int:
    return t.data_ptr() if t.numel() else 0


def _empty_like_missing(x: Tensor) -> Tensor:
    return x.new_empty((0,))


class _on_device:
    """Makes a CUDA tensor's device current while its kernel is launched."""

    def __init__(self, t: Tensor):
        self.ctx = torch.cuda.device(t.device) if t.device.type == "cuda" else None

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


# ---------------------------------------------------------------------------------------------
# conv5x5: x[N,C,H,W], weight[O,C,5,5], bias[O] -> [N,O,H-4,W-4]

def _conv5x5_check(x, weight, bias, act):
    _check_input("conv5x5", x, 4, min_hw=5)
    _check_tensor("conv5x5", "weight", weight, 4, x.dtype, x.device)
    O, C = weight.shape[0], x.shape[1]
    _check_shape("conv5x5", "weight", weight, (O, C, 5, 5))
    _check_out_maps("conv5x5", O)
    _check_tensor("conv5x5", "bias", bias, 1, x.dtype, x.device)
    _check_shape("conv5x5", "bias", bias, (O,))
    activation_code(act)
    N, _, H, W = x.shape
    return N, C, H, W, O


@torch.library.custom_op("lenet5_fast::conv5x5", mutates_args=())
def _conv5x5(x: Tensor, weight: Tensor, bias: Tensor, act: int) -> Tensor:
    N, C, H, W, O = _conv5x5_check(x, weight, bias, act)
    y = x.new_empty((N, O, H - 4, W - 4))
    with _on_device(x):
        _C.conv5x5_forward(*_launch(x), _ptr(x), _ptr(weight), _ptr(bias), _ptr(y), N, C, H, W, O, act)
    return y


@_conv5x5.register_fake
def _(x, weight, bias, act):
    N, C, H, W, O = _conv5x5_check(x, weight, bias, act)
    return x.new_empty((N, O, H - 4, W - 4))


def _conv5x5_backward_check(grad, y, x, weight, act):
    _check_tensor("conv5x5_backward", "weight", weight, 4)
    N, C, H, W, O = _conv5x5_check(x, weight, weight.new_empty(weight.shape[0]), act)
    _check_grad_and_output("conv5x5_backward", grad, y, x, (N, O, H - 4, W - 4))
    return N, C, H, W, O


@torch.library.custom_op("lenet5_fast::conv5x5_backward", mutates_args=())
def _conv5x5_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, act: int,
                      gauss_newton: bool, input_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    N, C, H, W, O = _conv5x5_backward_check(grad, y, x, weight, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gw, gb = torch.empty_like(weight), weight.new_empty((O,))
    with _on_device(x):
        _C.conv5x5_backward(*_launch(x), _ptr(grad), _ptr(y), _ptr(x), _ptr(weight), _ptr(gx),
                            _ptr(gw), _ptr(gb), N, C, H, W, O, act, gauss_newton)
    return gx, gw, gb


@_conv5x5_backward.register_fake
def _(grad, y, x, weight, act, gauss_newton, input_grad):
    _conv5x5_backward_check(grad, y, x, weight, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    return gx, torch.empty_like(weight), weight.new_empty((weight.shape[0],))


def _conv5x5_setup(ctx, inputs, output):
    x, weight, _, act = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.act = act


def _conv5x5_grad(ctx, grad):
    x, weight, y = ctx.saved_tensors
    gx, gw, gb = _conv5x5_backward(grad.contiguous(), y, x, weight, ctx.act, False, ctx.needs_input_grad[0])
    return (gx if ctx.needs_input_grad[0] else None), gw, gb, None


_conv5x5.register_autograd(_conv5x5_grad, setup_context=_conv5x5_setup)


def conv5x5(x: Tensor, weight: Tensor, bias: Tensor, act=0) -> Tensor:
    """Valid 5x5 convolution with an optional fused activation (C1, C5, modern C3)."""
    return _conv5x5(x, weight, bias, activation_code(act))


# ---------------------------------------------------------------------------------------------
# sparse_conv5x5 (C3): x[N,C,H,W], weight[K,5,5], bias[O], table CSR (offsets[O+1], inputs[K])

def _sparse_check(x, weight, bias, offsets, inputs, act):
    _check_input("sparse_conv5x5", x, 4, min_hw=5)
    _check_tensor("sparse_conv5x5", "weight", weight, 3, x.dtype, x.device)
    _check_tensor("sparse_conv5x5", "bias", bias, 1, x.dtype, x.device)
    O = bias.shape[0]
    if O == 0:
        raise ValueError("lenet5_fast.sparse_conv5x5: the table has no output maps")
    _check_table("sparse_conv5x5", offsets, inputs, x.shape[1], O)
    for name, t in (("table offsets", offsets), ("table inputs", inputs)):
        if t.device != x.device:
            raise ValueError(f"lenet5_fast.sparse_conv5x5: {name} is on {t.device} but the input is on {x.device}")
    _check_shape("sparse_conv5x5", "weight", weight, (inputs.shape[0], 5, 5))
    activation_code(act)
    N, C, H, W = x.shape
    return N, C, H, W, O


@torch.library.custom_op("lenet5_fast::sparse_conv5x5", mutates_args=())
def _sparse_conv5x5(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor, inputs: Tensor,
                    act: int) -> Tensor:
    N, C, H, W, O = _sparse_check(x, weight, bias, offsets, inputs, act)
    y = x.new_empty((N, O, H - 4, W - 4))
    with _on_device(x):
        _C.sparse_conv5x5_forward(*_launch(x), _ptr(x), _ptr(weight), _ptr(bias), _ptr(offsets),
                                  _ptr(inputs), _ptr(y), N, C, H, W, O, act)
    return y


@_sparse_conv5x5.register_fake
def _(x, weight, bias, offsets, inputs, act):
    N, C, H, W, O = _sparse_check(x, weight, bias, offsets, inputs, act)
    return x.new_empty((N, O, H - 4, W - 4))


def _sparse_backward_check(grad, y, x, weight, offsets, inputs, act):
    _check_tensor("sparse_conv5x5_backward", "weight", weight, 3)
    _check_table_tensors("sparse_conv5x5_backward", offsets, inputs)
    bias = weight.new_empty((max(offsets.shape[0] - 1, 0),))
    N, C, H, W, O = _sparse_check(x, weight, bias, offsets, inputs, act)
    _check_grad_and_output("sparse_conv5x5_backward", grad, y, x, (N, O, H - 4, W - 4))
    return N, C, H, W, O


@torch.library.custom_op("lenet5_fast::sparse_conv5x5_backward", mutates_args=())
def _sparse_conv5x5_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, offsets: Tensor,
                             inputs: Tensor, act: int, gauss_newton: bool,
                             input_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    N, C, H, W, O = _sparse_backward_check(grad, y, x, weight, offsets, inputs, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gw, gb = torch.empty_like(weight), weight.new_empty((O,))
    with _on_device(x):
        _C.sparse_conv5x5_backward(*_launch(x), _ptr(grad), _ptr(y), _ptr(x), _ptr(weight),
                                   _ptr(offsets), _ptr(inputs), _ptr(gx), _ptr(gw), _ptr(gb),
                                   N, C, H, W, O, act, gauss_newton)
    return gx, gw, gb


@_sparse_conv5x5_backward.register_fake
def _(grad, y, x, weight, offsets, inputs, act, gauss_newton, input_grad):
    _sparse_backward_check(grad, y, x, weight, offsets, inputs, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    return gx, torch.empty_like(weight), weight.new_empty((offsets.shape[0] - 1,))


def _sparse_setup(ctx, inputs, output):
    x, weight, _, offsets, table_inputs, act = inputs
    ctx.save_for_backward(x, weight, offsets, table_inputs, output)
    ctx.act = act


def _sparse_grad(ctx, grad):
    x, weight, offsets, table_inputs, y = ctx.saved_tensors
    gx, gw, gb = _sparse_conv5x5_backward(grad.contiguous(), y, x, weight, offsets, table_inputs,
                                          ctx.act, False, ctx.needs_input_grad[0])
    return (gx if ctx.needs_input_grad[0] else None), gw, gb, None, None, None


_sparse_conv5x5.register_autograd(_sparse_grad, setup_context=_sparse_setup)


def sparse_conv5x5(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor, inputs: Tensor, act=0) -> Tensor:
    """5x5 convolution through a connection table in CSR form (C3). See connection_table_to_csr."""
    return _sparse_conv5x5(x, weight, bias, offsets, inputs, activation_code(act))


def connection_table_to_csr(table: Sequence[Sequence[int]], in_maps: int) -> Tuple[Tensor, Tensor]:
    """``table[o]`` lists the input maps output map ``o`` reads. Returns int32 (offsets, inputs)."""
    offsets, inputs = [0], []
    for o, row in enumerate(table):
        row = [int(c) for c in row]
        if not row:
            raise ValueError(f"connection table: output map {o} reads no input map")
        if len(set(row)) != len(row):
            raise ValueError(f"connection table: output map {o} lists an input map twice: {row}")
        if min(row) < 0 or max(row) >= in_maps:
            raise ValueError(f"connection table: output map {o} reads maps {row}, outside [0, {in_maps})")
        inputs.extend(row)
        offsets.append(len(inputs))
    if not inputs:
        raise ValueError("connection table is empty")
    return torch.tensor(offsets, dtype=torch.int32), torch.tensor(inputs, dtype=torch.int32)


# ---------------------------------------------------------------------------------------------
# subsample2x2 (S2, S4): y = act(coef[c] * window sum + bias[c]), x[N,C,H,W] -> [N,C,H/2,W/2]

def _subsample_check(x, coef, bias, act):
    _check_input("subsample2x2", x, 4, min_hw=2)
    C = x.shape[1]
    for name, t in (("coef", coef), ("bias", bias)):
        _check_tensor("subsample2x2", name, t, 1, x.dtype, x.device)
        _check_shape("subsample2x2", name, t, (C,))
    activation_code(act)
    N, C, H, W = x.shape
    return N, C, H, W


@torch.library.custom_op("lenet5_fast::subsample2x2", mutates_args=())
def _subsample2x2(x: Tensor, coef: Tensor, bias: Tensor, act: int) -> Tensor:
    N, C, H, W = _subsample_check(x, coef, bias, act)
    y = x.new_empty((N, C, H // 2, W // 2))
    with _on_device(x):
        _C.subsample2x2_forward(*_launch(x), _ptr(x), _ptr(coef), _ptr(bias), _ptr(y), N, C, H, W, act)
    return y


@_subsample2x2.register_fake
def _(x, coef, bias, act):
    N, C, H, W = _subsample_check(x, coef, bias, act)
    return x.new_empty((N, C, H // 2, W // 2))


def _subsample_backward_check(grad, y, x, coef, act):
    N, C, H, W = _subsample_check(x, coef, coef, act)
    _check_grad_and_output("subsample2x2_backward", grad, y, x, (N, C, H // 2, W // 2))
    return N, C, H, W


@torch.library.custom_op("lenet5_fast::subsample2x2_backward", mutates_args=())
def _subsample2x2_backward(grad: Tensor, y: Tensor, x: Tensor, coef: Tensor, act: int,
                           gauss_newton: bool, input_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    N, C, H, W = _subsample_backward_check(grad, y, x, coef, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gc, gb = torch.empty_like(coef), torch.empty_like(coef)
    with _on_device(x):
        _C.subsample2x2_backward(*_launch(x), _ptr(grad), _ptr(y), _ptr(x), _ptr(coef), _ptr(gx),
                                 _ptr(gc), _ptr(gb), N, C, H, W, act, gauss_newton)
    return gx, gc, gb


@_subsample2x2_backward.register_fake
def _(grad, y, x, coef, act, gauss_newton, input_grad):
    _subsample_backward_check(grad, y, x, coef, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    return gx, torch.empty_like(coef), torch.empty_like(coef)


def _subsample_setup(ctx, inputs, output):
    x, coef, _, act = inputs
    ctx.save_for_backward(x, coef, output)
    ctx.act = act


def _subsample_grad(ctx, grad):
    x, coef, y = ctx.saved_tensors
    gx, gc, gb = _subsample2x2_backward(grad.contiguous(), y, x, coef, ctx.act, False, ctx.needs_input_grad[0])
    return (gx if ctx.needs_input_grad[0] else None), gc, gb, None


_subsample2x2.register_autograd(_subsample_grad, setup_context=_subsample_setup)


def subsample2x2(x: Tensor, coef: Tensor, bias: Tensor, act=0) -> Tensor:
    """The paper's trainable subsampling: coef * (sum of each 2x2 window) + bias, then act."""
    return _subsample2x2(x, coef, bias, activation_code(act))


# ---------------------------------------------------------------------------------------------
# maxpool2x2 (modern variant)

def _maxpool_check(x):
    _check_input("maxpool2x2", x, 4, min_hw=2)
    return tuple(x.shape)


@torch.library.custom_op("lenet5_fast::maxpool2x2", mutates_args=())
def _maxpool2x2(x: Tensor) -> Tensor:
    N, C, H, W = _maxpool_check(x)
    y = x.new_empty((N, C, H // 2, W // 2))
    with _on_device(x):
        _C.maxpool2x2_forward(*_launch(x), _ptr(x), _ptr(y), N, C, H, W)
    return y


@_maxpool2x2.register_fake
def _(x):
    N, C, H, W = _maxpool_check(x)
    return x.new_empty((N, C, H // 2, W // 2))


def _maxpool_backward_check(grad, x, y):
    N, C, H, W = _maxpool_check(x)
    _check_grad_and_output("maxpool2x2_backward", grad, y, x, (N, C, H // 2, W // 2))
    return N, C, H, W


@torch.library.custom_op("lenet5_fast::maxpool2x2_backward", mutates_args=())
def _maxpool2x2_backward(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    N, C, H, W = _maxpool_backward_check(grad, x, y)
    gx = torch.empty_like(x)
    with _on_device(x):
        _C.maxpool2x2_backward(*_launch(x), _ptr(grad), _ptr(x), _ptr(y), _ptr(gx), N, C, H, W)
    return gx


@_maxpool2x2_backward.register_fake
def _(grad, x, y):
    _maxpool_backward_check(grad, x, y)
    return torch.empty_like(x)


def _maxpool_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _maxpool_grad(ctx, grad):
    x, y = ctx.saved_tensors
    return _maxpool2x2_backward(grad.contiguous(), x, y)


_maxpool2x2.register_autograd(_maxpool_grad, setup_context=_maxpool_setup)


def maxpool2x2(x: Tensor) -> Tensor:
    """2x2 max-pooling, stride 2 (modern variant)."""
    return _maxpool2x2(x)


# ---------------------------------------------------------------------------------------------
# full: x[N,D], weight[O,D], bias[O] -> [N,O]

def _full_check(x, weight, bias, act):
    _check_input("full", x, 2)
    _check_tensor("full", "weight", weight, 2, x.dtype, x.device)
    O, D = weight.shape[0], x.shape[1]
    _check_shape("full", "weight", weight, (O, D))
    _check_out_maps("full", O)
    _check_tensor("full", "bias", bias, 1, x.dtype, x.device)
    _check_shape("full", "bias", bias, (O,))
    activation_code(act)
    return x.shape[0], D, O


@torch.library.custom_op("lenet5_fast::full", mutates_args=())
def _full(x: Tensor, weight: Tensor, bias: Tensor, act: int) -> Tensor:
    N, D, O = _full_check(x, weight, bias, act)
    y = x.new_empty((N, O))
    with _on_device(x):
        _C.full_forward(*_launch(x), _ptr(x), _ptr(weight), _ptr(bias), _ptr(y), N, D, O, act)
    return y


@_full.register_fake
def _(x, weight, bias, act):
    N, D, O = _full_check(x, weight, bias, act)
    return x.new_empty((N, O))


def _full_backward_check(grad, y, x, weight, act):
    _check_tensor("full_backward", "weight", weight, 2)
    N, D, O = _full_check(x, weight, weight.new_empty((weight.shape[0],)), act)
    _check_grad_and_output("full_backward", grad, y, x, (N, O))
    return N, D, O


@torch.library.custom_op("lenet5_fast::full_backward", mutates_args=())
def _full_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, act: int,
                   gauss_newton: bool, input_grad: bool) -> Tuple[Tensor, Tensor, Tensor]:
    N, D, O = _full_backward_check(grad, y, x, weight, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gw, gb = torch.empty_like(weight), weight.new_empty((O,))
    with _on_device(x):
        _C.full_backward(*_launch(x), _ptr(grad), _ptr(y), _ptr(x), _ptr(weight), _ptr(gx),
                         _ptr(gw), _ptr(gb), N, D, O, act, gauss_newton)
    return gx, gw, gb


@_full_backward.register_fake
def _(grad, y, x, weight, act, gauss_newton, input_grad):
    _full_backward_check(grad, y, x, weight, act)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    return gx, torch.empty_like(weight), weight.new_empty((weight.shape[0],))


def _full_setup(ctx, inputs, output):
    x, weight, _, act = inputs
    ctx.save_for_backward(x, weight, output)
    ctx.act = act


def _full_grad(ctx, grad):
    x, weight, y = ctx.saved_tensors
    gx, gw, gb = _full_backward(grad.contiguous(), y, x, weight, ctx.act, False, ctx.needs_input_grad[0])
    return (gx if ctx.needs_input_grad[0] else None), gw, gb, None


_full.register_autograd(_full_grad, setup_context=_full_setup)


def full(x: Tensor, weight: Tensor, bias: Tensor, act=0) -> Tensor:
    """Fully connected layer with an optional fused activation (F6)."""
    return _full(x, weight, bias, activation_code(act))


# ---------------------------------------------------------------------------------------------
# euclidean_rbf: x[N,D], weight[M,D] -> y[N,M] = sum_j (x - w)^2

def _rbf_check(x, weight):
    _check_input("euclidean_rbf", x, 2)
    _check_tensor("euclidean_rbf", "weight", weight, 2, x.dtype, x.device)
    if weight.shape[1] != x.shape[1] or weight.shape[0] == 0:
        raise ValueError(f"lenet5_fast.euclidean_rbf: weight must have shape (M, {x.shape[1]}) with M > 0, "
                         f"got {tuple(weight.shape)}")
    return x.shape[0], x.shape[1], weight.shape[0]


@torch.library.custom_op("lenet5_fast::euclidean_rbf", mutates_args=())
def _euclidean_rbf(x: Tensor, weight: Tensor) -> Tensor:
    N, D, M = _rbf_check(x, weight)
    y = x.new_empty((N, M))
    with _on_device(x):
        _C.euclidean_rbf_forward(*_launch(x), _ptr(x), _ptr(weight), _ptr(y), N, D, M)
    return y


@_euclidean_rbf.register_fake
def _(x, weight):
    N, D, M = _rbf_check(x, weight)
    return x.new_empty((N, M))


def _rbf_backward_check(grad, x, weight):
    N, D, M = _rbf_check(x, weight)
    _check_tensor("euclidean_rbf_backward", "grad", grad, 2, x.dtype, x.device)
    _check_shape("euclidean_rbf_backward", "grad", grad, (N, M))
    return N, D, M


@torch.library.custom_op("lenet5_fast::euclidean_rbf_backward", mutates_args=())
def _euclidean_rbf_backward(grad: Tensor, x: Tensor, weight: Tensor, gauss_newton: bool,
                            input_grad: bool, weight_grad: bool) -> Tuple[Tensor, Tensor]:
    N, D, M = _rbf_backward_check(grad, x, weight)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gw = torch.empty_like(weight) if weight_grad else _empty_like_missing(x)
    with _on_device(x):
        _C.euclidean_rbf_backward(*_launch(x), _ptr(grad), _ptr(x), _ptr(weight), _ptr(gx),
                                  _ptr(gw), N, D, M, gauss_newton)
    return gx, gw


@_euclidean_rbf_backward.register_fake
def _(grad, x, weight, gauss_newton, input_grad, weight_grad):
    _rbf_backward_check(grad, x, weight)
    gx = torch.empty_like(x) if input_grad else _empty_like_missing(x)
    gw = torch.empty_like(weight) if weight_grad else _empty_like_missing(x)
    return gx, gw


def _rbf_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _rbf_grad(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw = _euclidean_rbf_backward(grad.contiguous(), x, weight, False, ctx.needs_input_grad[0],
                                     ctx.needs_input_grad[1])
    return (gx if ctx.needs_input_grad[0] else None), (gw if ctx.needs_input_grad[1] else None)


_euclidean_rbf.register_autograd(_rbf_grad, setup_context=_rbf_setup)


def euclidean_rbf(x: Tensor, weight: Tensor) -> Tensor:
    """Euclidean RBF units: y[n,i] = sum_j (x[n,j] - weight[i,j])^2 (the paper's output layer)."""
    return _euclidean_rbf(x, weight)


# ---------------------------------------------------------------------------------------------
# activation (stand-alone ScaledTanh / ReLU), any shape

def _act_check(x, act):
    if not isinstance(x, Tensor):
        raise TypeError(f"lenet5_fast.activation: input must be a torch.Tensor, got {type(x).__name__}")
    _check_tensor("activation", "input", x, x.dim())
    if x.numel() == 0:
        raise ValueError(f"lenet5_fast.activation: empty input (shape {tuple(x.shape)})")
    activation_code(act)


@torch.library.custom_op("lenet5_fast::activation", mutates_args=())
def _activation(x: Tensor, act: int) -> Tensor:
    _act_check(x, act)
    y = torch.empty_like(x)
    with _on_device(x):
        _C.activation_forward(*_launch(x), _ptr(x), _ptr(y), x.numel(), act)
    return y


@_activation.register_fake
def _(x, act):
    _act_check(x, act)
    return torch.empty_like(x)


def _act_backward_check(grad, y, act):
    _act_check(y, act)
    _check_tensor("activation_backward", "grad", grad, y.dim(), y.dtype, y.device)
    _check_shape("activation_backward", "grad", grad, y.shape)


@torch.library.custom_op("lenet5_fast::activation_backward", mutates_args=())
def _activation_backward(grad: Tensor, y: Tensor, act: int, gauss_newton: bool) -> Tensor:
    _act_backward_check(grad, y, act)
    gx = torch.empty_like(y)
    with _on_device(y):
        _C.activation_backward(*_launch(y), _ptr(grad), _ptr(y), _ptr(gx), y.numel(), act, gauss_newton)
    return gx


@_activation_backward.register_fake
def _(grad, y, act, gauss_newton):
    _act_backward_check(grad, y, act)
    return torch.empty_like(y)


def _act_setup(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.act = inputs[1]


def _act_grad(ctx, grad):
    (y,) = ctx.saved_tensors
    return _activation_backward(grad.contiguous(), y, ctx.act, False), None


_activation.register_autograd(_act_grad, setup_context=_act_setup)


def activation(x: Tensor, act=1) -> Tensor:
    """Element-wise activation: 1 (default) the paper's squashing 1.7159 tanh(2x/3), 2 ReLU,
    3 plain tanh."""
    return _activation(x, activation_code(act))


# The backward ops, for SDLM's Gauss-Newton pass (gauss_newton=True) and for fused users.
conv5x5_backward = _conv5x5_backward
sparse_conv5x5_backward = _sparse_conv5x5_backward
subsample2x2_backward = _subsample2x2_backward
maxpool2x2_backward = _maxpool2x2_backward
full_backward = _full_backward
euclidean_rbf_backward = _euclidean_rbf_backward
activation_backward = _activation_backward
