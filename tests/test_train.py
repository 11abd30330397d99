"""The trainer's parts: checkpoints (round trip, atomic writes, corrupt and foreign files),
exact resume, distortions, the fused-engine dispatch, the digit normalisation."""
import io
import json
import pickle

import numpy as np
import pytest
import torch

import lenet5_fast as L
from lenet5_fast import train as T
from lenet5_fast.checkpoint import (CheckpointError, atomic_write_bytes, load_checkpoint, model_from_checkpoint,
                                    save_checkpoint)
from lenet5_fast.distort import distort
from lenet5_fast.imageio import normalize_digit
from lenet5_fast.optim import SDLM


def _toy_data(n_train=48, n_test=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_test, 1, 32, 32, generator=g) * 1.275 - 0.1
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def _quiet(cfg, out, **kw):
    return T.train(cfg, None, out, data=kw.pop("data", _toy_data()), log=lambda s: None,
                   progress_stream=io.StringIO(), **kw)


def test_checkpoint_round_trip(tmp_path):
    model = L.LeNet5()
    opt = SDLM(model.parameters())
    opt.update_hessian(model, torch.randn(4, 1, 32, 32), torch.tensor([1, 2, 3, 4]))
    path = tmp_path / "c.pt"
    save_checkpoint(path, model, opt, history=[{"pass": 1, "test_error": 1.5}], note="x")
    ck = load_checkpoint(path)
    assert ck["meta"]["history"][0]["test_error"] == 1.5 and ck["optimizer_name"] == "SDLM"
    m2 = model_from_checkpoint(path)
    for (k, a), (k2, b) in zip(model.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(model(x), m2(x))
    opt2 = SDLM(m2.parameters())
    opt2.load_state_dict(ck["optimizer"])
    for a, b in zip(opt.step_sizes(), opt2.step_sizes()):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


def test_checkpoint_bad_files_are_clear_errors(tmp_path):
    good = tmp_path / "good.pt"
    save_checkpoint(good, L.LeNet5())
    data = good.read_bytes()
    cases = {
        "truncated.pt": data[: len(data) // 2],
        "garbage.pt": b"\x00not a checkpoint" * 10,
        "foreign.pt": None,  # a torch file from elsewhere
        "pickle.pt": pickle.dumps({"format": "lenet5_fast.checkpoint"}),
    }
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    ck = torch.load(good, weights_only=True)
    ck["version"] = 99
    torch.save(ck, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")


def test_checkpoint_loading_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import sys; sys.modules['lenet5_fast'].PWNED = True",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "lenet5_fast.checkpoint", "version": 1, "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not hasattr(L, "PWNED")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def failing(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(path, failing)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


@pytest.mark.parametrize("optimizer,batch,distorted", [("sdlm", 1, True), ("adam", 8, False)])
def test_resume_gives_the_same_weights(tmp_path, optimizer, batch, distorted):
    cfg = dict(optimizer=optimizer, batch_size=batch, distort=distorted, hessian_samples=16, eta_scale=0.1, seed=3)
    full = _quiet(T.TrainConfig(epochs=2, **cfg), tmp_path / "full")
    _quiet(T.TrainConfig(epochs=1, **cfg), tmp_path / "split")
    resumed = _quiet({"epochs": 2}, tmp_path / "split", resume=True)  # the rest comes from the checkpoint
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["test_error"] for h in full["history"]] == [h["test_error"] for h in resumed["history"]]
    assert resumed["complete"] and resumed["passes"] == 2
    # and the weights did move
    first = load_checkpoint(tmp_path / "split" / "checkpoint-pass01.pt")
    assert any(not torch.equal(a["model"][k], first["model"][k]) for k in a["model"])


def test_train_refuses_to_overwrite_a_run(tmp_path):
    _quiet(T.TrainConfig(epochs=1, optimizer="sgd", batch_size=32), tmp_path)
    with pytest.raises(ValueError, match="--resume"):
        _quiet(T.TrainConfig(epochs=1, optimizer="sgd", batch_size=32), tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        T.TrainConfig(batch_size=0).validate()
    with pytest.raises(ValueError, match="optimizer"):
        T.TrainConfig(optimizer="lbfgs").validate()


def test_metrics_json_and_plot(tmp_path):
    m = _quiet(T.TrainConfig(epochs=2, optimizer="adam", batch_size=16), tmp_path)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["complete"] and on_disk["passes"] == 2 and len(on_disk["history"]) == 2
    for h in on_disk["history"]:
        assert {"pass", "train_error", "test_error", "running_train_loss", "seconds", "lr"} <= set(h)
        assert 0 <= h["test_error"] <= 100
    assert on_disk["test_error"] == m["history"][-1]["test_error"]
    assert (tmp_path / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint-pass01.pt").exists() and (tmp_path / "checkpoint-pass02.pt").exists()


def test_distort_is_seeded_and_preserves_the_background():
    x = torch.full((50, 1, 32, 32), -0.1)
    x[:, :, 10:22, 12:20] = 1.175
    a = distort(x, torch.Generator().manual_seed(5), p_original=0.0)
    b = distort(x, torch.Generator().manual_seed(5), p_original=0.0)
    c = distort(x, torch.Generator().manual_seed(6), p_original=0.0)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= -0.1 - 1e-6 and a.max() <= 1.175 + 1e-6
    assert torch.allclose(a[:, :, :2], torch.full_like(a[:, :, :2], -0.1))  # borders stay background
    assert (a - x).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image moved
    ident = distort(x, torch.Generator().manual_seed(5), p_original=0.0, shift=0, scale=0, squeeze=0, shear=0)
    torch.testing.assert_close(ident, x)
    assert torch.equal(distort(x, torch.Generator().manual_seed(5), p_original=1.0), x)


@pytest.mark.parametrize("batch,no_fused", [(1, False), (1, True), (4, False), (4, True)])
def test_run_pass_dispatch(monkeypatch, batch, no_fused):
    """SDLM at batch 1 with the fused engine: one native pass (no model call); at batch 4: the
    fused op through autograd, h from the fused Gauss-Newton; --no-fused: layer by layer."""
    from lenet5_fast import fused

    calls = []
    for name in ("sdlm_pass", "sdlm_hessian", "run"):
        real = getattr(fused, name)
        monkeypatch.setattr(fused, name, lambda *a, _n=name, _r=real: calls.append(_n) or _r(*a))
    (x, y), _ = _toy_data(40, 1)
    model = L.LeNet5()
    cfg = T.TrainConfig(optimizer="sdlm", batch_size=batch, fused=not no_fused)
    opt = T.make_optimizer(model, cfg)
    layer_calls = []
    real_c1 = type(model.c1).forward
    monkeypatch.setattr(type(model.c1), "forward", lambda self, xx: layer_calls.append(1) or real_c1(self, xx))
    loss, errors, used = T.run_pass(model, opt, x, y, torch.randperm(40), cfg, torch.arange(10))
    assert used is (not no_fused)
    assert ("sdlm_pass" in calls) is (batch == 1 and not no_fused)
    assert ("sdlm_hessian" in calls) is (not no_fused)
    assert bool(layer_calls) is no_fused  # the layers run only without the fused engine
    assert errors >= 0 and loss > 0


def test_progress_line_shows_rate_eta_and_loss():
    s = io.StringIO()
    p = T.Progress(100, "pass 1/3", stream=s)
    p.update(40, 0.5, 12.5, final=True)
    line = s.getvalue()
    assert "40/100" in line and "samples/s" in line and "<" in line and "loss 0.5000" in line and "12.50%" in line


def test_normalize_digit_recovers_an_mnist_digit(mnist_dir):
    from lenet5_fast.data import load_mnist

    images, _ = load_mnist(mnist_dir, "test")
    for k in range(5):
        digit = images[k].astype(np.float64) / 255
        # a "photo": 5x larger, dark ink on light grey paper, off-centre, with some noise
        big = np.kron(digit, np.ones((5, 5)))
        photo = np.full((200, 260), 0.85)
        photo[30:170, 90:230] = 0.85 - 0.75 * big
        photo += np.random.default_rng(k).normal(0, 0.02, photo.shape)
        for img in (photo, 1.0 - photo):  # and white ink on black
            out = normalize_digit(img).astype(np.float64)
            corr = np.corrcoef(out.ravel(), images[k].astype(np.float64).ravel())[0, 1]
            assert corr > 0.9, (k, corr)
    with pytest.raises(ValueError, match="no digit"):
        normalize_digit(np.full((30, 30), 0.7))


def test_training_without_matplotlib_says_so_and_finishes(tmp_path, monkeypatch):
    def missing():
        raise T.MissingExtra("matplotlib is not installed; install it with `pip install 'lenet5_fast[plot]'`")

    monkeypatch.setattr(T, "_pyplot", missing)
    logs = []
    m = T.train(T.TrainConfig(epochs=1, optimizer="sgd", batch_size=16), None, tmp_path, data=_toy_data(),
                log=logs.append, progress_stream=io.StringIO())
    assert m["complete"] and not (tmp_path / "errors.png").exists()
    assert any("errors.png not written" in s and "matplotlib is not installed" in s for s in logs)


def test_evaluation_in_the_background_changes_no_output(tmp_path, monkeypatch):
    """With 2 threads, each fused SDLM pass's evaluation runs in the background while the next
    pass trains; the logged lines, metrics.json and checkpoints are those of the sequential
    run (1 thread), in the same order, timings aside."""
    import re

    submitted = []

    class Recording(T.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            submitted.append(args[0])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(T, "ThreadPoolExecutor", Recording)
    timing = {"seconds", "train_seconds", "samples_per_s"}
    runs = {}
    for threads in (1, 2):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            logs = []
            T.train(T.TrainConfig(epochs=3, hessian_samples=16, eta_scale=0.1, seed=4), None, tmp_path / str(threads),
                    data=_toy_data(), log=logs.append, progress_stream=io.StringIO())
        finally:
            torch.set_num_threads(old)
        lines = [re.sub(r"[\d.]+s training, \d+ samples/s|\d threads", "", s) for s in logs]
        passes = []
        for p in (1, 2, 3):
            ck = load_checkpoint(tmp_path / str(threads) / f"checkpoint-pass{p:02d}.pt")
            hist = [{k: v for k, v in h.items() if k not in timing} for h in ck["meta"]["history"]]
            passes.append((ck["model"], ck["optimizer"]["state"], hist))
        metrics = json.loads((tmp_path / str(threads) / "metrics.json").read_text())
        runs[threads] = (lines, passes, [{k: v for k, v in h.items() if k not in timing} for h in metrics["history"]])
    assert submitted == [0, 1]  # passes 1 and 2 were evaluated in the background (with 2 threads)
    (lines1, passes1, hist1), (lines2, passes2, hist2) = runs[1], runs[2]
    assert lines1 == lines2 and [s.split(":")[0] for s in lines1][-3:] == ["pass 1/3", "pass 2/3", "pass 3/3"]
    assert hist1 == hist2 and all(h["fused"] for h in hist1)
    for (m1, o1, h1), (m2, o2, h2) in zip(passes1, passes2):
        assert h1 == h2
        assert all(torch.equal(m1[k], m2[k]) for k in m1)
        assert all(torch.equal(o1[i]["hessian"], o2[i]["hessian"]) for i in o1)
