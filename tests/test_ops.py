"""Every native op against a float64 pure-PyTorch reference: values (float32 and float64),
gradients, gradcheck, the Gauss-Newton backward, opcheck, and bad-input errors."""
import types

import pytest
import torch
import torch.nn.functional as F

from lenet5_fast import _C, ops, reference
from lenet5_fast.layers import PAPER_C3_TABLE

D64 = torch.float64
ACTS = [0, 1, 2, 3]


def _act_deriv(y, act):
    if act == 1:
        return (2.0 / 3.0) * (1.7159 - y * y / 1.7159)
    if act == 2:
        return (y > 0).to(y.dtype)
    if act == 3:
        return 1 - y * y
    return torch.ones_like(y)


def _check_op(native, ref, inputs, grad_idx, rtol32=2e-5, atol32=2e-5):
    """native(*inputs) vs ref(*inputs in float64), values and gradients, in float32 and float64."""
    ref_in = [t.detach().to(D64).requires_grad_(i in grad_idx) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
              for i, t in enumerate(inputs)]
    want = ref(*ref_in)
    g = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, [ref_in[i] for i in grad_idx], g)
    for dtype, rtol, atol in ((D64, 1e-10, 1e-10), (torch.float32, rtol32, atol32)):
        nat_in = [t.detach().to(dtype).requires_grad_(i in grad_idx) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                  for i, t in enumerate(inputs)]
        got = native(*nat_in)
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got.to(D64), want.detach(), rtol=rtol, atol=atol * max(1.0, want.abs().max().item()))
        got_grads = torch.autograd.grad(got, [nat_in[i] for i in grad_idx], g.to(dtype))
        for a, b in zip(got_grads, want_grads):
            torch.testing.assert_close(a.to(D64), b, rtol=rtol * 10, atol=atol * 10 * max(1.0, b.abs().max().item()))


def _gradcheck(fn, inputs, grad_idx):
    args = [t.detach().to(D64).requires_grad_(i in grad_idx) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for i, t in enumerate(inputs)]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


CONV_SHAPES = [(1, 1, 32, 32, 6), (3, 6, 14, 14, 16), (2, 16, 5, 5, 120), (1, 3, 9, 7, 2), (5, 2, 6, 11, 3)]


@pytest.mark.parametrize("N,C,H,W,O", CONV_SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_conv5x5(N, C, H, W, O, act):
    x, w, b = torch.randn(N, C, H, W), torch.randn(O, C, 5, 5) * 0.3, torch.randn(O)
    _check_op(ops.conv5x5, lambda *a: reference.conv5x5(*a), [x, w, b, act], [0, 1, 2])


@pytest.mark.parametrize("N,C,H,W,O", [(1, 1, 9, 8, 2), (2, 3, 7, 6, 2), (2, 4, 5, 5, 3)])
def test_conv5x5_gradcheck(N, C, H, W, O):
    x, w, b = torch.randn(N, C, H, W), torch.randn(O, C, 5, 5) * 0.3, torch.randn(O)
    _gradcheck(lambda x, w, b: ops.conv5x5(x, w, b, 1), [x, w, b], [0, 1, 2])


TABLES = [PAPER_C3_TABLE, ((0,), (1, 2), (2, 0, 1)), ((1,),)]


@pytest.mark.parametrize("table", TABLES, ids=["tableI", "small", "one"])
@pytest.mark.parametrize("N,H,W", [(1, 14, 14), (4, 10, 13), (2, 5, 5)])
@pytest.mark.parametrize("act", ACTS)
def test_sparse_conv5x5(table, N, H, W, act):
    C = 6 if table is PAPER_C3_TABLE else 3
    off, inp = ops.connection_table_to_csr(table, C)
    x, w, b = torch.randn(N, C, H, W), torch.randn(inp.numel(), 5, 5) * 0.3, torch.randn(off.numel() - 1)
    _check_op(lambda x, w, b: ops.sparse_conv5x5(x, w, b, off, inp, act),
              lambda x, w, b: reference.sparse_conv5x5(x, w, b, off, inp, act), [x, w, b], [0, 1, 2])


@pytest.mark.parametrize("N", [1, 3])
def test_sparse_conv5x5_gradcheck(N):
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    x, w, b = torch.randn(N, 6, 7, 6), torch.randn(60, 5, 5) * 0.3, torch.randn(16)
    _gradcheck(lambda x, w, b: ops.sparse_conv5x5(x, w, b, off, inp, 1), [x, w, b], [0, 1, 2])


def test_sparse_conv_is_sparse():
    """Table I: 60 kernels -> 1,516 parameters, and unconnected maps do not influence outputs."""
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    assert inp.numel() == 60 and inp.numel() * 25 + 16 == 1516
    x = torch.randn(1, 6, 14, 14, requires_grad=True)
    y = ops.sparse_conv5x5(x, torch.randn(60, 5, 5), torch.randn(16), off, inp, 1)
    (gx,) = torch.autograd.grad(y[0, 0].sum(), x)  # C3 map 0 reads S2 maps 0, 1, 2 only
    assert gx[0, :3].abs().sum() > 0 and gx[0, 3:].abs().sum() == 0


SUB_SHAPES = [(1, 6, 28, 28), (3, 16, 10, 10), (2, 2, 7, 5), (1, 1, 2, 2)]


@pytest.mark.parametrize("N,C,H,W", SUB_SHAPES)
@pytest.mark.parametrize("act", ACTS)
def test_subsample2x2(N, C, H, W, act):
    x, c, b = torch.randn(N, C, H, W), torch.randn(C), torch.randn(C)
    _check_op(ops.subsample2x2, reference.subsample2x2, [x, c, b, act], [0, 1, 2])
    if x.numel() <= 600 and act != 2:  # ReLU's kink makes finite differences meaningless
        _gradcheck(lambda x, c, b: ops.subsample2x2(x, c, b, act), [x, c, b], [0, 1, 2])


@pytest.mark.parametrize("N,C,H,W", SUB_SHAPES)
def test_maxpool2x2(N, C, H, W):
    x = torch.randn(N, C, H, W)
    _check_op(ops.maxpool2x2, lambda x: F.max_pool2d(x, 2), [x], [0])
    if x.numel() <= 600:
        _gradcheck(ops.maxpool2x2, [x], [0])


def test_maxpool2x2_ties_and_nan():
    x = torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]]], requires_grad=True)
    ops.maxpool2x2(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    y = ops.maxpool2x2(torch.tensor([[[[1.0, float("nan")], [3.0, 0.0]]]]))
    assert torch.isnan(y).all()


@pytest.mark.parametrize("N,D,O", [(1, 120, 84), (7, 84, 10), (2, 3, 1), (33, 16, 5)])
@pytest.mark.parametrize("act", ACTS)
def test_full(N, D, O, act):
    x, w, b = torch.randn(N, D), torch.randn(O, D) * 0.2, torch.randn(O)
    _check_op(ops.full, reference.full, [x, w, b, act], [0, 1, 2])
    if N * D * O < 5000:
        _gradcheck(lambda x, w, b: ops.full(x, w, b, 1), [x, w, b], [0, 1, 2])


@pytest.mark.parametrize("N,D,M", [(1, 84, 10), (5, 84, 10), (3, 7, 4), (40, 2, 3)])
def test_euclidean_rbf(N, D, M):
    x, w = torch.randn(N, D), torch.randn(M, D)
    _check_op(ops.euclidean_rbf, reference.euclidean_rbf, [x, w], [0, 1], rtol32=1e-5, atol32=1e-5)
    _gradcheck(ops.euclidean_rbf, [x[:, :8], w[:, :8]], [0, 1])


def test_euclidean_rbf_fixed_weights_get_no_grad():
    x, w = torch.randn(2, 84, requires_grad=True), torch.randn(10, 84)
    ops.euclidean_rbf(x, w).sum().backward()
    assert x.grad is not None and w.grad is None


@pytest.mark.parametrize("shape", [(1,), (3, 5), (2, 6, 7, 9)])
@pytest.mark.parametrize("act", [1, 2, 3])
def test_activation(shape, act):
    x = torch.randn(shape)
    _check_op(lambda x: ops.activation(x, act), lambda x: reference.act(x, act), [x], [0])
    _gradcheck(lambda x: ops.activation(x, act), [x], [0])


# ---- the Gauss-Newton backward (SDLM): squared activation derivative, squared weights/inputs

@pytest.mark.parametrize("act", ACTS)
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


# ---- opcheck: schema, autograd registration, fake tensors, AOT dispatch

def _opcheck_cases():
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    r = torch.randn
    yield "conv5x5", torch.ops.lenet5_fast.conv5x5, (r(2, 3, 9, 9), r(4, 3, 5, 5), r(4), 1)
    yield "sparse", torch.ops.lenet5_fast.sparse_conv5x5, (r(2, 6, 10, 10), r(60, 5, 5), r(16), off, inp, 1)
    yield "subsample", torch.ops.lenet5_fast.subsample2x2, (r(2, 3, 8, 8), r(3), r(3), 1)
    yield "maxpool", torch.ops.lenet5_fast.maxpool2x2, (r(2, 3, 8, 8),)
    yield "full", torch.ops.lenet5_fast.full, (r(3, 12), r(5, 12), r(5), 1)
    yield "rbf", torch.ops.lenet5_fast.euclidean_rbf, (r(3, 84), r(10, 84))
    yield "activation", torch.ops.lenet5_fast.activation, (r(3, 5), 1)
    yield "conv5x5_backward", torch.ops.lenet5_fast.conv5x5_backward, (r(2, 4, 5, 5), r(2, 4, 5, 5), r(2, 3, 9, 9), r(4, 3, 5, 5), 1, False, True)
    yield "sparse_backward", torch.ops.lenet5_fast.sparse_conv5x5_backward, (r(2, 16, 6, 6), r(2, 16, 6, 6), r(2, 6, 10, 10), r(60, 5, 5), off, inp, 1, True, False)
    yield "subsample_backward", torch.ops.lenet5_fast.subsample2x2_backward, (r(2, 3, 4, 4), r(2, 3, 4, 4), r(2, 3, 8, 8), r(3), 1, False, True)
    yield "maxpool_backward", torch.ops.lenet5_fast.maxpool2x2_backward, (r(2, 3, 4, 4), r(2, 3, 8, 8), r(2, 3, 4, 4))
    yield "full_backward", torch.ops.lenet5_fast.full_backward, (r(3, 5), r(3, 5), r(3, 12), r(5, 12), 1, False, True)
    yield "rbf_backward", torch.ops.lenet5_fast.euclidean_rbf_backward, (r(3, 10), r(3, 84), r(10, 84), False, True, False)
    yield "activation_backward", torch.ops.lenet5_fast.activation_backward, (r(3, 5), r(3, 5), 1, True)


@pytest.mark.parametrize("name,op,args", list(_opcheck_cases()), ids=[c[0] for c in _opcheck_cases()])
def test_opcheck(name, op, args):
    if "backward" not in name:
        args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    torch.library.opcheck(op, args)


# ---- bad input: clear Python exceptions, never a crash

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
    with pytest.raises(ValueError, match="contiguous"):
        ops.conv5x5(torch.randn(1, 1, 32, 32).transpose(2, 3), w, b)
    with pytest.raises(ValueError, match="empty batch"):
        ops.conv5x5(torch.randn(0, 1, 32, 32), w, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w, torch.randn(5))
    with pytest.raises(ValueError, match="unknown activation"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w, b, "sigmoid")
    with pytest.raises(ValueError, match="is on meta"):
        ops.conv5x5(torch.randn(1, 1, 32, 32), w.to("meta"), b)
    with pytest.raises(ValueError, match="empty"):
        ops.activation(torch.randn(0))
    with pytest.raises(ValueError, match=r"shape \(M, 84\)"):
        ops.euclidean_rbf(torch.randn(2, 84), torch.randn(10, 83))
    with pytest.raises(ValueError, match="coef must have shape"):
        ops.subsample2x2(torch.randn(1, 3, 4, 4), torch.randn(2), torch.randn(3))


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


def test_cuda_tensor_without_cuda_kernels_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(_C, "with_cuda", False, raising=False)
    fake = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cuda", 0))
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        ops._launch(fake)
