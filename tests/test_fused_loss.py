"""The loss inside the fused op (lenet5_fast.fused: torch.ops.lenet5_fast.lenet5_loss, and
LeNet5.loss_of): the engines compute the MAP criterion (classic) or cross-entropy (modern) at the
end of their forward and every gradient right after; backward only scales them. Loss, outputs and
every gradient against the float64 pure-PyTorch reference, on both engines (per image and
batched), every SIMD level, odd batch sizes from 1; the same numbers as model.loss(model(x), y);
bitwise the same for 1, 2 and 3 threads; opcheck; one op under torch.compile(fullgraph=True); RBF
distances and logits in the hundreds; what falls back; the trainer takes it."""
import pytest
import torch
import torch.nn.functional as F

from lenet5_fast import LeNet5, fused, reference
from lenet5_fast.model import map_loss

ODD_TABLE = [[o % 6] for o in range(8)] + [[5, 0, 3], [1, 4], [2, 3, 4, 5, 0], [0, 2], [4], [1, 3, 5], [3, 2],
                                            [0, 1, 2, 3, 4, 5]]
CASES = [("classic", 1, 10, None), ("classic", 1, 10, ODD_TABLE), ("classic", 3, 10, None),
         ("modern", 1, 10, None), ("modern", 3, 7, None)]
CASE_IDS = ["classic", "classic-odd-table", "classic-rgb", "modern", "modern-rgb-7"]


def _model(variant="classic", cin=1, classes=10, table=None, seed=0):
    torch.manual_seed(seed)
    kw = dict(c3_table=table) if variant == "classic" else dict(num_classes=classes)
    m = LeNet5(variant, in_channels=cin, **kw)
    with torch.no_grad():  # nonzero biases and coefficients away from the initial values
        for name, p in m.named_parameters():
            if "bias" in name or "coef" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    return m


def _data(n, cin=1, classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, cin, 32, 32, generator=g) * 1.4 - 0.15, torch.randint(0, classes, (n,), generator=g)


def _reference_f64(m, x, y, reduction, input_grad):
    kw = dict(c3_table=m.c3.table) if m.variant == "classic" else dict(num_classes=m.num_classes)
    r = reference.LeNet5(m.variant, in_channels=m.in_channels, **kw).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    xd = x.detach().double().requires_grad_(input_grad)
    out = r(xd)
    loss = map_loss(out, y, m.map_j, reduction) if m.variant == "classic" else F.cross_entropy(out, y, reduction=reduction)
    wrt = ([xd] if input_grad else []) + list(r.parameters())
    grads = torch.autograd.grad(loss, wrt)
    return loss.detach(), out.detach(), ([None] if not input_grad else []) + list(grads)


def _close(a, b, rel, name=""):
    scale = float(b.abs().max().clamp_min(1e-30))
    err = float((a.double() - b).abs().max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def _fused(m, x, y, reduction="mean", input_grad=False, expect_fused=True):
    x = x.clone().requires_grad_(input_grad)
    m.zero_grad(set_to_none=True)
    loss, out = m.loss_of(x, y, reduction, outputs=True)
    assert (type(loss.grad_fn).__name__ == "_EagerLossBackward") is expect_fused, loss.grad_fn
    assert not out.requires_grad
    loss.backward()
    return loss.detach(), out, [x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("n", [1, 3, 7, 17, 40])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("input_grad", [False, True], ids=["params", "params+input"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_and_gradients_match_float64_reference(case, n, input_grad, reduction):
    variant, cin, classes, table = case
    m = _model(variant, cin, classes, table)
    x, y = _data(n, cin, classes)
    expect = n >= (1 if variant == "classic" and cin == 1 else fused.BATCH_MIN)
    loss, out, grads = _fused(m, x, y, reduction, input_grad, expect)
    ref_loss, ref_out, ref_grads = _reference_f64(m, x, y, reduction, input_grad)
    _close(loss, ref_loss, 2e-6, "loss")
    _close(out, ref_out, 2e-6, "out")
    names = ["input"] + [k for k, _ in m.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        if r is None:
            assert g is None, name
            continue
        assert g is not None and g.shape == r.shape and g.dtype == torch.float32, name
        _close(g, r, 2e-5, name)


@pytest.mark.parametrize("variant,n,input_grad", [("classic", 3, False), ("classic", 21, False),
                                                  ("classic", 9, True), ("modern", 21, False)],
                         ids=["classic-per-image", "classic-batch", "classic-batch-input", "modern-batch"])
def test_every_engine_at_every_simd_level(level, variant, n, input_grad):
    m = _model(variant)
    x, y = _data(n)
    want = "per-image" if variant == "classic" and n < fused.SAMPLE_MAX_BATCH and not input_grad else "batch"
    assert fused.path(m, x.clone().requires_grad_(input_grad)) == want
    loss, out, grads = _fused(m, x, y, "mean", input_grad)
    ref_loss, ref_out, ref_grads = _reference_f64(m, x, y, "mean", input_grad)
    _close(loss, ref_loss, 2e-6, "loss")
    _close(out, ref_out, 2e-6, "out")
    for g, r in zip(grads, ref_grads):
        if r is not None:
            _close(g, r, 2e-5)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=["classic", "modern"])
@pytest.mark.parametrize("n", [1, 5, 33])
def test_same_numbers_as_loss_of_the_forward(case, n):
    """model.loss_of(x, y) is model.loss(model(x), y): same value and gradients within float32
    rounding (the per-op path sums in another order)."""
    variant, cin, classes, table = case
    m = _model(variant, cin, classes, table)
    x, y = _data(n, cin, classes)
    expect = n >= (1 if variant == "classic" else fused.BATCH_MIN)
    loss, out, grads = _fused(m, x, y, "mean", False, expect)
    m.zero_grad(set_to_none=True)
    out2 = m(x)
    loss2 = m.loss(out2, y)
    loss2.backward()
    assert torch.allclose(loss, loss2.detach(), rtol=1e-6, atol=0)
    assert torch.allclose(out, out2.detach(), rtol=1e-6, atol=1e-6)
    for g, p in zip(grads[1:], m.parameters()):
        _close(g, p.grad.double(), 1e-5)


@pytest.mark.parametrize("n", [5, 40])
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["classic", "modern-rgb-7"])
def test_bitwise_the_same_for_any_thread_count(case, n):
    variant, cin, classes, table = case
    m = _model(variant, cin, classes, table)
    x, y = _data(n, cin, classes)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(_fused(m, x, y, "mean", variant != "classic", n >= fused.BATCH_MIN or variant == "classic"))
    finally:
        torch.set_num_threads(threads)
    (loss1, out1, g1), *rest = results
    for loss, out, g in rest:
        assert torch.equal(loss, loss1) and torch.equal(out, out1)
        for a, b in zip(g, g1):
            assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_outputs_in_the_hundreds(variant):
    """RBF distances in the hundreds (codes +-2 against F6 outputs within +-1.72) and logits of
    +-300: the loss and gradients stay finite and match float64 (no overflow; terms like e^-300
    count as 0 instead of passing through denormals)."""
    m = _model(variant)
    with torch.no_grad():
        if variant == "classic":
            m.output.weight.mul_(2.0)
        else:
            m.output.bias.copy_(torch.linspace(-300.0, 300.0, 10))
    x, y = _data(24)
    loss, out, grads = _fused(m, x, y)
    assert float(out.abs().max()) > 150, float(out.abs().max())
    ref_loss, _, ref_grads = _reference_f64(m, x, y, "mean", False)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads[1:])
    _close(loss, ref_loss, 2e-6, "loss")
    for g, r in zip(grads[1:], ref_grads[1:]):
        _close(g, r, 2e-5)


def test_backward_scales_the_gradients_and_can_run_twice():
    m = _model()
    x, y = _data(20)
    loss = m.loss_of(x, y)
    loss.backward(retain_graph=True)
    once = [p.grad.clone() for p in m.parameters()]
    (loss * 3.0).backward()
    for a, p in zip(once, m.parameters()):
        assert torch.allclose(p.grad, 4.0 * a, rtol=1e-6, atol=1e-12)


def test_frozen_parameters_get_no_gradient():
    m = _model()
    m.c1.weight.requires_grad_(False)
    x, y = _data(12)
    m.loss_of(x, y).backward()
    assert m.c1.weight.grad is None and m.c1.bias.grad is not None


def test_what_falls_back_and_bad_labels():
    m = _model()
    x, y = _data(9)
    with torch.no_grad():
        assert fused.run_loss(m, x, y) is None
        assert torch.equal(m.loss_of(x, y), m.loss(m(x), y))
    assert fused.run_loss(m, x, y, "none") is None
    assert m.loss_of(x, y, "none").shape == (9,)
    with fused.disabled():
        assert fused.run_loss(m, x, y) is None
        assert m.loss_of(x, y).grad_fn is not None
    assert fused.run_loss(_model("keras"), x, y) is None
    assert fused.run_loss(m, x.double(), y) is None
    with pytest.raises(ValueError, match="label 10 at index 0 is outside"):
        m.loss_of(x, torch.full((9,), 10))
    with pytest.raises(ValueError, match=r"target must have shape \[9\]"):
        m.loss_of(x, y[:4])
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        m.loss_of(x, y.float())
    with pytest.raises(ValueError, match="label -1 at index 0 is outside"):
        _model("modern").loss_of(x, torch.full((9,), -1))


@pytest.mark.parametrize("variant,engine,n", [("classic", fused.SAMPLE, 3), ("classic", fused.BATCH, 20),
                                              ("modern", fused.BATCH, 20)])
def test_opcheck(variant, engine, n):
    m = _model(variant)
    x, y = _data(n)
    x.requires_grad_(engine == fused.BATCH)
    net = fused._net(m, "test")
    args = (x, y, net.params, net.codes, net.offsets, net.inputs, net.code, engine, 1.0, True, engine == fused.BATCH)
    torch.library.opcheck(fused.lenet5_loss, args, test_utils=("test_schema", "test_faketensor",
                                                               "test_autograd_registration", "test_aot_dispatch_dynamic"))


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_compile_fullgraph_sees_one_op_and_trains_like_eager(variant):
    m = _model(variant)
    x, y = _data(16)
    m.loss_of(x, y).backward()
    eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    step = torch.compile(lambda a, b: m.loss_of(a, b), backend=backend, fullgraph=True, dynamic=False)
    step(x, y).backward()
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    ours = [t for t in targets if "lenet5_fast" in t]
    assert ours in (["lenet5_fast.lenet5_loss.default"], ["lenet5_fast::lenet5_loss"]), targets
    for a, p in zip(eager, m.parameters()):
        assert torch.equal(a, p.grad)


def test_the_trainer_takes_the_fused_loss(monkeypatch):
    from lenet5_fast import train

    calls = []
    real = fused.run_loss

    def counting(*a, **k):
        got = real(*a, **k)
        calls.append(got is not None)
        return got

    monkeypatch.setattr(fused, "run_loss", counting)
    x, y = _data(64)
    cfg = train.TrainConfig(epochs=1, optimizer="sgd", batch_size=16)
    m = train.init_weights(LeNet5(), "paper")
    opt = train.make_optimizer(m, cfg)
    loss, errors, was_fused = train.run_pass(m, opt, x, y, torch.arange(64), cfg)
    assert was_fused and calls == [True] * 4
    assert 0 < loss and 0 <= errors <= 64
