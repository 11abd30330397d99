"""The package as a user gets it: the installed version is the one in __init__.py, the console
script runs `summary` and `predict` (on tests/data/four.jpg, a photo-like 4 drawn with
test_predict's ink(4) and photo() helpers, with the shipped weights), and a short training run
learns. Together with test_ops.py this is the smoke test every built wheel passes in a fresh
venv (`.ci/wheel --smoke`, scripts/build_wheels.sh)."""
import io
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from package_env import package_env

import lenet5_fast
from lenet5_fast import train as T

FOUR = Path(__file__).parent / "data" / "four.jpg"


def _cli(*args):
    """`lenet5-fast ARGS`: the installed console script next to this interpreter, or
    `python -m lenet5_fast` when running from the source tree (no script installed); either way
    the child imports the package these tests imported (package_env)."""
    script = Path(sys.executable).parent / "lenet5-fast"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "lenet5_fast"]
    r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=300, env=package_env())
    assert r.returncode == 0, f"{cmd + list(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_the_installed_version_is_the_one_in_init():
    try:
        installed = metadata.version("lenet5_fast")
    except metadata.PackageNotFoundError:
        pytest.skip("lenet5_fast is not installed (run from the source tree)")
    dist_files = [str(f) for f in metadata.distribution("lenet5_fast").files or []]
    assert "lenet5_fast/__init__.py" in dist_files
    assert installed == lenet5_fast.__version__


def test_summary_from_the_command_line():
    s = json.loads(_cli("summary", "--json"))
    assert (s["total_parameters"], s["total_connections"]) == (60000, 340908)


def test_predict_reads_the_shipped_image_with_the_shipped_weights():
    r = [json.loads(line) for line in _cli("predict", "--json", str(FOUR)).splitlines()]  # JSON Lines
    assert len(r) == 1 and r[0]["class"] == 4 and not r[0]["rejected"], r
    assert set(r[0]["networks"]) == {"paper", "paper-distort", "modern-adam"}


def _learnable_data(n_train=2000, n_test=500, seed=0):
    """Ten classes, each a fixed random blot of ink on the paper's background (-0.1, ink 1.175),
    seen shifted by up to a pixel each way and with noise: separable, but only by learning."""
    g = torch.Generator().manual_seed(seed)
    blots = (torch.rand(10, 20, 20, generator=g) < 0.3).float() * 1.275 - 0.1
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    x = torch.full((n_train + n_test, 1, 32, 32), -0.1)
    shift = torch.randint(-1, 2, (n_train + n_test, 2), generator=g)
    for i in range(n_train + n_test):
        r, c = 6 + int(shift[i, 0]), 6 + int(shift[i, 1])
        x[i, 0, r:r + 20, c:c + 20] = blots[y[i]]
    x += 0.2 * torch.randn(x.shape, generator=g)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def test_a_short_training_learns(tmp_path):
    """Two passes of the paper's training (SDLM, per-sample updates, the fused engine) on 2,000
    samples: the test error falls from chance (90%) to a few percent."""
    m = T.train(T.TrainConfig(epochs=2, hessian_samples=200), None, tmp_path, data=_learnable_data(),
                log=lambda s: None, progress_stream=io.StringIO())
    assert m["config"]["fused"] and len(m["history"]) == 2
    assert m["history"][-1]["test_error"] < 10, m["history"]
    assert (tmp_path / "checkpoint.pt").exists()
