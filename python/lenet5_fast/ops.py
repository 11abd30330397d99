"""The native kernels as PyTorch ops (namespace ``lenet5_fast``), and their Python API.

Every layer kind has a forward op and a backward op (the backward also computes SDLM's
Gauss-Newton terms with ``gauss_newton=True``), registered with ``torch.library.Library``
(``define`` + CPU and CUDA kernels) plus ``register_fake`` (so they trace under
``torch.compile(fullgraph=True)`` and ``torch.export``) and ``register_autograd`` (the
backward of each forward op is its backward op). Measured against ``torch.library.custom_op``
this costs nothing at import and, unlike ``custom_op``, does not import ``torch._dynamo`` at the
first call (about 2.5 s); see the README's "Start-up and per-call cost".

The public functions below (:func:`conv5x5`, :func:`conv5x5_backward`, ...) take two paths to
the same kernels:

* eager on plain CPU/CUDA tensors: the kernel runs through one ``torch.autograd.Function`` (or
  directly when no gradient is needed), without the dispatcher round trips, which at batch 1
  cost more than the arithmetic;
* anything else -- ``torch.compile``, ``torch.export``, ``jit.trace``, fake or meta tensors,
  tensor subclasses, dispatch or function modes, functorch transforms: the registered op
  ``torch.ops.lenet5_fast.<name>``, and under ``torch.onnx.export`` a decomposition into
  standard operators (:mod:`lenet5_fast.formulas`), since ONNX has no lenet5_fast ops.

Inputs may have any strides and memory format (the kernels copy them to contiguous memory when
they are not) and any batch size, 0 included (empty outputs, zero parameter gradients).
Outputs are always new contiguous tensors, in the real and the fake kernels alike. Arguments are
checked in :mod:`lenet5_fast._validate`.

Activation codes (``act``, :class:`Act`, named in ``csrc/activations.h`` with their formulas):
``Act.IDENTITY`` 0, ``Act.SCALED_TANH`` 1 (the paper's squashing ``1.7159 tanh(2a/3)``),
``Act.RELU`` 2, ``Act.PLAIN_TANH`` 3 (``torch.tanh``); or their names ("identity", "scaled_tanh",
"relu", "plain_tanh"). "tanh" alone is refused: it could mean either.
"""
from __future__ import annotations

import sys
from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor

try:
    from . import _C
except ImportError as e:  # pragma: no cover - only on a broken install
    raise ImportError(
        "lenet5_fast's native library (lenet5_fast._C) is missing or failed to load: "
        f"{e}. Reinstall with `pip install .` from the source tree."
    ) from e
from . import _validate as _v
from . import formulas
from ._validate import ACTIVATION_NAMES, ACTIVATIONS, SCALED_TANH, Act, activation_code

__all__ = [
    "Act", "ACTIVATIONS", "ACTIVATION_NAMES", "SCALED_TANH", "activation_code", "activation_name",
    "connection_table_to_csr",
    "cuda_available", "plain_eager",
    "conv5x5", "conv5x5_backward", "sparse_conv5x5", "sparse_conv5x5_backward",
    "subsample2x2", "subsample2x2_backward", "maxpool2x2", "maxpool2x2_backward",
    "full", "full_backward", "euclidean_rbf", "euclidean_rbf_backward",
    "activation", "activation_backward",
]


def activation_name(code: int) -> str:
    """The name of activation code ``code`` (:class:`Act`): identity, scaled_tanh, relu, plain_tanh."""
    return ACTIVATION_NAMES[activation_code(code)]


def cuda_available() -> bool:
    """True when this build has CUDA kernels and a GPU is visible."""
    return bool(_C.with_cuda) and torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# which path a call takes

_PLAIN = (Tensor, torch.nn.Parameter)
_is_compiling = torch.compiler.is_compiling
_is_dynamo_compiling = torch.compiler.is_dynamo_compiling
_tracing_state = torch._C._get_tracing_state
_dispatch_modes = torch._C._len_torch_dispatch_stack
_function_modes = torch._C._is_torch_function_mode_enabled
_functorch_active = torch._C._are_functorch_transforms_active


def plain_eager(*tensors) -> bool:
    """True when a call on ``tensors`` may run the native kernels directly: plain CPU or CUDA
    tensors, eager, nothing tracing or intercepting (no torch.compile/export, jit tracing,
    dispatch or function mode, functorch transform). Otherwise the registered op must be called,
    so that whatever is tracing sees it. (A whole-network fused path should run only when this
    holds, and so never under export.)"""
    if _is_compiling() or _tracing_state() is not None or _dispatch_modes() or _function_modes() \
            or _functorch_active():
        return False
    for t in tensors:
        if type(t) not in _PLAIN or t.is_meta:
            return False
    return True


def _needs_grad(*tensors) -> bool:
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t.requires_grad:
            return True
    return False


def _onnx_exporting() -> bool:
    # Only imported modules can be exporting: no torch.onnx import on the way here.
    if ("torch.onnx._internal.exporter._flags" not in sys.modules
            and "torch.onnx._internal.torchscript_exporter._globals" not in sys.modules):
        return False
    return torch.onnx.is_in_onnx_export()


# ---------------------------------------------------------------------------------------------
# kernel launch

def _threads() -> int:
    return max(1, torch.get_num_threads())


def _launch(t: Tensor) -> Tuple[int, bool, int]:
    """(device code, is float64, extra) for a kernel call: extra is threads or the CUDA stream."""
    f64 = t.dtype == torch.float64
    if t.device.type == "cpu":
        return 0, f64, _threads()
    if t.device.type == "cuda":
        if not _C.with_cuda:
            raise RuntimeError(
                "lenet5_fast: got a CUDA tensor but this build has no CUDA kernels "
                "(it was built without nvcc). Rebuild on a machine with the CUDA toolkit, "
                "or move the tensors to the CPU."
            )
        return 1, f64, torch.cuda.current_stream(t.device).cuda_stream
    raise ValueError(f"lenet5_fast: unsupported device {t.device}")


def _run(kernel: Callable, like: Tensor, *args) -> None:
    """kernel(device, f64, extra, *args) on like's device (made current for CUDA)."""
    if like.is_cuda:
        with torch.cuda.device(like.device):
            kernel(*_launch(like), *args)
    else:
        kernel(0, like.dtype == torch.float64, _threads(), *args)


def _ptr(t) -> int:
    """A tensor's address (0 for None, an output not asked for)."""
    return 0 if t is None else t.data_ptr()


def _dense(*tensors) -> Tuple[Tensor, ...]:
    """The tensors in contiguous memory (the kernels' layout): copies only where needed."""
    return tuple(t.contiguous() for t in tensors)


def _new(like: Tensor, shape) -> Tensor:
    """A forward op's output (shape from its check, which runs first), new and contiguous."""
    return like.new_empty(shape)


def _allocate(like: Tensor, shapes: Sequence[Sequence[int]]) -> Tuple[Tensor, ...]:
    """A backward op's outputs, new and contiguous: the one allocation of the real kernels and
    of the fake ones. (0,) is an output that was not asked for."""
    return tuple(like.new_empty(s) for s in shapes)


def _zero(*tensors) -> None:
    for t in tensors:
        t.zero_()


_lib = torch.library.Library("lenet5_fast", "DEF")


def _define(schema: str, kernel: Callable, fake: Callable):
    """Registers op lenet5_fast::<schema>: kernel for CPU and CUDA tensors, fake for fake and
    meta tensors. Returns the op (an OpOverload)."""
    name = schema[:schema.index("(")]
    _lib.define(schema)
    _lib.impl(name, kernel, "CPU")
    _lib.impl(name, kernel, "CUDA")
    torch.library.register_fake(f"lenet5_fast::{name}", fake, lib=_lib)
    return getattr(torch.ops.lenet5_fast, name).default


def differentiable_grad(decomposition: Callable, ctx, grads) -> tuple:
    """The backward when autograd records it (``create_graph=True``, i.e. grad mode on inside
    backward): the forward recomputed from its arguments (``ctx.inputs``) in standard torch
    operators (``decomposition``) and differentiated by autograd with ``create_graph=True``, so
    the gradient is itself differentiable: second-order gradients are correct, never a silent
    zero. One entry per forward argument, None where no gradient is needed."""
    args = ctx.inputs
    ctx.saved_tensors  # raises if a saved input was changed in place since the forward
    wanted = [i for i, a in enumerate(args) if isinstance(a, Tensor) and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        out = decomposition(*args)
    outs = out if isinstance(out, (tuple, list)) else (out,)
    grads = grads if isinstance(grads, (tuple, list)) else (grads,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    found = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted], [g for _, g in pairs],
                                create_graph=True, allow_unused=True) if pairs and wanted else [None] * len(wanted)
    result = [None] * len(args)
    for i, gr in zip(wanted, found):
        result[i] = gr if gr is not None else torch.zeros_like(args[i])
    return tuple(result)


class _Forward:
    """A forward op: its registered op, its eager autograd.Function, and its decomposition. Its
    backward runs the backward kernel, or, when a graph of the backward is recorded
    (``create_graph=True``), :func:`differentiable_grad` over the decomposition."""

    def __init__(self, schema: str, kernel: Callable, fake: Callable, save: Callable, grad: Callable,
                 backward_kernel: Callable, backward_op, decomposition: Callable):
        self.kernel = kernel
        self.op = _define(schema, kernel, fake)
        self.decomposition = decomposition

        def save_inputs(ctx, inputs, output):
            save(ctx, inputs, output)
            ctx.inputs = tuple(inputs)

        def grad_traced(ctx, g):
            if torch.is_grad_enabled():
                return differentiable_grad(decomposition, ctx, g)
            return grad(ctx, g, backward_op)

        torch.library.register_autograd(self.op, grad_traced, setup_context=save_inputs, lib=_lib)

        class Function(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *args):
                out = kernel(*args)
                save_inputs(ctx, args, out)
                return out

            @staticmethod
            def backward(ctx, g):
                if torch.is_grad_enabled():
                    return differentiable_grad(decomposition, ctx, g)
                return grad(ctx, g, backward_kernel)

        Function.__name__ = Function.__qualname__ = f"{self.op._opname}_function"
        # The C-level apply: Function.apply's Python wrapper only adds functorch and default-
        # argument handling, which plain_eager calls never need (about 4 us a call).
        c_apply = torch._C._FunctionBase.__dict__.get("apply")
        self.apply = c_apply.__get__(None, Function) if c_apply is not None else Function.apply


def _call_forward(f: _Forward, tensors: Tuple[Tensor, ...], args: tuple):
    """The eager fast path when it applies, else the registered op (or, under ONNX export, the
    decomposition)."""
    if plain_eager(*tensors):
        return f.apply(*args) if _needs_grad(*tensors) else f.kernel(*args)
    if not _is_dynamo_compiling() and _onnx_exporting():
        return f.decomposition(*args)
    return f.op(*args)


def _call_backward(kernel: Callable, op, tensors: Tuple[Tensor, ...], args: tuple):
    if plain_eager(*tensors):
        return kernel(*args)
    return op(*args)


def _weighted_kernels(check: Callable, check_backward: Callable, forward: Callable, backward: Callable):
    """The kernels of an op ``(x, weight, bias, act) -> y`` whose backward returns ``(grad_x,
    grad_weight, grad_bias)`` (conv5x5, subsample2x2 with ``weight`` = coef, full): its forward,
    fake forward, backward and the backward's output allocation (its fake backward), on the
    native ``forward`` / ``backward`` and the argument checks ``check`` / ``check_backward``."""

    def kernel(x, weight, bias, act):
        y = _new(x, check(x, weight, bias, act))
        if y.numel():
            x, weight, bias = _dense(x, weight, bias)
            _run(forward, x, _ptr(x), _ptr(weight), _ptr(bias), _ptr(y), x.shape, y.shape, act)
        return y

    def fake(x, weight, bias, act):
        return _new(x, check(x, weight, bias, act))

    def backward_outputs(grad, y, x, weight, act, gauss_newton, input_grad):
        xs, ws, bs = check_backward(grad, y, x, weight, act)
        return _allocate(x, (xs if input_grad else (0,), ws, bs))

    def backward_kernel(grad, y, x, weight, act, gauss_newton, input_grad):
        gx, gw, gb = outs = backward_outputs(grad, y, x, weight, act, gauss_newton, input_grad)
        if x.shape[0] == 0:
            _zero(gw, gb)
            return outs
        grad, y, x, weight = _dense(grad, y, x, weight)
        _run(backward, x, _ptr(grad), _ptr(y), _ptr(x), _ptr(weight), _ptr(gx if input_grad else None),
             _ptr(gw), _ptr(gb), x.shape, grad.shape, act, gauss_newton)
        return outs

    return kernel, fake, backward_kernel, backward_outputs


def _save_x_weight_y(ctx, inputs, output):
    """What the backward of such an op needs: x, weight and y, and the activation code."""
    ctx.save_for_backward(inputs[0], inputs[1], output)
    ctx.act = inputs[-1]


def _weighted_grad(ctx, g, backward):
    """Such an op's gradients (x, weight, bias, act) from the incoming gradient ``g``."""
    x, weight, y = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    gx, gw, gb = backward(g, y, x, weight, ctx.act, False, need_x)
    return (gx if need_x else None), gw, gb, None


# ---------------------------------------------------------------------------------------------
# conv5x5: x[N,C,H,W], weight[O,C,5,5], bias[O] -> [N,O,H-4,W-4]

_conv5x5_kernel, _conv5x5_fake, _conv5x5_backward_kernel, _conv5x5_backward_outputs = _weighted_kernels(
    _v.conv5x5, _v.conv5x5_backward, _C.conv5x5_forward, _C.conv5x5_backward)

_conv5x5_backward_op = _define(
    "conv5x5_backward(Tensor grad, Tensor y, Tensor x, Tensor weight, int act, bool gauss_newton, "
    "bool input_grad) -> (Tensor, Tensor, Tensor)", _conv5x5_backward_kernel, _conv5x5_backward_outputs)


_CONV5X5 = _Forward(
    "conv5x5(Tensor x, Tensor weight, Tensor bias, int act) -> Tensor", _conv5x5_kernel, _conv5x5_fake,
    _save_x_weight_y, _weighted_grad, _conv5x5_backward_kernel, _conv5x5_backward_op,
    formulas.conv5x5)


def conv5x5(x: Tensor, weight: Tensor, bias: Tensor, act=Act.IDENTITY) -> Tensor:
    """Valid 5x5 convolution with a fused activation: ``act(conv2d(x, weight) + bias)``.

    ``x[N, C, H, W]`` (H, W >= 5), ``weight[O, C, 5, 5]``, ``bias[O]`` -> ``[N, O, H-4, W-4]``.
    C1, C5 and the modern C3. ``act``: a code (:class:`Act`) or a name (:data:`ACTIVATIONS`)."""
    args = (x, weight, bias, activation_code(act))
    return _call_forward(_CONV5X5, (x, weight, bias), args)


def conv5x5_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, act=Act.IDENTITY, gauss_newton: bool = False,
                     input_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`conv5x5` from its input ``x``, output ``y`` and the incoming ``grad``:
    ``(grad_x, grad_weight, grad_bias)``. With ``gauss_newton=True``, ``grad`` holds d2E/dy2 and
    the results are SDLM's diagonal Gauss-Newton terms (squared weights, inputs and activation
    derivative). ``grad_x`` is an empty tensor when ``input_grad=False``."""
    args = (grad, y, x, weight, activation_code(act), bool(gauss_newton), bool(input_grad))
    return _call_backward(_conv5x5_backward_kernel, _conv5x5_backward_op, (grad, y, x, weight), args)


# ---------------------------------------------------------------------------------------------
# sparse_conv5x5 (C3): x[N,C,H,W], weight[K,5,5], bias[O], table CSR (offsets[O+1], inputs[K])

def _sparse_kernel(x, weight, bias, offsets, inputs, act):
    y = _new(x, _v.sparse_conv5x5(x, weight, bias, offsets, inputs, act))
    _v.table_contents("sparse_conv5x5", offsets, inputs, x.shape[1])
    if y.numel():
        x, weight, bias, offsets, inputs = _dense(x, weight, bias, offsets, inputs)
        _run(_C.sparse_conv5x5_forward, x, _ptr(x), _ptr(weight), _ptr(bias), _ptr(offsets), _ptr(inputs),
             _ptr(y), x.shape, y.shape, act)
    return y


def _sparse_backward_outputs(grad, y, x, weight, offsets, inputs, act, gauss_newton, input_grad):
    xs, ws, bs = _v.sparse_conv5x5_backward(grad, y, x, weight, offsets, inputs, act)
    return _allocate(x, (xs if input_grad else (0,), ws, bs))


def _sparse_backward_kernel(grad, y, x, weight, offsets, inputs, act, gauss_newton, input_grad):
    gx, gw, gb = outs = _sparse_backward_outputs(grad, y, x, weight, offsets, inputs, act, gauss_newton, input_grad)
    _v.table_contents("sparse_conv5x5_backward", offsets, inputs, x.shape[1])
    if x.shape[0] == 0:
        _zero(gw, gb)
        return outs
    grad, y, x, weight, offsets, inputs = _dense(grad, y, x, weight, offsets, inputs)
    _run(_C.sparse_conv5x5_backward, x, _ptr(grad), _ptr(y), _ptr(x), _ptr(weight), _ptr(offsets),
         _ptr(inputs), _ptr(gx if input_grad else None), _ptr(gw), _ptr(gb), x.shape, grad.shape, act,
         gauss_newton)
    return outs


_sparse_backward_op = _define(
    "sparse_conv5x5_backward(Tensor grad, Tensor y, Tensor x, Tensor weight, Tensor offsets, Tensor inputs, "
    "int act, bool gauss_newton, bool input_grad) -> (Tensor, Tensor, Tensor)",
    _sparse_backward_kernel, _sparse_backward_outputs)


def _save_sparse(ctx, inputs, output):
    x, weight, _, offsets, table_inputs, act = inputs
    ctx.save_for_backward(x, weight, offsets, table_inputs, output)
    ctx.act = act


def _sparse_grad(ctx, g, backward):
    x, weight, offsets, table_inputs, y = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    gx, gw, gb = backward(g, y, x, weight, offsets, table_inputs, ctx.act, False, need_x)
    return (gx if need_x else None), gw, gb, None, None, None


_SPARSE = _Forward(
    "sparse_conv5x5(Tensor x, Tensor weight, Tensor bias, Tensor offsets, Tensor inputs, int act) -> Tensor",
    _sparse_kernel,
    lambda x, weight, bias, offsets, inputs, act: _new(x, _v.sparse_conv5x5(x, weight, bias, offsets, inputs, act)),
    _save_sparse, _sparse_grad, _sparse_backward_kernel, _sparse_backward_op,
    formulas.sparse_conv5x5)


def sparse_conv5x5(x: Tensor, weight: Tensor, bias: Tensor, offsets: Tensor, inputs: Tensor, act=Act.IDENTITY) -> Tensor:
    """5x5 convolution through a connection table (C3): output map ``o`` sums the kernels
    ``weight[k]``, ``k`` in ``[offsets[o], offsets[o+1])``, each over input map ``inputs[k]``;
    plus ``bias[o]``, then ``act``. ``x[N, C, H, W]``, ``weight[K, 5, 5]``, ``bias[O]``, int32
    ``offsets[O+1]`` and ``inputs[K]`` (:func:`connection_table_to_csr`) -> ``[N, O, H-4, W-4]``.
    A table's contents are checked the first time it is used (and again after an in-place change)."""
    args = (x, weight, bias, offsets, inputs, activation_code(act))
    return _call_forward(_SPARSE, (x, weight, bias, offsets, inputs), args)


def sparse_conv5x5_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, offsets: Tensor, inputs: Tensor,
                            act=Act.IDENTITY, gauss_newton: bool = False, input_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`sparse_conv5x5`: ``(grad_x, grad_weight, grad_bias)``, or the
    Gauss-Newton terms with ``gauss_newton=True`` (see :func:`conv5x5_backward`)."""
    args = (grad, y, x, weight, offsets, inputs, activation_code(act), bool(gauss_newton), bool(input_grad))
    return _call_backward(_sparse_backward_kernel, _sparse_backward_op, (grad, y, x, weight, offsets, inputs), args)


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

_subsample_kernel, _subsample_fake, _subsample_backward_kernel, _subsample_backward_outputs = _weighted_kernels(
    _v.subsample2x2, _v.subsample2x2_backward, _C.subsample2x2_forward, _C.subsample2x2_backward)

_subsample_backward_op = _define(
    "subsample2x2_backward(Tensor grad, Tensor y, Tensor x, Tensor coef, int act, bool gauss_newton, "
    "bool input_grad) -> (Tensor, Tensor, Tensor)", _subsample_backward_kernel, _subsample_backward_outputs)


_SUBSAMPLE = _Forward(
    "subsample2x2(Tensor x, Tensor coef, Tensor bias, int act) -> Tensor", _subsample_kernel, _subsample_fake,
    _save_x_weight_y, _weighted_grad, _subsample_backward_kernel, _subsample_backward_op,
    formulas.subsample2x2)


def subsample2x2(x: Tensor, coef: Tensor, bias: Tensor, act=Act.IDENTITY) -> Tensor:
    """The paper's trainable subsampling (S2, S4): ``act(coef[c] * s + bias[c])``, ``s`` the sum
    of each 2x2 window (stride 2). ``x[N, C, H, W]`` -> ``[N, C, H//2, W//2]`` (an odd last
    row/column is ignored)."""
    args = (x, coef, bias, activation_code(act))
    return _call_forward(_SUBSAMPLE, (x, coef, bias), args)


def subsample2x2_backward(grad: Tensor, y: Tensor, x: Tensor, coef: Tensor, act=Act.IDENTITY, gauss_newton: bool = False,
                          input_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`subsample2x2`: ``(grad_x, grad_coef, grad_bias)``, or the Gauss-Newton
    terms with ``gauss_newton=True``."""
    args = (grad, y, x, coef, activation_code(act), bool(gauss_newton), bool(input_grad))
    return _call_backward(_subsample_backward_kernel, _subsample_backward_op, (grad, y, x, coef), args)


# ---------------------------------------------------------------------------------------------
# maxpool2x2 (modern variant)

def _maxpool_kernel(x):
    y = _new(x, _v.maxpool2x2(x))
    if y.numel():
        (x,) = _dense(x)
        _run(_C.maxpool2x2_forward, x, _ptr(x), _ptr(y), x.shape, y.shape)
    return y


def _maxpool_backward_outputs(grad, x, y):
    return _allocate(x, (_v.maxpool2x2_backward(grad, x, y),))[0]


def _maxpool_backward_kernel(grad, x, y):
    gx = _maxpool_backward_outputs(grad, x, y)
    if gx.numel():
        grad, x, y = _dense(grad, x, y)
        _run(_C.maxpool2x2_backward, x, _ptr(grad), _ptr(x), _ptr(y), _ptr(gx), x.shape, grad.shape)
    return gx


_maxpool_backward_op = _define("maxpool2x2_backward(Tensor grad, Tensor x, Tensor y) -> Tensor",
                               _maxpool_backward_kernel, _maxpool_backward_outputs)


def _save_maxpool(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], output)


def _maxpool_grad(ctx, g, backward):
    x, y = ctx.saved_tensors
    return backward(g, x, y)


_MAXPOOL = _Forward(
    "maxpool2x2(Tensor x) -> Tensor", _maxpool_kernel, lambda x: _new(x, _v.maxpool2x2(x)),
    _save_maxpool, _maxpool_grad, _maxpool_backward_kernel, _maxpool_backward_op,
    formulas.maxpool2x2)


def maxpool2x2(x: Tensor) -> Tensor:
    """2x2 max-pooling, stride 2 (modern variant): ``x[N, C, H, W]`` -> ``[N, C, H//2, W//2]``.
    NaN propagates; the gradient goes to the first maximum of each window."""
    return _call_forward(_MAXPOOL, (x,), (x,))


def maxpool2x2_backward(grad: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Backward of :func:`maxpool2x2`: ``grad_x`` (each window's gradient to its first maximum;
    the Gauss-Newton terms route the same way)."""
    return _call_backward(_maxpool_backward_kernel, _maxpool_backward_op, (grad, x, y), (grad, x, y))


# ---------------------------------------------------------------------------------------------
# full: x[N,D], weight[O,D], bias[O] -> [N,O]

_full_kernel, _full_fake, _full_backward_kernel, _full_backward_outputs = _weighted_kernels(
    _v.full, _v.full_backward, _C.full_forward, _C.full_backward)

_full_backward_op = _define(
    "full_backward(Tensor grad, Tensor y, Tensor x, Tensor weight, int act, bool gauss_newton, "
    "bool input_grad) -> (Tensor, Tensor, Tensor)", _full_backward_kernel, _full_backward_outputs)


_FULL = _Forward(
    "full(Tensor x, Tensor weight, Tensor bias, int act) -> Tensor", _full_kernel, _full_fake,
    _save_x_weight_y, _weighted_grad, _full_backward_kernel, _full_backward_op,
    formulas.full)


def full(x: Tensor, weight: Tensor, bias: Tensor, act=Act.IDENTITY) -> Tensor:
    """Fully connected layer with a fused activation (F6): ``act(x weight^T + bias)``,
    ``x[N, D]``, ``weight[O, D]``, ``bias[O]`` -> ``[N, O]``."""
    args = (x, weight, bias, activation_code(act))
    return _call_forward(_FULL, (x, weight, bias), args)


def full_backward(grad: Tensor, y: Tensor, x: Tensor, weight: Tensor, act=Act.IDENTITY, gauss_newton: bool = False,
                  input_grad: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """Backward of :func:`full`: ``(grad_x, grad_weight, grad_bias)``, or the Gauss-Newton
    terms with ``gauss_newton=True``."""
    args = (grad, y, x, weight, activation_code(act), bool(gauss_newton), bool(input_grad))
    return _call_backward(_full_backward_kernel, _full_backward_op, (grad, y, x, weight), args)


# ---------------------------------------------------------------------------------------------
# euclidean_rbf: x[N,D], weight[M,D] -> y[N,M] = sum_j (x - w)^2

def _rbf_kernel(x, weight):
    y = _new(x, _v.euclidean_rbf(x, weight))
    if y.numel():
        x, weight = _dense(x, weight)
        _run(_C.euclidean_rbf_forward, x, _ptr(x), _ptr(weight), _ptr(y), x.shape, y.shape)
    return y


def _rbf_backward_outputs(grad, x, weight, gauss_newton, input_grad, weight_grad):
    xs, ws = _v.euclidean_rbf_backward(grad, x, weight)
    return _allocate(x, (xs if input_grad else (0,), ws if weight_grad else (0,)))


def _rbf_backward_kernel(grad, x, weight, gauss_newton, input_grad, weight_grad):
    gx, gw = outs = _rbf_backward_outputs(grad, x, weight, gauss_newton, input_grad, weight_grad)
    if x.shape[0] == 0:
        _zero(gw)
        return outs
    grad, x, weight = _dense(grad, x, weight)
    _run(_C.euclidean_rbf_backward, x, _ptr(grad), _ptr(x), _ptr(weight), _ptr(gx if input_grad else None),
         _ptr(gw if weight_grad else None), x.shape, grad.shape, gauss_newton)
    return outs


_rbf_backward_op = _define(
    "euclidean_rbf_backward(Tensor grad, Tensor x, Tensor weight, bool gauss_newton, bool input_grad, "
    "bool weight_grad) -> (Tensor, Tensor)", _rbf_backward_kernel, _rbf_backward_outputs)


def _save_rbf(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _rbf_grad(ctx, g, backward):
    x, weight = ctx.saved_tensors
    need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    gx, gw = backward(g, x, weight, False, need_x, need_w)
    return (gx if need_x else None), (gw if need_w else None)


_RBF = _Forward(
    "euclidean_rbf(Tensor x, Tensor weight) -> Tensor", _rbf_kernel,
    lambda x, weight: _new(x, _v.euclidean_rbf(x, weight)),
    _save_rbf, _rbf_grad, _rbf_backward_kernel, _rbf_backward_op,
    formulas.euclidean_rbf)


def euclidean_rbf(x: Tensor, weight: Tensor) -> Tensor:
    """Euclidean RBF units (the paper's output layer): ``y[n, i] = sum_j (x[n, j] - weight[i, j])^2``,
    ``x[N, D]``, ``weight[M, D]`` -> ``[N, M]``."""
    return _call_forward(_RBF, (x, weight), (x, weight))


def euclidean_rbf_backward(grad: Tensor, x: Tensor, weight: Tensor, gauss_newton: bool = False,
                           input_grad: bool = True, weight_grad: bool = True) -> Tuple[Tensor, Tensor]:
    """Backward of :func:`euclidean_rbf`: ``(grad_x, grad_weight)`` (each an empty tensor when
    not asked for), or the Gauss-Newton terms with ``gauss_newton=True``."""
    args = (grad, x, weight, bool(gauss_newton), bool(input_grad), bool(weight_grad))
    return _call_backward(_rbf_backward_kernel, _rbf_backward_op, (grad, x, weight), args)


# ---------------------------------------------------------------------------------------------
# activation (stand-alone ScaledTanh / ReLU / tanh), any shape

def _activation_kernel(x, act):
    y = _new(x, _v.activation(x, act))
    if y.numel():
        (x,) = _dense(x)
        _run(_C.activation_forward, x, _ptr(x), _ptr(y), x.numel(), act)
    return y


def _activation_backward_outputs(grad, y, act, gauss_newton):
    return _allocate(y, (_v.activation_backward(grad, y, act),))[0]


def _activation_backward_kernel(grad, y, act, gauss_newton):
    gx = _activation_backward_outputs(grad, y, act, gauss_newton)
    if gx.numel():
        grad, y = _dense(grad, y)
        _run(_C.activation_backward, y, _ptr(grad), _ptr(y), _ptr(gx), y.numel(), act, gauss_newton)
    return gx


_activation_backward_op = _define(
    "activation_backward(Tensor grad, Tensor y, int act, bool gauss_newton) -> Tensor",
    _activation_backward_kernel, _activation_backward_outputs)


def _save_activation(ctx, inputs, output):
    ctx.save_for_backward(output)
    ctx.act = inputs[1]


def _activation_grad(ctx, g, backward):
    (y,) = ctx.saved_tensors
    return backward(g, y, ctx.act, False), None


_ACTIVATION = _Forward(
    "activation(Tensor x, int act) -> Tensor", _activation_kernel,
    lambda x, act: _new(x, _v.activation(x, act)),
    _save_activation, _activation_grad, _activation_backward_kernel, _activation_backward_op,
    formulas.activation)


def activation(x: Tensor, act=Act.SCALED_TANH) -> Tensor:
    """Element-wise activation of any tensor (:class:`Act`): ``Act.SCALED_TANH`` (default) the
    paper's squashing ``1.7159 tanh(2x/3)``, ``Act.RELU``, ``Act.PLAIN_TANH`` (``torch.tanh``),
    ``Act.IDENTITY``."""
    args = (x, activation_code(act))
    return _call_forward(_ACTIVATION, (x,), args)


def activation_backward(grad: Tensor, y: Tensor, act=Act.SCALED_TANH, gauss_newton: bool = False) -> Tensor:
    """Backward of :func:`activation` from its output ``y``: ``grad * f'(a)``, or
    ``grad * f'(a)^2`` with ``gauss_newton=True``."""
    args = (grad, y, activation_code(act), bool(gauss_newton))
    return _call_backward(_activation_backward_kernel, _activation_backward_op, (grad, y), args)
