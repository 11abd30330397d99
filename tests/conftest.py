import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("LENET5_TEST_MNIST", REPO.parent / "shared" / "data" / "mnist"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_dir():
    if not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found at {MNIST_DIR}")
    return MNIST_DIR
