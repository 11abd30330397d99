"""Fused CPU paths for the classic LeNet-5: the whole network in one native call.

The per-op path (``lenet5_fast.ops``) runs each layer as its own kernel with a tensor between
layers. Here the paper's network runs in ``csrc/cpu/lenet5_fused.cpp`` as a single call, with
every intermediate in thread-local scratch memory:

* :func:`forward` — RBF distances ``[N, 10]`` for a batch, threaded over the images (no autograd).
* :func:`sdlm_hessian` — the SDLM Gauss-Newton diagonal ``h_kk``, averaged over samples.
* :func:`sdlm_pass` — one pass of per-sample (batch 1) SDLM updates ``w -= step * grad``.

Only float32 CPU models of the classic variant (1 input channel, C3 with 16 output maps, fixed
RBF codes) are fused; :func:`supports` tells whether a model (and input) qualifies. The
numerics match the op-by-op model within float32 rounding (the squashing uses a rational tanh
with error about 1.5e-7 relative, see the C++ header comment).
"""
from __future__ import annotations

import weakref
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from . import _C
from .model import LeNet5

__all__ = ["supports", "forward", "sdlm_hessian", "sdlm_pass"]

_PARAM_NAMES = ("c1.weight", "c1.bias", "s2.coef", "s2.bias", "c3.weight", "c3.bias", "s4.coef",
                "s4.bias", "c5.weight", "c5.bias", "f6.weight", "f6.bias")
_PARAM_SLOTS = tuple(tuple(n.split(".")) for n in _PARAM_NAMES)
# model -> (fingerprint of its tensors, native arguments, the tensors): a model validated once
# is re-validated by the identity and address of its 15 tensors only (see _net).
_validated = weakref.WeakKeyDictionary()


_G = dict(_C.geometry)


def _expected_shapes(kernels: int):
    k, c1, c3, c5, f6 = _G["kernel"], _G["c1_maps"], _G["c3_maps"], _G["c5_units"], _G["f6_units"]
    return ((c1, 1, k, k), (c1,), (c1,), (c1,), (kernels, k, k), (c3,), (c3,), (c3,), (c5, c3, k, k),
            (c5,), (f6, c5), (f6,))


def _trainable(model) -> List[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _is_cpu_f32(t, shape=None) -> bool:
    return (isinstance(t, Tensor) and t.device.type == "cpu" and t.dtype == torch.float32
            and t.is_contiguous() and (shape is None or tuple(t.shape) == tuple(shape)))


def _model_problem(model) -> str:
    """Why the model cannot run fused ('' when it can)."""
    if not isinstance(model, LeNet5):
        return f"the model must be a lenet5_fast.LeNet5, got {type(model).__name__}"
    if model.variant != "classic" or model.in_channels != 1:
        return (f"only the classic variant with 1 input channel is fused, got variant={model.variant!r}, "
                f"in_channels={model.in_channels}")
    c3 = model.c3
    off, inp = getattr(c3, "table_offsets", None), getattr(c3, "table_inputs", None)
    for name, t in (("table_offsets", off), ("table_inputs", inp)):
        if not (isinstance(t, Tensor) and t.device.type == "cpu" and t.dtype == torch.int32
                and t.dim() == 1 and t.is_contiguous()):
            return f"c3.{name} must be a contiguous 1-D int32 CPU tensor"
    if off.numel() != 17 or not 1 <= inp.numel() <= 96:
        return (f"C3 must have 16 output maps and 1..96 kernels, got {off.numel() - 1} maps and "
                f"{inp.numel()} kernels")
    params = _trainable(model)
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    if tuple(named) != _PARAM_NAMES:
        return (f"the trainable parameters must be exactly {list(_PARAM_NAMES)} (fixed RBF codes), "
                f"got {named}")
    for name, p, shape in zip(_PARAM_NAMES, params, _expected_shapes(inp.numel())):
        if not _is_cpu_f32(p, shape):
            return (f"parameter {name} must be a contiguous float32 CPU tensor of shape {shape}, got "
                    f"{p.dtype} on {p.device} with shape {tuple(p.shape)}"
                    + ("" if p.is_contiguous() else " (not contiguous)"))
    if not _is_cpu_f32(model.output.weight, (10, 84)):
        return "the RBF codes (output.weight) must be a contiguous float32 CPU tensor of shape (10, 84)"
    if _model_tensors(model) is None:
        return "the layers must be the classic network's (RBF codes as a fixed buffer)"
    return ""


def _input_problem(x) -> str:
    if not isinstance(x, Tensor):
        return f"input must be a torch.Tensor, got {type(x).__name__}"
    if x.device.type != "cpu":
        return f"input is on {x.device}; the fused path runs on the CPU only"
    if x.dtype != torch.float32:
        return f"input must be float32, got {x.dtype}"
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 32, 32):
        return f"input must have shape [N, 1, 32, 32], got {tuple(x.shape)}"
    if x.shape[0] == 0:
        return "empty batch (input shape (0, 1, 32, 32))"
    return ""


def supports(model, x=None) -> bool:
    """True when :func:`forward` (and the SDLM functions) can run ``model`` (and input ``x``):
    a classic :class:`lenet5_fast.LeNet5` with 1 input channel, float32 contiguous parameters on
    the CPU, fixed RBF codes, and ``x`` (if given) a float32 CPU tensor ``[N, 1, 32, 32]``, N > 0."""
    if x is not None and _input_problem(x):
        return False
    try:
        _net(model, "supports")
    except TypeError:
        return False
    return True


def _model_tensors(model):
    """The 12 trainable tensors, the RBF codes and the C3 table, read straight from the module
    dictionaries (fast), or None when the model does not have them."""
    try:
        mods = model._modules
        tensors = [mods[m]._parameters[n] for m, n in _PARAM_SLOTS]
        c3 = mods["c3"]._buffers
        tensors += [mods["output"]._buffers["weight"], c3["table_offsets"], c3["table_inputs"]]
    except (AttributeError, KeyError, TypeError):
        return None
    return tensors if all(isinstance(t, Tensor) for t in tensors) else None


def _net(model, fn: str, full: bool = False):
    """Native arguments (param addresses, codes, table offsets, table inputs) for a supported
    model; raises TypeError with the reason otherwise. Unless ``full``, a model validated before
    whose 15 tensors are the same objects at the same addresses is not checked again (new
    tensors, .data assignments, dtype or device moves all change one or the other)."""
    tensors = _model_tensors(model) if isinstance(model, LeNet5) else None
    if tensors is not None:
        key = [(id(t), t.data_ptr()) for t in tensors]
        hit = None if full else _validated.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
    problem = _model_problem(model)
    if problem:
        raise TypeError(f"lenet5_fast.fused.{fn}: {problem}")
    args = ([t.data_ptr() for t in tensors[:12]], tensors[12].data_ptr(), tensors[13].data_ptr(),
            tensors[14].data_ptr())
    _validated[model] = (key, args, tensors)
    return args


def _images(x, fn: str) -> Tensor:
    if (isinstance(x, Tensor) and x.is_cpu and x.dtype is torch.float32 and x.dim() == 4
            and x.shape[0] > 0 and x.shape[1:] == (1, 32, 32)):
        return x if x.is_contiguous() else x.contiguous()
    problem = _input_problem(x)
    raise (TypeError if "must be a torch.Tensor" in problem or "float32" in problem else ValueError)(
        f"lenet5_fast.fused.{fn}: {problem}")


def _labels(y, n: int, fn: str, what: str = "labels") -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"lenet5_fast.fused.{fn}: {what} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"lenet5_fast.fused.{fn}: {what} must be an integer tensor, got {y.dtype}")
    if y.dim() != 1 or (n >= 0 and y.shape[0] != n):
        raise ValueError(f"lenet5_fast.fused.{fn}: {what} must have shape [{n if n >= 0 else 'n'}], "
                         f"got {tuple(y.shape)}")
    return y.to(device="cpu", dtype=torch.int64).contiguous()


def _threads() -> int:
    return max(1, torch.get_num_threads())


def forward(model, x: Tensor) -> Tensor:
    """RBF distances ``[N, 10]`` of the classic LeNet-5 for images ``x[N, 1, 32, 32]``, in one
    native call threaded over the batch (``torch.get_num_threads()`` threads). No autograd."""
    net = _net(model, "forward")
    x = _images(x, "forward")
    n = x.shape[0]
    out = torch.empty((n, 10), dtype=torch.float32)
    _C.lenet5_forward(*net, x.data_ptr(), out.data_ptr(), n, _threads())
    return out


def sdlm_hessian(model, x: Tensor, y: Tensor) -> List[Tensor]:
    """The SDLM Gauss-Newton diagonal ``h_kk`` averaged over the samples ``(x, y)``: one tensor
    per trainable parameter, in ``[p for p in model.parameters() if p.requires_grad]`` order,
    shaped like it. Same terms as the per-op backward kernels with ``gauss_newton=True``."""
    net = _net(model, "sdlm_hessian", full=True)
    x = _images(x, "sdlm_hessian")
    y = _labels(y, x.shape[0], "sdlm_hessian")
    hessian = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in _trainable(model)]
    _C.lenet5_sdlm_hessian(*net, x.data_ptr(), y.data_ptr(), x.shape[0], float(model.map_j),
                           [h.data_ptr() for h in hessian], _threads())
    return hessian


def _bump_versions(params: Sequence[Tensor]) -> None:
    # The native pass writes through raw pointers; tell autograd the tensors changed.
    bump = getattr(torch.autograd.graph, "increment_version", None)
    if bump is not None:
        for p in params:
            bump(p)


@torch.no_grad()
def sdlm_pass(model, x: Tensor, y: Tensor, order: Tensor, steps: Sequence[Tensor]) -> Tuple[float, int]:
    """One pass of per-sample SDLM: for each index k in ``order``, forward sample ``x[k]``,
    MAP loss against ``y[k]``, backward, and ``w -= step * dE/dw`` for every trainable
    parameter (in place). ``steps``: one tensor per trainable parameter, shaped like it
    (``eta / (mu + h)``). Returns ``(sum of the losses, training errors)``, each sample's loss
    and error taken before its update. Single-threaded: the updates are sequential."""
    net = _net(model, "sdlm_pass", full=True)
    x = _images(x, "sdlm_pass")
    y = _labels(y, x.shape[0], "sdlm_pass")
    order = _labels(order, -1, "sdlm_pass", "order")
    params = _trainable(model)
    if isinstance(steps, Tensor) or len(steps) != len(params):
        raise ValueError(f"lenet5_fast.fused.sdlm_pass: steps must be a list of {len(params)} tensors "
                         f"(one per trainable parameter), got "
                         f"{type(steps).__name__ if isinstance(steps, Tensor) else len(steps)}")
    ready = []
    for name, p, s in zip(_PARAM_NAMES, params, steps):
        if not isinstance(s, Tensor) or s.dtype != torch.float32 or s.device.type != "cpu" or s.shape != p.shape:
            raise ValueError(f"lenet5_fast.fused.sdlm_pass: the step for {name} must be a float32 CPU tensor "
                             f"of shape {tuple(p.shape)}, got "
                             + (f"{s.dtype} on {s.device} with shape {tuple(s.shape)}" if isinstance(s, Tensor)
                                else type(s).__name__))
        ready.append(s.contiguous())
    if order.numel() == 0:
        return 0.0, 0
    loss, errors = _C.lenet5_sdlm_pass(*net, x.data_ptr(), y.data_ptr(), x.shape[0], order.data_ptr(),
                                       order.numel(), float(model.map_j), [s.data_ptr() for s in ready])
    _bump_versions(params)
    return float(loss), int(errors)
