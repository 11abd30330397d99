"""The network: native model equals the pure-PyTorch reference, the paper's counts, the
init, torch.compile(fullgraph=True), the CLI, and the layers inside an ordinary torch model."""
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import lenet5_fast
from lenet5_fast import LeNet5, reference, summary
from lenet5_fast.cli import main as cli_main
from lenet5_fast.codes import output_codes
from lenet5_fast.layers import PAPER_C3_TABLE, Convolution, FullConnection, SparseConvolution, Subsampling

PAPER = {  # LeCun et al. 1998, section II-B: trainable parameters and connections per layer
    "C1": (156, 122_304), "S2": (12, 5_880), "C3": (1_516, 151_600), "S4": (32, 2_000),
    "C5": (48_120, 48_120), "F6": (10_164, 10_164), "output": (0, 840),
}


def test_summary_matches_the_paper():
    s = summary(LeNet5())
    assert {r["name"]: (r["parameters"], r["connections"]) for r in s["layers"]} == PAPER
    assert s["total_parameters"] == 60_000 == sum(p.numel() for p in LeNet5().parameters() if p.requires_grad)
    assert s["total_connections"] == 340_908
    assert [(r["maps"], r["size"]) for r in s["layers"]][:5] == [(6, "28x28"), (6, "14x14"), (16, "10x10"), (16, "5x5"), (120, "1x1")]


def test_summary_cli_json(capsys):
    assert cli_main(["summary", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["total_parameters"] == 60000 and s["total_connections"] == 340908
    assert isinstance(s["layers"], list) and len(s["layers"]) == 7


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lenet5_fast", "summary"], capture_output=True, text=True, check=True).stdout
    assert "60,000" in out and "340,908" in out


def test_codes_cli(capsys):
    assert cli_main(["codes"]) == 0
    out = capsys.readouterr().out
    assert all(str(d) in out for d in range(10)) and "#" in out


def test_paper_init_and_structure():
    m = LeNet5()
    assert m.c3.table == PAPER_C3_TABLE and m.c3.weight.shape == (60, 5, 5)
    assert torch.equal(m.output.weight, output_codes()) and not m.output.weight.requires_grad
    for layer, fan_in in ((m.c1, 25), (m.c5, 400), (m.f6, 120), (m.s2, 4)):
        for p in layer.parameters():
            assert p.abs().max() <= 2.4 / fan_in and p.abs().max() > 0.5 * 2.4 / fan_in
    off = m.c3.table_offsets.tolist()
    for o in range(16):  # C3's fan-in differs per map: 3, 4 or 6 inputs
        k = m.c3.weight[off[o]:off[o + 1]]
        assert k.abs().max() <= 2.4 / ((off[o + 1] - off[o]) * 25)


@pytest.mark.parametrize("variant,in_channels", [("classic", 1), ("modern", 1), ("modern", 3), ("keras", 1)])
@pytest.mark.parametrize("batch", [1, 5])
def test_native_model_equals_reference(variant, in_channels, batch):
    native = LeNet5(variant=variant, in_channels=in_channels).double()
    ref = reference.LeNet5(variant=variant, in_channels=in_channels).double()
    ref.load_state_dict(native.state_dict())
    assert set(ref.state_dict()) == set(native.state_dict())
    x = torch.randn(batch, in_channels, 32, 32, dtype=torch.float64)
    target = torch.randint(0, 10, (batch,))
    out_n, out_r = native(x), ref(x)
    torch.testing.assert_close(out_n, out_r, rtol=1e-10, atol=1e-10)
    native.loss(out_n, target).backward()
    ref.loss(out_r, target).backward()
    grads_r = dict(ref.named_parameters())
    for name, p in native.named_parameters():
        torch.testing.assert_close(p.grad, grads_r[name].grad, rtol=1e-9, atol=1e-11, msg=name)


def test_float32_model_close_to_float64_reference():
    native = LeNet5()
    ref = reference.LeNet5().double()
    ref.load_state_dict(native.state_dict())
    x = torch.randn(16, 1, 32, 32)
    torch.testing.assert_close(native(x).double(), ref(x.double()), rtol=1e-4, atol=1e-4)


def test_map_loss_formula():
    y = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.1, 4.0]], dtype=torch.float64)
    t = torch.tensor([0, 1])
    j = 1.0
    want = torch.stack([y[i, t[i]] + torch.log(torch.exp(torch.tensor(-j, dtype=torch.float64)) + torch.exp(-y[i]).sum())
                        for i in range(2)]).mean()
    torch.testing.assert_close(lenet5_fast.map_loss(y, t, j), want)


@pytest.mark.parametrize("variant", ["classic", "modern"])
def test_torch_compile_fullgraph_matches_eager(variant):
    torch._dynamo.reset()
    model = LeNet5(variant=variant)
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    target = torch.tensor([1, 2, 3, 4])
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out_c = compiled(x)
    out_e = model(x)
    torch.testing.assert_close(out_c, out_e)
    gc = torch.autograd.grad(model.loss(out_c, target), [x, *model.parameters()])
    ge = torch.autograd.grad(model.loss(out_e, target), [x, *model.parameters()])
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor_forward():
    torch._dynamo.reset()
    model = LeNet5().eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_layers_in_an_ordinary_torch_model_train():
    """Our layers mixed with torch's own, optimised with a stock optimizer."""
    torch.manual_seed(1)
    net = nn.Sequential(Convolution(1, 4), nn.BatchNorm2d(4), Subsampling(4), nn.Flatten(),
                        FullConnection(4 * 6 * 6, 3, activation="identity"))
    x = torch.randn(64, 1, 16, 16)
    y = (x[:, 0, :8].mean((1, 2)) > 0).long() + (x[:, 0, 8:].mean((1, 2)) > 0).long()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_custom_table_and_state_dict_roundtrip():
    layer = SparseConvolution(3, [[0], [1, 2], [0, 1, 2]])
    assert layer.weight.shape == (6, 5, 5) and layer.out_maps == 3
    other = SparseConvolution(3, [[0], [1, 2], [0, 1, 2]])
    other.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(layer(x), other(x))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="variant"):
        LeNet5(variant="resnet")
    with pytest.raises(ValueError):
        LeNet5()(torch.randn(2, 1, 28, 20))  # 28x20 -> C5 sees 5x2: wrong input size


@pytest.mark.parametrize("variant,cin,classes,table", [
    ("classic", 1, 10, None), ("classic", 3, 10, [[0], [1, 2], [5, 4, 3]] + [[o % 6] for o in range(13)]),
    ("modern", 1, 10, None), ("modern", 5, 7, None)])
def test_native_parameter_layout_is_the_models(variant, cin, classes, table):
    """The network is declared once in C++ (csrc/network.h): the parameter layout the fused engines
    take (_C.param_layout: names, shapes with their free sizes named, order) is exactly the model's
    model.parameters(), for every variant the engines run, whatever the free sizes."""
    from lenet5_fast import _C
    kw = {"c3_table": table} if table is not None else {}
    m = LeNet5(variant, in_channels=cin, num_classes=classes, **kw)
    free = {"in_channels": cin, "classes": classes,
            "c3_kernels": m.c3.table_inputs.numel() if variant == "classic" else None}
    native = [(name, tuple(free[d] if isinstance(d, str) else d for d in shape))
              for name, shape in _C.param_layout(_C.variants[variant])]
    assert native == [(name, tuple(p.shape)) for name, p in m.named_parameters()]
    assert sorted(_C.variants) == ["classic", "modern"]
