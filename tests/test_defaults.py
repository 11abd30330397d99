"""Defaults that train, and runs that stop when they do not: every optimizer x variant at its
defaults learns MNIST in a short run; a diverging run (the paper's exact SDLM steps, a too
large learning rate, weights gone non-finite or saturated) stops with a clear message and keeps
its last good checkpoint."""
import io
import json

import pytest
import torch

import lenet5_fast as L
from lenet5_fast import train as T
from lenet5_fast.checkpoint import load_checkpoint
from lenet5_fast.cli import main


@pytest.fixture(scope="module")
def small_mnist(mnist_dir):
    from lenet5_fast.data import load_tensors

    return load_tensors(mnist_dir, "train", limit=2000), load_tensors(mnist_dir, "test", limit=500)


@pytest.mark.parametrize("optimizer,variant", list(T.DEFAULTS))
def test_every_optimizer_and_variant_trains_at_its_defaults(optimizer, variant, small_mnist, tmp_path):
    """Nothing but the optimizer and the variant given, on 2,000 digits: 1-2 passes of
    per-sample updates (sdlm; the modern variant's op by op), 5 passes of batches of 32 (sgd,
    adam). (Before the per-optimizer defaults, sgd diverged and the modern variant with sgd or
    sdlm stayed at chance, 89-91% error.)"""
    passes = {("sdlm", "classic"): 2, ("sdlm", "modern"): 1}.get((optimizer, variant), 5)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = T.train(T.TrainConfig(epochs=passes, optimizer=optimizer, variant=variant),
                    None, tmp_path,
                    data=small_mnist, log=lambda s: None, progress_stream=io.StringIO())
    finally:
        torch.set_num_threads(old)
    assert m["complete"] and m["config"]["batch_size"] == T.DEFAULTS[(optimizer, variant)]["batch_size"]
    assert m["test_error"] < 20.0, [h["test_error"] for h in m["history"]]
    assert m["history"][-1]["train_loss"] < m["start_loss"]


@pytest.mark.parametrize("corrupt,reason", [
    ("nan", "no longer finite"),
    ("saturate", "(not below its start|saturated)"),
])
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(corrupt, reason, tmp_path, monkeypatch):
    """Pass 2 goes wrong (simulated by damaging the weights after its updates)."""
    real = T.run_pass
    passes = []

    def run_pass(model, *args, **kwargs):
        res = real(model, *args, **kwargs)
        passes.append(1)
        if len(passes) == 2:
            with torch.no_grad():
                if corrupt == "nan":
                    model.c1.weight[0, 0, 0, 0] = float("nan")
                else:
                    model.f6.weight.mul_(1000.0)
        return res

    monkeypatch.setattr(T, "run_pass", run_pass)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(100, 1, 32, 32, generator=g) * 1.275 - 0.1, torch.randint(0, 10, (100,), generator=g)
    data = ((x[:80], y[:80]), (x[80:], y[80:]))
    with pytest.raises(T.TrainingDiverged, match=f"pass 2.*{reason}.*keeps pass 1, the last good one"):
        T.train(T.TrainConfig(epochs=3, optimizer="adam"), None, tmp_path, data=data, log=lambda s: None,
                progress_stream=io.StringIO())
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["meta"]["pass_index"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert not (tmp_path / "checkpoint-pass02.pt").exists()
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["diverged"]["pass"] == 2 and not m["complete"] and m["passes"] == 1


def test_the_papers_exact_steps_diverge_and_the_cli_says_so(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(mnist_dir), "--out", str(out), "--max-step", "none", "--epochs", "2",
               "--train-limit", "2000", "--test-limit", "200", "--threads", "1"])
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar's line
    assert rc == 2 and err.startswith("lenet5-fast: error: training stopped in pass 1"), err
    assert "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists()


def test_output_problem_sees_saturated_dead_and_constant_outputs():
    x = torch.rand(64, 1, 32, 32) * 1.275 - 0.1
    torch.manual_seed(0)
    classic = L.LeNet5()
    modern = T.init_weights(L.LeNet5(variant="modern"), "he")
    assert T.output_problem(classic, x) is None and T.output_problem(modern, x) is None
    with torch.no_grad():
        classic.f6.bias.fill_(10.0)  # every F6 unit at +1.7159
        modern.f6.bias.fill_(-100.0)  # every F6 ReLU at 0
    assert "saturated" in T.output_problem(classic, x)
    assert "dead" in T.output_problem(modern, x)
    flat = L.LeNet5(variant="modern")
    with torch.no_grad():
        flat.c1.weight.zero_()  # every image gives the same C1 maps, so the same outputs
        flat.f6.bias.fill_(1.0)  # (and F6 stays alive)
    assert "no longer depend on the input" in T.output_problem(flat, x)


def test_he_init_is_seeded_and_only_for_the_modern_variant():
    torch.manual_seed(3)
    a = T.init_weights(L.LeNet5(variant="modern"), "he")
    torch.manual_seed(3)
    b = T.init_weights(L.LeNet5(variant="modern"), "he")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    w = a.c1.weight.detach().abs().max()
    assert 2.4 / 25 < float(w) <= (6 / 25) ** 0.5  # beyond the paper's bound, within He's
    with pytest.raises(ValueError, match="classic"):
        T.init_weights(L.LeNet5(), "he")
