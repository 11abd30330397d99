"""Every native op (the table in op_table.py) against its float64 pure-PyTorch reference:
values (float32 and float64), gradients, gradcheck, the Gauss-Newton backward, opcheck; any
strides and memory formats; empty batches; fake kernels that agree with the real ones; the
connection table read once; bad-input errors that name the right argument."""
import types

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import lenet5_fast
from lenet5_fast import _C, ops, reference
from lenet5_fast.layers import PAPER_C3_TABLE
from op_table import OPS, as_dtype, cases

D64 = torch.float64


def _act_deriv(y, act):
    if act == 1:
        return (2.0 / 3.0) * (1.7159 - y * y / 1.7159)
    if act == 2:
        return (y > 0).to(y.dtype)
    if act == 3:
        return 1 - y * y
    return torch.ones_like(y)


def _tol32(name):
    return 1e-5 if name == "euclidean_rbf" else 2e-5


CASES, IDS = cases()


@pytest.mark.parametrize("entry,sample", CASES, ids=IDS)
def test_op_matches_float64_reference(entry, sample):
    """forward(*args) vs the reference in float64, values and gradients, in float32 and float64."""
    grad_idx = entry.differentiable
    ref_in = as_dtype(sample.args, D64, grad_idx)
    want = entry.reference(*ref_in)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=D64)
    want_grads = torch.autograd.grad(want, [ref_in[i] for i in grad_idx], g)
    tol32 = _tol32(entry.name)
    for dtype, rtol, atol in ((D64, 1e-10, 1e-10), (torch.float32, tol32, tol32)):
        nat_in = as_dtype(sample.args, dtype, grad_idx)
        got = entry.forward(*nat_in)
        assert got.dtype == dtype and got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got.to(D64), want.detach(), rtol=rtol, atol=atol * max(1.0, want.abs().max().item()))
        got_grads = torch.autograd.grad(got, [nat_in[i] for i in grad_idx], g.to(dtype))
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a.to(D64), b, rtol=rtol * 10, atol=atol * 10 * max(1.0, b.abs().max().item()))


def _act(sample):
    return sample.args[-1] if isinstance(sample.args[-1], int) else None


def _small(entry, sample):
    # ReLU's kink makes finite differences meaningless; maxpool samples have ties on purpose.
    tensors = [sample.args[i] for i in entry.differentiable]
    return (entry.name != "maxpool2x2" and _act(sample) != 2
            and all(t.numel() <= 600 for t in tensors) and sample.args[0].numel() * 25 < 20000)


GRADCHECK, GRADCHECK_IDS = cases(where=_small)


@pytest.mark.parametrize("entry,sample", GRADCHECK, ids=GRADCHECK_IDS)
def test_gradcheck(entry, sample):
    args = list(sample.args)

    def fn(*tensors):
        call = list(args)
        for i, t in zip(entry.differentiable, tensors):
            call[i] = t
        return entry.forward(*call)

    leaves = [args[i].detach().clone().requires_grad_() for i in entry.differentiable]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


def test_maxpool2x2_gradcheck():
    x = torch.randn(2, 3, 7, 6, dtype=D64, requires_grad=True)  # no ties
    assert torch.autograd.gradcheck(ops.maxpool2x2, [x], eps=1e-6, atol=1e-6)


def test_sparse_conv_is_sparse():
    """Table I: 60 kernels -> 1,516 parameters, and unconnected maps do not influence outputs."""
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    assert inp.numel() == 60 and inp.numel() * 25 + 16 == 1516
    x = torch.randn(1, 6, 14, 14, requires_grad=True)
    y = ops.sparse_conv5x5(x, torch.randn(60, 5, 5), torch.randn(16), off, inp, 1)
    (gx,) = torch.autograd.grad(y[0, 0].sum(), x)  # C3 map 0 reads S2 maps 0, 1, 2 only
    assert gx[0, :3].abs().sum() > 0 and gx[0, 3:].abs().sum() == 0


def test_maxpool2x2_ties_and_nan():
    x = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], requires_grad=True)
    ops.maxpool2x2(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    y = ops.maxpool2x2(torch.tensor([[[[1.0, float("nan")], [3.0, 0.0]]]]))
    assert torch.isnan(y).all()


def test_euclidean_rbf_fixed_weights_get_no_grad():
    x, w = torch.randn(2, 84, requires_grad=True), torch.randn(10, 84)
    ops.euclidean_rbf(x, w).sum().backward()
    assert x.grad is not None and w.grad is None


# ---- the Gauss-Newton backward (SDLM): squared activation derivative, squared weights/inputs

@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_gauss_newton_conv_and_full(act):
    for x, w, b, fwd, bwd, ref in [
        (torch.randn(2, 3, 9, 8, dtype=D64), torch.randn(4, 3, 5, 5, dtype=D64), torch.randn(4, dtype=D64),
         ops.conv5x5, ops.conv5x5_backward, F.conv2d),
        (torch.randn(3, 10, dtype=D64), torch.randn(4, 10, dtype=D64), torch.randn(4, dtype=D64),
         ops.full, ops.full_backward, F.linear),
    ]:
        y = fwd(x, w, b, act)
        h = torch.rand_like(y)
        gx, gw, gb = bwd(h, y, x, w, act, True, True)
        x2, w2 = (x * x).requires_grad_(), (w * w).requires_grad_()
        b2 = torch.zeros_like(b, requires_grad=True)
        seed = h * _act_deriv(y, act) ** 2
        rx, rw, rb = torch.autograd.grad(ref(x2, w2, b2), (x2, w2, b2), seed)
        torch.testing.assert_close(gx, rx)
        torch.testing.assert_close(gw, rw)
        torch.testing.assert_close(gb, rb)


def test_gauss_newton_sparse_subsample_rbf():
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    x, w, b = torch.randn(2, 6, 10, 10, dtype=D64), torch.randn(60, 5, 5, dtype=D64), torch.randn(16, dtype=D64)
    y = ops.sparse_conv5x5(x, w, b, off, inp, 1)
    h = torch.rand_like(y)
    gx, gw, gb = ops.sparse_conv5x5_backward(h, y, x, w, off, inp, 1, True, True)
    x2, w2 = (x * x).requires_grad_(), (w * w).requires_grad_()
    rx, rw = torch.autograd.grad(reference.sparse_conv5x5(x2, w2, torch.zeros_like(b), off, inp, 0),
                                 (x2, w2), h * _act_deriv(y, 1) ** 2)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)

    x, c, b = torch.randn(2, 3, 6, 6, dtype=D64), torch.randn(3, dtype=D64), torch.randn(3, dtype=D64)
    y = ops.subsample2x2(x, c, b, 1)
    h = torch.rand_like(y)
    gx, gc, gb = ops.subsample2x2_backward(h, y, x, c, 1, True, True)
    s = F.avg_pool2d(x, 2) * 4
    seed = h * _act_deriv(y, 1) ** 2
    torch.testing.assert_close(gc, (seed * s * s).sum((0, 2, 3)))
    torch.testing.assert_close(gb, seed.sum((0, 2, 3)))
    torch.testing.assert_close(gx, F.interpolate(seed, scale_factor=2) * (c * c).view(1, -1, 1, 1))

    x, w = torch.randn(3, 84, dtype=D64), torch.randn(10, 84, dtype=D64)
    h = torch.rand(3, 10, dtype=D64)
    gx, gw = ops.euclidean_rbf_backward(h, x, w, True, True, True)
    d2 = (2 * (x[:, None, :] - w[None])) ** 2
    torch.testing.assert_close(gx, (h[:, :, None] * d2).sum(1))
    torch.testing.assert_close(gw, (h[:, :, None] * d2).sum(0))


# ---- determinism: weight gradients do not depend on the thread count

def test_gradients_bitwise_independent_of_threads():
    x, w, b = torch.randn(37, 6, 14, 14), torch.randn(16, 6, 5, 5), torch.randn(16)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            xx, ww, bb = (t.clone().requires_grad_() for t in (x, w, b))
            ops.conv5x5(xx, ww, bb, 1).square().sum().backward()
            results.append((xx.grad, ww.grad, bb.grad))
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        for a, b_ in zip(results[0], r):
            assert torch.equal(a, b_)


# ---- opcheck: schema, autograd registration, fake tensors, AOT dispatch -- forward and backward

def _first(entry, act=1):
    return next(s for s in entry.sample_inputs("cpu") if not isinstance(s.args[-1], int) or s.args[-1] == act)


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_opcheck(entry):
    sample = _first(entry)
    args = as_dtype(sample.args, torch.float32, entry.differentiable)
    torch.library.opcheck(entry.op, tuple(args))
    y = entry.forward(*args)
    for gn in (False, True):
        bargs = entry.backward_args(torch.rand_like(y).detach(), y.detach(), as_dtype(sample.args, torch.float32), gn)
        torch.library.opcheck(entry.backward_op, tuple(bargs))


def test_every_op_is_public_and_documented():
    """Forward and backward ops: public names in ops.__all__, with docstrings, and the registered
    op of the same name."""
    for entry in OPS:
        for fn, name in ((entry.forward, entry.name), (entry.backward, entry.name + "_backward")):
            assert name in ops.__all__ and getattr(ops, name) is fn, name
            assert fn.__doc__ and len(fn.__doc__) > 40, name
            assert hasattr(torch.ops.lenet5_fast, name)
    assert all(not n.startswith("_") for n in ops.__all__)


# ---- any strides and memory formats: the same answer as on contiguous inputs, bit for bit

def _strided_variants(t):
    """t's values in other layouts: transposed storage, channels_last, a sliced view with an
    offset, and (for one-element rows) an expanded broadcast."""
    out = []
    if t.dim() >= 2:
        out.append(("transposed", t.transpose(-1, -2).contiguous().transpose(-1, -2)))
    if t.dim() == 4:
        out.append(("channels_last", t.contiguous(memory_format=torch.channels_last)))
    wide = torch.cat([t, t], dim=-1) if t.dim() else t
    out.append(("sliced", wide[..., t.shape[-1]:] if t.dim() else t))
    if t.dim() >= 1 and t.shape[0] > 0:
        out.append(("expanded", t[:1].expand(t.shape)))
    return out


STRIDE_CASES, STRIDE_IDS = cases(where=lambda e, s: s.args[0].numel() <= 3000 and _act(s) in (None, 1))


@pytest.mark.parametrize("entry,sample", STRIDE_CASES, ids=STRIDE_IDS)
def test_any_strides_forward_and_backward(entry, sample):
    """Each differentiable argument, then the incoming gradient, in other layouts: the same
    outputs, bit for bit, always contiguous."""
    args = as_dtype(sample.args, torch.float32)
    y_ref = entry.forward(*args)
    g = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
    for pos in entry.differentiable:
        for how, variant in _strided_variants(args[pos]):
            base, moved = list(args), list(args)
            base[pos], moved[pos] = variant.contiguous(), variant
            want, y = entry.forward(*base), entry.forward(*moved)
            assert y.is_contiguous() and torch.equal(y, want), f"forward, argument {pos} {how}"
            for a, b in zip(entry.backward_outputs(g, y, moved), entry.backward_outputs(g, want, base)):
                assert a.is_contiguous() and torch.equal(a, b), f"backward, argument {pos} {how}"
    for how, g_in in _strided_variants(g):
        got = entry.backward_outputs(g_in, y_ref, args)
        for a, b in zip(got, entry.backward_outputs(g_in.contiguous(), y_ref, args)):
            assert a.is_contiguous() and torch.equal(a, b), f"backward, grad {how}"


def test_transposed_activation_and_channels_last_conv_with_autograd():
    x = torch.randn(5, 7)
    torch.testing.assert_close(ops.activation(x.t(), 1), reference.act(x.t(), 1))
    conv = lenet5_fast.Convolution(3, 4)
    xc = torch.randn(2, 3, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    xp = xc.detach().contiguous().requires_grad_()
    conv(xc).square().sum().backward()
    wg = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(xp).square().sum().backward()
    assert torch.equal(xc.grad, xp.grad) and torch.equal(conv.weight.grad, wg)


# ---- fake kernels: the real kernels' shapes, dtypes and (contiguous) strides

@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_fake_kernels_agree_with_real_ones_on_strided_inputs(entry):
    args = as_dtype(_first(entry).args, torch.float32)
    args[0] = _strided_variants(args[0])[0][1]
    y = entry.op(*args)
    bargs = entry.backward_args(_strided_variants(torch.randn(y.shape))[0][1], y, args, False)
    real = outs(y) + outs(entry.backward_op(*bargs))
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake_bargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in bargs]
        fake = outs(entry.op(*fake_args)) + outs(entry.backward_op(*fake_bargs))
    assert len(real) == len(fake)
    for r, f in zip(real, fake):
        assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())


def outs(o):
    return list(o) if isinstance(o, (tuple, list)) else [o]


# ---- empty batches: empty outputs, empty input gradients, zero parameter gradients

@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_empty_batch(entry, device):
    args = as_dtype(_first(entry).args, torch.float32)
    args[0] = args[0][:0]
    want = entry.reference(*args)
    args = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    leaves = [a.requires_grad_() if i in entry.differentiable else a for i, a in enumerate(args)]
    y = entry.forward(*leaves)
    assert y.shape == want.shape and y.numel() == 0 and y.device.type == device
    if device == "meta":
        return
    grads = torch.autograd.grad(y.sum(), [leaves[i] for i in entry.differentiable])
    for i, g in zip(entry.differentiable, grads):
        assert g.shape == args[i].shape and (g == 0).all()
    for gn in (False, True):
        out = entry.backward_outputs(torch.zeros(y.shape), y.detach(), [a.detach() if isinstance(a, torch.Tensor) else a
                                                                        for a in args], gn)
        for i, g in zip(entry.differentiable, out):
            assert g.shape == args[i].shape and (g == 0).all()


def test_empty_batch_through_layers_and_model():
    for variant in ("classic", "modern"):
        m = lenet5_fast.LeNet5(variant)
        x = torch.randn(0, 1, 32, 32, requires_grad=True)
        out = m(x)
        assert out.shape == (0, 10) == reference.LeNet5(variant)(x.detach()).shape
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert all(p.grad is not None and (p.grad == 0).all() for p in m.parameters() if p.requires_grad)
        with torch.no_grad():
            assert m.predict(x.detach()).shape == (0,)


# ---- the connection table is checked once, not read on every call

def test_connection_table_is_checked_once(monkeypatch):
    layer = lenet5_fast.SparseConvolution(6)
    x = torch.randn(2, 6, 14, 14, requires_grad=True)
    reads = []
    real_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda t, *a, **k: reads.append(t.dtype) or real_cpu(t, *a, **k))
    for _ in range(3):
        layer(x).sum().backward()
    assert reads == []
    # an op called directly with a table it has not seen reads it once, then remembers it
    off, inp = ops.connection_table_to_csr([[0, 1], [1]], 2)
    args = (torch.randn(1, 2, 6, 6), torch.randn(3, 5, 5), torch.randn(2), off, inp)
    ops.sparse_conv5x5(*args)
    first = len(reads)
    ops.sparse_conv5x5(*args)
    assert first > 0 and len(reads) == first
    inp[1] = 5  # changed in place: read again, and refused
    with pytest.raises(ValueError, match="map indices"):
        ops.sparse_conv5x5(*args)


# ---- bad input: clear Python exceptions naming the argument, never a crash

def test_bad_inputs():
    w, b = torch.randn(6, 1, 5, 5), torch.randn(6)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.conv5x5(torch.randn(1, 1, 32, 32).half(), w, b)
    with pytest.raises(TypeError, match="dtype"):
        ops.conv5x5(torch.randn(1, 1, 32, 32, dtype=D64), w, b)
    with pytest.raises((TypeError, RuntimeError), match="Tensor"):  # torch's dispatcher says so first
        ops.conv5x5([[1.0]], w, b)
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.conv5x5(torch.randn(1, 32, 32), w, b)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.conv5x5(torch.randn(1, 2, 32, 32), w, b)
    with pytest.raises(ValueError, match="at least 5x5"):
        ops.conv5x5(torch.randn(1, 1, 4, 32), w, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w, torch.randn(5))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w, b, "sigmoid")
    with pytest.raises(ValueError, match="is on meta"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w.to("meta"), b)
    with pytest.raises(ValueError, match=r"shape \(M, 84\)"):
        ops.euclidean_rbf(torch.randn(2, 84), torch.randn(10, 83))
    with pytest.raises(ValueError, match="coef must have shape"):
        ops.subsample2x2(torch.randn(1, 3, 4, 4), torch.randn(2), torch.randn(3))
    with pytest.raises(ValueError, match="no maps"):
        ops.maxpool2x2(torch.randn(2, 0, 4, 4))


def test_backward_ops_blame_the_wrong_argument():
    """A wrong x is blamed on x (the shapes it must have follow from grad and the weights)."""
    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 5, 5)
    y = ops.conv5x5(x, w, torch.zeros(4), 1)
    for bad in (torch.randn(2, 3, 10, 9), torch.randn(2, 2, 9, 9), torch.randn(3, 3, 9, 9)):
        with pytest.raises(ValueError, match=r"x \(the forward's input\) must have shape \(2, 3, 9, 9\)"):
            ops.conv5x5_backward(y, y, bad, w, 1, False, True)
    with pytest.raises(ValueError, match="y \\(the forward's output\\) must have shape"):
        ops.conv5x5_backward(y, y[:, :, 1:], x, w, 1, False, True)
    xf, wf = torch.randn(3, 7), torch.randn(4, 7)
    yf = ops.full(xf, wf, torch.zeros(4))
    with pytest.raises(ValueError, match=r"x \(the forward's input\) must have shape \(3, 7\)"):
        ops.full_backward(yf, yf, torch.randn(3, 6), wf)
    with pytest.raises(ValueError, match=r"x \(the forward's input\) must have shape \(3, 7\)"):
        ops.euclidean_rbf_backward(torch.randn(3, 4), torch.randn(3, 8), wf)
    xs = torch.randn(2, 3, 8, 8)
    ys = ops.maxpool2x2(xs)
    with pytest.raises(ValueError, match=r"x \(the forward's input\) must have shape \(2, 3, 8 or 9"):
        ops.maxpool2x2_backward(ys, torch.randn(2, 3, 10, 8), ys)
    with pytest.raises(ValueError, match=r"x \(the forward's input\) must have shape \(2, 3, 8 or 9"):
        ops.subsample2x2_backward(ys, ys, torch.randn(2, 4, 8, 8), torch.randn(3))


def test_bad_connection_tables():
    with pytest.raises(ValueError, match="reads no input"):
        ops.connection_table_to_csr([[0], []], 2)
    with pytest.raises(ValueError, match="outside"):
        ops.connection_table_to_csr([[0, 7]], 6)
    with pytest.raises(ValueError, match="twice"):
        ops.connection_table_to_csr([[1, 1]], 6)
    off, inp = ops.connection_table_to_csr([[0, 1]], 2)
    x, w, b = torch.randn(1, 2, 6, 6), torch.randn(2, 5, 5), torch.randn(1)
    with pytest.raises(ValueError, match="map indices"):
        ops.sparse_conv5x5(x, w, b, off, torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(TypeError, match="int32"):
        ops.sparse_conv5x5(x, w, b, off.long(), inp)
    with pytest.raises(ValueError, match="rise from 0"):
        ops.sparse_conv5x5(x, w, b, torch.tensor([0, 3], dtype=torch.int32), inp)
    with pytest.raises(ValueError, match="map indices"):  # a table the layer would read too far
        ops.sparse_conv5x5(torch.randn(1, 1, 6, 6), w, b, off, inp)


def test_cuda_tensor_without_cuda_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_C, "with_cuda", False, raising=False)
    fake = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        ops._launch(fake)


def test_native_shape_structs_refuse_mismatched_shapes():
    """The bindings build each op's shape struct from the input's and output's shapes and refuse
    a pair that does not match (so no kernel is ever handed a size its buffer does not have)."""
    x, y = torch.randn(1, 1, 9, 9), torch.empty(1, 2, 5, 4)
    w, b = torch.randn(2, 1, 5, 5), torch.randn(2)
    with pytest.raises(ValueError, match="do not match"):
        _C.conv5x5_forward(0, False, 1, x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), x.shape, y.shape, 1)
    with pytest.raises(ValueError, match="activation code"):
        _C.conv5x5_forward(0, False, 1, x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), x.shape,
                           (1, 2, 5, 5), 9)
    with pytest.raises(TypeError):  # a shape is a tuple of 4, not loose integers
        _C.conv5x5_forward(0, False, 1, x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), 1, 1, 9, 9, 2, 1)


def test_activation_codes_are_named_once():
    """The codes the kernels take are named in csrc/activations.h; ops.Act and the names are built
    on _C, and "tanh" alone is refused: it could mean torch.tanh or the paper's scaled tanh."""
    assert {a.name.lower(): int(a) for a in ops.Act} == dict(_C.activations)
    assert ops.ACTIVATIONS["plain_tanh"] == ops.Act.PLAIN_TANH and ops.ACTIVATIONS["scaled_tanh"] == ops.Act.SCALED_TANH
    assert ops.SCALED_TANH == pytest.approx((1.7159, 2 / 3))
    x = torch.linspace(-3, 3, 13, dtype=D64)
    torch.testing.assert_close(ops.activation(x, "plain_tanh"), torch.tanh(x))
    torch.testing.assert_close(ops.activation(x, ops.Act.SCALED_TANH), 1.7159 * torch.tanh(x * 2 / 3))
    for call in (lambda: ops.activation(x, "tanh"), lambda: lenet5_fast.Convolution(1, 2, activation="tanh"),
                 lambda: ops.conv5x5(torch.randn(1, 1, 8, 8), torch.randn(2, 1, 5, 5), torch.randn(2), "tanh")):
        with pytest.raises(ValueError, match=r"'tanh' is ambiguous: use 'plain_tanh' \(torch.tanh\) or 'scaled_tanh'"):
            call()

