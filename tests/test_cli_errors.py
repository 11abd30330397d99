"""Every user error of ``lenet5-fast`` (train, eval, summary, codes): exit code 2 and one line on
stderr, never a traceback; and the files a run writes get the user's umask."""
import os
import stat
import subprocess
import sys


import pytest

from lenet5_fast import LeNet5
from lenet5_fast.checkpoint import save_checkpoint
from lenet5_fast.cli import main
from package_env import package_env


def _one_line_error(argv, capsys, *expect):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, rc, err)
    assert err.endswith("\n") and err.count("\n") == 1, (argv, err)  # one line
    assert err.startswith("lenet5-fast") and "Traceback" not in err, (argv, err)
    for e in expect:
        assert e in err, (argv, e, err)
    return err


BAD_ARGUMENTS = [
    # no command, unknown command, stray arguments
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["codes", "--x"], "unrecognized"),
    # summary
    (["summary", "--in-channels", "0"], "--in-channels", ">= 1"),
    (["summary", "--in-channels", "two"], "--in-channels", "integer"),
    (["summary", "--variant", "tiny"], "--variant"),
    # train: sizes, counts, rates, limits, threads, seeds
    (["train"], "--out"),
    (["train", "--out", "R", "--epochs", "0"], "--epochs", ">= 1"),
    (["train", "--out", "R", "--epochs", "1.5"], "--epochs", "integer"),
    (["train", "--out", "R", "--batch-size", "0"], "--batch-size"),
    (["train", "--out", "R", "--batch-size", "-3"], "--batch-size"),
    (["train", "--out", "R", "--threads", "0"], "--threads", ">= 1"),
    (["train", "--out", "R", "--train-limit", "0"], "--train-limit"),
    (["train", "--out", "R", "--test-limit", "-1"], "--test-limit"),
    (["train", "--out", "R", "--hessian-samples", "0"], "--hessian-samples"),
    (["train", "--out", "R", "--lr", "0"], "--lr", "positive"),
    (["train", "--out", "R", "--lr", "nan"], "--lr"),
    (["train", "--out", "R", "--lr", "inf"], "--lr"),
    (["train", "--out", "R", "--eta-scale", "-1"], "--eta-scale"),
    (["train", "--out", "R", "--mu", "0"], "--mu"),
    (["train", "--out", "R", "--max-step", "0"], "--max-step"),
    (["train", "--out", "R", "--max-step", "big"], "--max-step"),
    (["train", "--out", "R", "--optimizer", "sgd", "--momentum", "1"], "--momentum", "[0, 1)"),
    (["train", "--out", "R", "--seed", "-1"], "--seed"),
    (["train", "--out", "R", "--seed", str(2**32)], "--seed"),
    (["train", "--out", "R", "--optimizer", "lbfgs"], "--optimizer"),
    (["train", "--out", "R", "--variant", "big"], "--variant"),
    (["train", "--out", "R", "--init", "xavier"], "--init"),
    # settings that do not apply to the optimizer
    (["train", "--out", "R", "--optimizer", "adam", "--momentum", "0.5"], "--momentum applies to --optimizer sgd"),
    (["train", "--out", "R", "--optimizer", "sgd", "--eta-scale", "2"], "--eta-scale applies to --optimizer sdlm"),
    (["train", "--out", "R", "--momentum", "0.5"], "--momentum applies to --optimizer sgd only, not sdlm"),
    (["train", "--out", "R", "--init", "he"], "init 'he' is for the modern variant"),
    # eval
    (["eval"], "--checkpoint"),
    (["eval", "--checkpoint", "C", "--limit", "0"], "--limit", ">= 1"),
    (["eval", "--checkpoint", "C", "--gallery-max", "-1"], "--gallery-max", ">= 1"),
    (["eval", "--checkpoint", "C", "--gallery-max", "0"], "--gallery-max"),
    (["eval", "--checkpoint", "C", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("argv_expect", BAD_ARGUMENTS, ids=lambda a: " ".join(a[0]) or "(none)")
def test_bad_arguments_are_one_line_exit_2(argv_expect, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, *expect = argv_expect
    _one_line_error(argv, capsys, *expect)
    assert not (tmp_path / "R").exists()  # nothing was started


def test_file_errors_are_one_line_exit_2(capsys, tmp_path, mnist_dir):
    ck = tmp_path / "bad.pt"
    ck.write_bytes(b"garbage")
    _one_line_error(["eval", "--checkpoint", str(tmp_path / "missing.pt")], capsys, "does not exist")
    _one_line_error(["eval", "--checkpoint", str(ck)], capsys, "not a readable lenet5_fast checkpoint")
    _one_line_error(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "nowhere"), "--epochs", "1"],
                    capsys, "not found in", "--download")
    _one_line_error(["train", "--out", str(tmp_path / "r"), "--resume"], capsys, "no run to resume")
    # a corrupt data file is named
    bad = tmp_path / "data"
    bad.mkdir()
    for name in os.listdir(mnist_dir):
        (bad / name).write_bytes((mnist_dir / name).read_bytes())
    blob = bytearray((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes())
    blob[len(blob) // 2] ^= 0x55
    (bad / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(blob))
    good = tmp_path / "good.pt"
    save_checkpoint(good, LeNet5())
    _one_line_error(["eval", "--checkpoint", str(good), "--data", str(bad)], capsys,
                    "t10k-labels-idx1-ubyte.gz", "corrupt")


def test_a_real_process_exits_2_with_one_line(tmp_path):
    """The same through the installed entry point's code path, in a process of its own."""
    env = package_env()
    r = subprocess.run([sys.executable, "-m", "lenet5_fast", "summary", "--in-channels", "0"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_summary_of_more_input_channels_works(capsys):
    assert main(["summary", "--in-channels", "3", "--variant", "modern", "--json"]) == 0
    assert '"input": "3x32x32"' in capsys.readouterr().out


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_files_get_the_users_umask(tmp_path, umask):
    import io

    import torch

    from lenet5_fast import train as T

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 1, 32, 32, generator=g) - 0.1, torch.randint(0, 10, (60,), generator=g)
    old = os.umask(umask)
    try:
        T.train(T.TrainConfig(epochs=1, optimizer="adam"), None, tmp_path / "run",
                data=((x[:40], y[:40]), (x[40:], y[40:])), log=lambda s: None, progress_stream=io.StringIO())
    finally:
        os.umask(old)
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert {"checkpoint.pt", "checkpoint-pass01.pt", "metrics.json"} <= set(files)
    for name in files:
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode), oct(umask))
