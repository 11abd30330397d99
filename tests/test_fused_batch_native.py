"""The batched engine with images in the SIMD lanes (csrc/engine/fused_batch.cpp), called through _C
directly: lenet5_batch_forward (outputs, and the activations backward needs in a caller buffer)
and lenet5_batch_backward (every parameter gradient and the input gradient, overwritten),
classic and modern, against a float64 autograd run of the pure-PyTorch reference network, at
every SIMD level the CPU has (and the 16-lane code on AVX2 registers), batches that are and are
not a multiple of the lane count; bitwise independence of the thread count; bad arguments."""
import pytest
import torch

from lenet5_fast import LeNet5, _C, fused, reference

BEST_LEVEL = _C.simd_level()
SPARSE_TABLE = [[0], [1, 2], [3], [4, 5, 0], [4], [2], [5], [1, 3], [0, 4], [2], [3, 5], [1], [4], [0, 5], [2, 3], [1]]
CLASSIC, MODERN = 0, 1


def _model(variant="classic", cin=1, classes=10, table=None, seed=0):
    torch.manual_seed(seed)
    kw = {"c3_table": table} if table is not None else {}
    m = LeNet5(variant, in_channels=cin, num_classes=classes, **kw)
    with torch.no_grad():  # random weights of the right scale, nonzero biases and coefficients
        for name, p in m.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            if "bias" in name or "coef" in name:
                p.copy_(torch.randn(p.shape) * 0.2 + (0.3 if "coef" in name else 0.0))
            else:
                p.copy_(torch.randn(p.shape) * (1.5 / fan_in ** 0.5))
    return m


def _params(m):
    return [p for p in m.parameters() if p.requires_grad]


def _args(m):
    """(variant, in_channels, classes, params, codes, offsets, inputs) for _C.lenet5_batch_*."""
    params = [p.data_ptr() for p in _params(m)]
    if m.variant == "classic":
        return (CLASSIC, m.in_channels, 10, params, m.output.weight.data_ptr(), m.c3.table_offsets.data_ptr(),
                m.c3.table_inputs.data_ptr())
    return (MODERN, m.in_channels, m.num_classes, params, 0, 0, 0)


def _aligned(n):
    buf = torch.empty(n + 16)
    off = (-buf.data_ptr() // 4) % 16
    return buf[off:off + n]


def forward(m, x, threads=1):
    a = _args(m)
    n = x.shape[0]
    out = torch.empty(n, a[2])
    saved = _aligned(_C.lenet5_batch_saved_floats(*a[:3], n)).fill_(float("nan"))  # garbage must not matter
    _C.lenet5_batch_forward(*a, x.data_ptr(), out.data_ptr(), saved.data_ptr(), n, threads)
    return out, saved


def backward(m, x, saved, grad_out, threads=1):
    a = _args(m)
    grads = [torch.full_like(p, float("nan")) for p in _params(m)]  # overwritten, not added to
    gx = torch.full_like(x, float("nan"))
    _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), grad_out.data_ptr(), x.shape[0],
                             [g.data_ptr() for g in grads], gx.data_ptr(), threads)
    return grads, gx


def reference_f64(m, x, grad_out):
    kw = {"c3_table": m.c3.table} if m.variant == "classic" else {}
    r = reference.LeNet5(m.variant, in_channels=m.in_channels, num_classes=m.num_classes, **kw).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    xd = x.double().requires_grad_(True)
    out = r(xd)
    params = [p for p in r.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * grad_out.double()).sum(), params + [xd])
    return out.detach(), list(grads[:-1]), grads[-1]


def _close(a, b, rel, name=""):
    assert a.shape == b.shape, name
    assert bool(torch.isfinite(a).all()), name
    scale = float(b.abs().max().clamp_min(1e-30))
    err = float((a.double() - b).abs().max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def _images(n, cin, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, cin, 32, 32, generator=g) * 1.4 - 0.15


NETS = [("classic", 1, 10, None), ("classic", 3, 10, None), ("classic", 1, 10, SPARSE_TABLE),
        ("modern", 1, 10, None), ("modern", 3, 7, None)]
NET_IDS = ["classic-cin1", "classic-cin3", "classic-sparse", "modern-cin1", "modern-cin3-7cls"]


@pytest.mark.parametrize("n", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("net", NETS, ids=NET_IDS)
def test_matches_float64_reference(level, net, n):
    variant, cin, classes, table = net
    m = _model(variant, cin, classes, table)
    x = _images(n, cin)
    grad_out = torch.randn(n, classes, generator=torch.Generator().manual_seed(7))
    ref_out, ref_grads, ref_gx = reference_f64(m, x, grad_out)
    out, saved = forward(m, x)
    _close(out, ref_out, 1e-5, "out")
    grads, gx = backward(m, x, saved, grad_out)
    names = [k for k, p in m.named_parameters() if p.requires_grad]
    assert len(grads) == len(ref_grads) == (12 if variant == "classic" else 10)
    for name, g, r in zip(names, grads, ref_grads):
        _close(g, r, 1e-4, name)
    _close(gx, ref_gx, 1e-4, "grad_x")


@pytest.mark.parametrize("net", NETS[:1] + NETS[3:4], ids=["classic", "modern"])
def test_bitwise_independent_of_thread_count(level, net):
    variant, cin, classes, table = net
    m = _model(variant, cin, classes, table, seed=3)
    x = _images(77, cin, seed=4)
    grad_out = torch.randn(77, classes, generator=torch.Generator().manual_seed(9))
    results = []
    for threads in (1, 2, 3):
        out, saved = forward(m, x, threads)
        grads, gx = backward(m, x, saved, grad_out, threads)
        results.append((out, saved, grads, gx))
    for out, saved, grads, gx in results[1:]:
        assert torch.equal(out, results[0][0])
        assert torch.equal(gx, results[0][3])
        for a, b in zip(grads, results[0][2]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("n", [1, 9, 20, 33])
def test_forward_writes_every_float_of_saved(level, n):
    """The saved buffer is sized for 16 lanes; at 4 or 8 lanes the forward zeroes what it does not
    use, so the op's `saved` output holds no garbage (opcheck compared it across runs and saw
    uninitialised floats at AVX2)."""
    m = _model("modern", 1, 10)
    _, saved = forward(m, _images(n, 1))
    assert not torch.isnan(saved).any()


def test_grad_x_optional_and_forward_without_saved():
    m = _model("modern", 2, 5)
    x = _images(20, 2)
    out, saved = forward(m, x)
    plain = torch.empty_like(out)
    a = _args(m)
    _C.lenet5_batch_forward(*a, x.data_ptr(), plain.data_ptr(), 0, 20, 2)
    assert torch.equal(out, plain)
    g = torch.randn(20, 5)
    grads, _ = backward(m, x, saved, g)
    only = [torch.empty_like(p) for p in _params(m)]
    _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), g.data_ptr(), 20, [t.data_ptr() for t in only], 0, 1)
    for u, v in zip(only, grads):
        assert torch.equal(u, v)


def test_maxpool_ties_route_to_the_first_maximum():
    """Equal values in a window (ReLU zeros, and an image of constants) take the gradient at the
    window's first element, like lenet5_fast.ops.maxpool2x2."""
    m = _model("modern", 1, 10, seed=5)
    with torch.no_grad():
        m.c1.weight.zero_()  # C1's output is relu(bias): every window a tie
    x = _images(16, 1)
    g = torch.randn(16, 10, generator=torch.Generator().manual_seed(1))
    ref_out, ref_grads, ref_gx = reference_f64(m, x, g)
    out, saved = forward(m, x)
    grads, gx = backward(m, x, saved, g)
    _close(out, ref_out, 1e-5, "out")
    for a, b in zip(grads, ref_grads):
        _close(a, b, 1e-4)
    _close(gx, ref_gx, 1e-4, "input gradient")  # zero: C1's weights are zero
    # ties with C1's weights intact: constant images make every window of every map a tie, and the
    # input gradient (through C1's weights) shows where S2 and S4 routed theirs. Compared with the
    # per-op layers in float64, whose ties are exact too (reference.py's float64 convolution breaks
    # them by rounding, differently at each position)
    m = _model("modern", 1, 10, seed=5)
    x = torch.full((16, 1, 32, 32), 0.3)
    x[8:] = -0.1
    md = _model("modern", 1, 10, seed=5).double()
    xd = x.double().requires_grad_(True)
    with fused.disabled():
        ref_out = md(xd)
    ref_gx, = torch.autograd.grad((ref_out * g.double()).sum(), xd)
    out, saved = forward(m, x)
    grads, gx = backward(m, x, saved, g)
    assert float(ref_gx.abs().max()) > 1e-2
    _close(out, ref_out.detach(), 1e-5, "out")
    _close(gx, ref_gx, 1e-4, "input gradient")


def test_bad_arguments():
    m = _model()
    a = list(_args(m))
    x = _images(2, 1)
    out = torch.empty(2, 10)
    saved = _aligned(_C.lenet5_batch_saved_floats(*a[:3], 2) + 16)
    with pytest.raises(ValueError, match="variant"):
        _C.lenet5_batch_forward(7, *a[1:], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    with pytest.raises(ValueError, match="in_channels"):
        _C.lenet5_batch_forward(a[0], 0, *a[2:], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    # the saved size depends on the sizes only (variant, in_channels, classes): the fake kernel has no tensors
    with pytest.raises(ValueError, match="in_channels"):
        _C.lenet5_batch_saved_floats(a[0], 9, a[2], 2)
    with pytest.raises(ValueError, match="classes"):
        _C.lenet5_batch_saved_floats(a[0], a[1], 9, 2)
    with pytest.raises(ValueError, match="variant"):
        _C.lenet5_batch_saved_floats(2, a[1], a[2], 2)
    with pytest.raises(ValueError, match="classes"):
        _C.lenet5_batch_forward(a[0], a[1], 9, *a[3:], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    with pytest.raises(ValueError, match="aligned"):
        _C.lenet5_batch_forward(*a, x.data_ptr(), out.data_ptr(), saved.data_ptr() + 4, 2, 1)
    with pytest.raises(ValueError, match="parameter addresses"):
        _C.lenet5_batch_forward(a[0], a[1], a[2], a[3][:10], *a[4:], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    bad_off = torch.tensor([0, 3, 2] + [5] * 14, dtype=torch.int32)
    with pytest.raises(ValueError, match="offsets"):
        _C.lenet5_batch_forward(*a[:5], bad_off.data_ptr(), a[6], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    big_off = torch.tensor(list(range(0, 97, 6)) [:16] + [97], dtype=torch.int32)
    with pytest.raises(ValueError, match="offsets"):
        _C.lenet5_batch_forward(*a[:5], big_off.data_ptr(), a[6], x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    bad_inp = m.c3.table_inputs.clone()
    bad_inp[3] = 6
    with pytest.raises(ValueError, match="input 6"):
        _C.lenet5_batch_forward(*a[:6], bad_inp.data_ptr(), x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    # backward: unaligned or foreign saved buffers, wrong number of gradients
    _C.lenet5_batch_forward(*a, x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
    grads = [torch.empty_like(p) for p in _params(m)]
    gp = [g.data_ptr() for g in grads]
    with pytest.raises(ValueError, match="aligned"):
        _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr() + 4, out.data_ptr(), 2, gp, 0, 1)
    with pytest.raises(ValueError, match="saved buffer"):
        _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), out.data_ptr(), 3, gp, 0, 1)
    with pytest.raises(ValueError, match="gradient addresses"):
        _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), out.data_ptr(), 2, gp[:11], 0, 1)
    with pytest.raises(TypeError):
        _C.lenet5_batch_forward(*a, x, out, saved, 2, 1)  # tensors, not addresses
    if BEST_LEVEL >= 1:  # a buffer written at another lane count is refused
        try:
            _C.set_simd_level(0)
            _C.lenet5_batch_forward(*a, x.data_ptr(), out.data_ptr(), saved.data_ptr(), 2, 1)
        finally:
            _C.set_simd_level(-1)
        with pytest.raises(ValueError, match="lanes"):
            _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), out.data_ptr(), 2, gp, 0, 1)


def test_empty_batch():
    m = _model("modern", 1, 10)
    a = _args(m)
    saved = _aligned(_C.lenet5_batch_saved_floats(*a[:3], 0))
    _C.lenet5_batch_forward(*a, 0, 0, saved.data_ptr(), 0, 1)
    grads = [torch.full_like(p, 5.0) for p in _params(m)]
    _C.lenet5_batch_backward(*a, 0, saved.data_ptr(), 0, 0, [g.data_ptr() for g in grads], 0, 1)
    assert all(bool((g == 0).all()) for g in grads)
