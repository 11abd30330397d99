"""The whole LeNet-5 in one native call, for training and inference: the fused CPU engines.

The per-op path (``lenet5_fast.ops``) runs each layer as its own kernel with a tensor between
layers. Here the network runs as one call with every intermediate in native scratch memory:

* the op pair ``torch.ops.lenet5_fast.lenet5`` / ``lenet5_backward``: the network's output and
  what its backward needs, then every parameter's gradient (and the input's when asked), with
  a fake kernel and an autograd formula, so it works in eager mode, under ``torch.compile``
  (one op in the graph) and with any torch optimizer. ``LeNet5.forward`` takes it whenever
  :func:`plan` accepts the model and input (else the per-op path); :func:`run` is that call.
* the op ``torch.ops.lenet5_fast.lenet5_loss`` (:func:`run_loss`, ``LeNet5.loss_of``): the
  forward, the loss (classic: the MAP criterion; modern: cross-entropy, both computed by the
  engine) and the backward in one native call, each tile's back to back while its activations
  are in cache; it returns the loss and the outputs, and its autograd formula scales the
  gradients computed with the forward by the incoming gradient (as fused cross-entropy kernels
  do). The trainer trains through it.
* :func:`forward`: outputs for a batch, no autograd (``LeNet5.predict``, evaluation).
* :func:`sdlm_hessian`, :func:`sdlm_pass`: SDLM's Gauss-Newton diagonal and a pass of
  per-sample (batch 1) SDLM updates, classic variant only.

Two engines sit behind the op: the per-image engine (``csrc/engine/fused_sample.cpp``, vectorised
within one image; the classic network with one input channel, no input gradient) and the batch
engine (``csrc/engine/fused_batch.cpp``, a tile of images in the SIMD lanes; classic and modern, any
input channels, input gradient). :func:`engine` picks one from the variant, channels, batch size
and whether the input gradient is wanted, so the forward and its backward always agree.

What qualifies (:func:`plan`): a classic or modern ``LeNet5`` built of this package's layers with
their standard activations, float32 contiguous CPU parameters, fixed RBF codes (classic), no
module hooks, and an input float32 CPU ``[N, in_channels, 32, 32]`` with N >= 1. Gradients are
reduced in a fixed order: bitwise the same for any thread count. The numerics match the per-op
path within float32 rounding (the same activations.h formulas; summation order differs).

This module imports only ``_C``, ``ops``, ``layers`` and ``network`` (no import of ``model``):
which layers a variant has is ``network.LAYOUT``, its trainable tensors ``network.param_layout``.
"""
from __future__ import annotations

import contextlib
import operator
import threading
import weakref
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _C, ops
from .layers import Convolution, EuclideanRBF, FullConnection, MaxPool, SparseConvolution, Subsampling
from .network import FUSED_VARIANTS, GEOMETRY as _G, LAYOUT, map_loss, param_layout, param_shapes

__all__ = ["plan", "run", "run_loss", "supports", "engine", "path", "disabled", "forward", "sdlm_hessian",
           "sdlm_pass", "lenet5", "lenet5_backward", "lenet5_loss", "SAMPLE", "BATCH"]

_IN, _C3, _F6, _CLASSES = _G["input"], _G["c3_maps"], _G["f6_units"], _G["classes"]

VARIANT_CODES = FUSED_VARIANTS  # the variants the engines run (csrc/network.h): name -> code
CLASSIC = VARIANT_CODES["classic"]
_VARIANT_NAMES = {code: name for name, code in VARIANT_CODES.items()}
SAMPLE, BATCH = 0, 1  # the engines (see engine())
# Below this batch size the per-image engine trains faster than the batch engine (measured in
# bench/cpu.py on the dev machine; both engines give the same gradients within float32 rounding).
SAMPLE_MAX_BATCH = 8
# A model with no per-image engine (modern variant, or more than one input channel) runs fused
# from this batch size on: below it, a tile of images in the lanes is mostly empty, and the
# layers one by one are faster (measured: modern, batch 1, 300 us by the layers, 750 us fused).
BATCH_MIN = 4

_LAYOUT = {v: LAYOUT[v] for v in VARIANT_CODES}  # the layers of each variant the engines run
_PARAM_NAMES = {v: tuple(name for name, _ in param_layout(v)) for v in VARIANT_CODES}  # in the engines' order
_PARAMS = {v: tuple(tuple(name.split(".")) for name in names) for v, names in _PARAM_NAMES.items()}  # (layer, p)


def _has_sample_engine(code: int, cin: int) -> bool:
    """Whether the per-image engine runs this network (the classic variant, one input channel)."""
    return code == CLASSIC and cin == 1


def _min_batch(code: int, cin: int) -> int:
    """The smallest batch that runs fused (see BATCH_MIN)."""
    return 1 if _has_sample_engine(code, cin) else BATCH_MIN


def _classes(code: int, params) -> int:
    return _CLASSES if code == CLASSIC else params[-1].shape[0]


def _native_args(code: int, cin: int, params, codes, offsets, inputs) -> tuple:
    """The network as every native entry point takes it: (variant, in_channels, classes, parameter
    addresses, codes, table offsets, table inputs), 0 for a tensor the variant has not."""
    return (code, cin, _classes(code, params), [p.data_ptr() for p in params], ops._ptr(codes), ops._ptr(offsets),
            ops._ptr(inputs))


# ---------------------------------------------------------------------------------------------
# which models and inputs run fused: plan()

class _Net:
    """A model's tensors as the engines take them, checked once (see _net), and what tells
    whether they are still the ones checked: the layer objects, where each tensor is looked up,
    the hook dictionaries that must stay empty, and the tensors' addresses."""

    __slots__ = ("variant", "code", "cin", "in_shape", "min_batch", "params", "codes", "offsets", "inputs", "args",
                 "layers", "dicts", "names", "tensors", "hooks", "__weakref__")

    def __init__(self, model, variant, params, codes, offsets, inputs):
        self.variant, self.code, self.cin = variant, VARIANT_CODES[variant], model.in_channels
        self.in_shape = torch.Size((self.cin, _IN, _IN))
        self.min_batch = _min_batch(self.code, self.cin)
        self.params, self.codes, self.offsets, self.inputs = params, codes, offsets, inputs
        self.args = _native_args(self.code, self.cin, params, codes, offsets, inputs)
        mods = model._modules
        self.layers = tuple(mods.values())
        slots = [(mods[layer]._parameters, p) for layer, p in _PARAMS[variant]]
        if variant == "classic":
            slots += [(mods["output"]._buffers, "weight"), (mods["c3"]._buffers, "table_offsets"),
                      (mods["c3"]._buffers, "table_inputs")]
        self.dicts, self.names = tuple(d for d, _ in slots), tuple(n for _, n in slots)
        self.tensors = tuple(map(dict.__getitem__, self.dicts, self.names))
        self.hooks = (model._forward_hooks, model._forward_pre_hooks, *_GLOBAL_HOOKS, *(
            h for m in self.layers for h in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                              m._backward_pre_hooks)))

    def current(self, model) -> bool:
        """Whether the model still holds exactly the checked layers and tensors (same objects at
        the same addresses: new tensors, .data assignments, dtype or device moves all change one
        or the other) and no hook was registered since."""
        if any(self.hooks) or tuple(model._modules.values()) != self.layers:
            return False
        now = tuple(map(dict.get, self.dicts, self.names))
        return all(map(operator.is_, now, self.tensors)) and list(map(Tensor.data_ptr, now[:len(self.params)])) \
            == self.args[3]


_GLOBAL_HOOKS = tuple(getattr(torch.nn.modules.module, name) for name in (
    "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
    if isinstance(getattr(torch.nn.modules.module, name, None), dict))


def _tensors(model):
    """(variant, [parameters], codes, offsets, inputs) read straight from the module dictionaries,
    or None when the model is not laid out as a fusable LeNet5 (types, activations, no hooks)."""
    variant = getattr(model, "variant", None)
    layout = _LAYOUT.get(variant) if isinstance(variant, str) else None
    mods = getattr(model, "_modules", None)
    if layout is None or not isinstance(mods, dict) or model._forward_hooks or model._forward_pre_hooks \
            or any(_GLOBAL_HOOKS):
        return None
    for spec in layout:
        layer = mods.get(spec.name)
        if type(layer) is not spec.kind or layer._forward_hooks or layer._forward_pre_hooks \
                or layer._backward_hooks or layer._backward_pre_hooks:
            return None
        if spec.act is not None and layer.act != spec.act:
            return None
    params = [mods[layer]._parameters.get(p) for layer, p in _PARAMS[variant]]
    if any(t is None for t in params):
        return None
    if variant == "classic":
        c3 = mods["c3"]._buffers
        codes = mods["output"]._buffers.get("weight")
        return variant, params, codes, c3.get("table_offsets"), c3.get("table_inputs")
    return variant, params, None, None, None


def _model_problem(model, found) -> str:
    """Why a model whose tensors were found cannot run fused ('' when it can)."""
    if found is None:
        return ("the model must be a lenet5_fast.LeNet5 of variant 'classic' or 'modern' with its own layers, "
                "standard activations, fixed RBF codes and no module hooks")
    variant, params, codes, offsets, inputs = found
    cin = getattr(model, "in_channels", None)
    if not isinstance(cin, int) or not 1 <= cin <= _G["max_in_channels"]:
        return f"in_channels must be 1..{_G['max_in_channels']}, got {cin!r}"
    if variant == "classic":
        for name, t in (("c3.table_offsets", offsets), ("c3.table_inputs", inputs)):
            if not (isinstance(t, Tensor) and t.device.type == "cpu" and t.dtype == torch.int32
                    and t.dim() == 1 and t.is_contiguous()):
                return f"{name} must be a contiguous 1-D int32 CPU tensor"
        if offsets.numel() != _C3 + 1 or not 1 <= inputs.numel() <= _G["c3_max_kernels"]:
            return (f"C3 must have {_C3} output maps and 1..{_G['c3_max_kernels']} kernels, got "
                    f"{offsets.numel() - 1} maps and {inputs.numel()} kernels")
        if not _is_cpu_f32(codes, (_CLASSES, _F6)):
            return (f"the RBF codes (output.weight) must be a fixed contiguous float32 CPU tensor of shape "
                    f"{(_CLASSES, _F6)}")
        kernels, classes = inputs.numel(), _CLASSES
    else:
        kernels, classes = 0, params[-1].shape[0] if params[-1].dim() == 1 else -1
        if not 1 <= classes <= _G["max_classes"]:
            return f"the output layer must have 1..{_G['max_classes']} units, got {classes}"
    for name, p, shape in zip(_PARAM_NAMES[variant], params, param_shapes(variant, cin, kernels, classes)):
        if not _is_cpu_f32(p, shape):
            return (f"parameter {name} must be a contiguous float32 CPU tensor of shape {shape}, got "
                    f"{p.dtype} on {p.device} with shape {tuple(p.shape)}"
                    + ("" if p.is_contiguous() else " (not contiguous)"))
    return ""


def _is_cpu_f32(t, shape=None) -> bool:
    return (isinstance(t, Tensor) and t.device.type == "cpu" and t.dtype == torch.float32
            and t.is_contiguous() and (shape is None or tuple(t.shape) == tuple(shape)))


def _input_problem(x, cin: int) -> str:
    if not isinstance(x, Tensor):
        return f"input must be a torch.Tensor, got {type(x).__name__}"
    if x.device.type != "cpu":
        return f"input is on {x.device}; the fused engines run on the CPU only"
    if x.dtype != torch.float32:
        return f"input must be float32, got {x.dtype}"
    if x.dim() != 4 or tuple(x.shape[1:]) != (cin, _IN, _IN):
        return f"input must have shape [N, {cin}, {_IN}, {_IN}], got {tuple(x.shape)}"
    if x.shape[0] == 0:
        return f"empty batch (input shape {tuple(x.shape)})"
    return ""


# model -> its _Net, valid while its tensors are the same objects at the same addresses (new
# tensors, .data assignments, dtype or device moves all change one or the other).
_plans = weakref.WeakKeyDictionary()
_off = {}  # thread id -> depth of disabled() blocks on that thread (empty: read in a few ns)


@contextlib.contextmanager
def disabled():
    """Within this block (on this thread) no model runs fused: ``LeNet5.forward`` takes the per-op
    path. For comparisons, and for the trainer's ``--no-fused``."""
    me = threading.get_ident()
    _off[me] = _off.get(me, 0) + 1
    try:
        yield
    finally:
        _off[me] -= 1
        if not _off[me]:
            del _off[me]


def _disabled() -> bool:
    return bool(_off) and threading.get_ident() in _off


def _net(model, fn: Optional[str]):
    """The model's _Net, or (fn None) None when it does not qualify; with fn, raises TypeError
    naming fn and the reason. A model checked before is not checked again while its _Net is
    current (a few identity and address comparisons)."""
    net = _plans.get(model)
    if net is not None and net.current(model):
        return net
    found = _tensors(model)
    problem = _model_problem(model, found)
    if problem:
        if fn is None:
            return None
        raise TypeError(f"lenet5_fast.fused.{fn}: {problem}")
    net = _Net(model, *found)
    _plans[model] = net
    return net


def _input_fits(x, in_shape, min_batch: int) -> bool:
    """x is a float32 CPU batch [N, *in_shape] with N >= min_batch (a static N: a symbolic batch
    size under torch.compile is no int, and such a trace takes the layers)."""
    return (isinstance(x, Tensor) and x.is_cpu and x.dtype is torch.float32 and x.ndim == 4
            and x.shape[1:] == in_shape and isinstance(x.shape[0], int) and x.shape[0] >= min_batch)


def plan(model, x) -> Optional[_Net]:
    """The one decision: the model's native arguments when ``model(x)`` may run fused, else None
    (then ``LeNet5.forward`` runs layer by layer). Cheap after the first call for a model: a
    fingerprint of its tensors is compared, the input's attributes read."""
    if _off and _disabled():
        return None
    net = _net(model, None)
    if net is None or not _input_fits(x, net.in_shape, net.min_batch):
        return None
    return net


def supports(model, x=None) -> bool:
    """True when ``model`` (and input ``x``, if given) runs on the fused engines (see :func:`plan`)."""
    if _disabled():
        return False
    return (_net(model, None) if x is None else plan(model, x)) is not None


def engine(variant: int, cin: int, n: int, input_grad: bool) -> int:
    """Which engine runs a batch of n images, for training and inference alike (inference needs
    no input gradient): :data:`SAMPLE` (per image: the classic network, one channel, no input
    gradient, batches below :data:`SAMPLE_MAX_BATCH`) or :data:`BATCH`. Forward and backward of a
    batch always take the same engine."""
    return SAMPLE if _has_sample_engine(variant, cin) and not input_grad and n < SAMPLE_MAX_BATCH else BATCH


def path(model, x, grad: bool = True) -> str:
    """Which path ``model(x)`` takes (with autograd when ``grad``): "per-image" or "batch" (the
    fused engines, see :func:`engine`), or "layers" (each layer its own op)."""
    net = plan(model, x)
    if net is None:
        return "layers"
    eng = engine(net.code, net.cin, x.shape[0], grad and x.requires_grad)
    return "per-image" if eng == SAMPLE else "batch"


def _threads() -> int:
    return max(1, torch.get_num_threads())


# ---------------------------------------------------------------------------------------------
# the native calls (args: _native_args' tuple, of a _Net or of the op's arguments)

def _saved_size(args, n: int, eng: int):
    if eng == SAMPLE:
        return (n, _C.lenet5_sample_saved_floats())
    return (_C.lenet5_batch_saved_floats(*args[:3], n),)  # (the sizes only: the fake kernel has no tensors)


def _native_forward(args, x: Tensor, eng: int, save: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """(outputs, saved activations or None): one native forward of the contiguous batch x."""
    n = x.shape[0]
    out = torch.empty((n, args[2]))
    saved = torch.empty(_saved_size(args, n, eng)) if save else None
    sp = saved.data_ptr() if save else 0
    if eng == BATCH:
        _C.lenet5_batch_forward(*args, x.data_ptr(), out.data_ptr(), sp, n, _threads())
    elif save:
        _C.lenet5_sample_forward_save(*args, x.data_ptr(), out.data_ptr(), sp, n, _threads())
    else:
        _C.lenet5_forward(*args, x.data_ptr(), out.data_ptr(), n, _threads())
    return out, saved


def _native_backward(args, params: Sequence[Tensor], x: Tensor, saved: Tensor, grad_out: Tensor, eng: int,
                     input_grad: bool) -> List[Tensor]:
    n = x.shape[0]
    grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    gx = torch.empty_like(x) if input_grad else x.new_empty((0,))
    grad_out = grad_out.contiguous()
    gp = [g.data_ptr() for g in grads]
    if eng == SAMPLE:
        _C.lenet5_sample_backward(*args, saved.data_ptr(), grad_out.data_ptr(), n, gp, _threads())
    else:
        _C.lenet5_batch_backward(*args, x.data_ptr(), saved.data_ptr(), grad_out.data_ptr(), n, gp,
                                 gx.data_ptr() if input_grad else 0, _threads())
    return grads + [gx]


# ---------------------------------------------------------------------------------------------
# the op pair, registered like the per-op ops (ops._define): CPU kernel, fake kernel, autograd

def _lenet5_kernel(x, params, codes, offsets, inputs, variant, eng):
    x = x.contiguous()
    params = [p.contiguous() for p in params]
    return _native_forward(_native_args(variant, x.shape[1], params, codes, offsets, inputs), x, eng, True)


def _lenet5_fake(x, params, codes, offsets, inputs, variant, eng):
    sizes = (variant, x.shape[1], _classes(variant, params))
    return x.new_empty((x.shape[0], sizes[2])), x.new_empty(_saved_size(sizes, x.shape[0], eng))


def _lenet5_backward_kernel(grad_out, x, saved, params, codes, offsets, inputs, variant, eng, input_grad):
    x = x.contiguous()
    params = [p.contiguous() for p in params]
    return _native_backward(_native_args(variant, x.shape[1], params, codes, offsets, inputs), params, x, saved,
                            grad_out, eng, input_grad)


def _lenet5_backward_fake(grad_out, x, saved, params, codes, offsets, inputs, variant, eng, input_grad):
    return [torch.empty_like(p) for p in params] + [torch.empty_like(x) if input_grad else x.new_empty((0,))]


lenet5_backward = ops._define(
    "lenet5_backward(Tensor grad_out, Tensor x, Tensor saved, Tensor[] params, Tensor? codes, Tensor? offsets, "
    "Tensor? inputs, int variant, int engine, bool input_grad) -> Tensor[]",
    _lenet5_backward_kernel, _lenet5_backward_fake)
lenet5 = ops._define(
    "lenet5(Tensor x, Tensor[] params, Tensor? codes, Tensor? offsets, Tensor? inputs, int variant, int engine) "
    "-> (Tensor, Tensor)", _lenet5_kernel, _lenet5_fake)


def _setup(ctx, inputs, output):
    x, params, codes, offsets, inputs_, variant, eng = inputs
    ctx.save_for_backward(x, output[1], codes, offsets, inputs_, *params)
    ctx.variant, ctx.engine = variant, eng
    ctx.mark_non_differentiable(output[1])


_DECOMPOSITIONS = {Convolution: lambda h, p, t, a: ops._CONV5X5.decomposition(h, *p, a),
                   Subsampling: lambda h, p, t, a: ops._SUBSAMPLE.decomposition(h, *p, a),
                   SparseConvolution: lambda h, p, t, a: ops._SPARSE.decomposition(h, *p, t[1], t[2], a),
                   MaxPool: lambda h, p, t, a: ops._MAXPOOL.decomposition(h),
                   FullConnection: lambda h, p, t, a: ops._FULL.decomposition(h.flatten(1), *p, a),
                   EuclideanRBF: lambda h, p, t, a: ops._RBF.decomposition(h.flatten(1), t[0])}


def _decomposed(variant: int, tables, x: Tensor, *params: Tensor) -> Tensor:
    """The network of ``_LAYOUT`` in standard torch operators: each layer's op decomposition
    (``tables``: the RBF codes, C3's table offsets and inputs)."""
    name = _VARIANT_NAMES[variant]
    h, at = x, 0
    for layer in _LAYOUT[name]:
        count = sum(1 for n in _PARAM_NAMES[name] if n.startswith(layer.name + "."))
        h = _DECOMPOSITIONS[layer.kind](h, params[at:at + count], tables, layer.act)
        at += count
    return h


def _differentiable_grad(variant: int, tables, x: Tensor, params: Sequence[Tensor], grad_out: Tensor,
                         need_x: bool) -> Tuple[Optional[Tensor], List[Optional[Tensor]]]:
    """(grad_x, parameter grads) recorded by autograd (``create_graph=True``): through the
    decomposed network (ops.differentiable_grad), so second-order gradients are correct."""
    need = [need_x] + [p.requires_grad for p in params]
    ctx = _Recompute((x, *params), need)
    gx, *grads = ops.differentiable_grad(lambda *a: _decomposed(variant, tables, *a), ctx, grad_out)
    return gx, grads


def _decomposed_loss(variant: int, tables, target: Tensor, map_j: float, mean: bool, x: Tensor,
                     *params: Tensor) -> Tensor:
    """The loss of :func:`_decomposed`'s outputs (classic: the MAP criterion; modern:
    cross-entropy), mean or sum: lenet5_loss in standard torch operators."""
    out = _decomposed(variant, tables, x, *params)
    reduction = "mean" if mean else "sum"
    if variant == CLASSIC:
        return map_loss(out, target, map_j, reduction)
    return torch.nn.functional.cross_entropy(out, target, reduction=reduction)


def _differentiable_loss_grad(variant: int, tables, target, map_j, mean, x, params, grad_loss, need_x: bool):
    """lenet5_loss's (grad_x, parameter grads) recorded by autograd (``create_graph=True``)."""
    ctx = _Recompute((x, *params), [need_x] + [p.requires_grad for p in params])
    gx, *grads = ops.differentiable_grad(
        lambda *a: _decomposed_loss(variant, tables, target, map_j, mean, *a), ctx, grad_loss)
    return gx, grads


class _Recompute:
    """What ops.differentiable_grad reads of an autograd ctx."""
    saved_tensors = ()

    def __init__(self, inputs, needs_input_grad):
        self.inputs, self.needs_input_grad = inputs, needs_input_grad


def _grad(ctx, grad_out, _grad_saved):
    x, saved, codes, offsets, inputs, *params = ctx.saved_tensors
    input_grad = ctx.needs_input_grad[0]
    if torch.is_grad_enabled():  # create_graph=True
        gx, grads = _differentiable_grad(ctx.variant, (codes, offsets, inputs), x, params, grad_out, input_grad)
        return gx, grads, None, None, None, None, None
    *grads, gx = lenet5_backward(grad_out, x, saved, params, codes, offsets, inputs, ctx.variant, ctx.engine,
                                 input_grad)
    return (gx if input_grad else None), grads, None, None, None, None, None


torch.library.register_autograd(lenet5, _grad, setup_context=_setup, lib=ops._lib)


class _Eager(torch.autograd.Function):
    """The eager path: the same kernels as the op, without the dispatcher (plain tensors only).
    The parameters are saved tensors, so an in-place change before backward is caught."""

    @staticmethod
    def forward(ctx, x, net, eng, *params):
        out, saved = _native_forward(net.args, x, eng, True)
        ctx.net, ctx.engine, ctx.saved = net, eng, saved
        ctx.save_for_backward(x, *params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        net = ctx.net
        x, *params = ctx.saved_tensors
        input_grad = ctx.needs_input_grad[0]
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable again
            gx, grads = _differentiable_grad(net.code, (net.codes, net.offsets, net.inputs), x, params, grad_out,
                                             input_grad)
            need = ctx.needs_input_grad[3:]
            return ((gx if input_grad else None), None, None, *(g if w else None for g, w in zip(grads, need)))
        args = net.args[:3] + ([p.data_ptr() for p in params],) + net.args[4:]  # the saved parameters' addresses
        *grads, gx = _native_backward(args, params, x, ctx.saved, grad_out, ctx.engine, input_grad)
        need = ctx.needs_input_grad[3:]
        return ((gx if input_grad else None), None, None, *(g if w else None for g, w in zip(grads, need)))


# ---------------------------------------------------------------------------------------------
# the loss inside the op: lenet5_loss (forward, loss and backward in one native call)

def _native_loss(args, params: Sequence[Tensor], x: Tensor, target: Tensor, eng: int, map_j: float, mean: bool,
                 input_grad: bool) -> Tuple[Tensor, Tensor, List[Tensor], Tensor]:
    """(loss, outputs, parameter gradients, input gradient) of the contiguous batch x against the
    int64 labels ``target``: one native call runs the forward, the variant's loss (classic: the
    MAP criterion with ``map_j``; modern: cross-entropy) and the backward, image by image or
    tile by tile while the activations are in cache. The gradients are those of the returned
    loss, the mean (or sum) of the per-sample losses."""
    n = x.shape[0]
    out = torch.empty((n, args[2]))
    loss = torch.empty(())
    grads = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in params]
    gx = torch.empty_like(x) if input_grad else x.new_empty((0,))
    scale = 1.0 / n if mean else 1.0
    gp = [g.data_ptr() for g in grads]
    if eng == SAMPLE:
        _C.lenet5_sample_train(*args, x.data_ptr(), target.data_ptr(), n, float(map_j), scale, out.data_ptr(),
                               loss.data_ptr(), gp, _threads())
    else:
        _C.lenet5_batch_train(*args, x.data_ptr(), target.data_ptr(), n, float(map_j), scale, out.data_ptr(),
                              loss.data_ptr(), gp, gx.data_ptr() if input_grad else 0, _threads())
    return loss, out, grads, gx


def _lenet5_loss_kernel(x, target, params, codes, offsets, inputs, variant, eng, map_j, mean, input_grad):
    x = x.contiguous()
    params = [p.contiguous() for p in params]
    return _native_loss(_native_args(variant, x.shape[1], params, codes, offsets, inputs), params, x,
                        target.to(torch.int64).contiguous(), eng, map_j, mean, input_grad)


def _lenet5_loss_fake(x, target, params, codes, offsets, inputs, variant, eng, map_j, mean, input_grad):
    return (x.new_empty(()), x.new_empty((x.shape[0], _classes(variant, params))), [torch.empty_like(p) for p in params],
            torch.empty_like(x) if input_grad else x.new_empty((0,)))


lenet5_loss = ops._define(
    "lenet5_loss(Tensor x, Tensor target, Tensor[] params, Tensor? codes, Tensor? offsets, Tensor? inputs, "
    "int variant, int engine, float map_j, bool mean, bool input_grad) -> (Tensor, Tensor, Tensor[], Tensor)",
    _lenet5_loss_kernel, _lenet5_loss_fake)


def _loss_setup(ctx, inputs, output):
    _, out, grads, gx = output
    x, target, params, codes, offsets, inputs_, variant, _, map_j, mean, input_grad = inputs
    ctx.input_grad, ctx.variant, ctx.map_j, ctx.mean, ctx.n = input_grad, variant, map_j, mean, len(grads)
    ctx.save_for_backward(gx, *grads, x, target, codes, offsets, inputs_, *params)
    ctx.mark_non_differentiable(out, gx, *grads)


def _loss_grad(ctx, grad_loss, _grad_out, _grad_grads, _grad_gx):
    saved = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable again
        x, target, codes, offsets, inputs, *params = saved[1 + ctx.n:]
        gx, grads = _differentiable_loss_grad(ctx.variant, (codes, offsets, inputs), target, ctx.map_j, ctx.mean, x,
                                              params, grad_loss, ctx.input_grad)
        return gx, None, grads, None, None, None, None, None, None, None, None
    # the gradients were computed with the forward; the incoming gradient only scales them
    gx, *grads = saved[:1 + ctx.n]
    return ((gx * grad_loss if ctx.input_grad else None), None, list(torch._foreach_mul(grads, grad_loss)),
            None, None, None, None, None, None, None, None)


torch.library.register_autograd(lenet5_loss, _loss_grad, setup_context=_loss_setup, lib=ops._lib)


class _EagerLoss(torch.autograd.Function):
    """The eager path of lenet5_loss (plain tensors only): the same native call, gradients held
    from the forward and scaled by the incoming gradient in backward (as fused cross-entropy
    kernels do), so a retained graph can run backward again."""

    @staticmethod
    def forward(ctx, x, target, net, eng, map_j, mean, input_grad, *params):
        loss, out, grads, gx = _native_loss(net.args, params, x, target, eng, map_j, mean, input_grad)
        ctx.grads, ctx.gx = grads, gx
        ctx.net, ctx.target, ctx.map_j, ctx.mean = net, target, map_j, mean
        ctx.save_for_backward(x, *params)
        ctx.mark_non_differentiable(out)
        return loss, out

    @staticmethod
    def backward(ctx, grad_loss, _grad_out):
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph=True: a backward that is differentiable again
            x, *params = ctx.saved_tensors
            net = ctx.net
            gx, grads = _differentiable_loss_grad(net.code, (net.codes, net.offsets, net.inputs), ctx.target,
                                                  ctx.map_j, ctx.mean, x, params, grad_loss, need[0])
            return (gx if need[0] else None, None, None, None, None, None, None,
                    *(g if w else None for g, w in zip(grads, need[7:])))
        grads = torch._foreach_mul(ctx.grads, grad_loss)
        gx = ctx.gx * grad_loss if need[0] else None
        return (gx, None, None, None, None, None, None, *(g if w else None for g, w in zip(grads, need[7:])))


def _traced_plan(model, x):
    """plan() for a traced call (torch.compile, torch.export): the same checks without the cache,
    which holds addresses. (variant code, in_channels, params, codes, offsets, inputs), or None:
    under jit.trace and ONNX export, or with a symbolic batch size, the layers run."""
    if _disabled() or torch.jit.is_tracing() or ops._onnx_exporting():
        return None
    found = _tensors(model)
    if found is None or _model_problem(model, found):
        return None
    variant, params, codes, offsets, inputs = found
    code, cin = VARIANT_CODES[variant], model.in_channels
    if not _input_fits(x, (cin, _IN, _IN), _min_batch(code, cin)):
        return None
    return code, cin, params, codes, offsets, inputs


def run_loss(model, x: Tensor, target: Tensor, reduction: str = "mean") -> Optional[Tuple[Tensor, Tensor]]:
    """``(loss, outputs)`` of ``model.loss(model(x), target, reduction)`` through the fused loss
    op when :func:`plan` accepts the model and input, a gradient is wanted and ``reduction`` is
    "mean" or "sum"; else None (the caller runs the forward and the loss apart). The outputs carry
    no gradient. Eager with plain tensors: the native call directly, under an autograd node;
    under torch.compile with a static batch size: the registered op ``lenet5_fast::lenet5_loss``."""
    if reduction not in ("mean", "sum") or not torch.is_grad_enabled():
        return None
    mean = reduction == "mean"
    if ops.plain_eager(x, target):
        net = plan(model, x)
        if net is None or not (x.requires_grad or any(p.requires_grad for p in net.params)):
            return None
        target = _labels(target, x.shape[0], "loss_of", "target")
        x = x if x.is_contiguous() else x.contiguous()
        eng = engine(net.code, net.cin, x.shape[0], x.requires_grad)
        return _EagerLoss.apply(x, target, net, eng, float(model.map_j), mean, x.requires_grad, *net.params)
    traced = _traced_plan(model, x)
    if traced is None:
        return None
    code, cin, params, codes, offsets, inputs = traced
    if not (x.requires_grad or any(p.requires_grad for p in params)):
        return None
    target = _labels(target, x.shape[0], "loss_of", "target")
    eng = engine(code, cin, x.shape[0], x.requires_grad)
    loss, out, _, _ = lenet5_loss(x, target, params, codes, offsets, inputs, code, eng, float(model.map_j), mean,
                                  x.requires_grad)
    return loss, out


def run(model, x: Tensor) -> Optional[Tensor]:
    """``model(x)`` through the fused op when :func:`plan` accepts it, else None (the caller runs
    the layers). Eager with plain tensors: the kernels directly (an autograd node when a gradient
    is wanted); under torch.compile and torch.export with a static batch size: the registered op
    ``lenet5_fast::lenet5`` (the same checks, without the cache, which holds addresses); with a
    symbolic batch size, under torch.jit.trace and ONNX export: None (the layers, which trace for
    any batch size and export as standard operators)."""
    if ops.plain_eager(x):
        net = plan(model, x)
        if net is None:
            return None
        grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in net.params))
        x = x if x.is_contiguous() else x.contiguous()
        eng = engine(net.code, net.cin, x.shape[0], grad and x.requires_grad)
        return _Eager.apply(x, net, eng, *net.params) if grad else _native_forward(net.args, x, eng, False)[0]
    traced = _traced_plan(model, x)
    if traced is None:
        return None
    code, cin, params, codes, offsets, inputs = traced
    eng = engine(code, cin, x.shape[0], torch.is_grad_enabled() and x.requires_grad)
    return lenet5(x, params, codes, offsets, inputs, code, eng)[0]


# ---------------------------------------------------------------------------------------------
# inference and the SDLM functions (no autograd)

def _images(x, net: _Net, fn: str) -> Tensor:
    problem = _input_problem(x, net.cin)
    if problem:
        raise (TypeError if "must be a torch.Tensor" in problem or "float32" in problem else ValueError)(
            f"lenet5_fast.fused.{fn}: {problem}")
    return x if x.is_contiguous() else x.contiguous()


def _classic(model, fn: str) -> _Net:
    net = _net(model, fn)
    if net.code != CLASSIC:
        raise TypeError(f"lenet5_fast.fused.{fn}: only the classic variant, got variant={net.variant!r}")
    if net.cin != 1:
        raise TypeError(f"lenet5_fast.fused.{fn}: only the classic variant with 1 input channel, "
                        f"got in_channels={net.cin}")
    return net


def _labels(y, n: int, fn: str, what: str = "labels") -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"lenet5_fast.fused.{fn}: {what} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError(f"lenet5_fast.fused.{fn}: {what} must be an integer tensor, got {y.dtype}")
    if y.dim() != 1 or (n >= 0 and y.shape[0] != n):
        raise ValueError(f"lenet5_fast.fused.{fn}: {what} must have shape [{n if n >= 0 else 'n'}], "
                         f"got {tuple(y.shape)}")
    return y.to(device="cpu", dtype=torch.int64).contiguous()


def forward(model, x: Tensor) -> Tensor:
    """The model's outputs ``[N, classes]`` (RBF distances for the classic variant, logits for the
    modern one) for images ``x[N, in_channels, 32, 32]``, in one native call threaded over the
    batch (``torch.get_num_threads()`` threads). No autograd. Raises TypeError/ValueError naming
    what is expected when the model or input does not qualify."""
    net = _net(model, "forward")
    x = _images(x, net, "forward")
    return _native_forward(net.args, x, engine(net.code, net.cin, x.shape[0], False), False)[0]


def sdlm_hessian(model, x: Tensor, y: Tensor) -> List[Tensor]:
    """The SDLM Gauss-Newton diagonal ``h_kk`` averaged over the samples ``(x, y)``: one tensor
    per trainable parameter, in ``[p for p in model.parameters() if p.requires_grad]`` order,
    shaped like it. Same terms as the per-op backward kernels with ``gauss_newton=True``.
    Classic variant, 1 input channel, every parameter trainable."""
    net = _sdlm_net(model, "sdlm_hessian")
    x = _images(x, net, "sdlm_hessian")
    y = _labels(y, x.shape[0], "sdlm_hessian")
    hessian = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in net.params]
    _C.lenet5_sdlm_hessian(*net.args, x.data_ptr(), y.data_ptr(), x.shape[0], float(model.map_j),
                           [h.data_ptr() for h in hessian], _threads())
    return hessian


def _sdlm_net(model, fn: str) -> _Net:
    net = _classic(model, fn)
    frozen = [n for n, p in zip(_PARAM_NAMES["classic"], net.params) if not p.requires_grad]
    if frozen:
        raise TypeError(f"lenet5_fast.fused.{fn}: every parameter must be trainable, got frozen {frozen}")
    return net


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
    net = _sdlm_net(model, "sdlm_pass")
    x = _images(x, net, "sdlm_pass")
    y = _labels(y, x.shape[0], "sdlm_pass")
    order = _labels(order, -1, "sdlm_pass", "order")
    params = net.params
    if isinstance(steps, Tensor) or len(steps) != len(params):
        raise ValueError(f"lenet5_fast.fused.sdlm_pass: steps must be a list of {len(params)} tensors "
                         f"(one per trainable parameter), got "
                         f"{type(steps).__name__ if isinstance(steps, Tensor) else len(steps)}")
    ready = []
    for name, p, s in zip(_PARAM_NAMES["classic"], params, steps):
        if not isinstance(s, Tensor) or s.dtype != torch.float32 or s.device.type != "cpu" or s.shape != p.shape:
            raise ValueError(f"lenet5_fast.fused.sdlm_pass: the step for {name} must be a float32 CPU tensor "
                             f"of shape {tuple(p.shape)}, got "
                             + (f"{s.dtype} on {s.device} with shape {tuple(s.shape)}" if isinstance(s, Tensor)
                                else type(s).__name__))
        ready.append(s.contiguous())
    if order.numel() == 0:
        return 0.0, 0
    loss, errors = _C.lenet5_sdlm_pass(*net.args, x.data_ptr(), y.data_ptr(), x.shape[0], order.data_ptr(),
                                       order.numel(), float(model.map_j), [s.data_ptr() for s in ready])
    _bump_versions(params)
    return float(loss), int(errors)
