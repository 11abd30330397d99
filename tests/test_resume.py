"""A run directory is self-describing and resuming it is exact: a real ``lenet5-fast train``
process killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) in the middle of pass 2 and resumed
with nothing but ``--out RUN --resume`` ends with the same weights, bit for bit, as a run never
interrupted -- on the fused engine and op by op. Resume restores every setting and refuses
conflicting ones."""
import json
import os
import signal
import subprocess
import sys
import time


import pytest
import torch

from lenet5_fast import train as T
from lenet5_fast.checkpoint import load_checkpoint
from lenet5_fast.cli import main
from package_env import package_env

# The CLI in a child process, with one hook: in pass 2, once half of it is done, it creates
# MARKER and waits until MARKER.go exists (a SIGKILL never lets it get there).
CHILD = r"""
import os, sys, time
from lenet5_fast import train as T
marker = os.environ["LENET5_TEST_MARKER"]
real = T.Progress.update
def update(self, done, loss, err, final=False):
    real(self, done, loss, err, final)
    if self.desc.startswith("pass 2/") and not final and done >= self.total // 2 and not os.path.exists(marker):
        open(marker, "w").close()
        while not os.path.exists(marker + ".go"):
            time.sleep(0.01)
T.Progress.update = update
from lenet5_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""

ENGINES = {
    # the paper's recipe on the fused engine: 5,000 samples, so a pass has 3 chunks of updates
    "fused": ["--train-limit", "5000"],
    # op by op (the run remembers it), with distortions: 300 samples
    "op-by-op": ["--train-limit", "300", "--no-fused", "--distort", "--hessian-samples", "100"],
}


def _args(mnist_dir, out, engine):
    return ["train", "--data", str(mnist_dir), "--out", str(out), "--epochs", "2", "--test-limit", "200",
            "--threads", "1", *ENGINES[engine]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist_dir):
    runs = {}
    for engine in ENGINES:
        out = tmp_path_factory.mktemp(f"full-{engine}")
        assert main(_args(mnist_dir, out, engine)) == 0
        runs[engine] = load_checkpoint(out / "checkpoint.pt")
    return runs


def _start_child(args, tmp_path):
    marker = tmp_path / "marker"
    env = package_env(LENET5_TEST_MARKER=str(marker))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the training process ended (rc {proc.returncode}) before pass 2:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the training process did not reach pass 2")
        time.sleep(0.01)
    return proc, marker


def _same_run(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ha, hb = a["meta"]["history"], b["meta"]["history"]
    assert [h["test_error"] for h in ha] == [h["test_error"] for h in hb]
    assert [h["fused"] for h in ha] == [h["fused"] for h in hb]
    assert a["optimizer_name"] == b["optimizer_name"]
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["hessian"], sb["hessian"])


def _resume(out, capsys):
    capsys.readouterr()
    # nothing but --out and --resume: the data directory, the engine, the distortions and the
    # number of passes (2, not the default 20) come from the run itself
    assert main(["train", "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    return load_checkpoint(out / "checkpoint.pt")


@pytest.mark.parametrize("engine", list(ENGINES))
def test_sigkill_in_pass_2_then_resume_is_the_uninterrupted_run(engine, uninterrupted, mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    proc, _ = _start_child(_args(mnist_dir, out, engine), tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["meta"]["pass_index"] == 1 and len(ck["meta"]["history"]) == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    final = _resume(out, capsys)
    _same_run(final, uninterrupted[engine])
    assert [h["fused"] for h in final["meta"]["history"]] == [engine == "fused"] * 2
    m = json.loads((out / "metrics.json").read_text())
    assert m["complete"] and m["passes"] == 2 and m["config"]["epochs"] == 2


@pytest.mark.parametrize("engine", list(ENGINES))
def test_ctrl_c_saves_the_exact_state_and_resume_continues_it(engine, uninterrupted, mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    proc, marker = _start_child(_args(mnist_dir, out, engine), tmp_path)
    os.kill(proc.pid, signal.SIGINT)
    (tmp_path / "marker.go").touch()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Traceback" not in stdout
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("lenet5-fast: interrupted in pass 2") and f"--out {out} --resume" in last, stderr
    ck = load_checkpoint(out / "checkpoint.pt")
    n = 5000 if engine == "fused" else 300
    assert ck["meta"]["pass_index"] == 1 and 0 < ck["meta"]["position"] < n  # in the middle of pass 2
    assert not (out / "checkpoint-pass02.pt").exists()
    final = _resume(out, capsys)
    _same_run(final, uninterrupted[engine])


def test_resume_refuses_conflicting_settings_and_keeps_the_run(tmp_path, capsys):
    data = _toy()
    T.train(T.TrainConfig(epochs=1, optimizer="sgd", variant="modern", seed=4), None, tmp_path,
            data=data, log=lambda s: None, progress_stream=_Null())
    cfg = load_checkpoint(tmp_path / "checkpoint.pt")["meta"]["config"]
    assert cfg["batch_size"] == T.DEFAULTS[("sgd", "modern")]["batch_size"] and cfg["fused"] is True
    for flags, what in ((["--optimizer", "adam"], "--optimizer 'adam' (the run has 'sgd')"),
                        (["--variant", "classic"], "--variant"), (["--batch-size", "7"], "--batch-size 7"),
                        (["--lr", "0.5"], "--lr"), (["--seed", "5"], "--seed"), (["--distort"], "--distort"),
                        (["--no-fused", "--momentum", "0.5"], "--momentum 0.5"), (["--epochs", "0"], "--epochs")):
        assert main(["train", "--out", str(tmp_path), "--resume", *flags]) == 2
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1, err
    # settings equal to the run's are fine; fewer passes than done are not
    with pytest.raises(ValueError, match="already trained 1 passes"):
        T.train({"epochs": 0}, None, tmp_path, resume=True, data=data)
    m = T.train({"epochs": 2, "optimizer": "sgd", "seed": 4}, None, tmp_path, resume=True, data=data,
                log=lambda s: None, progress_stream=_Null())
    assert m["passes"] == 2 and m["config"]["seed"] == 4


def test_resume_refuses_other_data(tmp_path):
    T.train(T.TrainConfig(epochs=1, optimizer="adam"), None, tmp_path, data=_toy(), log=lambda s: None,
            progress_stream=_Null())
    with pytest.raises(ValueError, match="not the data this run was trained on"):
        T.train({"epochs": 2}, None, tmp_path, resume=True, data=_toy(seed=1), log=lambda s: None)


def test_resume_of_nothing_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "no run to resume" in err and err.count("\n") == 1


def _toy(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n + 20, 1, 32, 32, generator=g) * 1.275 - 0.1
    y = torch.randint(0, 10, (n + 20,), generator=g)
    return (x[:n], y[:n]), (x[n:], y[n:])


class _Null:
    def write(self, s):
        pass

    def flush(self):
        pass

    def isatty(self):
        return False


def test_resume_reads_data_that_moved(mnist_dir, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    assert main(["train", "--data", str(mnist_dir), "--out", str(out), "--epochs", "1", "--train-limit", "300",
                 "--test-limit", "100", "--threads", "1"]) == 0
    from lenet5_fast.data import find_dataset_dir

    assert load_checkpoint(out / "checkpoint.pt")["meta"]["config"]["data_dir"] == str(find_dataset_dir(mnist_dir))
    moved = tmp_path / "moved"
    shutil.copytree(mnist_dir, moved)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--data", str(moved)]) == 0
    assert f"note: reading the data from {moved}" in capsys.readouterr().out
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["meta"]["config"]["data_dir"] == str(find_dataset_dir(moved)) and ck["meta"]["pass_index"] == 2
