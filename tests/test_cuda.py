"""CUDA kernels: every op of the table in op_table.py on the GPU against the float64 reference,
the Gauss-Newton backward and empty batches against the CPU, strided inputs, gradcheck and
opcheck on the GPU, the model on GPU equals the CPU model, no host synchronisation, CUDA-graph
capture.
Skipped (with the reason) on a machine without a GPU or on a build without CUDA kernels."""
import pytest
import torch

from lenet5_fast import LeNet5, _C, ops, reference
from lenet5_fast.layers import PAPER_C3_TABLE
from op_table import OPS, as_dtype, cases

pytestmark = [
    pytest.mark.skipif(not _C.with_cuda, reason="this build has no CUDA kernels"),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible"),
]
D64 = torch.float64


def _cuda_cases():
    """The op table's samples with the CUDA sizes (batches of 300 too), on the CPU: the test
    moves them (a module-level .cuda() would fail on machines without a GPU)."""
    return cases("cpu", large=True, where=lambda e, s: s.args[0].shape[0] in (1, 7, 17, 300) or e.name == "activation")


CASES, IDS = _cuda_cases()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("entry,sample", CASES, ids=IDS)
def test_op_on_gpu_matches_float64_reference(entry, sample, dtype):
    grad_idx = entry.differentiable
    ref_in = as_dtype(sample.args, D64, grad_idx)
    want = entry.reference(*ref_in)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=D64)
    want_grads = torch.autograd.grad(want, [ref_in[i] for i in grad_idx], g)
    gpu_in = [a.to("cuda") if isinstance(a, torch.Tensor) else a for a in as_dtype(sample.args, dtype)]
    gpu_in = [a.requires_grad_() if i in grad_idx else a for i, a in enumerate(gpu_in)]
    got = entry.forward(*gpu_in)
    assert got.is_cuda and got.dtype == dtype
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == D64 else dict(rtol=1e-4, atol=1e-4)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got.cpu().to(D64), want.detach(), rtol=tol["rtol"], atol=tol["atol"] * scale)
    got_grads = torch.autograd.grad(got, [gpu_in[i] for i in grad_idx], g.to("cuda", dtype))
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a.cpu().to(D64), b, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_gauss_newton_and_empty_batch_gpu_equal_cpu(entry):
    sample = next(s for s in entry.sample_inputs("cpu") if s.args[0].shape[0] > 1)
    for n in (None, 0):
        args = as_dtype(sample.args, D64)
        if n is not None:
            args[0] = args[0][:n]
        y = entry.forward(*args)
        h = torch.rand(y.shape, dtype=D64)
        gpu_args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
        assert torch.allclose(entry.forward(*gpu_args).cpu(), y)
        for gn in (False, True):
            cpu = entry.backward_outputs(h, y, args, gn)
            gpu = entry.backward_outputs(h.cuda(), y.cuda(), gpu_args, gn)
            for a, b in zip(cpu, gpu):
                torch.testing.assert_close(b.cpu(), a)


def test_strided_inputs_on_gpu():
    x = torch.randn(3, 6, 14, 14, device="cuda").contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 6, 5, 5, device="cuda"), torch.randn(16, device="cuda")
    torch.testing.assert_close(ops.conv5x5(x, w, b, 1), ops.conv5x5(x.contiguous(), w, b, 1), rtol=0, atol=0)
    xt = torch.randn(40, 84, device="cuda").t().contiguous().t()
    torch.testing.assert_close(ops.euclidean_rbf(xt, w.new_ones(10, 84)), ops.euclidean_rbf(xt.contiguous(), w.new_ones(10, 84)))


def test_gauss_newton_backward_gpu_equals_cpu():
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    x, w, b = torch.randn(5, 6, 14, 14, dtype=D64), torch.randn(60, 5, 5, dtype=D64), torch.randn(16, dtype=D64)
    y = ops.sparse_conv5x5(x, w, b, off, inp, 1)
    h = torch.rand_like(y)
    cpu = ops.sparse_conv5x5_backward(h, y, x, w, off, inp, 1, True, True)
    gpu = ops.sparse_conv5x5_backward(h.cuda(), y.cuda(), x.cuda(), w.cuda(), off.cuda(), inp.cuda(), 1, True, True)
    for a, b_ in zip(cpu, gpu):
        torch.testing.assert_close(b_.cpu(), a)
    xr, wr, hr = torch.randn(4, 84, dtype=D64), torch.randn(10, 84, dtype=D64), torch.rand(4, 10, dtype=D64)
    for a, b_ in zip(ops.euclidean_rbf_backward(hr, xr, wr, True, True, True),
                     ops.euclidean_rbf_backward(hr.cuda(), xr.cuda(), wr.cuda(), True, True, True)):
        torch.testing.assert_close(b_.cpu(), a)


def test_gradcheck_on_gpu():
    off, inp = ops.connection_table_to_csr(((0,), (1, 2), (0, 1, 2)), 3)
    off, inp = off.cuda(), inp.cuda()
    dev = dict(device="cuda", dtype=D64, requires_grad=True)
    checks = [
        (lambda x, w, b: ops.conv5x5(x, w, b, 1), (torch.randn(2, 2, 7, 6, **dev), torch.randn(2, 2, 5, 5, **dev), torch.randn(2, **dev))),
        (lambda x, w, b: ops.sparse_conv5x5(x, w, b, off, inp, 1), (torch.randn(2, 3, 6, 6, **dev), torch.randn(6, 5, 5, **dev), torch.randn(3, **dev))),
        (lambda x, c, b: ops.subsample2x2(x, c, b, 1), (torch.randn(2, 2, 6, 5, **dev), torch.randn(2, **dev), torch.randn(2, **dev))),
        (lambda x, w, b: ops.full(x, w, b, 1), (torch.randn(3, 7, **dev), torch.randn(4, 7, **dev), torch.randn(4, **dev))),
        (ops.euclidean_rbf, (torch.randn(3, 6, **dev), torch.randn(4, 6, **dev))),
        (ops.maxpool2x2, (torch.randn(2, 2, 6, 6, **dev),)),
        (lambda x: ops.activation(x, 1), (torch.randn(3, 5, **dev),)),
    ]
    for fn, args in checks:
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_opcheck_on_gpu(entry):
    sample = entry.sample_inputs("cuda")[1]
    args = as_dtype(sample.args, torch.float32, entry.differentiable)
    torch.library.opcheck(entry.op, tuple(args))
    y = entry.forward(*args)
    bargs = entry.backward_args(torch.rand_like(y).detach(), y.detach(), as_dtype(sample.args, torch.float32), True)
    torch.library.opcheck(entry.backward_op, tuple(bargs))


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_model_on_gpu_equals_cpu(variant):
    cpu = LeNet5(variant=variant)
    gpu = LeNet5(variant=variant).cuda()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(64, 1, 32, 32)
    t = torch.randint(0, 10, (64,))
    out_c, out_g = cpu(x), gpu(x.cuda())
    torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-4)
    cpu.loss(out_c, t).backward()
    gpu.loss(out_g, t.cuda()).backward()
    for (n, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(pg.grad.cpu(), pc.grad, rtol=1e-3, atol=1e-4, msg=n)


def test_no_host_sync_in_forward_backward():
    model = LeNet5().cuda()
    x = torch.randn(32, 1, 32, 32, device="cuda")
    t = torch.randint(0, 10, (32,), device="cuda")
    model(x)  # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(g.is_cuda for g in grads)
    del t


def test_cuda_graph_capture_of_training_step():
    torch.manual_seed(0)
    model = LeNet5().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(16, 1, 32, 32, device="cuda")
    t = torch.randint(0, 10, (16,), device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            opt.zero_grad(set_to_none=False)
            model.loss(model(x), t).backward()
            opt.step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=False)
    with torch.cuda.graph(graph):
        loss = model.loss(model(x), t)
        loss.backward()
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    graph.replay()
    torch.cuda.synchronize()
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert torch.isfinite(loss).item()


def test_mixed_devices_are_a_clear_error():
    with pytest.raises(ValueError, match="is on cpu but the input is on cuda"):
        ops.conv5x5(torch.randn(1, 1, 32, 32, device="cuda"), torch.randn(6, 1, 5, 5), torch.randn(6))


def test_large_batch_grid_limits():
    x = torch.randn(70000, 16, 5, 5, device="cuda")
    w, b = torch.randn(120, 16, 5, 5, device="cuda") * .1, torch.randn(120, device="cuda")
    y = ops.conv5x5(x, w, b, 1)
    torch.testing.assert_close(y[-5:].cpu(), reference.conv5x5(x[-5:].cpu(), w.cpu(), b.cpu(), 1), rtol=1e-4, atol=1e-4)


def test_relu_nan_rule_on_gpu_is_torchs():
    """ReLU on the GPU follows the same NaN rule as the CPU kernels and torch (activations.h)."""
    nan = float("nan")
    x = torch.tensor([nan, -1.0, 0.0, 2.0] * 5, device="cuda")
    ref = x.clone().requires_grad_()
    torch.relu(ref).backward(torch.ones_like(x))
    y = ops.activation(x, 2)
    torch.testing.assert_close(y, torch.relu(x), equal_nan=True)
    torch.testing.assert_close(ops.activation_backward(torch.ones_like(x), y, 2, False), ref.grad)
    cpu = ops.full(x.cpu().view(4, 5), torch.eye(5), torch.zeros(5), 2)
    torch.testing.assert_close(ops.full(x.view(4, 5), torch.eye(5, device="cuda"), torch.zeros(5, device="cuda"), 2).cpu(),
                               cpu, equal_nan=True)
