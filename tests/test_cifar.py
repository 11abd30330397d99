"""CIFAR-10 loader (lenet5_fast.cifar) on small generated data in the exact format of
cifar-10-python.tar.gz: the archive, a directory of batches, the md5-checked download, and
corrupt or hostile files (clear errors naming the file; nothing in a pickle ever runs)."""
import json
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch

from cifar_files import NAMES, batch, py2_pickle, tar_gz, write_archive, write_batches
from lenet5_fast import cifar
from lenet5_fast.cli import main
from lenet5_fast.data import DataError


def test_generated_batches_have_the_real_files_opcodes():
    raw = py2_pickle(batch(2, seed=0)[0])
    ops = {op.name for op, _, _ in pickletools.genops(raw)}
    assert "SHORT_BINSTRING" in ops and "BINSTRING" in ops and "BINUNICODE" not in ops
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw and b"cnumpy\ndtype\n" in raw


def test_archive_is_extracted_and_loaded(tmp_path):
    _, (xtr, ytr), (xte, yte) = write_archive(tmp_path / cifar.ARCHIVE_NAME)
    x, y = cifar.load_cifar10(tmp_path, "train", verify=False)
    assert x.dtype == np.uint8 and x.shape == (30, 3, 32, 32) and y.dtype == np.int64
    assert np.array_equal(x, xtr) and np.array_equal(y, ytr)
    x, y = cifar.load_cifar10(tmp_path, "test", verify=False)
    assert np.array_equal(x, xte) and np.array_equal(y, yte)
    extracted = sorted(p.name for p in (tmp_path / cifar.BATCHES_DIR).iterdir())
    assert extracted == sorted(list(cifar.TRAIN_BATCHES) + [cifar.TEST_BATCH, cifar.META_FILE])  # no readme
    assert cifar.label_names(tmp_path) == NAMES


def test_archive_md5_is_checked(tmp_path):
    write_archive(tmp_path / cifar.ARCHIVE_NAME)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: md5 mismatch.*c58f30108f718f92721af3b95e74349a"):
        cifar.load_cifar10(tmp_path, "train")
    assert not (tmp_path / cifar.BATCHES_DIR).exists()


@pytest.mark.parametrize("inner", [False, True])
def test_any_directory_holding_the_batches(tmp_path, inner):
    d = tmp_path / cifar.BATCHES_DIR if inner else tmp_path
    (xtr, ytr), (xte, yte) = write_batches(d)
    x, y = cifar.load_cifar10_tensors(tmp_path, "train", limit=4)
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(xtr[:4]).float() / 255) and torch.equal(y, torch.from_numpy(ytr[:4]))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    x, y = cifar.load_cifar10_tensors(d, "test")
    assert x.shape[0] == 7 and torch.equal(y, torch.from_numpy(yte))


def test_download_is_md5_checked(tmp_path, monkeypatch):
    src = tmp_path / "served" / cifar.ARCHIVE_NAME
    src.parent.mkdir()
    md5, (xtr, _), _ = write_archive(src)
    monkeypatch.setattr(cifar, "CIFAR10_URL", src.as_uri())
    dest = tmp_path / "data"
    with pytest.raises(DataError, match="md5 mismatch") as e:  # the real CIFAR-10 md5 is expected
        cifar.load_cifar10(dest, "train", download=True)
    assert src.as_uri() in str(e.value)
    assert not (dest / cifar.ARCHIVE_NAME).exists() and list(dest.iterdir()) == []  # nothing half-written
    monkeypatch.setattr(cifar, "CIFAR10_MD5", md5)
    x, _ = cifar.load_cifar10(dest, "train", download=True)
    assert np.array_equal(x, xtr) and (dest / cifar.ARCHIVE_NAME).is_file()


def test_missing_data_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"not found in .*data_batch_1.*--download"):
        cifar.load_cifar10(tmp_path, "train")


class _Boom:
    def __reduce__(self):
        return (open, ("/nonexistent-dir/owned", "w"))


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _WrongSize:
    """An array whose state declares more bytes than it holds."""

    def __reduce__(self):
        return (np.ndarray.__reduce__(np.zeros(1, np.uint8))[0], (np.ndarray, (0,), b"b"),
                (1, (3, 3072), np.dtype("u1"), False, b"\0" * 100))


def test_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    write_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _System(f"touch {marker}")}, protocol=2))
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR-10 python batch .*refusing the global (posix|os)\.system"):
        cifar.load_cifar10(tmp_path, "test")
    assert not marker.exists()
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_Boom(), protocol=2))
    with pytest.raises(DataError, match=r"refusing the global (builtins|io)\.open"):
        cifar.load_cifar10(tmp_path, "test")
    # numpy.ndarray is only an argument of _reconstruct, never called (it would allocate any shape)
    (tmp_path / "test_batch").write_bytes(b"\x80\x02cnumpy\nndarray\n(J\x00\x00\x00\x7f\x85tR.")
    with pytest.raises(DataError, match="test_batch: not a CIFAR-10 python batch .*not callable"):
        cifar.load_cifar10(tmp_path, "test")
    (tmp_path / "test_batch").write_bytes(py2_pickle({"data": _WrongSize(), "labels": [1, 2, 3]}))
    with pytest.raises(DataError, match=r"test_batch: 'data' declares shape \[3, 3072\] of uint8 \(9216 bytes\) but holds 100"):
        cifar.load_cifar10(tmp_path, "test")


def _replace_test_batch(d, obj=None, raw=None):
    (d / "test_batch").write_bytes(raw if raw is not None else py2_pickle(obj))


@pytest.mark.parametrize("change, message", [
    (lambda b: b.update(data=b["data"].astype(np.int64)), r"'data' must be uint8 \[n, 3072\]"),
    (lambda b: b.update(data=b["data"][:, :3000]), r"'data' must be uint8 \[n, 3072\]"),
    (lambda b: b.update(labels=b["labels"][:-1]), "3 images but 2 labels"),
    (lambda b: b.update(labels=[0, 12, 1]), r"labels outside 0\.\.9"),
    (lambda b: b.update(labels=[0, "x", 1]), "list of integers"),
    (lambda b: b.pop("data"), "no 'data' and 'labels'"),
])
def test_bad_batch_contents(tmp_path, change, message):
    write_batches(tmp_path)
    b = batch(3, seed=5)[0]
    change(b)
    _replace_test_batch(tmp_path, b)
    with pytest.raises(DataError, match=r"test_batch: .*" + message):
        cifar.load_cifar10(tmp_path, "test")


def test_corrupt_and_oversized_batch_files(tmp_path, monkeypatch):
    write_batches(tmp_path)
    good = py2_pickle(batch(3, seed=5)[0])
    for raw in (good[:len(good) // 2], b"", b"garbage", good.replace(b"T\x00$\x00\x00", b"T\x10$\x00\x00")):
        assert raw != good
        _replace_test_batch(tmp_path, raw=raw)
        with pytest.raises(DataError, match="test_batch: "):
            cifar.load_cifar10(tmp_path, "test")
    _replace_test_batch(tmp_path, [1, 2])
    with pytest.raises(DataError, match="a list, expected a dict"):
        cifar.load_cifar10(tmp_path, "test")
    _replace_test_batch(tmp_path, raw=good)
    monkeypatch.setattr(cifar, "_MAX_FILE_BYTES", 1000)
    with pytest.raises(DataError, match="test_batch: .* bytes, more than a CIFAR-10 batch can be"):
        cifar.load_cifar10(tmp_path, "test")


def test_corrupt_and_hostile_archives(tmp_path):
    archive = tmp_path / cifar.ARCHIVE_NAME
    write_archive(archive)
    whole = archive.read_bytes()
    for raw in (whole[: len(whole) // 2], b"not a tar.gz"):
        archive.write_bytes(raw)
        with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: not a readable tar\.gz archive"):
            cifar.load_cifar10(tmp_path, "train", verify=False)
    # members outside the archive's directory are written only under their base name, inside it
    write_batches(tmp_path / "src")
    members = [(f"../../escape/{p.name}", p.read_bytes()) for p in sorted((tmp_path / "src").iterdir())]
    tar_gz(archive, members)
    out = tmp_path / "out"
    out.mkdir()
    (out / cifar.ARCHIVE_NAME).write_bytes(archive.read_bytes())
    cifar.load_cifar10(out, "test", verify=False)
    assert not (tmp_path / "escape").exists() and (out / cifar.BATCHES_DIR / "test_batch").is_file()
    # an archive without the batches
    tar_gz(archive, [("cifar-10-batches-py/readme.html", b"x")])
    with pytest.raises(DataError, match="the archive lacks batches.meta, data_batch_1"):
        cifar.load_cifar10(tmp_path, "train", verify=False)


def test_train_cli_on_cifar10(tmp_path, capsys):
    d = tmp_path / "cifar"
    write_batches(d, per_batch=20, n_test=10)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data", str(d), "--variant", "modern", "--optimizer", "adam",
                 "--batch-size", "8", "--epochs", "2", "--out", str(out), "--threads", "1"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["dataset"] == "cifar10" and m["complete"] and len(m["history"]) == 2
    assert "on cifar10" in capsys.readouterr().out
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["model_config"]["in_channels"] == 3 and ck["model"]["c1.weight"].shape == (6, 3, 5, 5)
    # eval uses the checkpoint's dataset by default
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data", str(d), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["dataset"] == "cifar10" and res["samples"] == 10
    assert res["test_error"] == pytest.approx(m["test_error"])


def test_train_cli_cifar10_without_data_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--data", str(tmp_path), "--variant", "modern",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenet5-fast: error: CIFAR-10 batches not found") and "--download" in err
