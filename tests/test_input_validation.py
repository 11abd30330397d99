"""Bad arguments to the model, its layers, its loss and the trainer's config are clear Python
errors, not a ZeroDivisionError, silent truncation or a failure deep inside torch."""
import pytest
import torch

import lenet5_fast as L
from lenet5_fast import train as T
from lenet5_fast.layers import Convolution, EuclideanRBF, FullConnection, SparseConvolution, Subsampling
from lenet5_fast.model import map_loss, summary


@pytest.mark.parametrize("make", [
    lambda: FullConnection(0, 0), lambda: FullConnection(120, 0), lambda: FullConnection(-1, 5),
    lambda: FullConnection(2.5, 3), lambda: FullConnection(True, 3),
    lambda: Convolution(0, 6), lambda: Convolution(1, 0), lambda: Subsampling(0),
    lambda: SparseConvolution(0), lambda: EuclideanRBF(0, 10, weight=torch.zeros(10, 0)),
    lambda: L.LeNet5(in_channels=0), lambda: L.LeNet5(variant="modern", num_classes=0),
])
def test_layer_sizes_must_be_positive_ints(make):
    with pytest.raises(ValueError, match="must be an int >= 1"):
        make()


def test_layer_sizes_accept_numpy_ints():
    import numpy as np

    assert FullConnection(np.int64(3), 2).in_features == 3


def test_summary_input_checks():
    with pytest.raises(ValueError, match="too small"):
        summary(L.LeNet5(), input_size=28)
    with pytest.raises(ValueError, match="input_size"):
        summary(L.LeNet5(), input_size=0)
    with pytest.raises(TypeError, match="LeNet5"):
        summary(torch.nn.Linear(2, 2))
    assert summary(L.LeNet5(variant="modern", in_channels=3))["input"] == "3x32x32"


def test_map_loss_refuses_float_and_bad_labels():
    y = torch.rand(3, 10) * 50
    with pytest.raises(TypeError, match="integer class indices"):
        map_loss(y, torch.tensor([1.7, 2.2, 9.9]))  # used to be truncated to 1, 2, 9
    with pytest.raises(TypeError, match="integer"):
        map_loss(y, torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="shape \\[3\\]"):
        map_loss(y, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="0..9"):
        map_loss(y, torch.tensor([1, 2, 10]))
    with pytest.raises(ValueError, match="0..9"):
        map_loss(y, torch.tensor([-1, 2, 3]))
    t = torch.tensor([1, 2, 9], dtype=torch.int32)
    torch.testing.assert_close(map_loss(y, t), map_loss(y, t.long()))


def test_evaluate_on_no_samples():
    errors, loss, pred = T.evaluate(L.LeNet5(), torch.zeros(0, 1, 32, 32), torch.zeros(0, dtype=torch.long),
                                    return_predictions=True)
    assert errors == 0 and loss == 0.0 and pred.shape == (0,)


@pytest.mark.parametrize("bad", [
    dict(epochs=0), dict(batch_size=0), dict(batch_size=1.0), dict(lr=0.0), dict(lr=float("nan")),
    dict(eta_scale=-1.0), dict(mu=None), dict(mu=float("inf")), dict(max_step=0), dict(max_step="big"),
    dict(momentum=1.0),
    dict(momentum=-0.1), dict(seed=-1), dict(seed=2**32), dict(train_limit=0), dict(test_limit=True),
    dict(optimizer="lbfgs"), dict(variant="tiny"), dict(distort=1), dict(fused="yes"), dict(init="xavier"),
    dict(init="he"), dict(hessian_samples=0),
])
def test_train_config_validation(bad):
    with pytest.raises(ValueError):
        T.TrainConfig(**bad).validate()


def test_train_config_defaults_resolve_per_optimizer_and_variant():
    paper = T.TrainConfig().resolved()
    assert (paper.batch_size, paper.lr, paper.eta_scale, paper.mu, paper.max_step, paper.init) == \
        (1, None, 1.0, 0.02, 5e-4, "paper")  # the paper's recipe, unchanged
    for (optimizer, variant), d in T.DEFAULTS.items():
        cfg = T.TrainConfig(optimizer=optimizer, variant=variant).resolved().validate()
        assert all(getattr(cfg, k) == v for k, v in d.items())
        assert cfg.batch_size == (1 if optimizer == "sdlm" else 128 if (optimizer, variant) == ("adam", "keras") else 32)
    assert T.TrainConfig(optimizer="adam", batch_size=8, lr=0.1).resolved().batch_size == 8  # given wins
    assert T.TrainConfig(max_step=None).resolved().max_step is None  # the paper's exact steps, not the default
    assert T.TrainConfig(variant="modern").resolved().max_step == 0.002
