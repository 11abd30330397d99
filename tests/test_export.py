"""The layers as drop-ins among torch's own: mixed nn/lenet5_fast models under
torch.compile(fullgraph=True) with inductor (static and dynamic shapes, strided inputs),
torch.export, jit.trace, and torch.onnx.export run with onnxruntime; the start-up cost
(no torch._dynamo on the eager path)."""
import subprocess
import sys

import pytest
import torch
from torch import nn

import lenet5_fast as L


def _mixed():
    """All seven lenet5_fast layer kinds between torch layers."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), L.Subsampling(6), L.SparseConvolution(6), nn.BatchNorm2d(16),
        L.MaxPool(), L.Convolution(16, 8, activation="relu"), L.ScaledTanh(), nn.Flatten(),
        L.FullConnection(8 * 2 * 2, 84), L.EuclideanRBF())


def _forward_backward(model, x, loss=lambda out: out.square().mean()):
    x = x.detach().requires_grad_()
    out = model(x)
    grads = torch.autograd.grad(loss(out), [x, *model.parameters()])
    return out, grads


def _assert_same(got, want):
    (out_g, grads_g), (out_w, grads_w) = got, want
    torch.testing.assert_close(out_g, out_w, rtol=1e-4, atol=1e-4)
    for a, b in zip(grads_g, grads_w):  # inductor fuses torch's own layers (BatchNorm) differently
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_mixed_model_under_inductor_fullgraph(dynamic):
    """Inductor hands our ops whatever strides its own kernels produce; forward and backward
    equal eager within float32 rounding, at two batch sizes with dynamic shapes."""
    torch._dynamo.reset()
    model = _mixed()
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic)
    for n in ((4, 7) if dynamic else (4,)):
        x = torch.randn(n, 1, 32, 32)
        _assert_same(_forward_backward(compiled, x), _forward_backward(model, x))
    # a channels_last input and an expanded one
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    _assert_same(_forward_backward(compiled, x), _forward_backward(model, x.contiguous()))


def test_conv2d_then_our_layers_under_inductor_fullgraph():
    """The README's mixed use: nn.Conv2d feeding Subsampling and Convolution."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    for model in (nn.Sequential(nn.Conv2d(1, 6, 5), L.Subsampling(6)),
                  nn.Sequential(nn.Conv2d(1, 6, 5), L.Convolution(6, 4))):
        compiled = torch.compile(model, fullgraph=True)
        x = torch.randn(3, 1, 20, 20)
        # .sum() hands the backward an expanded (stride 0) gradient
        _assert_same(_forward_backward(compiled, x, torch.sum), _forward_backward(model, x, torch.sum))
        x = x.transpose(2, 3)  # a transposed input, too
        _assert_same(_forward_backward(compiled, x), _forward_backward(model, x))


def test_torch_export_keeps_the_native_ops():
    model = L.LeNet5().eval()
    x = torch.randn(3, 1, 32, 32)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("lenet5_fast" in t for t in targets), targets
    for n in (1, 5):
        xx = torch.randn(n, 1, 32, 32)
        torch.testing.assert_close(ep.module()(xx), model(xx))


def test_jit_trace():
    model = L.LeNet5().eval()
    x = torch.randn(2, 1, 32, 32)
    traced = torch.jit.trace(model, (x,))
    assert "lenet5_fast::" in str(traced.inlined_graph)
    xx = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(traced(xx), model(xx))


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_onnx_export_runs_in_onnxruntime(tmp_path, variant):
    """torch.onnx.export writes standard ONNX operators (each op's decomposition: C3 a masked
    convolution); onnxruntime's answer equals ours, at two batch sizes."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = L.LeNet5(variant).eval()
    path = tmp_path / f"lenet5-{variant}.onnx"
    torch.onnx.export(model, (torch.randn(2, 1, 32, 32),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops_used = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert "Conv" in ops_used and not any("lenet5" in o for o in ops_used)
    for n in (1, 5):
        x = torch.randn(n, 1, 32, 32)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-4)


def test_eager_path_never_imports_dynamo():
    """import lenet5_fast and a first forward+backward and predict: no torch._dynamo (which
    torch.library.custom_op's first call used to import, about 2.5 s)."""
    code = ("import sys, torch, lenet5_fast as L\n"
            "m = L.LeNet5()\n"
            "x = torch.randn(2, 1, 32, 32)\n"
            "m.loss(m(x), torch.tensor([1, 2])).backward()\n"
            "m.predict(x)\n"
            "L.LeNet5('modern')(x).sum().backward()\n"
            "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
            "assert 'torch.onnx' not in sys.modules, 'torch.onnx was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
