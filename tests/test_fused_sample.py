"""The per-image fused engine's autograd entry points (csrc/engine/fused_sample.cpp), called through
_C directly: lenet5_sample_forward_save (RBF outputs, and each image's activations saved in a
caller buffer) and lenet5_sample_backward (parameter gradients written to caller buffers, threaded, the same for
any thread count), against
the float64 pure-PyTorch reference network, at every SIMD level the CPU has (and the 16-lane
code on AVX2 registers); plus the Gauss-Newton diagonal's independence of the thread count at
every level."""
import pytest
import torch

from lenet5_fast import LeNet5, _C, fused, reference

ODD_TABLE = [[o % 6] for o in range(8)] + [[5, 0, 3], [1, 4], [2, 3, 4, 5, 0], [0, 2], [4], [1, 3, 5], [3, 2], [0, 1, 2, 3, 4, 5]]
SAVED = _C.lenet5_sample_saved_floats()


def _model(table=None, seed=0):
    torch.manual_seed(seed)
    m = LeNet5(c3_table=table)
    with torch.no_grad():  # nonzero biases and coefficients away from the initial values
        for name, p in m.named_parameters():
            if "bias" in name or "coef" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    return m


def _images(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 32, 32, generator=g) * 1.4 - 0.15


def _params(m):
    return [p for p in m.parameters() if p.requires_grad]


def _net(m):
    """(variant, in_channels, classes, params, codes, offsets, inputs) for _C.lenet5_sample_*."""
    return (0, 1, 10, [p.data_ptr() for p in _params(m)], m.output.weight.data_ptr(), m.c3.table_offsets.data_ptr(),
            m.c3.table_inputs.data_ptr())


def forward_save(m, x, threads=1, saved=None):
    n = x.shape[0]
    out = torch.empty(n, 10)
    if saved is None:
        saved = torch.empty(n, SAVED)
    _C.lenet5_sample_forward_save(*_net(m), x.data_ptr(), out.data_ptr(), saved.data_ptr(), n, threads)
    return out, saved


def backward(m, saved, grad_out, grads=None, threads=1):
    grads = [torch.zeros_like(p) for p in _params(m)] if grads is None else grads
    _C.lenet5_sample_backward(*_net(m), saved.data_ptr(), grad_out.data_ptr(), grad_out.shape[0],
                              [g.data_ptr() for g in grads], threads)
    return grads


def reference_f64(m, x, grad_out):
    """Outputs and parameter gradients of sum(out * grad_out), in float64."""
    r = reference.LeNet5(c3_table=m.c3.table).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    out = r(x.double())
    params = [p for p in r.parameters()]
    grads = torch.autograd.grad((out * grad_out.double()).sum(), params)
    return out.detach(), list(grads)


def _close(a, b, rel, name=""):
    scale = float(b.abs().max().clamp_min(1e-30))
    err = float((a.double() - b).abs().max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x {scale:.3g}"


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("table", [None, ODD_TABLE], ids=["table1", "odd"])
def test_forward_save_and_backward_match_float64_reference(level, n, table):
    m = _model(table)
    x = _images(n)
    grad_out = torch.randn(n, 10, generator=torch.Generator().manual_seed(7))
    ref_out, ref_grads = reference_f64(m, x, grad_out)
    saved = torch.full((n, SAVED), float("nan"))  # garbage in the caller's buffer must not matter
    out, saved = forward_save(m, x, saved=saved)
    _close(out, ref_out, 1e-6, "out")
    plain = torch.empty(n, 10)
    _C.lenet5_forward(*_net(m), x.data_ptr(), plain.data_ptr(), n, 1)
    assert torch.equal(out, plain)  # the same forward as inference
    grads = backward(m, saved, grad_out)
    names = [k for k, p in m.named_parameters() if p.requires_grad]
    for name, g, r in zip(names, grads, ref_grads):
        assert g.shape == r.shape
        assert bool(torch.isfinite(g).all()), name
        _close(g, r, 1e-5, name)


def test_backward_overwrites_the_buffers_and_sums_the_images(level):
    m = _model()
    x = _images(2, seed=3)
    grad_out = torch.randn(2, 10, generator=torch.Generator().manual_seed(8))
    _, saved = forward_save(m, x)
    once = backward(m, saved, grad_out)
    garbage = [torch.full(g.shape, float("nan")) for g in once]  # whatever the buffers held
    again = backward(m, saved, grad_out, garbage)
    for g, a in zip(once, again):
        assert torch.equal(g, a)
    # images are summed: the gradient of two images is the sum of each image's
    per_image = [backward(m, saved[i:i + 1], grad_out[i:i + 1]) for i in range(2)]
    for g, a, b in zip(once, *per_image):
        torch.testing.assert_close(g, a + b, rtol=1e-5, atol=1e-6 * float(g.abs().max()))


def test_backward_is_thread_count_independent(level):
    m = _model()
    x = _images(37, seed=6)
    grad_out = torch.randn(37, 10, generator=torch.Generator().manual_seed(9))
    _, saved = forward_save(m, x, threads=2)
    one = backward(m, saved, grad_out, threads=1)
    for threads in (2, 3):
        for a, b in zip(one, backward(m, saved, grad_out, threads=threads)):
            assert torch.equal(a, b)


def test_forward_save_is_thread_count_independent(level):
    m = _model()
    x = _images(9, seed=4)
    out1, saved1 = forward_save(m, x, threads=1)
    out3, saved3 = forward_save(m, x, threads=3)
    assert torch.equal(out1, out3) and torch.equal(saved1, saved3)


def test_saved_buffer_must_be_aligned():
    m = _model()
    x = _images(1)
    buf = torch.empty(SAVED + 16)
    out = torch.empty(1, 10)
    with pytest.raises(ValueError, match="aligned"):
        _C.lenet5_sample_forward_save(*_net(m), x.data_ptr(), out.data_ptr(), buf.data_ptr() + 4, 1, 1)
    grads = [torch.zeros_like(p) for p in _params(m)]
    with pytest.raises(ValueError, match="aligned"):
        _C.lenet5_sample_backward(*_net(m), buf.data_ptr() + 4, out.data_ptr(), 1, [g.data_ptr() for g in grads], 1)
    assert SAVED > 0 and SAVED % 16 == 0


def test_hessian_is_thread_count_independent_at_every_level(level):
    m = _model()
    x, y = _images(37, seed=5), torch.randint(0, 10, (37,), generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        h1 = fused.sdlm_hessian(m, x, y)
        torch.set_num_threads(3)
        h3 = fused.sdlm_hessian(m, x, y)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(h1, h3))
    assert all(bool((a > 0).any()) for a in h1)
