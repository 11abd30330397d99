"""The fused classic network (lenet5_fast.fused, csrc/engine/fused_sample.cpp) against the op-by-op
model: forward, the SDLM Gauss-Newton diagonal, a pass of per-sample SDLM updates, at every
SIMD level the CPU has, plus input validation and LeNet5.predict's use of it."""
import copy

import pytest
import torch

from lenet5_fast import LeNet5, fused, ops
from lenet5_fast.layers import PAPER_C3_TABLE

# (simd level, run the AVX-512 path's 16-lane code compiled for AVX2)

# C3 tables other than Table I: every map reads all six inputs (96 kernels), and an irregular one.
FULL_TABLE = [list(range(6))] * 16
ODD_TABLE = [[o % 6] for o in range(8)] + [[5, 0, 3], [1, 4], [2, 3, 4, 5, 0], [0, 2], [4], [1, 3, 5], [3, 2], [0, 1, 2, 3, 4, 5]]


def _model(table=None, seed=0):
    torch.manual_seed(seed)
    return LeNet5(c3_table=table)


def _trainable(m):
    return [p for p in m.parameters() if p.requires_grad]


def _images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=g) * 2.4 - 1.2  # roughly the paper's [-0.1, 1.175] range, wider


def _close(a, b, rel):
    scale = b.abs().max().clamp_min(1e-30)
    torch.testing.assert_close(a, b, rtol=0, atol=rel * float(scale))


# ---------------------------------------------------------------------------------------------
# forward

@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("table", [None, FULL_TABLE, ODD_TABLE], ids=["table1", "full", "odd"])
def test_forward_matches_op_by_op_model(level, n, table):
    m = _model(table)
    x = _images(n)
    with torch.no_grad(), fused.disabled():
        ref = m(x)
    out = fused.forward(m, x)
    assert out.shape == (n, 10) and out.dtype == torch.float32 and not out.requires_grad
    _close(out, ref, 2e-6)


def test_forward_threads_and_non_contiguous_input(level):
    m = _model()
    x = _images(40).transpose(2, 3)  # non-contiguous view
    with torch.no_grad(), fused.disabled():
        ref = m(x.contiguous())
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            _close(fused.forward(m, x), ref, 2e-6)
    finally:
        torch.set_num_threads(threads)


def test_forward_follows_parameter_changes():
    m = _model()
    x = _images(4)
    before = fused.forward(m, x)
    with torch.no_grad(), fused.disabled():
        m.f6.bias.add_(0.5)
        after_ref = m(x)
    after = fused.forward(m, x)
    assert not torch.allclose(before, after)
    _close(after, after_ref, 2e-6)


# ---------------------------------------------------------------------------------------------
# SDLM Gauss-Newton diagonal, computed op by op with the backward kernels in gauss_newton mode

@torch.no_grad()
def gauss_newton_op_by_op(m, x, y):
    layers = m.layers()
    n = x.shape[0]
    ins, outs = [], []
    h = x
    for layer in layers:
        ins.append(h)
        h = layer(h).contiguous()
        outs.append(h)
    out = outs[-1]
    q = torch.softmax(torch.cat([torch.full_like(out[:, :1], -m.map_j), -out], dim=1), dim=1)[:, 1:]
    g, _ = ops.euclidean_rbf_backward((q * (1 - q)).contiguous(), ins[-1].reshape(n, -1).contiguous(),
                                      m.output.weight, True, True, False)
    h = g + 2.0
    terms = {}
    for i in range(5, -1, -1):
        layer, xin, yout = layers[i], ins[i], outs[i]
        h = h.reshape(yout.shape).contiguous()
        if i in (0, 4):
            gi, gw, gb = ops.conv5x5_backward(h, yout, xin, layer.weight, 1, True, i > 0)
            ps = (layer.weight, layer.bias)
        elif i == 2:
            gi, gw, gb = ops.sparse_conv5x5_backward(h, yout, xin, layer.weight, layer.table_offsets,
                                                     layer.table_inputs, 1, True, True)
            ps = (layer.weight, layer.bias)
        elif i in (1, 3):
            gi, gw, gb = ops.subsample2x2_backward(h, yout, xin, layer.coef, 1, True, True)
            ps = (layer.coef, layer.bias)
        else:
            gi, gw, gb = ops.full_backward(h, yout, xin.reshape(n, -1).contiguous(), layer.weight, 1, True, True)
            ps = (layer.weight, layer.bias)
        terms[id(ps[0])], terms[id(ps[1])] = gw, gb
        h = gi.reshape(xin.shape) if i > 0 else None
    return [terms[id(p)] / n for p in _trainable(m)]


@pytest.mark.parametrize("table", [None, ODD_TABLE], ids=["table1", "odd"])
def test_hessian_matches_gauss_newton_ops(level, table):
    m = _model(table)
    m.map_j = 0.5
    x, y = _images(23), torch.randint(0, 10, (23,))
    ref = gauss_newton_op_by_op(m, x, y)
    h = fused.sdlm_hessian(m, x, y)
    assert len(h) == 12
    for (name, p), a, b in zip([(n, p) for n, p in m.named_parameters() if p.requires_grad], h, ref):
        assert a.shape == p.shape and a.dtype == torch.float32, name
        assert bool((a >= 0).all()), name
        _close(a, b, 1e-5)


def test_hessian_does_not_depend_on_thread_count():
    m = _model()
    x, y = _images(37), torch.randint(0, 10, (37,))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        h1 = fused.sdlm_hessian(m, x, y)
        torch.set_num_threads(4)
        h4 = fused.sdlm_hessian(m, x, y)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(h1, h4):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------
# a pass of per-sample SDLM updates == the same updates with autograd, one sample at a time

def sdlm_op_by_op(m, x, y, order, steps):
    total, errors = 0.0, 0
    params = _trainable(m)
    for k in order.tolist():
        out = m(x[k:k + 1])
        loss = m.loss(out, y[k:k + 1])
        errors += int(out.argmin(dim=1).item() != int(y[k]))
        total += loss.item()
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, s in zip(params, grads, steps):
                p -= s * g
    return total, errors


_PASS_CASES = {}


def _pass_case(table):
    """Model, data, steps and the op-by-op result of 20 per-sample updates (cached: the
    reference does not depend on the SIMD level under test)."""
    key = "odd" if table else "table1"
    if key not in _PASS_CASES:
        m = _model(table)
        x, y = _images(16), torch.randint(0, 10, (16,))
        h = gauss_newton_op_by_op(m, x, y)
        steps = [2e-5 / (0.02 + t) for t in h]   # small enough that 20 float32 steps do not diverge
        order = torch.cat([torch.randperm(16), torch.tensor([3, 3, 0, 15])])  # 20 updates, repeats too
        ref_m = copy.deepcopy(m)
        with fused.disabled():
            ref = sdlm_op_by_op(ref_m, x, y, order, steps)
        _PASS_CASES[key] = (m, x, y, order, steps, ref_m, ref)
    return _PASS_CASES[key]


@pytest.mark.parametrize("table", [None, ODD_TABLE], ids=["table1", "odd"])
def test_sdlm_pass_matches_per_sample_autograd(level, table):
    m, x, y, order, steps, ref_m, (ref_loss, ref_errors) = _pass_case(table)
    fused_m = copy.deepcopy(m)
    loss, errors = fused.sdlm_pass(fused_m, x, y, order, steps)
    assert isinstance(loss, float) and isinstance(errors, int)
    assert errors == ref_errors
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for name, p0, pr, pf in zip([n for n, p in m.named_parameters() if p.requires_grad],
                                _trainable(m), _trainable(ref_m), _trainable(fused_m)):
        p0, pr, pf = p0.detach(), pr.detach(), pf.detach()
        moved = (pr - p0).abs().max()
        assert moved > 0, name
        # the accumulated updates agree to float32 rounding of 20 sequential steps
        torch.testing.assert_close(pf - p0, pr - p0, rtol=0, atol=1e-4 * float(moved), msg=name)


def test_sdlm_pass_on_mnist_learns(mnist_dir):
    from lenet5_fast.data import load_tensors

    x, y = load_tensors(mnist_dir, "train", limit=1000)
    m = _model()
    h = fused.sdlm_hessian(m, x[:500], y[:500])
    steps = [2e-5 / (0.02 + t) for t in h]
    loss1, err1 = fused.sdlm_pass(m, x, y, torch.arange(1000), steps)
    loss2, err2 = fused.sdlm_pass(m, x, y, torch.arange(1000), steps)
    assert loss2 < 0.7 * loss1 and err2 < 0.7 * err1
    assert (m.predict(x) == y).float().mean() > 0.7


def test_empty_order_changes_nothing():
    m = _model()
    before = [p.detach().clone() for p in _trainable(m)]
    steps = [torch.full_like(p, 1e-3) for p in _trainable(m)]
    assert fused.sdlm_pass(m, _images(2), torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64), steps) == (0.0, 0)
    assert all(torch.equal(a, b) for a, b in zip(before, _trainable(m)))


# ---------------------------------------------------------------------------------------------
# supports(), predict(), and bad inputs

def test_supports():
    m = _model()
    x = _images(2)
    assert fused.supports(m) and fused.supports(m, x)
    assert fused.supports(LeNet5(variant="modern"))
    assert fused.supports(LeNet5(variant="modern", in_channels=3), torch.zeros(4, 3, 32, 32))
    # no per-image engine: below fused.BATCH_MIN images, the layers are faster
    assert not fused.supports(LeNet5(variant="modern", in_channels=3), torch.zeros(3, 3, 32, 32))
    assert fused.supports(LeNet5(in_channels=3), torch.zeros(4, 3, 32, 32))
    assert not fused.supports(LeNet5(in_channels=3), torch.zeros(1, 3, 32, 32))
    assert not fused.supports(LeNet5(variant="keras"))
    assert not fused.supports(_model().double())
    assert not fused.supports(_model(), x.double())
    assert not fused.supports(_model(), torch.zeros(2, 1, 28, 28))
    assert not fused.supports(_model(), torch.zeros(0, 1, 32, 32))
    assert not fused.supports(_model(), "not a tensor")
    assert not fused.supports(torch.nn.Linear(2, 2))
    frozen = _model()
    frozen.c1.bias.requires_grad_(False)
    assert fused.supports(frozen)  # a frozen parameter just gets no gradient
    fewer_maps = _model(PAPER_C3_TABLE[:10])
    assert not fused.supports(fewer_maps)
    hooked = _model()
    hooked.c3.register_forward_hook(lambda *a: None)  # a hook must see its layer run
    assert not fused.supports(hooked)
    other = _model()
    other.f6 = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(120, 84), torch.nn.Tanh())
    assert not fused.supports(other)
    with fused.disabled():
        assert not fused.supports(m, x)
    assert fused.supports(m, x)


def test_predict_and_forward_use_the_fused_engine(monkeypatch):
    m = _model()
    x = _images(9)
    with torch.no_grad(), fused.disabled():
        expected_out = m(x)
    expected = m.scores(expected_out).argmax(dim=1)
    calls = []
    real = fused._native_forward
    monkeypatch.setattr(fused, "_native_forward", lambda *a: calls.append(1) or real(*a))
    assert torch.equal(m.predict(x), expected) and calls
    calls.clear()
    out = m(x)  # with autograd
    assert calls and out.grad_fn is not None
    _close(out.detach(), expected_out, 2e-6)
    calls.clear()
    m64 = _model().double()
    m64.predict(x.double())  # not supported: the op-by-op path
    assert not calls


def test_bad_inputs_raise_clear_errors():
    m = _model()
    x, y = _images(3), torch.tensor([0, 1, 2])
    steps = [torch.full_like(p, 1e-3) for p in _trainable(m)]
    with pytest.raises(TypeError, match="classic"):
        fused.sdlm_pass(LeNet5(variant="modern"), x, y, torch.tensor([0]), steps)
    with pytest.raises(TypeError, match="variant"):
        fused.forward(LeNet5(variant="keras"), x)
    with pytest.raises(TypeError, match="float32"):
        fused.forward(m, x.double())
    with pytest.raises(ValueError, match=r"\[N, 1, 32, 32\]"):
        fused.forward(m, torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="empty batch"):
        fused.forward(m, torch.zeros(0, 1, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        fused.forward(m, [[0.0]])
    with pytest.raises(ValueError, match="outside"):
        fused.sdlm_hessian(m, x, torch.tensor([0, 10, 1]))
    with pytest.raises(ValueError, match="outside"):
        fused.sdlm_hessian(m, x, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        fused.sdlm_hessian(m, x, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="integer"):
        fused.sdlm_hessian(m, x, torch.tensor([0.0, 1.0, 2.0]))
    before = [p.detach().clone() for p in _trainable(m)]
    with pytest.raises(ValueError, match="order"):
        fused.sdlm_pass(m, x, y, torch.tensor([0, 3]), steps)
    with pytest.raises(ValueError, match="steps"):
        fused.sdlm_pass(m, x, y, torch.tensor([0]), steps[:-1])
    with pytest.raises(ValueError, match="c5.weight"):
        fused.sdlm_pass(m, x, y, torch.tensor([0]), steps[:8] + [steps[8].double()] + steps[9:])
    with pytest.raises(ValueError, match="f6.bias"):
        fused.sdlm_pass(m, x, y, torch.tensor([0]), steps[:11] + [torch.zeros(3)])
    assert all(torch.equal(a, b) for a, b in zip(before, _trainable(m)))  # nothing ran
    broken = _model()
    with torch.no_grad():
        broken.c3.table_inputs[0] = 7  # corrupt the table: caught before any kernel runs
    with pytest.raises(ValueError, match="table"):
        fused.forward(broken, x)
