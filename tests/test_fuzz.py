"""Property / fuzz tests: every public op (forward and backward), every layer and the IDX reader
get random shapes, dtypes, strides, devices, NaN/inf and garbage. The contract: a result that
matches the pure-PyTorch reference, or a TypeError/ValueError/RuntimeError with a message
(DataError for data files) -- never a crash. Everything runs in-process, so a segfault kills
pytest: that is the signal. LENET5_FUZZ_EXAMPLES scales the effort (default 40 per test)."""
import gzip
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

import lenet5_fast
from lenet5_fast import layers as L
from lenet5_fast import ops, reference
from lenet5_fast.data import DataError, load_mnist, read_idx
import op_table

FUZZ = settings(max_examples=int(os.environ.get("LENET5_FUZZ_EXAMPLES", 40)), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ERRORS = (TypeError, ValueError, RuntimeError)
F32, F64 = torch.float32, torch.float64
BAD_DTYPES = [torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool, torch.complex64]
SPECIALS = [float("nan"), float("inf"), float("-inf")]


# ---------------------------------------------------------------------------------------------
# helpers

def randn(seed, *shape, dtype=F64, scale=1.0):
    return (torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=F64) * scale).to(dtype)


def poison(t: Tensor, seed: int, count: int) -> Tensor:
    """t with `count` random elements set to NaN/+inf/-inf."""
    t = t.clone()
    g = torch.Generator().manual_seed(seed)
    flat = t.view(-1)
    for i in torch.randint(0, flat.numel(), (count,), generator=g).tolist():
        flat[i] = SPECIALS[i % 3]
    return t


def noncontiguous(t: Tensor) -> Tensor:
    """The same values in a strided (non-contiguous when it can be) layout."""
    if t.dim() == 0:
        return t
    wide = torch.stack([t, torch.zeros_like(t)], dim=-1)  # [..., n, 2]
    return wide[..., 0]


def run(fn, *args):
    """fn(*args), or the exception it raised -- which must be one of ERRORS, with a message."""
    try:
        return fn(*args), None
    except ERRORS as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        return None, e


def outputs(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def assert_matches(got: Tensor, want: Tensor, dtype) -> None:
    """got (dtype) against a float64 reference: same shape, same finite/non-finite positions,
    close where finite."""
    assert got.dtype == dtype and tuple(got.shape) == tuple(want.shape)
    got, want = got.double(), want.detach()
    fin = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), fin), "non-finite values in different places than the reference"
    if fin.any():
        tol = 1e-9 if dtype == F64 else 1e-4
        scale = max(1.0, want[fin].abs().max().item())
        torch.testing.assert_close(got[fin], want[fin], rtol=tol, atol=tol * scale)


def to_ref(a):
    return a.double() if isinstance(a, Tensor) and a.is_floating_point() else a


# ---------------------------------------------------------------------------------------------
# the ops: valid calls, a reference for each, and an independent statement of what is valid

def floats_ok(*ts) -> bool:
    """Float arguments: tensors, float32/float64, one dtype, one device (CPU or meta); any strides."""
    if not all(isinstance(t, Tensor) for t in ts):
        return False
    d = ts[0]
    return all(t.dtype in (F32, F64) and t.dtype == d.dtype and t.device == d.device
               and t.device.type in ("cpu", "meta") for t in ts)


def maps_ok(x: Tensor, min_hw: int) -> bool:
    """[N, C, H, W]: any batch size (0 included), C >= 1, H and W >= min_hw."""
    return x.dim() == 4 and x.shape[1] > 0 and min(x.shape[2:]) >= min_hw


def act_ok(act) -> bool:
    """The Python functions, forward and backward, take a code 0-3 or a name (never a bool)."""
    if isinstance(act, str):
        return act in ops.ACTIVATIONS
    return type(act) is int and act in (0, 1, 2, 3)


def code(act) -> int:
    return ops.ACTIVATIONS[act] if isinstance(act, str) else int(act)


def shape(t) -> tuple:
    return tuple(t.shape) if isinstance(t, Tensor) else ()


def table_ok(off, inp, x, O) -> bool:
    if not all(isinstance(t, Tensor) and t.dtype == torch.int32 and t.dim() == 1
               and t.device == x.device for t in (off, inp)):
        return False
    if O < 1 or off.numel() != O + 1 or inp.numel() == 0:
        return False
    if off.device.type == "meta":
        return True
    o, i = off.tolist(), inp.tolist()
    return (o[0] == 0 and all(a <= b for a, b in zip(o, o[1:])) and o[-1] == len(i)
            and all(0 <= v < x.shape[1] for v in i))


def sparse_ref(x, w, b, off, inp, act):
    """Reference for any valid CSR table, one output map at a time, from the connected input
    maps only (a dense weight with zeros would let NaN in unconnected maps leak in: 0 * NaN)."""
    xs = x[:, inp.long()]  # the input map of every kernel, [N, K, H, W]
    o = off.tolist()
    maps = [F.conv2d(xs[:, o[i]:o[i + 1]], w[o[i]:o[i + 1]].unsqueeze(0), b[i:i + 1]) if o[i + 1] > o[i]
            else b[i].expand(x.shape[0], 1, x.shape[2] - 4, x.shape[3] - 4) for i in range(len(o) - 1)]
    return reference.act(torch.cat(maps, 1), act)


def grads_ref(fwd, tensors, g, needed):
    """Autograd of a float64 reference forward: the gradients of `tensors` (None where not needed)."""
    ts = [t.detach().requires_grad_() for t in tensors]
    got = torch.autograd.grad(fwd(*ts), ts, g)
    return tuple(gr if need else None for gr, need in zip(got, needed))


def draw_table(draw, C):
    rows = draw(st.lists(st.lists(st.integers(0, C - 1), min_size=1, max_size=C, unique=True), min_size=1, max_size=4))
    return ops.connection_table_to_csr(rows, C)


T = op_table.BY_NAME  # the ops' public forward and backward functions


def case(draw, name, dtype, seed):
    """(fn, args, reference, valid, tensor positions, act position) for op `name`: args are valid.
    A forward op's reference reads the activation from its arguments (a corrupted call may
    still name a valid one); a backward op's is only compared on the uncorrupted call."""
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    act = draw(st.sampled_from([0, 1, 2, 3]))
    gn, ig = draw(st.booleans()), draw(st.booleans())
    r = lambda *s, k=0: randn(seed + k, *s, dtype=dtype, scale=0.5)  # noqa: E731
    if name in ("conv5x5", "conv5x5_backward", "sparse_conv5x5", "sparse_conv5x5_backward"):
        H, W = draw(st.integers(5, 9)), draw(st.integers(5, 9))
        x = r(N, C, H, W)
        if name.startswith("conv"):
            O = draw(st.integers(1, 4))
            w, b = r(O, C, 5, 5, k=1), r(O, k=2)
            fwd = lambda x, w, b: reference.conv5x5(x, w, b, act)  # noqa: E731
            valid_fwd = lambda x, w, b: (maps_ok(x, 5) and len(shape(w)) == 4 and w.shape[0] > 0  # noqa: E731
                                         and shape(w)[1:] == (x.shape[1], 5, 5))
            if name == "conv5x5":
                return (T['conv5x5'].forward, [x, w, b, act], lambda x, w, b, a: reference.conv5x5(x, w, b, code(a)),
                        lambda x, w, b, a: floats_ok(x, w, b) and valid_fwd(x, w, b) and shape(b) == shape(w)[:1] and act_ok(a),
                        [0, 1, 2], 3)
            y = T['conv5x5'].forward(x, w, b, act)
            g = r(*y.shape, k=3)
            b64 = b.double()
            return (T['conv5x5'].backward, [g, y, x, w, act, gn, ig],
                    lambda g, y, x, w, *_: grads_ref(lambda x, w, b: fwd(x, w, b), [x, w, b64], g, [ig, True, True]),
                    lambda g, y, x, w, a, *_: (floats_ok(g, y, x, w) and valid_fwd(x, w, None) and act_ok(a)
                                               and shape(g) == shape(y) == (x.shape[0], w.shape[0], x.shape[2] - 4, x.shape[3] - 4)),
                    [0, 1, 2, 3], 4)
        off, inp = draw_table(draw, C)
        O, K = off.numel() - 1, inp.numel()
        w, b = r(K, 5, 5, k=1), r(O, k=2)
        valid_fwd = lambda x, w, off, inp, O: (maps_ok(x, 5) and table_ok(off, inp, x, O)  # noqa: E731
                                               and shape(w) == (inp.numel(), 5, 5))
        if name == "sparse_conv5x5":
            return (T['sparse_conv5x5'].forward, [x, w, b, off, inp, act], lambda x, w, b, off, inp, a: sparse_ref(x, w, b, off, inp, code(a)),
                    lambda x, w, b, off, inp, a: (floats_ok(x, w, b) and len(shape(b)) == 1
                                                  and valid_fwd(x, w, off, inp, shape(b)[0]) and act_ok(a)),
                    [0, 1, 2, 3, 4], 5)
        y = T['sparse_conv5x5'].forward(x, w, b, off, inp, act)
        g, b64 = r(*y.shape, k=3), b.double()
        return (T['sparse_conv5x5'].backward, [g, y, x, w, off, inp, act, gn, ig],
                lambda g, y, x, w, off, inp, *_: grads_ref(lambda x, w, b: sparse_ref(x, w, b, off, inp, act),
                                                           [x, w, b64], g, [ig, True, True]),
                lambda g, y, x, w, off, inp, a, *_: (floats_ok(g, y, x, w) and isinstance(off, Tensor) and off.dim() == 1
                                                     and valid_fwd(x, w, off, inp, off.numel() - 1) and act_ok(a)
                                                     and shape(g) == shape(y) == (x.shape[0], off.numel() - 1, x.shape[2] - 4, x.shape[3] - 4)),
                [0, 1, 2, 3, 4, 5], 6)
    if name in ("subsample2x2", "subsample2x2_backward", "maxpool2x2", "maxpool2x2_backward"):
        H, W = draw(st.integers(2, 9)), draw(st.integers(2, 9))
        x, coef, bias = r(N, C, H, W), r(C, k=1), r(C, k=2)
        half = lambda x: (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)  # noqa: E731
        if name == "subsample2x2":
            return (T['subsample2x2'].forward, [x, coef, bias, act], lambda x, c, b, a: reference.subsample2x2(x, c, b, code(a)),
                    lambda x, c, b, a: floats_ok(x, c, b) and maps_ok(x, 2) and shape(c) == shape(b) == (x.shape[1],) and act_ok(a),
                    [0, 1, 2], 3)
        if name == "subsample2x2_backward":
            y = T['subsample2x2'].forward(x, coef, bias, act)
            g, b64 = r(*y.shape, k=3), bias.double()
            return (T['subsample2x2'].backward, [g, y, x, coef, act, gn, ig],
                    lambda g, y, x, c, *_: grads_ref(lambda x, c, b: reference.subsample2x2(x, c, b, act), [x, c, b64], g, [ig, True, True]),
                    lambda g, y, x, c, a, *_: (floats_ok(g, y, x, c) and maps_ok(x, 2) and shape(c) == (x.shape[1],)
                                               and act_ok(a) and shape(g) == shape(y) == half(x)),
                    [0, 1, 2, 3], 4)
        if name == "maxpool2x2":
            return (T['maxpool2x2'].forward, [x], lambda x: F.max_pool2d(x, 2), lambda x: floats_ok(x) and maps_ok(x, 2), [0], None)
        y = T['maxpool2x2'].forward(x)
        g = r(*y.shape, k=3)
        return (T['maxpool2x2'].backward, [g, x, y], lambda g, x, y: grads_ref(lambda x: F.max_pool2d(x, 2), [x], g, [True])[0],
                lambda g, x, y: floats_ok(g, x, y) and maps_ok(x, 2) and shape(g) == shape(y) == half(x), [0, 1, 2], None)
    if name in ("full", "full_backward"):
        D, O = draw(st.integers(1, 12)), draw(st.integers(1, 5))
        x, w, b = r(N, D), r(O, D, k=1), r(O, k=2)
        if name == "full":
            return (T['full'].forward, [x, w, b, act], lambda x, w, b, a: reference.full(x, w, b, code(a)),
                    lambda x, w, b, a: (floats_ok(x, w, b) and x.dim() == 2 and x.shape[1] > 0 and w.dim() == 2
                                        and min(w.shape) > 0 and w.shape[1] == x.shape[1] and shape(b) == (w.shape[0],) and act_ok(a)),
                    [0, 1, 2], 3)
        y = T['full'].forward(x, w, b, act)
        g, b64 = r(*y.shape, k=3), b.double()
        return (T['full'].backward, [g, y, x, w, act, gn, ig],
                lambda g, y, x, w, *_: grads_ref(lambda x, w, b: reference.full(x, w, b, act), [x, w, b64], g, [ig, True, True]),
                lambda g, y, x, w, a, *_: (floats_ok(g, y, x, w) and x.dim() == 2 and x.shape[1] > 0 and w.dim() == 2
                                           and min(w.shape) > 0 and w.shape[1] == x.shape[1] and act_ok(a)
                                           and shape(g) == shape(y) == (x.shape[0], w.shape[0])),
                [0, 1, 2, 3], 4)
    if name in ("euclidean_rbf", "euclidean_rbf_backward"):
        D, M = draw(st.integers(1, 12)), draw(st.integers(1, 5))
        x, w = r(N, D), r(M, D, k=1)
        valid = lambda x, w: floats_ok(x, w) and x.dim() == 2 and x.shape[1] > 0 and w.dim() == 2 and w.shape[0] > 0 and w.shape[1] == x.shape[1]  # noqa: E731
        if name == "euclidean_rbf":
            return T['euclidean_rbf'].forward, [x, w], reference.euclidean_rbf, valid, [0, 1], None
        wg = draw(st.booleans())
        g = r(N, M, k=3)
        return (T['euclidean_rbf'].backward, [g, x, w, gn, ig, wg],
                lambda g, x, w, *_: grads_ref(reference.euclidean_rbf, [x, w], g, [ig, wg]),
                lambda g, x, w, *_: valid(x, w) and floats_ok(g, x) and shape(g) == (x.shape[0], w.shape[0]),
                [0, 1, 2], None)
    # activation and its backward: any shape
    dims = draw(st.lists(st.integers(1, 4), min_size=0, max_size=4))
    x = r(*dims)
    if name == "activation":
        return (T['activation'].forward, [x, act], lambda x, a: reference.act(x, code(a)),
                lambda x, a: floats_ok(x) and act_ok(a), [0], 1)
    y = T['activation'].forward(x, act)
    g = r(*dims, k=3)
    return (T['activation'].backward, [g, y, act, gn],
            lambda g, y, *_: grads_ref(lambda x: reference.act(x, act), [x.double()], g, [True])[0],
            lambda g, y, a, *_: floats_ok(g, y) and shape(g) == shape(y) and act_ok(a),
            [0, 1], 2)


OPS = [e.name for e in op_table.OPS]
OPS += [f"{n}_backward" for n in OPS]


def gauss_newton(name, args) -> bool:
    """Whether a backward call asks for the Gauss-Newton pass (its flag's position varies)."""
    if name in ("euclidean_rbf_backward", "activation_backward"):
        return args[3] is True
    return name.endswith("_backward") and name != "maxpool2x2_backward" and args[-2] is True


def check_result(name, args, out, ref, dtype, shapes_only):
    """A successful CPU call against the reference."""
    want = outputs(ref(*[to_ref(a) for a in args]))
    got = outputs(out)
    assert len(got) == len(want)
    for g_, w_ in zip(got, want):
        if w_ is None:
            assert g_.numel() == 0  # a gradient that was not asked for
        elif shapes_only:
            assert g_.shape == w_.shape and g_.dtype == dtype
        else:
            assert_matches(g_, w_, dtype)


@FUZZ
@given(name=st.sampled_from(OPS), dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 2**31),
       specials=st.sampled_from([0, 0, 1, 5]), meta=st.booleans(), data=st.data())
def test_ops_valid_calls_match_reference(name, dtype, seed, specials, meta, data):
    """Random valid shapes (batch 1, maps of exactly 5x5 or 2x2, odd sizes), both dtypes, NaN/inf,
    and the meta device: the reference's values, gradients and shapes."""
    fn, args, ref, valid, tensors, _ = case(data.draw, name, dtype, seed)
    assert valid(*args)
    if specials:
        args = [poison(a, seed + i, specials) if i in tensors and a.is_floating_point() else a for i, a in enumerate(args)]
    cpu_out = fn(*args)
    # A backward op with NaN/inf in y, x or the weights has no one right answer (y no longer
    # matches x): there, and for the Gauss-Newton pass, shapes and dtypes only.
    check_result(name, args, cpu_out, ref, dtype, gauss_newton(name, args) or ("backward" in name and specials))
    if meta:  # the fake kernels: same shapes and dtypes, no data
        meta_out = fn(*[a.to("meta") if isinstance(a, Tensor) else a for a in args])
        for m, c in zip(outputs(meta_out), outputs(cpu_out)):
            assert m.device.type == "meta" and m.shape == c.shape and m.dtype == c.dtype
    if "backward" not in name and not specials:  # forward ops: autograd too
        leaves = [a.detach().requires_grad_() if i in tensors and a.is_floating_point() else a for i, a in enumerate(args)]
        out = fn(*leaves)
        g = randn(seed + 7, *out.shape, dtype=dtype)
        inputs = [leaves[i] for i in tensors if leaves[i].is_floating_point()]
        got = torch.autograd.grad(out, inputs, g)
        ref_leaves = [to_ref(a).detach().requires_grad_() if i in tensors and a.is_floating_point() else to_ref(a)
                      for i, a in enumerate(leaves)]
        want = torch.autograd.grad(ref(*ref_leaves), [ref_leaves[i] for i in tensors if leaves[i].is_floating_point()], g.double())
        for a, b in zip(got, want):
            assert_matches(a, b, dtype)


def mutate(draw, a, seed):
    """A random corruption of one argument."""
    if not isinstance(a, Tensor):  # the activation code
        return draw(st.sampled_from([-1, 4, 7, True, 1.5, None, "relu", "sigmoid", "", 2]))
    kind = draw(st.sampled_from(["dtype", "meta", "strided", "dim", "ndim", "zero", "values", "scalar", "python"]))
    if kind == "dtype":
        return a.to(draw(st.sampled_from(BAD_DTYPES + [F32, F64, torch.int32])))
    if kind == "meta":
        return a.to("meta")
    if kind == "strided":
        return noncontiguous(a)
    if kind == "python":
        return draw(st.sampled_from([None, 1.0, [[1.0]], "x"]))
    if kind == "scalar":
        return a.new_zeros(())
    dims = list(a.shape)
    if kind == "ndim":
        dims = dims[:-1] if dims and draw(st.booleans()) else dims + [draw(st.integers(1, 3))]
    elif dims:
        i = draw(st.integers(0, len(dims) - 1))
        dims[i] = 0 if kind == "zero" else max(0, dims[i] + draw(st.sampled_from([-3, -1, 1, 2])))
    if kind == "values" or a.dtype == torch.int32:  # tables: random contents
        return torch.randint(-3, 12, dims, dtype=a.dtype, generator=torch.Generator().manual_seed(seed)) \
            if a.dtype == torch.int32 else randn(seed, *dims, dtype=a.dtype)
    return randn(seed, *dims, dtype=a.dtype)


@FUZZ
@given(name=st.sampled_from(OPS), dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 2**31),
       nmut=st.integers(1, 3), data=st.data())
def test_ops_corrupted_calls_fail_cleanly(name, dtype, seed, nmut, data):
    """1-3 arguments corrupted (dtype, device, strides, shapes, zero-sized dims, scalars, table
    contents, non-tensors, activation codes): a clear exception, or -- when the corrupted call
    is still valid -- the reference's answer. Never a crash, never garbage."""
    fn, args, ref, valid, tensors, act_at = case(data.draw, name, dtype, seed)
    positions = tensors + ([act_at] if act_at is not None else [])
    for k in range(nmut):
        i = data.draw(st.sampled_from(positions))
        args[i] = mutate(data.draw, args[i], seed + 100 + k)
    out, err = run(fn, *args)
    if err is not None:
        return
    # it ran: then the call was valid after all, and the answer is right (a backward op's
    # answer depends on y being the forward's output, which a corrupted y no longer is: shapes)
    assert valid(*args), f"{name} accepted an invalid call: {[(type(a).__name__, shape(a)) for a in args]}"
    if all(o.device.type == "cpu" for o in outputs(out)):
        check_result(name, args, out, ref, args[tensors[0]].dtype, "backward" in name)


# ---------------------------------------------------------------------------------------------
# the layers

def layer_case(draw, kind, dtype):
    """(layer, valid input shape, functional float64 reference of (layer, x))."""
    act = draw(st.sampled_from(["scaled_tanh", "relu", "identity"]))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H, W = draw(st.integers(5, 9)), draw(st.integers(5, 9))
    p = lambda t: t.detach().double()  # noqa: E731
    if kind == "Convolution":
        m = L.Convolution(C, draw(st.integers(1, 3)), act)
        return m, (N, C, H, W), lambda m, x: reference.conv5x5(x, p(m.weight), p(m.bias), m.act)
    if kind == "SparseConvolution":
        rows = draw(st.lists(st.lists(st.integers(0, C - 1), min_size=1, max_size=C, unique=True), min_size=1, max_size=3))
        m = L.SparseConvolution(C, rows, act)
        return m, (N, C, H, W), lambda m, x: sparse_ref(x, p(m.weight), p(m.bias), m.table_offsets, m.table_inputs, m.act)
    if kind == "Subsampling":
        m = L.Subsampling(C, act)
        return m, (N, C, H - 3, W - 3), lambda m, x: reference.subsample2x2(x, p(m.coef), p(m.bias), m.act)
    if kind == "MaxPool":
        return L.MaxPool(), (N, C, H - 3, W - 3), lambda m, x: F.max_pool2d(x, 2)
    if kind == "ScaledTanh":
        return L.ScaledTanh(), tuple(draw(st.lists(st.integers(1, 4), max_size=4))), lambda m, x: reference.squash(x)
    if kind == "FullConnection":
        D = draw(st.integers(1, 10))
        m = L.FullConnection(D * C, draw(st.integers(1, 5)), act)
        return m, (N, C, D), lambda m, x: reference.full(x, p(m.weight), p(m.bias), m.act)
    if kind == "EuclideanRBF":
        D, M = draw(st.integers(1, 10)), draw(st.integers(1, 5))
        m = L.EuclideanRBF(D, M, weight=torch.randn(M, D), trainable=draw(st.booleans()))
        return m, (N, D), lambda m, x: reference.euclidean_rbf(x, p(m.weight))
    variant = draw(st.sampled_from(["classic", "modern"]))
    m = lenet5_fast.LeNet5(variant, in_channels=1 if variant == "classic" else C)

    def lenet_ref(m, x):
        r = reference.LeNet5(variant, in_channels=m.in_channels).double()
        r.load_state_dict(m.state_dict())
        return r(x)
    return m, (N, m.in_channels, 32, 32), lenet_ref


LAYER_KINDS = ["Convolution", "SparseConvolution", "Subsampling", "MaxPool", "ScaledTanh", "FullConnection",
               "EuclideanRBF", "LeNet5"]


@FUZZ
@given(kind=st.sampled_from(LAYER_KINDS), dtype=st.sampled_from([F32, F64]), seed=st.integers(0, 2**31),
       how=st.sampled_from(["plain", "strided", "nan", "meta", "dtype", "meta_input", "shape", "scalar", "empty"]),
       data=st.data())
def test_layers(kind, dtype, seed, how, data):
    """Layers inside ordinary torch code: strided inputs, NaN/inf and the meta device work (and
    match the reference, gradients included); wrong dtypes, devices and shapes raise clearly."""
    m, in_shape, ref = layer_case(data.draw, kind, dtype)
    m = m.to(dtype)
    x = randn(seed, *in_shape, dtype=dtype)
    if how == "strided":
        x = noncontiguous(x)
    elif how == "nan" and x.numel():
        x = poison(x, seed, 3)
    elif how == "meta":
        want_shape = m(x).shape
        out = m.to("meta")(x.to("meta"))
        assert out.device.type == "meta" and out.shape == want_shape
        return
    elif how == "dtype":
        x = x.to(data.draw(st.sampled_from(BAD_DTYPES + [F64 if dtype == F32 else F32])))
    elif how == "meta_input":
        x = x.to("meta")
    elif how == "shape":
        x = mutate(data.draw, x, seed)
    elif how == "scalar":
        x = x.new_zeros(())
    elif how == "empty":
        x = randn(seed, 0, *in_shape[1:], dtype=dtype)
    must_work = how in ("plain", "strided", "nan", "empty")
    out, err = run(m, x)
    if err is not None:
        assert not must_work, f"{kind} failed on a valid input: {err!r}"
        return
    stateless = not list(m.parameters()) and not list(m.buffers())  # MaxPool, ScaledTanh
    assert stateless or (x.dtype == dtype and x.device.type == "cpu"), f"{kind} accepted {x.dtype} on {x.device}"
    if out.device.type == "meta":
        return
    x64 = x.double().detach().requires_grad_()
    want = ref(m, x64)
    assert_matches(out, want, x.dtype)
    if how == "nan":
        return
    # backward through the layer: the input gradient matches the reference
    xg = x.detach().requires_grad_()
    g = randn(seed + 1, *out.shape, dtype=dtype)
    (gx,) = torch.autograd.grad(m(xg), xg, g)
    (want_gx,) = torch.autograd.grad(want, x64, g.double())
    assert_matches(gx, want_gx, x.dtype)


# ---------------------------------------------------------------------------------------------
# the IDX reader: random, truncated and corrupted bytes -> DataError, never anything else

IDX_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def write(blob: bytes) -> Path:
    fd, name = tempfile.mkstemp(prefix="lenet5-fuzz-", suffix=".idx")
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    return Path(name)


def read_or_dataerror(blob: bytes):
    path = write(blob)
    try:
        return read_idx(path), None
    except DataError as e:
        assert str(path) in str(e), "the error names the file"
        return None, e
    finally:
        path.unlink()


def idx_blob(code, dims, payload: bytes) -> bytes:
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


@st.composite
def idx_like(draw):
    """Bytes that look more or less like an IDX file: random, or a plausible header + payload."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    code = draw(st.sampled_from(list(IDX_CODES) + [0x00, 0x0A, 0xFF]))
    big = st.integers(0, 2**32 - 1)
    dims = draw(st.lists(st.one_of(st.integers(0, 4), big), min_size=0, max_size=draw(st.sampled_from([4, 70]))))
    return idx_blob(code, dims, draw(st.binary(max_size=120)))


@FUZZ
@given(blob=idx_like(), compress=st.booleans())
def test_read_idx_random_bytes(blob, compress):
    """Garbage in -> DataError; anything accepted is exactly what its header says."""
    arr, err = read_or_dataerror(gzip.compress(blob) if compress else blob)
    if err is not None:
        return
    code, ndim = blob[2], blob[3]
    dims = struct.unpack(f">{ndim}I", blob[4:4 + 4 * ndim])
    assert arr.shape == dims and arr.dtype == np.dtype(IDX_CODES[code]).newbyteorder("=")
    assert arr.astype(IDX_CODES[code]).tobytes() == blob[4 + 4 * ndim:]


@FUZZ
@given(code=st.sampled_from(list(IDX_CODES)), dims=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       seed=st.integers(0, 2**31), compress=st.booleans(), how=st.sampled_from(["truncate", "append", "flip"]),
       data=st.data())
def test_read_idx_damaged_files(code, dims, seed, compress, how, data):
    """A valid file, truncated anywhere, with bytes appended, or (gzip) with a flipped byte:
    DataError -- or, for a flip in a field gzip does not check, exactly the original array.
    (A raw IDX file has no checksum: a flipped payload byte there is undetectable by design.)"""
    if how == "flip" and not compress:
        how = "append"
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 100, size=dims).astype(IDX_CODES[code])
    blob = idx_blob(code, dims, arr.tobytes())
    good = gzip.compress(blob, mtime=0) if compress else blob
    if how == "truncate":
        bad = good[:data.draw(st.integers(0, len(good) - 1))]
    elif how == "append":
        bad = good + data.draw(st.binary(min_size=1, max_size=8))
    else:
        i = data.draw(st.integers(0, len(good) - 1))
        bad = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1:]
    got, err = read_or_dataerror(bad)
    if err is None:
        assert compress and how != "truncate", "a damaged file was accepted"
        assert np.array_equal(got, arr.astype(arr.dtype.newbyteorder("="))), "a damaged file read as different data"


@settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 4))
@given(cut=st.floats(0, 1, exclude_max=True))
def test_read_idx_truncated_real_mnist(mnist_dir, cut):
    """The real MNIST test labels (gzip), cut anywhere: DataError."""
    good = (mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()
    _, err = read_or_dataerror(good[:int(cut * len(good))])
    assert err is not None


@FUZZ
@given(images=idx_like(), labels=idx_like(), compress=st.booleans(), verify=st.booleans())
def test_load_mnist_garbage_directory(images, labels, compress, verify):
    """load_mnist on a directory of corrupt files: DataError; verify=True never accepts them."""
    with tempfile.TemporaryDirectory() as d:
        for name, blob in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
            Path(d, name + (".gz" if compress else "")).write_bytes(gzip.compress(blob) if compress else blob)
        try:
            x, y = load_mnist(d, split="test", verify=verify)
        except DataError as e:
            assert str(e)
            return
    assert not verify, "synthetic files passed the md5 verification"
    assert x.dtype == np.uint8 and x.shape[1:] == (28, 28) and y.shape == (x.shape[0],) and (y <= 9).all()


# ---------------------------------------------------------------------------------------------
# regressions found by the fuzzing above

def test_backward_ops_check_the_output_argument():
    """The backward ops read `y`: it used to be checked for shape only, so a float32 y in a
    float64 call (or a meta one) was read as raw memory past its end. A strided y is read as
    what it is (made contiguous first)."""
    x, w = torch.randn(2, 3, 9, 9, dtype=F64), torch.randn(4, 3, 5, 5, dtype=F64)
    y = ops.conv5x5(x, w, torch.zeros(4, dtype=F64), 1)
    g = torch.randn_like(y)
    for bad in (y.float(), y.to("meta")):
        with pytest.raises((TypeError, ValueError), match="output"):
            ops.conv5x5_backward(g, bad, x, w, 1, False, True)
    for strided in (noncontiguous(y), y.new_zeros(1, 1, 1, 1).expand(y.shape)):
        for a, b in zip(ops.conv5x5_backward(g, strided, x, w, 1, False, True),
                        ops.conv5x5_backward(g, strided.contiguous(), x, w, 1, False, True)):
            assert torch.equal(a, b)
    xm = torch.randn(1, 2, 6, 6)
    with pytest.raises(TypeError, match="output"):
        ops.maxpool2x2_backward(torch.randn(1, 2, 3, 3), xm, ops.maxpool2x2(xm).double())


def test_zero_output_maps_are_rejected():
    """A weight with 0 output maps made the backward memcpy into a null pointer (UBSan)."""
    with pytest.raises(ValueError, match="no outputs"):
        ops.conv5x5(torch.randn(2, 3, 9, 9), torch.randn(0, 3, 5, 5), torch.randn(0))
    with pytest.raises(ValueError, match="no outputs"):
        ops.full_backward(torch.randn(2, 0), torch.randn(2, 0), torch.randn(2, 3), torch.randn(0, 3), 1, False, True)
    empty = torch.zeros(0, dtype=torch.int32)
    with pytest.raises(ValueError, match="no connections"):  # a table with no kernels at all
        ops.sparse_conv5x5(torch.randn(2, 3, 9, 9), torch.randn(0, 5, 5), torch.randn(2), torch.zeros(3, dtype=torch.int32), empty)


def test_relu_propagates_nan_like_torch():
    x = torch.tensor([float("nan"), -1.0, 0.0, 2.0, float("inf"), float("-inf")])
    torch.testing.assert_close(ops.activation(x, 2), torch.relu(x), equal_nan=True)
    w = torch.ones(1, 1)
    torch.testing.assert_close(ops.full(x.view(-1, 1), w, torch.zeros(1), 2), torch.relu(x).view(-1, 1), equal_nan=True)


def test_idx_headers_numpy_cannot_hold_are_data_errors():
    """Zero-sized headers that numpy cannot represent used to escape as plain ValueError."""
    for blob in (idx_blob(0x08, [0] * 70, b""), idx_blob(0x08, [0, 2**32 - 1, 2**32 - 1, 2**32 - 1], b"")):
        _, err = read_or_dataerror(blob)
        assert isinstance(err, DataError)
