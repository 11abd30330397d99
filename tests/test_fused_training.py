"""The fused op pair through autograd (lenet5_fast.fused: torch.ops.lenet5_fast.lenet5 and
lenet5_backward), as LeNet5.forward takes it by default: outputs and every gradient against
the float64 pure-PyTorch reference, on both engines (per image and batched), classic and modern
variants, 1 and 3 input channels; bitwise the same for 1, 2 and 3 threads; opcheck; one op
under torch.compile(fullgraph=True); the same training steps as the per-op path with a torch
optimizer; what falls back to the layers."""
import pytest
import torch

from lenet5_fast import LeNet5, fused, reference

ODD_TABLE = [[o % 6] for o in range(8)] + [[5, 0, 3], [1, 4], [2, 3, 4, 5, 0], [0, 2], [4], [1, 3, 5], [3, 2],
                                            [0, 1, 2, 3, 4, 5]]


def _model(variant="classic", cin=1, classes=10, table=None, seed=0):
    torch.manual_seed(seed)
    kw = dict(c3_table=table) if variant == "classic" else dict(num_classes=classes)
    m = LeNet5(variant, in_channels=cin, **kw)
    with torch.no_grad():  # nonzero biases and coefficients away from the initial values
        for name, p in m.named_parameters():
            if "bias" in name or "coef" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    return m


def _images(n, cin=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, cin, 32, 32, generator=g) * 1.4 - 0.15


def _reference_f64(m, x, grad_out):
    kw = dict(c3_table=m.c3.table) if m.variant == "classic" else dict(num_classes=m.num_classes)
    r = reference.LeNet5(m.variant, in_channels=m.in_channels, **kw).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in m.state_dict().items()})
    xd = x.detach().double().requires_grad_(True)
    out = r(xd)
    grads = torch.autograd.grad((out * grad_out.double()).sum(), [xd, *r.parameters()])
    return out.detach(), list(grads)


def _close(a, b, rel, name=""):
    scale = float(b.abs().max().clamp_min(1e-30))
    err = float((a.double() - b).abs().max())
    assert err <= rel * scale, f"{name}: max error {err:.3g} > {rel:g} x {scale:.3g}"


def _fused_grads(m, x, grad_out, input_grad):
    """Outputs and gradients through model(x): the fused node where plan() accepts the batch
    (checked), the layers otherwise (a batch-engine model below fused.BATCH_MIN images)."""
    x = x.clone().requires_grad_(input_grad)
    m.zero_grad(set_to_none=True)
    out = m(x)
    fused_expected = x.shape[0] >= (1 if m.variant == "classic" and m.in_channels == 1 else fused.BATCH_MIN)
    assert (type(out.grad_fn).__name__ == "_EagerBackward") is fused_expected, out.grad_fn
    (out * grad_out).sum().backward()
    return out.detach(), [x.grad] + [p.grad for p in m.parameters()]


CASES = [("classic", 1, 10, None), ("classic", 1, 10, ODD_TABLE), ("classic", 3, 10, None),
         ("modern", 1, 10, None), ("modern", 3, 7, None)]
CASE_IDS = ["classic", "classic-odd-table", "classic-rgb", "modern", "modern-rgb-7"]


@pytest.mark.parametrize("n", [1, 3, 16, 17, 40])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("input_grad", [False, True], ids=["params", "params+input"])
def test_outputs_and_gradients_match_float64_reference(case, n, input_grad):
    variant, cin, classes, table = case
    m = _model(variant, cin, classes, table)
    x = _images(n, cin)
    grad_out = torch.randn(n, classes, generator=torch.Generator().manual_seed(7))
    ref_out, ref_grads = _reference_f64(m, x, grad_out)
    out, grads = _fused_grads(m, x, grad_out, input_grad)
    _close(out, ref_out, 2e-6, "out")
    names = ["input"] + [k for k, _ in m.named_parameters()]
    for name, g, r in zip(names, grads, ref_grads):
        if name == "input" and not input_grad:
            assert g is None
            continue
        assert g is not None and g.shape == r.shape and g.dtype == torch.float32, name
        _close(g, r, 2e-5, name)


@pytest.mark.parametrize("n", [5, 40])
@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["classic", "modern-rgb-7"])
def test_gradients_are_bitwise_the_same_for_any_thread_count(case, n):
    variant, cin, classes, table = case
    m = _model(variant, cin, classes, table)
    x = _images(n, cin)
    grad_out = torch.randn(n, classes, generator=torch.Generator().manual_seed(3))
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(_fused_grads(m, x, grad_out, variant != "classic"))
    finally:
        torch.set_num_threads(threads)
    (out1, g1), *rest = results
    for out, g in rest:
        assert torch.equal(out, out1)
        for a, b in zip(g, g1):
            assert (a is None and b is None) or torch.equal(a, b)


def test_a_torch_optimizer_trains_as_on_the_layers():
    """Ten SGD steps with momentum at batch 32: the fused path and the per-op path end at the
    same weights within float32 rounding."""
    (xa, ya) = _images(320), torch.randint(0, 10, (320,), generator=torch.Generator().manual_seed(2))
    ends = []
    for use_fused in (True, False):
        m = _model()
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
        ctx = fused.disabled() if not use_fused else torch.enable_grad()
        with ctx:
            for i in range(0, 320, 32):
                opt.zero_grad()
                out = m(xa[i:i + 32])
                assert (type(out.grad_fn).__name__ == "_EagerBackward") is use_fused
                m.loss(out, ya[i:i + 32]).backward()
                opt.step()
        ends.append([p.detach().clone() for p in m.parameters()])
    for a, b in zip(*ends):
        _close(a, b, 1e-4)


def test_frozen_parameters_get_no_gradient_and_in_place_changes_are_caught():
    m = _model()
    m.c1.weight.requires_grad_(False)
    x = _images(4)
    out = m(x)
    out.sum().backward()
    assert m.c1.weight.grad is None and m.c1.bias.grad is not None
    out = m(x)
    with torch.no_grad():
        m.f6.weight.mul_(2)  # changed between forward and backward: autograd must refuse
    with pytest.raises(RuntimeError, match="inplace"):
        out.sum().backward()


def test_what_falls_back_to_the_layers():
    m = _model()
    assert fused.run(m, torch.zeros(0, 1, 32, 32)) is None  # empty batch: the layers give [0, 10]
    assert m(torch.zeros(0, 1, 32, 32)).shape == (0, 10)
    assert fused.run(m, _images(2).double()) is None
    with fused.disabled():
        assert fused.run(m, _images(2)) is None
    hooked = _model()
    seen = []
    hooked.c3.register_forward_hook(lambda mod, i, o: seen.append(o.shape))
    hooked(_images(2))
    assert seen == [(2, 16, 10, 10)]  # the hook saw its layer run
    assert fused.run(_model("keras"), _images(2)) is None
    m = _model()
    assert fused.plan(m, _images(2)) is not None
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, i, o: seen.append(type(mod)))
    try:
        assert fused.plan(m, _images(2)) is None  # a global hook must see every layer run
    finally:
        handle.remove()
    assert fused.plan(m, _images(2)) is not None


@pytest.mark.parametrize("variant,engine", [("classic", fused.SAMPLE), ("classic", fused.BATCH), ("modern", fused.BATCH)])
def test_opcheck(variant, engine):
    m = _model(variant)
    n = 3 if engine == fused.SAMPLE else 20
    x = _images(n).requires_grad_(engine == fused.BATCH)
    net = fused._net(m, "test")
    args = (x, net.params, net.codes, net.offsets, net.inputs, net.code, engine)
    torch.library.opcheck(fused.lenet5, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration",
                                                          "test_aot_dispatch_dynamic"))


def test_compile_fullgraph_sees_one_op():
    m = _model()
    x = _images(8)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(m, backend=backend, fullgraph=True, dynamic=False)
    out = compiled(x)
    with fused.disabled():
        ref = m(x)
    _close(out.detach(), ref.detach(), 2e-6)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    ours = [t for t in targets if "lenet5_fast" in t]
    assert ours == ["lenet5_fast.lenet5.default"] or ours == ["lenet5_fast::lenet5"], targets
    out.sum().backward()  # through the registered autograd formula
    assert all(p.grad is not None for p in m.parameters())


def test_compile_trains_like_eager():
    m = _model()
    x, y = _images(16), torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(4))
    m.loss(m(x), y).backward()
    eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True, dynamic=False)
    m.loss(compiled(x), y).backward()
    for a, b in zip(eager, [p.grad for p in m.parameters()]):
        assert torch.equal(a, b)


def test_import_leaves_the_openmp_policy_alone():
    """Importing the package changes nothing process-wide (OpenMP's wait policy is the user's:
    README "Training speed" measures both)."""
    import os
    import subprocess
    import sys

    code = "import lenet5_fast, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "None", out.stderr


def test_every_public_name_is_importable():
    import lenet5_fast

    missing = [n for n in lenet5_fast.__all__ if not hasattr(lenet5_fast, n)]
    assert not missing


def test_path_says_which_engine_runs():
    m, modern = _model(), _model("modern")
    assert fused.path(m, _images(1)) == "per-image" and fused.path(m, _images(1).requires_grad_()) == "batch"
    assert fused.path(m, _images(fused.SAMPLE_MAX_BATCH)) == "batch"
    assert fused.path(m, _images(100), grad=False) == "batch" and fused.path(m, _images(1), grad=False) == "per-image"
    assert fused.path(modern, _images(fused.BATCH_MIN - 1)) == "layers"
    assert fused.path(modern, _images(fused.BATCH_MIN)) == "batch"
    with fused.disabled():
        assert fused.path(m, _images(1)) == "layers"
