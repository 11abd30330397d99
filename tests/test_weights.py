"""The pretrained weights shipped in the package: the manifest's provenance, each file's sha256,
and each one's MNIST test error, evaluated now, exactly as the manifest says."""
import hashlib
import json
import re
import shutil

import pytest
import torch

import lenet5_fast as L
from lenet5_fast import weights
from lenet5_fast.train import evaluate

NAMES = ["modern-adam", "paper", "paper-distort"]


def test_list_and_manifest_provenance():
    assert weights.list() == NAMES
    assert weights.DEFAULT == "paper-distort" and weights.manifest()["default"] == weights.DEFAULT
    for name in NAMES:
        e = weights.info(name)
        assert e["name"] == name and e["file"] == f"{name}.pt"
        assert e["command"].startswith("lenet5-fast train --data DIR --out RUN") and "--threads 1" in e["command"]
        assert e["seed"] == 0 and re.fullmatch(r"[0-9a-f]{40}", e["commit"])
        assert e["test_samples"] == 10000 and e["test_error"] == pytest.approx(e["test_errors"] / 100)
        assert re.fullmatch(r"[0-9a-f]{64}", e["sha256"])
    assert weights.info("paper-distort")["config"]["distort"] is True
    modern = weights.info("modern-adam")
    assert modern["variant"] == "modern" and "--optimizer adam" in modern["command"]


@pytest.mark.parametrize("name", NAMES)
def test_shipped_file_matches_its_sha256(name):
    file = weights.path(name)
    assert hashlib.sha256(file.read_bytes()).hexdigest() == weights.info(name)["sha256"]
    # a plain checkpoint: tensors and plain data, readable with weights_only=True (no code runs)
    ck = torch.load(file, map_location="cpu", weights_only=True)
    assert ck["format"] == "lenet5_fast.checkpoint" and ck["optimizer"] is None


@pytest.mark.parametrize("name", NAMES)
def test_shipped_weights_reproduce_their_test_error(name, mnist_dir):
    from lenet5_fast.data import load_tensors

    model = L.LeNet5.from_pretrained(name)
    e = weights.info(name)
    assert isinstance(model, L.LeNet5) and model.variant == e["variant"] and not model.training
    assert sum(p.numel() for p in model.parameters()) == e["parameters"]
    x, y = load_tensors(mnist_dir, "test")
    errors, _ = evaluate(model, x, y)
    assert errors == e["test_errors"], (name, errors, e["test_errors"])


def test_damaged_or_unknown_weights_are_refused(tmp_path, monkeypatch):
    with pytest.raises(weights.WeightsError, match="available: modern-adam, paper, paper-distort"):
        L.LeNet5.from_pretrained("resnet")
    copy = tmp_path / "w"
    shutil.copytree(weights.path("paper").parent, copy)
    data = bytearray((copy / "paper.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "paper.pt").write_bytes(bytes(data))
    monkeypatch.setattr(weights, "_folder", lambda: copy)
    with pytest.raises(weights.WeightsError, match="damaged"):
        weights.load("paper")
    (copy / "paper.pt").unlink()
    with pytest.raises(weights.WeightsError, match="missing"):
        weights.load("paper")


def test_cli_lists_the_weights(capsys):
    from lenet5_fast.cli import main

    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in NAMES) and "(default)" in out
    assert main(["weights", "--json"]) == 0
    assert [e["name"] for e in json.loads(capsys.readouterr().out)] == NAMES
    assert main(["weights", "--path", "paper"]) == 0
    assert capsys.readouterr().out.strip() == str(weights.path("paper"))


def test_from_pretrained_defaults_to_the_default_weights():
    a, b = L.LeNet5.from_pretrained(), weights.load(weights.DEFAULT)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    x = torch.zeros(1, 1, 32, 32)
    assert torch.equal(a(x), b(x))
