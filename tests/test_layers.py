"""The layers: each owns its backward (backward_terms, gradient and Gauss-Newton mode) and SDLM's
Gauss-Newton pass chains through it; input-shape errors at the layer and model boundary that say
what is expected; reprs with activation names; the CLI's --version and help texts."""
import argparse

import pytest
import torch
from torch import nn

import lenet5_fast as L
from lenet5_fast import ops
from lenet5_fast.cli import build_parser
from lenet5_fast.cli import main as cli_main
from lenet5_fast.optim import gauss_newton_diagonal

D64 = torch.float64


def _layers():
    torch.manual_seed(0)
    return [
        (L.Convolution(3, 4), (2, 3, 9, 8)),
        (L.Convolution(2, 3, activation="relu"), (2, 2, 5, 5)),
        (L.SparseConvolution(3, [[0], [1, 2], [0, 2]]), (3, 3, 7, 6)),
        (L.Subsampling(3, activation="plain_tanh"), (2, 3, 7, 6)),
        (L.MaxPool(), (2, 3, 6, 6)),
        (L.ScaledTanh(), (2, 5)),
        (L.FullConnection(12, 5), (3, 3, 2, 2)),
        (L.EuclideanRBF(6, 4, weight=torch.randn(4, 6), trainable=True), (3, 6)),
        (L.EuclideanRBF(), (2, 84)),
    ]


@pytest.mark.parametrize("layer,shape", _layers(), ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_backward_terms_are_the_gradients(layer, shape):
    layer = layer.double()
    x = torch.randn(shape, dtype=D64, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    params = [p for p in layer.parameters() if p.requires_grad]
    want = torch.autograd.grad(y, [x, *params], g)
    gx, terms = layer.backward_terms(g, x.detach(), y.detach())
    assert [p for p, _ in terms] == params
    torch.testing.assert_close(gx, want[0])
    for (_, t), w in zip(terms, want[1:]):
        torch.testing.assert_close(t, w)
    gx_none, _ = layer.backward_terms(g, x.detach(), y.detach(), input_grad=False)
    assert gx_none is None


def test_backward_terms_gauss_newton_mode_is_the_ops_gauss_newton_pass():
    layer = L.Convolution(2, 3).double()
    x = torch.randn(2, 2, 8, 8, dtype=D64)
    y = layer(x).detach()
    h = torch.rand_like(y)
    gx, ((_, gw), (_, gb)) = layer.backward_terms(h, x, y, gauss_newton=True)
    want = ops.conv5x5_backward(h, y, x, layer.weight.detach(), layer.act, True, True)
    for a, b in zip((gx, gw, gb), want):
        assert torch.equal(a, b)


def test_gauss_newton_diagonal_asks_each_layer():
    """optim.gauss_newton_diagonal chains the layers' own backward_terms, whatever the layer."""
    model = L.LeNet5()
    calls = []
    for name in ("c1", "s2", "f6"):
        layer = getattr(model, name)
        original = layer.backward_terms

        def spy(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)
        layer.backward_terms = spy
    h = gauss_newton_diagonal(model, torch.randn(3, 1, 32, 32), torch.tensor([1, 2, 3]))
    assert calls == ["f6", "s2", "c1"]
    assert len(h) == len([p for p in model.parameters() if p.requires_grad])


@pytest.mark.parametrize("size", [28, 36, 33, 20])
def test_model_says_what_input_it_expects(size):
    with pytest.raises(ValueError, match=r"LeNet5 expects \[N, 1, 32, 32\] \(MNIST 28x28 must be padded by 2: "
                                         r"lenet5_fast.data.preprocess\), got shape \(2, 1, %d, %d\)" % (size, size)):
        L.LeNet5()(torch.randn(2, 1, size, size))
    with pytest.raises(ValueError, match=r"LeNet5 expects \[N, 3, 32, 32\], got shape \(2, 1, 32, 32\)"):
        L.LeNet5("modern", in_channels=3)(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match="LeNet5 expects"):
        L.LeNet5()([[1.0]])


def test_layers_say_what_input_they_expect():
    cases = [
        (L.Convolution(1, 6), torch.randn(2, 3, 32, 32), r"Convolution\(1, 6, activation='scaled_tanh'\) expects input "
                                                          r"\[N, 1, H, W\] with H, W >= 5, got \(2, 3, 32, 32\)"),
        (L.Convolution(16, 120), torch.randn(2, 16, 4, 4), r"expects input \[N, 16, H, W\] with H, W >= 5"),
        (L.SparseConvolution(6), torch.randn(2, 6, 32), r"SparseConvolution\(6, 16, kernels=60, activation="
                                                          r"'scaled_tanh'\) expects input \[N, 6, H, W\]"),
        (L.Subsampling(6), torch.randn(2, 4, 8, 8), r"Subsampling\(6, .*\) expects input \[N, 6, H, W\] with H, W >= 2"),
        (L.MaxPool(), torch.randn(2, 4, 1, 8), r"MaxPool\(\) expects input \[N, C, H, W\] with H, W >= 2"),
        (L.FullConnection(120, 84), torch.randn(2, 480), r"FullConnection\(120, 84, .*\) expects input \[N, 120\] "
                                                          r"\(or \[N, ...\] with 120 values per sample\), got \(2, 480\)"),
        (L.EuclideanRBF(), torch.randn(2, 83), r"EuclideanRBF\(84, 10, trainable=False\) expects input \[N, 84\]"),
    ]
    for layer, x, message in cases:
        with pytest.raises(ValueError, match=message):
            layer(x)
    with pytest.raises(TypeError, match="expects"):
        L.Convolution(1, 6)("not a tensor")


def test_reprs_name_the_activation():
    text = repr(L.LeNet5("modern")) + repr(L.LeNet5())
    assert "activation=1" not in text and "activation=2" not in text
    assert "Convolution(1, 6, activation='relu')" in text
    assert "Subsampling(6, activation='scaled_tanh')" in text
    assert "FullConnection(84, 10, activation='identity')" in text
    assert ops.activation_name(3) == "plain_tanh"


def test_cli_version(capsys):
    assert cli_main(["--version"]) == 0  # main() returns argparse's exit code
    assert capsys.readouterr().out.strip().startswith(f"lenet5-fast {L.__version__}")


def test_every_cli_option_has_help():
    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif not action.help:
                missing.append(" ".join(path + [action.option_strings[0] if action.option_strings else action.dest]))
    walk(build_parser(), ["lenet5-fast"])
    assert missing == []
