"""Argument checks for the native ops (``lenet5_fast.ops``).

Every check reads tensor attributes only (type, dtype, device, rank, shape): no data, no
synchronisation, so the same checks run on real, fake and meta tensors, eagerly and under
``torch.compile``, and a bad call fails the same way everywhere. Strides are free (the kernels
make their inputs contiguous) and a batch may be empty. Each op's check returns the shape of
its output(s), which the real kernel and the fake kernel then allocate alike.

The one thing attributes cannot show is the connection table's contents:
:func:`table_contents` reads them, once per table (remembered by the tensors' identity, data
pointer and version counter), for the real kernels only.
"""
from __future__ import annotations

import enum
from typing import Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from . import _C

F32, F64 = torch.float32, torch.float64
FLOATS = (F32, F64)
# The activation codes the kernels take, named once in csrc/activations.h (read through _C):
# Act.IDENTITY 0, Act.SCALED_TANH 1 (the paper's 1.7159 tanh(2a/3)), Act.RELU 2, Act.PLAIN_TANH 3.
Act = enum.IntEnum("Act", {name.upper(): code for name, code in sorted(_C.activations.items(), key=lambda i: i[1])},
                   module=__name__, qualname="Act")
ACTIVATION_NAMES = tuple(a.name.lower() for a in Act)  # by code
_CODES = len(ACTIVATION_NAMES)
ACTIVATIONS = {**{name: int(a) for name, a in zip(ACTIVATION_NAMES, Act)}, "none": int(Act.IDENTITY)}
SCALED_TANH = tuple(_C.scaled_tanh)  # (A, S) of the paper's squashing A tanh(S a): (1.7159, 2/3)
# "tanh" could mean either tanh: refused, with the two names that say which.
_AMBIGUOUS = {"tanh": "'tanh' is ambiguous: use 'plain_tanh' (torch.tanh) or 'scaled_tanh' (the paper's squashing "
                      "1.7159 tanh(2a/3))"}
KERNEL = _C.geometry["kernel"]  # every convolution is 5x5, valid


def activation_code(act) -> int:
    """Maps an activation name (or code) to the integer code the kernels take."""
    if type(act) is int and 0 <= act < _CODES:  # the common cases, first
        return act
    if type(act) is Act:
        return act.value
    if isinstance(act, bool) or not isinstance(act, (int, str)):
        raise TypeError(f"activation must be a name in {sorted(ACTIVATIONS)} or a code 0-{_CODES - 1}, got {act!r}")
    if isinstance(act, str):
        if act in _AMBIGUOUS:
            raise ValueError(f"activation {_AMBIGUOUS[act]}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {sorted(ACTIVATIONS)}")
        return ACTIVATIONS[act]
    if not 0 <= act < _CODES:
        raise ValueError(f"activation code must be one of {list(range(_CODES))}, got {act}")
    return int(act)


def _fail(op: str, msg: str, kind=ValueError):
    raise kind(f"lenet5_fast.{op}: {msg}")


def tensor(op: str, name: str, t, ndim: int, like: Tensor = None, like_name: str = "the input") -> None:
    """t is a float32/float64 tensor of rank ndim on the CPU, a GPU or meta, with the dtype and
    device of like (named like_name) when like is given. (Written for speed: it runs on every
    call, so the common case costs a handful of attribute reads.)"""
    if not isinstance(t, Tensor):
        _fail(op, f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    dtype = t.dtype
    if dtype is not F32 and dtype is not F64:
        _fail(op, f"{name} must be float32 or float64, got {dtype}", TypeError)
    if like is None:
        if not (t.is_cpu or t.is_cuda or t.is_meta):
            _fail(op, f"{name} is on {t.device}; only CPU and CUDA are supported")
    else:
        if dtype is not like.dtype:
            _fail(op, f"{name} has dtype {dtype} but {like_name} is {like.dtype}", TypeError)
        if not (t.is_cpu and like.is_cpu) and t.device != like.device:
            _fail(op, f"{name} is on {t.device} but {like_name} is on {like.device}")
    if t.dim() != ndim:
        _fail(op, f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")


def shape(op: str, name: str, t: Tensor, expected: Tuple[int, ...], why=None) -> None:
    """t.shape == expected; why() (only called on failure) says where expected comes from."""
    if t.shape != expected:
        _fail(op, f"{name} must have shape {tuple(expected)}{why() if why else ''}, got {tuple(t.shape)}")


def maps(op: str, name: str, x, min_hw: int, like: Tensor = None) -> torch.Size:
    """x is a batch of maps [N, C, H, W]: N may be 0, C >= 1, H and W >= min_hw. Returns x's shape."""
    tensor(op, name, x, 4, like)
    size = x.shape
    if size[1] == 0:
        _fail(op, f"{name} has no maps (shape {tuple(size)})")
    if size[2] < min_hw or size[3] < min_hw:
        _fail(op, f"{name} maps must be at least {min_hw}x{min_hw}, got shape {tuple(size)}")
    return size


def rows(op: str, name: str, x, like: Tensor = None) -> torch.Size:
    """x is a batch of vectors [N, D]: N may be 0, D >= 1. Returns x's shape."""
    tensor(op, name, x, 2, like)
    size = x.shape
    if size[1] == 0:
        _fail(op, f"{name} has zero features (shape {tuple(size)})")
    return size


def outputs(op: str, O: int) -> None:
    # Zero outputs would hand the kernels null output pointers (undefined behaviour in memcpy).
    if O == 0:
        _fail(op, "weight has no outputs (its first dimension is 0)")


def grad_and_y(op: str, grad: Tensor, y: Tensor, expected: Tuple[int, ...], why) -> None:
    """grad and y (rank-checked) both have the forward's output shape. When they differ, the one
    that is not ``expected`` (the output shape the forward's arguments give; why() says which)
    is blamed; when they agree, a disagreement with the arguments is blamed on those."""
    if grad.shape != y.shape:
        if y.shape == expected:
            _fail(op, f"grad must have shape {tuple(expected)} (the forward's output{why()}, as y), "
                      f"got {tuple(grad.shape)}")
        shape(op, "y (the forward's output)", y, grad.shape, lambda: " (the shape of grad)")


def weight_outputs(op: str, weight: Tensor, count: int, grad: Tensor, what: str) -> None:
    """weight has one output (first dimension) per ``what`` of grad (which y agrees with)."""
    if weight.shape[0] != count:
        _fail(op, f"weight must have {count} outputs, one per {what} of grad and y {tuple(grad.shape)}, got shape "
                  f"{tuple(weight.shape)}")


# ---------------------------------------------------------------------------------------------
# one check per op, returning the output shape(s)

def conv5x5(x, weight, bias, act) -> Tuple[int, ...]:
    N, C, H, W = maps("conv5x5", "input", x, KERNEL)
    tensor("conv5x5", "weight", weight, 4, x)
    O = weight.shape[0]
    shape("conv5x5", "weight", weight, (O, C, KERNEL, KERNEL))
    outputs("conv5x5", O)
    tensor("conv5x5", "bias", bias, 1, x)
    shape("conv5x5", "bias", bias, (O,))
    activation_code(act)
    return (N, O, H - 4, W - 4)


def conv5x5_backward(grad, y, x, weight, act) -> Tuple[Tuple[int, ...], ...]:
    op = "conv5x5_backward"
    tensor(op, "grad", grad, 4)
    tensor(op, "weight", weight, 4, grad, "grad")
    tensor(op, "x (the forward's input)", x, 4, grad, "grad")
    tensor(op, "y (the forward's output)", y, 4, grad, "grad")
    grad_and_y(op, grad, y, (x.shape[0], weight.shape[0], x.shape[2] - 4, x.shape[3] - 4),
               lambda: f" for x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    O, C = weight.shape[0], weight.shape[1]
    shape(op, "weight", weight, (O, C, KERNEL, KERNEL))
    outputs(op, O)
    N, Og, Ho, Wo = grad.shape
    weight_outputs(op, weight, Og, grad, "map")
    shape(op, "x (the forward's input)", x, (N, C, Ho + 4, Wo + 4),
          lambda: f" (from grad {tuple(grad.shape)} and weight {tuple(weight.shape)})")
    maps(op, "x (the forward's input)", x, KERNEL)
    activation_code(act)
    return tuple(x.shape), tuple(weight.shape), (O,)


def table_tensors(op: str, offsets, inputs, like: Tensor, like_name: str = "the input") -> None:
    for name, t in (("table offsets", offsets), ("table inputs", inputs)):
        if not isinstance(t, Tensor) or t.dtype != torch.int32 or t.dim() != 1:
            _fail(op, f"{name} must be a 1-D int32 tensor", TypeError)
        if t.device != like.device:
            _fail(op, f"{name} is on {t.device} but {like_name} is on {like.device}")
    if offsets.shape[0] < 2:
        _fail(op, "the table has no output maps")
    if inputs.shape[0] == 0:  # no kernels: the weight gradient would be a null pointer
        _fail(op, "the table has no connections (table inputs is empty)")


def sparse_conv5x5(x, weight, bias, offsets, inputs, act) -> Tuple[int, ...]:
    op = "sparse_conv5x5"
    N, _, H, W = maps(op, "input", x, KERNEL)
    tensor(op, "weight", weight, 3, x)
    tensor(op, "bias", bias, 1, x)
    table_tensors(op, offsets, inputs, x)
    O = offsets.shape[0] - 1
    shape(op, "bias", bias, (O,), lambda: f" (the table has {O} output maps)")
    shape(op, "weight", weight, (inputs.shape[0], KERNEL, KERNEL), lambda: f" (the table has {inputs.shape[0]} kernels)")
    activation_code(act)
    return (N, O, H - 4, W - 4)


def sparse_conv5x5_backward(grad, y, x, weight, offsets, inputs, act) -> Tuple[Tuple[int, ...], ...]:
    op = "sparse_conv5x5_backward"
    tensor(op, "grad", grad, 4)
    table_tensors(op, offsets, inputs, grad, "grad")
    O, K = offsets.shape[0] - 1, inputs.shape[0]
    tensor(op, "x (the forward's input)", x, 4, grad, "grad")
    tensor(op, "y (the forward's output)", y, 4, grad, "grad")
    grad_and_y(op, grad, y, (x.shape[0], O, x.shape[2] - 4, x.shape[3] - 4),
               lambda: f" for x {tuple(x.shape)} and a table of {O} output maps")
    N, Og, Ho, Wo = grad.shape
    if Og != O:
        _fail(op, f"grad has {Og} maps but the table has {O} output maps")
    tensor(op, "weight", weight, 3, grad, "grad")
    shape(op, "weight", weight, (K, KERNEL, KERNEL), lambda: f" (the table has {K} kernels)")
    if (x.shape[0], x.shape[2], x.shape[3]) != (N, Ho + 4, Wo + 4):
        _fail(op, f"x (the forward's input) must have shape ({N}, C, {Ho + 4}, {Wo + 4}) (from grad "
                  f"{tuple(grad.shape)}), got {tuple(x.shape)}")
    maps(op, "x (the forward's input)", x, KERNEL)
    activation_code(act)
    return tuple(x.shape), (K, KERNEL, KERNEL), (O,)


def _pool(op: str, x, params: Sequence[Tuple[str, Tensor]]) -> Tuple[int, ...]:
    N, C, H, W = maps(op, "input", x, 2)
    for name, t in params:
        tensor(op, name, t, 1, x)
        shape(op, name, t, (C,))
    return (N, C, H // 2, W // 2)


def _pool_backward(op: str, grad, y, x) -> None:
    tensor(op, "grad", grad, 4)
    tensor(op, "x (the forward's input)", x, 4, grad, "grad")
    tensor(op, "y (the forward's output)", y, 4, grad, "grad")
    grad_and_y(op, grad, y, (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2),
               lambda: f" for x {tuple(x.shape)}")
    N, C, Ho, Wo = grad.shape
    if (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2) != (N, C, Ho, Wo):
        _fail(op, f"x (the forward's input) must have shape ({N}, {C}, {2 * Ho} or {2 * Ho + 1}, "
                  f"{2 * Wo} or {2 * Wo + 1}) (from grad {tuple(grad.shape)}), got {tuple(x.shape)}")
    maps(op, "x (the forward's input)", x, 2)


def subsample2x2(x, coef, bias, act) -> Tuple[int, ...]:
    activation_code(act)
    return _pool("subsample2x2", x, (("coef", coef), ("bias", bias)))


def subsample2x2_backward(grad, y, x, coef, act) -> Tuple[Tuple[int, ...], ...]:
    op = "subsample2x2_backward"
    _pool_backward(op, grad, y, x)
    tensor(op, "coef", coef, 1, grad, "grad")
    shape(op, "coef", coef, (x.shape[1],))
    activation_code(act)
    C = x.shape[1]
    return tuple(x.shape), (C,), (C,)


def maxpool2x2(x) -> Tuple[int, ...]:
    return _pool("maxpool2x2", x, ())


def maxpool2x2_backward(grad, x, y) -> Tuple[int, ...]:
    _pool_backward("maxpool2x2_backward", grad, y, x)
    return tuple(x.shape)


def full(x, weight, bias, act) -> Tuple[int, ...]:
    N, D = rows("full", "input", x)
    tensor("full", "weight", weight, 2, x)
    O = weight.shape[0]
    shape("full", "weight", weight, (O, D))
    outputs("full", O)
    tensor("full", "bias", bias, 1, x)
    shape("full", "bias", bias, (O,))
    activation_code(act)
    return (N, O)


def full_backward(grad, y, x, weight, act) -> Tuple[Tuple[int, ...], ...]:
    op = "full_backward"
    tensor(op, "grad", grad, 2)
    tensor(op, "weight", weight, 2, grad, "grad")
    tensor(op, "x (the forward's input)", x, 2, grad, "grad")
    tensor(op, "y (the forward's output)", y, 2, grad, "grad")
    grad_and_y(op, grad, y, (x.shape[0], weight.shape[0]), lambda: f" for x {tuple(x.shape)} and weight "
                                                                  f"{tuple(weight.shape)}")
    O, D = weight.shape
    outputs(op, O)
    weight_outputs(op, weight, grad.shape[1], grad, "feature")
    shape(op, "x (the forward's input)", x, (grad.shape[0], D),
          lambda: f" (from grad {tuple(grad.shape)} and weight {tuple(weight.shape)})")
    rows(op, "x (the forward's input)", x)
    activation_code(act)
    return tuple(x.shape), (O, D), (O,)


def euclidean_rbf(x, weight) -> Tuple[int, ...]:
    N, D = rows("euclidean_rbf", "input", x)
    tensor("euclidean_rbf", "weight", weight, 2, x)
    M, Dw = weight.shape
    if Dw != D or M == 0:
        _fail("euclidean_rbf", f"weight must have shape (M, {D}) with M > 0, got {tuple(weight.shape)}")
    return (N, M)


def euclidean_rbf_backward(grad, x, weight) -> Tuple[Tuple[int, ...], ...]:
    op = "euclidean_rbf_backward"
    tensor(op, "grad", grad, 2)
    tensor(op, "weight", weight, 2, grad, "grad")
    M, D = weight.shape
    if M == 0 or grad.shape[1] != M:
        _fail(op, f"weight must have shape ({grad.shape[1]}, D) with one row per column of grad "
                  f"{tuple(grad.shape)}, got {tuple(weight.shape)}")
    tensor(op, "x (the forward's input)", x, 2, grad, "grad")
    shape(op, "x (the forward's input)", x, (grad.shape[0], D),
          lambda: f" (from grad {tuple(grad.shape)} and weight {tuple(weight.shape)})")
    rows(op, "x (the forward's input)", x)
    return tuple(x.shape), (M, D)


def activation(x, act) -> Tuple[int, ...]:
    if not isinstance(x, Tensor):
        _fail("activation", f"input must be a torch.Tensor, got {type(x).__name__}", TypeError)
    tensor("activation", "input", x, x.dim())
    activation_code(act)
    return tuple(x.shape)


def activation_backward(grad, y, act) -> Tuple[int, ...]:
    op = "activation_backward"
    tensor(op, "y (the forward's output)", y, y.dim() if isinstance(y, Tensor) else 0)
    tensor(op, "grad", grad, y.dim(), y, "y")
    shape(op, "grad", grad, y.shape, lambda: " (the shape of y)")
    activation_code(act)
    return tuple(y.shape)


# ---------------------------------------------------------------------------------------------
# the connection table's contents: read once per table

# offsets tensor -> (key of the checked pair, the largest input map index it reads)
_checked_tables = WeakIdKeyDictionary()


def _table_key(offsets: Tensor, inputs: Tensor):
    try:
        return (id(inputs), offsets.data_ptr(), inputs.data_ptr(), offsets._version, inputs._version)
    except RuntimeError:  # inference-mode tensors have no version counter: never remembered
        return None


def table_contents(op: str, offsets: Tensor, inputs: Tensor, in_maps: int) -> None:
    """offsets rise from 0 to len(inputs), inputs are map indices in [0, in_maps). Read once
    per table: the result is remembered for these two tensors at this address and version (an
    in-place change is read again). A CUDA table is copied to the host for that one read."""
    key = _table_key(offsets, inputs)
    seen = _checked_tables.get(offsets)
    if key is not None and seen is not None and seen[0] == key:
        top = seen[1]
    else:
        off, inp = offsets.cpu(), inputs.cpu()
        if int(off[0]) != 0 or bool((off[1:] < off[:-1]).any()) or int(off[-1]) != inp.shape[0]:
            _fail(op, f"table offsets must rise from 0 to len(inputs)={inp.shape[0]}")
        if int(inp.min()) < 0:
            _fail(op, f"table inputs must be map indices in [0, {in_maps})")
        top = int(inp.max())
        if key is not None:
            _checked_tables[offsets] = (key, top)
    if top >= in_maps:
        _fail(op, f"table inputs must be map indices in [0, {in_maps}), but the table reads map {top}")


def mark_table_checked(offsets: Tensor, inputs: Tensor) -> None:
    """Checks a table now (it must be on the CPU) and remembers it: SparseConvolution's own."""
    table_contents("connection table", offsets, inputs, int(inputs.max()) + 1)


def carry_table_check(src: Tuple[Tensor, Tensor], dst: Tuple[Tensor, Tensor]) -> None:
    """dst is a copy of the table src (e.g. its .to(device)): if src was checked as it is now,
    dst counts as checked too, without being read."""
    seen = _checked_tables.get(src[0])
    key = _table_key(*src)
    dst_key = _table_key(*dst)
    if seen is not None and key is not None and seen[0] == key and dst_key is not None:
        _checked_tables[dst[0]] = (dst_key, seen[1])
