"""Second-order gradients are correct, never a silent zero (issue 24 item 3). A backward run
with ``create_graph=True`` computes the gradient differentiably (the op's forward recomputed in
standard torch operators, its decomposition, and differentiated by autograd), in the eager fast
path, through the registered ops' autograd formulas, and through the fused LeNet5 op.
Before: ``grad(grad(activation(a, 3).sum(), a, create_graph=True)[0].sum(), a)`` gave zeros,
``gradgradcheck`` failed on every op, and a gradient penalty through LeNet5 added nothing."""
import contextlib

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import lenet5_fast as L
from lenet5_fast import fused, ops, reference

from op_table import OPS, as_dtype, cases

def _smallest_per_activation():
    """Each op's smallest sample for every activation code it takes (gradgradcheck perturbs every
    element of the differentiable inputs)."""
    every, _ = cases()
    best = {}
    for e, s in every:
        key = (e.name, s.args[-1] if isinstance(s.args[-1], int) else None)
        size = sum(s.args[i].numel() for i in e.differentiable)
        if key not in best or size < best[key][0]:
            best[key] = (size, e, s)
    chosen = [(e, s) for _, e, s in best.values()]
    return chosen, [f"{e.name}-{s.name}" for e, s in chosen]


CASES, IDS = _smallest_per_activation()


def _leaves(entry, sample):
    args = as_dtype(sample.args, torch.float64, entry.differentiable)
    if entry.name == "maxpool2x2":  # the samples' ties make the first derivative jump under perturbation
        args[0] = torch.randn(args[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        args[0].requires_grad_(True)
    return args


@pytest.mark.parametrize("path", ["eager", "registered"])
@pytest.mark.parametrize("entry,sample", CASES, ids=IDS)
def test_gradgradcheck(entry, sample, path):
    args = _leaves(entry, sample)
    leaves = [args[i] for i in entry.differentiable]
    call = entry.forward if path == "eager" else entry.op

    def fn(*ls):
        a = list(args)
        for i, t in zip(entry.differentiable, ls):
            a[i] = t
        return call(*a)

    assert gradgradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_every_op_of_the_table_is_checked():
    assert {e.name for e, _ in CASES} == {e.name for e in OPS}


def test_the_issues_plain_tanh_example():
    a = torch.tensor([0.3, -0.7], requires_grad=True)
    g, = torch.autograd.grad(ops.activation(a, 3).sum(), a, create_graph=True)
    gg, = torch.autograd.grad(g.sum(), a)
    want = -2 * torch.tanh(a) * (1 - torch.tanh(a) ** 2)
    torch.testing.assert_close(gg, want.detach())
    assert gg.abs().min() > 0.5


def test_second_order_through_layers_next_to_torch_layers():
    torch.manual_seed(0)
    net = torch.nn.Sequential(L.Convolution(1, 4), torch.nn.Tanh(), L.Subsampling(4), torch.nn.Flatten(),
                              L.FullConnection(4 * 14 * 14, 3)).double()
    ref = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 5), torch.nn.Tanh())
    x = torch.randn(2, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    out = net(x)
    g, = torch.autograd.grad(out.sum(), x, create_graph=True)
    (out.pow(2).sum() + g.pow(2).sum()).backward()
    got = net[0].weight.grad.clone()
    # the same network in standard operators
    del ref
    w = net[0].weight.detach().clone().requires_grad_(True)
    h = reference.act(torch.nn.functional.conv2d(x, w, net[0].bias), 1).tanh()
    h = reference.subsample2x2(h, net[2].coef, net[2].bias, 1).flatten(1)
    o = reference.full(h, net[4].weight, net[4].bias, 1)
    g2, = torch.autograd.grad(o.sum(), x, create_graph=True)
    want, = torch.autograd.grad(o.pow(2).sum() + g2.pow(2).sum(), w)
    torch.testing.assert_close(got, want)


def _penalty_grads(model, x, y, context):
    """The issue's gradient penalty: loss + 10 |d sum(out) / dx|^2, its parameter gradients."""
    model.zero_grad()
    with context:
        out = model(x)
        g, = torch.autograd.grad(out.sum(), x, create_graph=True)
        (model.loss(out, y) + 10 * g.pow(2).sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _reference_penalty_grads(model, x, y):
    r = reference.LeNet5(model.variant).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    xd = x.detach().double().requires_grad_(True)
    return _penalty_grads(r, xd, y, contextlib.nullcontext())


@pytest.mark.parametrize("variant", ["classic", "modern"])
@pytest.mark.parametrize("where", ["fused", "layers"])
def test_a_gradient_penalty_through_lenet5_is_pure_pytorchs(variant, where):
    """Before: through the fused op or the layers the penalty added no gradient (c1's 0.38 where
    pure PyTorch has 4.49)."""
    torch.manual_seed(0)
    model = L.LeNet5(variant=variant)
    x = torch.randn(8, 1, 32, 32, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    assert fused.path(model, x) == ("batch" if where == "fused" else fused.path(model, x))
    got = _penalty_grads(model, x, y, contextlib.nullcontext() if where == "fused" else fused.disabled())
    want = _reference_penalty_grads(model, x, y)
    plain = {n: g for n, g in _penalty_grads(model, x, y, contextlib.nullcontext()).items()}
    for name, g in got.items():
        torch.testing.assert_close(g.double(), want[name], rtol=2e-3, atol=2e-3 * float(want[name].abs().max()),
                                   msg=name)
    assert plain.keys() == got.keys()


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_gradgradcheck_lenet5(variant):
    """float64 LeNet5 (the per-op layers): second order in the input and in some parameters."""
    torch.manual_seed(0)
    model = L.LeNet5(variant=variant).double()
    x = torch.randn(1, 1, 32, 32, dtype=torch.float64, requires_grad=True)
    small = [p for n, p in model.named_parameters() if n in ("s2.coef", "s4.bias", "f6.bias", "output.bias")]

    def fn(x, *ps):
        return model(x)

    assert gradcheck(fn, (x, *small), eps=1e-6, atol=1e-5, fast_mode=True)
    assert gradgradcheck(fn, (x, *small), eps=1e-6, atol=1e-4, rtol=1e-3, fast_mode=True)


def test_first_order_backward_still_runs_the_kernels(monkeypatch):
    """Without create_graph nothing is recomputed: the decompositions are not called."""
    calls = []
    real = ops._CONV5X5.decomposition
    monkeypatch.setattr(ops._CONV5X5, "decomposition", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    ops.conv5x5(x, torch.randn(3, 1, 5, 5), torch.zeros(3), 1).sum().backward()
    assert calls == []


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_second_order_through_the_fused_loss(variant):
    """LeNet5.loss_of (the loss inside the fused op): its gradients were computed in the forward
    and only scaled in backward, so a second order through them would have been a silent zero."""
    torch.manual_seed(0)
    model = L.LeNet5(variant=variant)
    x = torch.randn(8, 1, 32, 32, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    model.zero_grad()
    loss = model.loss_of(x, y)
    g, = torch.autograd.grad(loss, x, create_graph=True)
    (loss + 10 * g.pow(2).sum()).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    r = reference.LeNet5(variant).double()
    r.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    xd = x.detach().double().requires_grad_(True)
    rl = r.loss(r(xd), y)
    rg, = torch.autograd.grad(rl, xd, create_graph=True)
    (rl + 10 * rg.pow(2).sum()).backward()
    for name, p in r.named_parameters():
        torch.testing.assert_close(got[name].double(), p.grad, rtol=2e-3, atol=2e-3 * float(p.grad.abs().max()),
                                   msg=name)
