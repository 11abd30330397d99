"""SDLM's settings reach the updates (issue 24 item 8): a mutant that ignored --eta-scale, or
estimated h_kk from 1 sample instead of --hessian-samples, passed every test."""
import json

import pytest
import torch

from lenet5_fast import LeNet5, fused
from lenet5_fast import train as T
from lenet5_fast.checkpoint import load_checkpoint
from lenet5_fast.cli import main
from lenet5_fast.optim import SDLM, gauss_newton_diagonal, paper_eta


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 32, 32, generator=g) * 1.275 - 0.1
    return x, torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("fused_run", [True, False], ids=["fused", "op-by-op"])
def test_eta_scale_scales_every_pass_eta_and_changes_the_updates(tmp_path, fused_run):
    x, y = _data()
    data = ((x[:48], y[:48]), (x[48:], y[48:]))
    weights = {}
    for scale in (1.0, 0.25):
        out = tmp_path / f"s{scale}"
        cfg = T.TrainConfig(epochs=3, eta_scale=scale, hessian_samples=16, mu=1.0, seed=1, fused=fused_run)
        m = T.train(cfg, None, out, data=data, log=lambda s: None, progress_stream=open("/dev/null", "w"))
        assert [h["lr"] for h in m["history"]] == pytest.approx([paper_eta(p) * scale for p in range(3)])
        ck = load_checkpoint(out / "checkpoint.pt")
        assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(paper_eta(2) * scale)
        weights[scale] = ck["model"]
    # with mu = 1 the step bound (eta / 0.0005 <= 1) is not reached: the steps are eta / (1 + h),
    # and a quarter of eta moves the weights clearly less far (half, measured)
    torch.manual_seed(1)  # both runs start from seed 1's initial weights
    start = LeNet5().state_dict()
    moved = {s: sum(float((w[k] - start[k]).abs().sum()) for k in start if k != "output.weight")
             for s, w in weights.items()}
    assert moved[0.25] < 0.7 * moved[1.0], moved


def test_the_cli_passes_eta_scale_and_hessian_samples(mnist_dir, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--data", str(mnist_dir), "--out", str(out), "--epochs", "1", "--train-limit", "100",
                 "--test-limit", "50", "--eta-scale", "0.5", "--hessian-samples", "37", "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["eta_scale"] == 0.5 and m["config"]["hessian_samples"] == 37
    assert m["history"][0]["lr"] == pytest.approx(paper_eta(0) * 0.5)


@pytest.mark.parametrize("fused_run", [True, False], ids=["fused", "op-by-op"])
def test_h_kk_is_estimated_on_hessian_samples_samples(monkeypatch, fused_run, tmp_path):
    seen = []
    real_fused, real_layers = fused.sdlm_hessian, gauss_newton_diagonal

    def spy_fused(model, xs, ys):
        seen.append(xs.shape[0])
        return real_fused(model, xs, ys)

    def spy_layers(model, xs, ys):
        seen.append(xs.shape[0])
        return real_layers(model, xs, ys)

    monkeypatch.setattr(T._fused, "sdlm_hessian", spy_fused)
    monkeypatch.setattr(T, "gauss_newton_diagonal", spy_layers)
    x, y = _data(80)
    cfg = T.TrainConfig(hessian_samples=37, fused=fused_run).resolved()
    model = LeNet5()
    opt = T.make_optimizer(model, cfg)
    T.run_pass(model, opt, x, y, torch.arange(80), cfg, hessian_idx=torch.randperm(80)[:37])
    assert seen == [37]
    seen.clear()
    T.run_pass(model, opt, x, y, torch.arange(80), cfg, hessian_idx=None)  # resumed mid-pass: keeps h_kk
    assert seen == []
    T.train(T.TrainConfig(epochs=2, hessian_samples=37, fused=fused_run), None, tmp_path / "run",
            data=((x[:64], y[:64]), (x[64:], y[64:])), log=lambda s: None, progress_stream=open("/dev/null", "w"))
    assert seen == [37, 37]  # the trainer draws that many for every pass


@pytest.mark.parametrize("estimate", ["fused", "layers"])
def test_h_kk_is_the_mean_over_all_its_samples(estimate):
    """The diagonal over 6 samples is the mean of the 6 one-sample diagonals (not one sample's)."""
    torch.manual_seed(0)
    model = LeNet5()
    x, y = _data(6, seed=3)
    f = fused.sdlm_hessian if estimate == "fused" else gauss_newton_diagonal
    whole = f(model, x, y)
    each = [f(model, x[i:i + 1], y[i:i + 1]) for i in range(6)]
    for k, h in enumerate(whole):
        mean = torch.stack([e[k] for e in each]).mean(0)
        torch.testing.assert_close(h, mean, rtol=2e-4, atol=1e-9)
        if k == 0:  # C1's: one sample's differs from the mean by more than that tolerance
            assert not torch.allclose(each[0][k], mean, rtol=2e-4, atol=1e-9)


def test_set_hessian_changes_the_steps():
    model = LeNet5()
    opt = SDLM([p for p in model.parameters() if p.requires_grad], lr=1e-3, mu=0.02, max_step=None)
    opt.set_hessian([torch.zeros_like(p) for p in model.parameters() if p.requires_grad])
    a = [s.clone() for s in opt.step_sizes()]
    opt.set_hessian([torch.ones_like(p) for p in model.parameters() if p.requires_grad])
    b = opt.step_sizes()
    for s, t in zip(a, b):
        torch.testing.assert_close(s, torch.full_like(s, 1e-3 / 0.02))
        torch.testing.assert_close(t, torch.full_like(t, 1e-3 / 1.02))
