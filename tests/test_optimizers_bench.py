"""bench/optimizers.py end to end on a tiny configuration: every stage runs, writes one JSON per
run and the table; a second call trains nothing; an interrupted run resumes from its checkpoint
and makes the same updates."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "optimizers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_optimizers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _args(mnist_dir, tmp_path, *extra):
    return ["--data", str(mnist_dir), "--train-limit", "300", "--test-limit", "100", "--tune-epochs", "1",
            "--seeds", "0", "--threads", "1", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            *extra]


def test_pytorch_default_init():
    """The bench's default initial weights: the trainer's init "pytorch" (torch.nn's default)."""
    from lenet5_fast import train as T
    from lenet5_fast.model import LeNet5

    torch.manual_seed(0)
    m = T.init_weights(LeNet5(variant="modern"), "pytorch")
    assert float(m.c1.weight.abs().max()) <= 1 / 5 and float(m.c1.weight.abs().max()) > 0.19   # 1/sqrt(25)
    assert float(m.c5.weight.abs().max()) <= 1 / 20 and float(m.c5.weight.abs().max()) > 0.049  # 1/sqrt(400)
    assert float(m.c5.bias.abs().max()) <= 1 / 20 and float(m.c5.bias.abs().max()) > 0.04       # biases too
    torch.manual_seed(0)
    paper = LeNet5(variant="modern")
    assert float(paper.c5.weight.abs().max()) <= 2.4 / 400


def test_all_stages_resumable(bench, mnist_dir, tmp_path, monkeypatch):
    assert bench.main(_args(mnist_dir, tmp_path, "--only", "adam", "nesterov", "--max-epochs", "1")) == 0
    res = tmp_path / "res"
    names = sorted(p.stem for p in res.glob("*.json"))
    tuned = {name: bench.tuned_lr(name, res, "pytorch") for name in ("adam", "nesterov")}
    assert tuned["adam"] in bench.TUNE_LRS["adam"] and tuned["nesterov"] in bench.TUNE_LRS["nesterov"]
    assert names == sorted(["their-adam-lr0.001-seed0", "their-nesterov-lr0.1-seed0"]
                           + [f"tune-adam-lr{lr:g}-seed0" for lr in bench.TUNE_LRS["adam"]]
                           + [f"tune-nesterov-lr{lr:g}-seed0" for lr in bench.TUNE_LRS["nesterov"]]
                           # a tuned rate equal to their setting's reuses the "their" run
                           + [f"tuned-{name}-lr{lr:g}-seed0" for name, lr in tuned.items()
                              if lr != bench._setting(name).lr])
    val = {lr: json.loads((res / f"tune-adam-lr{lr:g}-seed0.json").read_text())["history"][-1]["test_error"]
           for lr in bench.TUNE_LRS["adam"]}
    assert val[tuned["adam"]] == min(val.values())  # the lowest validation error
    r = json.loads((res / "their-nesterov-lr0.1-seed0.json").read_text())
    assert r["status"] == "complete" and r["config"]["nesterov"] and r["config"]["momentum"] == 0.9
    assert r["config"]["variant"] == "modern" and r["config"]["batch_size"] == 64 and len(r["history"]) == 1
    assert r["split"] == "test" and json.loads((res / "tune-adam-lr0.001-seed0.json").read_text())["split"] != "test"
    table = (res / "optimizers.md").read_text()
    assert "| adam | lr 0.001 | 1 | 97.02 / 97.36 | " in table and "Smoke-test configuration" in table
    assert "| sgd | lr 1 | 1 | 87.04 / 88.23 | not run |" in table
    adam_row = next(line for line in table.splitlines() if line.startswith("| adam | lr 0.001 | 1 |")).split(" | ")
    assert adam_row[7] != "not run" and "tuning" not in adam_row[7]  # tuned (reused or run) is in the table
    if tuned["adam"] == 0.001:
        assert adam_row[7] == adam_row[4]  # the same run as their setting
    assert list((tmp_path / "runs" / "their-adam-lr0.001-seed0").glob("checkpoint-pass*")) == []

    # a second call trains nothing
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(bench, "train", no_training)
    assert bench.main(_args(mnist_dir, tmp_path, "--only", "adam", "nesterov", "--max-epochs", "1")) == 0
    monkeypatch.undo()

    # an interrupted run (its result JSON not written yet) continues from its checkpoint
    (res / "their-adam-lr0.001-seed0.json").unlink()
    assert bench.main(_args(mnist_dir, tmp_path, "--only", "adam", "--stages", "their", "--max-epochs", "2")) == 0
    resumed = json.loads((res / "their-adam-lr0.001-seed0.json").read_text())
    assert len(resumed["history"]) == 2
    fresh_dir = tmp_path / "fresh"
    assert bench.main(_args(mnist_dir, fresh_dir, "--only", "adam", "--stages", "their", "--max-epochs", "2")) == 0
    fresh = json.loads((fresh_dir / "res" / "their-adam-lr0.001-seed0.json").read_text())
    assert [h["test_error"] for h in resumed["history"]] == [h["test_error"] for h in fresh["history"]]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in fresh["history"]]
