"""`--dataset` (mnist, fashion-mnist, cifar10) and `--nesterov` in the trainer and the CLI."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_files import write_batches
from lenet5_fast import cli
from lenet5_fast import train as T
from lenet5_fast.cli import main
from lenet5_fast.data import DataError
from lenet5_fast.model import LeNet5

FASHION_DIR = Path(T.FASHION_MNIST_DIR)
needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"Fashion-MNIST not installed in {FASHION_DIR} "
                                          f"(apt-get install dataset-fashion-mnist)")


def test_cli_knows_the_trainers_datasets():
    assert cli.DATASET_CHOICES == T.DATASETS


def _idx_set(d: Path, n: int = 20):
    """Valid IDX files under the (Fashion-)MNIST names, with content no known dataset has."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 3]) + np.array([n, 28, 28], ">u4").tobytes() + images.tobytes()))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(bytes([0, 0, 8, 1]) + np.array([n], ">u4").tobytes() + labels.tobytes()))


def test_fashion_mnist_is_read_from_debians_directory_by_default(tmp_path, monkeypatch):
    fake = tmp_path / "usr-share-datasets-fashion-mnist"
    _idx_set(fake)
    monkeypatch.setattr(T, "FASHION_MNIST_DIR", str(fake))
    # generated files under the known names fail the md5 check, which names where they were read
    with pytest.raises(DataError, match=f"{fake}/t10k-images-idx3-ubyte.gz: md5 mismatch"):
        T.load_dataset("fashion-mnist", None, "test")


def test_fashion_mnist_cannot_be_downloaded(tmp_path, capsys):
    assert main(["train", "--dataset", "fashion-mnist", "--download", "--data", str(tmp_path),
                 "--out", str(tmp_path / "run")]) == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err


def test_mnist_is_not_fashion_mnist(mnist_dir, capsys, tmp_path):
    assert main(["train", "--dataset", "fashion-mnist", "--data", str(mnist_dir), "--out", str(tmp_path)]) == 2
    assert "is MNIST, not Fashion-MNIST" in capsys.readouterr().err


@needs_fashion
def test_train_on_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--out", str(out), "--epochs", "1", "--train-limit", "2000",
                 "--test-limit", "500", "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["dataset"] == "fashion-mnist" and m["test_error"] < 50.0  # chance is 90%
    assert "on fashion-mnist" in capsys.readouterr().out
    with pytest.raises(DataError, match="is Fashion-MNIST, not MNIST"):
        T.load_dataset("mnist", str(FASHION_DIR), "test", limit=10)


def test_nesterov_optimizer():
    model = LeNet5(variant="modern")
    opt = T.make_optimizer(model, T.TrainConfig(optimizer="sgd", nesterov=True, momentum=0.9, lr=0.1).validate())
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["nesterov"] is True
    assert T.make_optimizer(model, T.TrainConfig(optimizer="sgd")).param_groups[0]["nesterov"] is False
    for bad in (dict(optimizer="adam", nesterov=True), dict(optimizer="sgd", momentum=0.0, nesterov=True)):
        with pytest.raises(ValueError, match="nesterov needs the sgd optimizer with a momentum > 0"):
            T.TrainConfig(**bad).validate()
    with pytest.raises(ValueError, match="dataset must be one of"):
        T.TrainConfig(dataset="svhn").validate()


def test_nesterov_cli(tmp_path):
    d = tmp_path / "cifar"
    write_batches(d, per_batch=8, n_test=8)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data", str(d), "--variant", "modern", "--optimizer", "sgd",
                 "--lr", "0.01", "--nesterov", "--batch-size", "10", "--epochs", "1", "--out", str(out)]) == 0
    cfg = json.loads((out / "metrics.json").read_text())["config"]
    assert cfg["nesterov"] is True and cfg["momentum"] == 0.9 and cfg["dataset"] == "cifar10"
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["nesterov"] is True
