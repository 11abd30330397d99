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


# The float32 kernel families a test runs at: (SIMD level, the 16-lane code on AVX2 registers).
SIMD_LEVELS = [(0, False), (1, False), (1, True), (2, False)]
SIMD_LEVEL_IDS = ["portable", "avx2", "avx512-code-on-avx2", "avx512"]


@pytest.fixture(params=SIMD_LEVELS, ids=SIMD_LEVEL_IDS)
def level(request):
    """Runs the test at each SIMD level this CPU has (skipping the others), then restores the best."""
    from lenet5_fast import _C

    lvl, wide = request.param
    best = _C.simd_supported()
    if lvl > best:
        pytest.skip(f"this CPU has SIMD level {best} < {lvl}")
    _C.set_simd_level(lvl)
    _C._set_wide_emulation(wide)
    yield lvl
    _C.set_simd_level(-1)
    _C._set_wide_emulation(False)
