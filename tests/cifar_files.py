"""Small generated CIFAR-10 data in the exact format of cifar-10-python.tar.gz, for the tests.

The real batches were written by Python 2's cPickle at protocol 2: every str is a byte string
(opcodes SHORT_BINSTRING / BINSTRING), the image array is pickled through
``numpy.core.multiarray._reconstruct`` and ``numpy.dtype('u1', 0, 1)``, the labels are a list of
ints. :func:`py2_pickle` writes the same opcodes from Python 3.
"""
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np


class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: str and bytes both as byte strings."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_byte_string(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_byte_string
    dispatch[bytes] = _save_byte_string


def py2_pickle(obj) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f, protocol=2).dump(obj)
    # numpy 2 names its module numpy._core; the real files (numpy 1, Python 2) say numpy.core
    return f.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def batch(n: int, seed: int, label: str = "batch"):
    """A batch dict as CIFAR-10's, with its images [n, 3, 32, 32] and labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    d = {"batch_label": label, "labels": labels, "data": images.reshape(n, 3072),
         "filenames": [f"img_{seed}_{i}.png" for i in range(n)]}
    return d, images, np.array(labels, dtype=np.int64)


NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def batch_files(per_batch: int = 6, n_test: int = 7):
    """{file name: pickled bytes} of the seven files, and the expected train and test arrays."""
    files, train_x, train_y = {}, [], []
    for i in range(1, 6):
        d, x, y = batch(per_batch, seed=i, label=f"training batch {i} of 5")
        files[f"data_batch_{i}"] = py2_pickle(d)
        train_x.append(x)
        train_y.append(y)
    d, test_x, test_y = batch(n_test, seed=99, label="testing batch 1 of 1")
    files["test_batch"] = py2_pickle(d)
    files["batches.meta"] = py2_pickle({"label_names": NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return files, (np.concatenate(train_x), np.concatenate(train_y)), (test_x, test_y)


def write_batches(directory, per_batch: int = 6, n_test: int = 7):
    directory.mkdir(parents=True, exist_ok=True)
    files, train, test = batch_files(per_batch, n_test)
    for name, raw in files.items():
        (directory / name).write_bytes(raw)
    return train, test


def tar_gz(path, members):
    """Writes a tar.gz of (name, bytes) members; returns its md5."""
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members:
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_archive(path, per_batch: int = 6, n_test: int = 7):
    """cifar-10-python.tar.gz's layout: cifar-10-batches-py/<7 files> and readme.html."""
    files, train, test = batch_files(per_batch, n_test)
    members = [(f"cifar-10-batches-py/{n}", raw) for n, raw in files.items()]
    members.append(("cifar-10-batches-py/readme.html", b"<html></html>"))
    md5 = tar_gz(path, members)
    return md5, train, test
