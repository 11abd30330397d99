"""LeNet5(variant="keras"): the Keras write-up's layout (Conv2D 6@5x5 tanh, AveragePooling 2x2,
Conv2D 16@5x5 tanh, AveragePooling 2x2, Dense 120 tanh, Dense 84 tanh, Dense 10 softmax) on our
layers and ops, checked against the same network written in plain PyTorch."""
import json

import pytest
import torch
import torch.nn.functional as F

from cifar_files import write_batches
from lenet5_fast import LeNet5, ops
from lenet5_fast.checkpoint import model_from_checkpoint
from lenet5_fast.cli import main
from lenet5_fast.model import summary


def _plain_pytorch(model, x):
    """The Keras layout in torch.nn.functional, with the model's weights."""
    h = torch.tanh(F.conv2d(x, model.c1.weight, model.c1.bias))
    h = F.avg_pool2d(h, 2)
    h = torch.tanh(F.conv2d(h, model.c3.weight, model.c3.bias))
    h = F.avg_pool2d(h, 2).flatten(1)                                        # Flatten: 400
    h = torch.tanh(h @ model.c5.weight.flatten(1).T + model.c5.bias)         # Dense 120
    h = torch.tanh(h @ model.f6.weight.T + model.f6.bias)                    # Dense 84
    return h @ model.output.weight.T + model.output.bias                     # Dense 10 (logits)


@pytest.mark.parametrize("channels", [1, 3])
def test_matches_the_keras_layout(channels):
    model = LeNet5(variant="keras", in_channels=channels)
    x = torch.rand(5, channels, 32, 32)
    out = model(x)
    assert out.shape == (5, 10)
    torch.testing.assert_close(out, _plain_pytorch(model, x), rtol=1e-5, atol=1e-5)
    y = torch.tensor([0, 3, 9, 1, 1])
    torch.testing.assert_close(model.loss(out, y), F.cross_entropy(out, y))  # softmax cross-entropy
    assert torch.equal(model.predict(x), out.argmax(1))


def test_layers_activations_and_parameters():
    model = LeNet5(variant="keras", in_channels=3)
    plain = ops.ACTIVATIONS["plain_tanh"]
    assert [model.c1.act, model.c3.act, model.c5.act, model.f6.act] == [plain] * 4
    assert model.output.act == 0 and model.c3.in_maps == 6 and model.c3.out_maps == 16  # full C3
    for pool in (model.s2, model.s4):
        assert list(pool.parameters()) == [] and pool.act == 0
        assert torch.all(pool.coef == 0.25) and torch.all(pool.bias == 0)
    # the Keras model's parameter count on CIFAR-10 (3 channels) and on 32x32 greyscale
    assert summary(model)["total_parameters"] == 62006
    assert summary(LeNet5(variant="keras"))["total_parameters"] == 61706


def test_pooling_stays_fixed_in_training(tmp_path):
    torch.manual_seed(0)
    model = LeNet5(variant="keras", in_channels=3)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.9, losses  # it learns (the labels of noise: down to their prior)
    assert torch.all(model.s2.coef == 0.25) and torch.all(model.s4.bias == 0)


def test_train_cli_keras_on_cifar10(tmp_path):
    d = tmp_path / "cifar"
    write_batches(d, per_batch=30, n_test=20)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data", str(d), "--variant", "keras", "--optimizer", "adam",
                 "--batch-size", "128", "--epochs", "2", "--out", str(out), "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["variant"] == "keras" and m["config"]["dataset"] == "cifar10" and m["complete"]
    model = model_from_checkpoint(out / "checkpoint.pt")
    assert model.variant == "keras" and model.in_channels == 3 and torch.all(model.s4.coef == 0.25)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), _plain_pytorch(model, x), rtol=1e-5, atol=1e-5)
