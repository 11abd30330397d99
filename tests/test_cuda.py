"""CUDA kernels: every op of the table in op_table.py on the CUDA device against the float64
reference (float32 and float64, forward and backward), the Gauss-Newton backward and empty batches
against the CPU, strided inputs, bitwise determinism of two runs, gradcheck, the model on the
device against the CPU model. The device (cuda_device.py) is a real GPU where one is visible, else
the emulated CUDA device (the same kernels run on the CPU, csrc/cuda_emu): the same assertions on
both. On a real GPU also opcheck, no host synchronisation, CUDA-graph capture, mixed devices and a
batch at the grid limits. Skipped (with the reason) where there is neither."""
import pytest
import torch

from cuda_device import DEVICE, WHY_NONE
from lenet5_fast import LeNet5, ops, reference
from lenet5_fast.layers import PAPER_C3_TABLE
from op_table import OPS, as_dtype, cases

pytestmark = pytest.mark.skipif(DEVICE is None, reason=WHY_NONE)
gpu_only = pytest.mark.skipif(DEVICE is None or DEVICE.emulated, reason="needs a real GPU")
D64 = torch.float64


def _device_cases():
    """The op table's samples, on the CPU (the test moves them): on a GPU with the batches of 300
    too; on the emulated device the small ones, which reach every chunk path there (its build
    has small chunking constants, tests/test_cuda_emu.py checks that they do)."""
    emulated = DEVICE is not None and DEVICE.emulated
    return cases("cpu", large=not emulated)


CASES, IDS = _device_cases()


def _put(args):
    return [DEVICE.put(a) for a in args]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("entry,sample", CASES, ids=IDS)
def test_op_on_device_matches_float64_reference(entry, sample, dtype):
    grad_idx = entry.differentiable
    ref_in = as_dtype(sample.args, D64, grad_idx)
    want = entry.reference(*ref_in)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(0), dtype=D64)
    want_grads = torch.autograd.grad(want, [ref_in[i] for i in grad_idx], g)
    dev_in = _put(as_dtype(sample.args, dtype))
    dev_in = [a.requires_grad_() if i in grad_idx else a for i, a in enumerate(dev_in)]
    with DEVICE.run():
        got = entry.forward(*dev_in)
        got_grads = torch.autograd.grad(got, [dev_in[i] for i in grad_idx], DEVICE.put(g.to(dtype)))
    assert DEVICE.holds(got) and got.dtype == dtype
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == D64 else dict(rtol=1e-4, atol=1e-4)
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(DEVICE.get(got).to(D64), want.detach(), rtol=tol["rtol"], atol=tol["atol"] * scale)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(DEVICE.get(a).to(D64), b, rtol=tol["rtol"] * 10,
                                   atol=tol["atol"] * 10 * max(1.0, b.abs().max().item()))


def _backward(entry, h, y, args, gn):
    with DEVICE.run():
        return [DEVICE.get(t) for t in entry.backward_outputs(DEVICE.put(h), DEVICE.put(y), _put(args), gn)]


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_gauss_newton_and_empty_batch_device_equal_cpu(entry):
    sample = next(s for s in entry.sample_inputs("cpu") if s.args[0].shape[0] > 1)
    for n in (None, 0):
        args = as_dtype(sample.args, D64)
        if n is not None:
            args[0] = args[0][:n]
        y = entry.forward(*args)
        h = torch.rand(y.shape, dtype=D64)
        with DEVICE.run():
            y_dev = DEVICE.get(entry.forward(*_put(args)))
        assert y_dev.shape == y.shape and torch.allclose(y_dev, y)
        for gn in (False, True):
            cpu = entry.backward_outputs(h, y, args, gn)
            for a, b in zip(cpu, _backward(entry, h, y, args, gn)):
                torch.testing.assert_close(b, a)


def _strided(t):
    """t's values with other strides: matrices transposed in memory, vectors every other element."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() < 2:
        return t
    if t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    return torch.stack([t, torch.zeros_like(t)], -1)[..., 0]


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_strided_inputs_equal_contiguous_on_device(entry):
    sample = max(entry.sample_inputs("cpu"), key=lambda s: s.args[0].numel())
    args = as_dtype(sample.args, torch.float32)
    strided = [_strided(DEVICE.put(a)) for a in args]
    assert any(isinstance(a, torch.Tensor) and not a.is_contiguous() for a in strided)
    with DEVICE.run():
        y, y_s = entry.forward(*_put(args)), entry.forward(*strided)
        h = torch.rand(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device)
        grads = entry.backward_outputs(h, y, _put(args))
        grads_s = entry.backward_outputs(_strided(h), _strided(y), strided)
    assert torch.equal(DEVICE.get(y_s), DEVICE.get(y))
    for a, b in zip(grads_s, grads):
        assert torch.equal(DEVICE.get(a), DEVICE.get(b))


def test_channels_last_and_transposed_inputs_on_device():
    x = DEVICE.put(torch.randn(3, 6, 14, 14)).contiguous(memory_format=torch.channels_last)
    w, b = DEVICE.put(torch.randn(16, 6, 5, 5)), DEVICE.put(torch.randn(16))
    xt = DEVICE.put(torch.randn(40, 84)).t().contiguous().t()
    with DEVICE.run():
        assert torch.equal(ops.conv5x5(x, w, b, 1), ops.conv5x5(x.contiguous(), w, b, 1))
        codes = w.new_ones(10, 84)
        assert torch.equal(ops.euclidean_rbf(xt, codes), ops.euclidean_rbf(xt.contiguous(), codes))


@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_two_runs_are_bitwise_equal_on_device(entry):
    """Forward, backward and Gauss-Newton backward twice (the emulated device runs the blocks and
    threads in another random order each time): bit for bit the same, at the three largest
    batches of the table (the most batch chunks)."""
    samples = sorted(entry.sample_inputs("cpu"), key=lambda s: -s.args[0].shape[0])
    for sample in [s for i, s in enumerate(samples) if s.name.split("-act")[0] not in
                   {t.name.split("-act")[0] for t in samples[:i]}][:3]:
        args = _put(as_dtype(sample.args, torch.float32))
        runs = []
        for _ in range(2):
            with DEVICE.run():
                y = entry.forward(*args)
                h = torch.ones_like(y)
                runs.append([y, *entry.backward_outputs(h, y, args), *entry.backward_outputs(h, y, args, True)])
        for a, b in zip(*runs):
            assert torch.equal(DEVICE.get(a), DEVICE.get(b)), sample.name


def test_gauss_newton_backward_device_equals_cpu():
    off, inp = ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    x, w, b = torch.randn(5, 6, 14, 14, dtype=D64), torch.randn(60, 5, 5, dtype=D64), torch.randn(16, dtype=D64)
    y = ops.sparse_conv5x5(x, w, b, off, inp, 1)
    h = torch.rand_like(y)
    cpu = ops.sparse_conv5x5_backward(h, y, x, w, off, inp, 1, True, True)
    with DEVICE.run():
        dev = ops.sparse_conv5x5_backward(*_put([h, y, x, w, off, inp]), 1, True, True)
    for a, b_ in zip(cpu, dev):
        torch.testing.assert_close(DEVICE.get(b_), a)
    xr, wr, hr = torch.randn(4, 84, dtype=D64), torch.randn(10, 84, dtype=D64), torch.rand(4, 10, dtype=D64)
    with DEVICE.run():
        dev = ops.euclidean_rbf_backward(*_put([hr, xr, wr]), True, True, True)
    for a, b_ in zip(ops.euclidean_rbf_backward(hr, xr, wr, True, True, True), dev):
        torch.testing.assert_close(DEVICE.get(b_), a)


def test_gradcheck_on_device():
    off, inp = _put(ops.connection_table_to_csr(((0,), (1, 2), (0, 1, 2)), 3))

    def leaf(*shape):
        return DEVICE.put(torch.randn(*shape, dtype=D64)).requires_grad_()

    checks = [
        (lambda x, w, b: ops.conv5x5(x, w, b, 1), (leaf(2, 2, 7, 6), leaf(2, 2, 5, 5), leaf(2))),
        (lambda x, w, b: ops.sparse_conv5x5(x, w, b, off, inp, 1), (leaf(2, 3, 6, 6), leaf(6, 5, 5), leaf(3))),
        (lambda x, c, b: ops.subsample2x2(x, c, b, 1), (leaf(2, 2, 6, 5), leaf(2), leaf(2))),
        (lambda x, w, b: ops.full(x, w, b, 1), (leaf(3, 7), leaf(4, 7), leaf(4))),
        (ops.euclidean_rbf, (leaf(3, 6), leaf(4, 6))),
        (ops.maxpool2x2, (leaf(2, 2, 6, 6),)),
        (lambda x: ops.activation(x, 1), (leaf(3, 5),)),
    ]
    with DEVICE.run():
        for fn, args in checks:
            assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_model_on_device_equals_cpu(variant):
    cpu = LeNet5(variant=variant)
    dev = LeNet5(variant=variant)
    dev.load_state_dict(cpu.state_dict())
    dev = DEVICE.module(dev)
    x = torch.randn(64, 1, 32, 32)
    t = torch.randint(0, 10, (64,))
    out_c = cpu(x)
    cpu.loss(out_c, t).backward()
    with DEVICE.run():
        out_g = dev(DEVICE.put(x))
        dev.loss(out_g, DEVICE.put(t)).backward()
    torch.testing.assert_close(DEVICE.get(out_g), out_c, rtol=1e-4, atol=1e-4)
    for (name, pc), (_, pg) in zip(cpu.named_parameters(), dev.named_parameters()):
        torch.testing.assert_close(DEVICE.get(pg.grad), pc.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_relu_nan_rule_on_device_is_torchs():
    """ReLU on the device follows the same NaN rule as the CPU kernels and torch (activations.h)."""
    nan = float("nan")
    x = DEVICE.put(torch.tensor([nan, -1.0, 0.0, 2.0] * 5))
    ref = x.clone().requires_grad_()
    torch.relu(ref).backward(torch.ones_like(x))
    eye, zeros = DEVICE.put(torch.eye(5)), DEVICE.put(torch.zeros(5))
    with DEVICE.run():
        y = ops.activation(x, 2)
        gx = ops.activation_backward(torch.ones_like(x), y, 2, False)
        full = ops.full(x.view(4, 5), eye, zeros, 2)
    torch.testing.assert_close(y, torch.relu(x), equal_nan=True)
    torch.testing.assert_close(gx, ref.grad)
    cpu = ops.full(DEVICE.get(x).view(4, 5), torch.eye(5), torch.zeros(5), 2)
    torch.testing.assert_close(DEVICE.get(full), cpu, equal_nan=True)


# ---- a real GPU only ----

@gpu_only
@pytest.mark.parametrize("entry", OPS, ids=[e.name for e in OPS])
def test_opcheck_on_gpu(entry):
    sample = entry.sample_inputs("cuda")[1]
    args = as_dtype(sample.args, torch.float32, entry.differentiable)
    torch.library.opcheck(entry.op, tuple(args))
    y = entry.forward(*args)
    bargs = entry.backward_args(torch.rand_like(y).detach(), y.detach(), as_dtype(sample.args, torch.float32), True)
    torch.library.opcheck(entry.backward_op, tuple(bargs))


@gpu_only
def test_no_host_sync_in_forward_backward():
    model = LeNet5().cuda()
    x = torch.randn(32, 1, 32, 32, device="cuda")
    model(x)  # warm-up outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(g.is_cuda for g in grads)


@gpu_only
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


@gpu_only
def test_mixed_devices_are_a_clear_error():
    with pytest.raises(ValueError, match="is on cpu but the input is on cuda"):
        ops.conv5x5(torch.randn(1, 1, 32, 32, device="cuda"), torch.randn(6, 1, 5, 5), torch.randn(6))


@gpu_only
def test_large_batch_grid_limits():
    x = torch.randn(70000, 16, 5, 5, device="cuda")
    w, b = torch.randn(120, 16, 5, 5, device="cuda") * .1, torch.randn(120, device="cuda")
    y = ops.conv5x5(x, w, b, 1)
    torch.testing.assert_close(y[-5:].cpu(), reference.conv5x5(x[-5:].cpu(), w.cpu(), b.cpu(), 1), rtol=1e-4, atol=1e-4)
