"""Nothing lost, nothing silently wrong (issue 24): one writer per run directory, a bad --out
refused before any training, checkpoints whose flipped bytes are refused, a full disk named as
such."""
import random
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from lenet5_fast import LeNet5
from lenet5_fast import checkpoint as C
from lenet5_fast import train as T
from lenet5_fast.cli import main
from package_env import package_env

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--optimizer", "sgd", "--epochs", "1", "--train-limit", "200", "--test-limit", "100", "--threads", "1"]


def _env():
    return package_env()


def _one_line(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# 1. one writer per run directory

HOLD = """
import sys, time
from lenet5_fast.train import RunLock
with RunLock(sys.argv[1], "lenet5-fast train --out " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_train_into_a_run_in_use_fails_at_once_naming_the_holder(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, env=_env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        assert main(["train", "--data", str(mnist_dir), "--out", str(out), *QUICK]) == 2
        err = _one_line(capsys)
        assert time.monotonic() - t0 < 5  # at once, no data read, nothing trained
        assert "another process" in err and f"pid {holder.pid}" in err and "lenet5-fast train" in err, err
        assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
        (out / "checkpoint.pt").write_bytes(b"a run being trained")
        assert main(["train", "--out", str(out), "--resume"]) == 2  # resume too, before reading it
        assert f"pid {holder.pid}" in _one_line(capsys)
        (out / "checkpoint.pt").unlink()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without cleaning up: its lock went with it
    assert main(["train", "--data", str(mnist_dir), "--out", str(out), *QUICK]) == 0
    assert (out / "checkpoint.pt").exists()


def test_two_trainings_into_one_directory_one_fails(mnist_dir, tmp_path):
    """The issue's reproduction: two `train` processes into the same --out; the second exits 2
    and the files are the first's (seed 0), not overwritten by the second's (seed 1)."""
    out = tmp_path / "same"
    cmd = [sys.executable, "-m", "lenet5_fast", "train", "--data", str(mnist_dir), "--out", str(out), *QUICK]
    first = subprocess.Popen(cmd + ["--train-limit", "3000"], env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # until the first holds the lock
        if (out / "run.lock").exists() and (out / "run.lock").read_text():
            break
        time.sleep(0.05)
    second = subprocess.run(cmd + ["--seed", "1"], env=_env(), capture_output=True, text=True, timeout=300)
    rc1 = first.wait(timeout=300)
    assert rc1 == 0, first.stderr.read()
    assert second.returncode == 2 and "another process" in second.stderr, second.stderr
    assert C.load_checkpoint(out / "checkpoint.pt")["meta"]["config"]["seed"] == 0


def test_out_naming_a_file_is_refused_before_training(mnist_dir, tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "load_dataset", lambda *a, **k: calls.append(a))
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["train", "--data", str(mnist_dir), "--out", str(f), *QUICK]) == 2
    assert "is a file, not a directory" in _one_line(capsys)
    assert main(["train", "--data", str(mnist_dir), "--out", str(f / "sub"), *QUICK]) == 2
    assert str(f) in _one_line(capsys)
    assert not calls  # no data was even read


def test_read_only_out_is_refused_before_training(mnist_dir, tmp_path):
    """A read-only file system (a tmpfs mounted read-only in a user and mount namespace of its
    own, so that even root cannot write to it): exit 2 at once, naming the directory."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to make a read-only file system")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && exec {sys.executable} -m lenet5_fast train "
              f"--data {mnist_dir} --out {ro}/run " + " ".join(QUICK))
    t0 = time.monotonic()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"cannot write to the run directory {ro}/run" in r.stderr and "Read-only" in r.stderr, r.stderr
    assert "pass 1" not in r.stdout and time.monotonic() - t0 < 60


def test_a_full_disk_is_named_and_keeps_the_checkpoint(mnist_dir, tmp_path):
    """A run on a 1.7 MB tmpfs: its first pass's files fit (two 0.49 MB checkpoints), the
    second's checkpoint.pt does not. The error is
    'no space left on DIR (needed ~N MB ...)', the first pass's checkpoint.pt stays whole."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) to make a small file system")
    disk = tmp_path / "disk"
    disk.mkdir()
    check = (f"{sys.executable} -c 'import sys; from lenet5_fast.checkpoint import load_checkpoint as L; "
             f"print(\"passes\", len(L(sys.argv[1])[\"meta\"][\"history\"]))' {disk}/run/checkpoint.pt")
    script = (f"mount -t tmpfs -o size=1700k tmpfs {disk} && {sys.executable} -m lenet5_fast train "
              f"--data {mnist_dir} --out {disk}/run --optimizer sgd --epochs 3 --train-limit 200 "
              f"--test-limit 100 --threads 1; echo rc=$?; {check}")
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert "rc=2" in r.stdout, (r.stdout, r.stderr)
    err = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(err) == 1 and f"no space left on {disk}/run (needed ~" in err[0] and "MB" in err[0], r.stderr
    assert "enforce fail" not in r.stderr and "unexpected pos" not in r.stderr
    assert "passes 1" in r.stdout, r.stdout  # the last good checkpoint is intact


# ---------------------------------------------------------------------------------------------
# 2. checksummed checkpoints

def _saved(tmp_path, variant="classic"):
    torch.manual_seed(0)
    model = LeNet5(variant=variant)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    opt.step()
    path = tmp_path / "checkpoint.pt"
    C.save_checkpoint(path, model, opt, history=[{"pass": 1, "test_error": 12.5}], config={"seed": 3})
    return path, model


def _flip(path, out, n, seed):
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for i in rng.sample(range(len(data)), n):
        data[i] ^= 1 << rng.randrange(8)
    out.write_bytes(bytes(data))
    return out


def test_a_checkpoint_carries_a_checksum_of_its_contents(tmp_path):
    path, model = _saved(tmp_path)
    ck = C.load_checkpoint(path)
    assert len(ck["sha256"]) == 64 and ck["sha256"] == C.checksum(ck)
    again = C.model_from_checkpoint(path)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("seed", range(40))
def test_flipped_bytes_are_refused_or_change_nothing(tmp_path, seed):
    """50 random bytes flipped (the issue's test, which loaded a model with c5.weight moved by
    3,854 and other RBF codes): every load either fails with CheckpointError naming the file
    or gives back exactly what was saved (the bytes hit padding the reader never looks at)."""
    path, model = _saved(tmp_path)
    bad = _flip(path, tmp_path / "bad.pt", 50, seed)
    try:
        got = C.model_from_checkpoint(bad)
    except C.CheckpointError as e:
        assert str(bad) in str(e)
        return
    for (k, a), b in zip(model.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_changed_tensor_byte_is_refused_by_every_command(tmp_path, capsys):
    """One bit of one weight changed where the tensor's bytes are stored: load_checkpoint,
    model_from_checkpoint, and the eval, predict, show and train --resume commands all refuse it."""
    path, model = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    target = model.c5.weight.detach().numpy().tobytes()[:64]
    at = bytes(raw).find(target)
    assert at > 0
    raw[at + 3] ^= 0x40
    run = tmp_path / "run"
    run.mkdir()
    bad = run / "checkpoint.pt"
    bad.write_bytes(bytes(raw))
    for load in (C.load_checkpoint, C.model_from_checkpoint):
        with pytest.raises(C.CheckpointError, match="do not match the checksum"):
            load(bad)
    img = tmp_path / "digit.png"
    img.write_bytes(b"not read")
    for argv in (["eval", "--checkpoint", str(bad)], ["predict", "--checkpoint", str(bad), str(img)],
                 ["show", "0", "--checkpoint", str(bad), "--out", str(tmp_path / "s.png")],
                 ["train", "--out", str(run), "--resume"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert str(bad) in err and "checksum" in err, (argv, err)


def test_a_checkpoint_without_checksum_loads_with_a_warning(tmp_path):
    path, model = _saved(tmp_path)
    ck = torch.load(path, weights_only=True)
    del ck["sha256"]
    old = tmp_path / "old.pt"
    torch.save(ck, old)
    with pytest.warns(C.UncheckedCheckpointWarning, match="no checksum"):
        got = C.model_from_checkpoint(old)
    assert torch.equal(got.c5.weight, model.c5.weight)


def test_shipped_weights_load_without_a_warning():
    from lenet5_fast import weights

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in weights.list():
            weights.load(name)
