"""Tests for lenet5_fast.data: IDX reading, verification, download, preprocessing.

Uses the real MNIST files in ``<repo>/../shared/data/mnist`` (skipped if absent) and, when
installed (``apt-get install dataset-fashion-mnist``), Fashion-MNIST in
/usr/share/datasets/fashion-mnist. The big files are read once per module.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lenet5_fast import data
from lenet5_fast.data import DataError

REPO_ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("LENET5_TEST_MNIST", REPO_ROOT.parent / "shared" / "data" / "mnist"))  # as conftest.py
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

GZ_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}
TEST_IMG = "t10k-images-idx3-ubyte.gz"
TEST_LBL = "t10k-labels-idx1-ubyte.gz"

# Published class counts of MNIST.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / n).is_file() for n in GZ_NAMES.values()),
    reason=f"real MNIST files not found in {MNIST_DIR}",
)
needs_fashion = pytest.mark.skipif(
    not all((FASHION_DIR / n).is_file() for n in GZ_NAMES.values()),
    reason=f"Fashion-MNIST not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_idx(path: Path, arr: np.ndarray, code: int, compress: bool = False) -> Path:
    """Write ``arr`` as an IDX file with type ``code`` (big-endian)."""
    be = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    blob = header + np.ascontiguousarray(arr, dtype=be).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mnist_train():
    if not (MNIST_DIR / GZ_NAMES[("train", "images")]).is_file():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return data.load_mnist(MNIST_DIR, split="train")


@pytest.fixture(scope="module")
def mnist_test():
    if not (MNIST_DIR / TEST_IMG).is_file():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return data.load_mnist(MNIST_DIR, split="test")


@pytest.fixture(scope="module")
def raw_test_bytes():
    """Decompressed bytes of the MNIST test images and labels."""
    if not (MNIST_DIR / TEST_IMG).is_file():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return (
        gzip.decompress((MNIST_DIR / TEST_IMG).read_bytes()),
        gzip.decompress((MNIST_DIR / TEST_LBL).read_bytes()),
    )


def copy_test_split(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for n in (TEST_IMG, TEST_LBL):
        shutil.copyfile(MNIST_DIR / n, dst / n)
    return dst


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests = 0

    def do_GET(self):  # noqa: N802
        type(self).requests += 1
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve(monkeypatch):
    """serve(dir) -> base URL of a local HTTP server on 127.0.0.1 serving ``dir``."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    servers = []

    def start(directory: Path) -> str:
        handler = type("Handler", (_QuietHandler,), {"requests": 0})
        httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(directory))
        )
        httpd.daemon_threads = True
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        thread.start()
        servers.append((httpd, thread))
        start.handlers[httpd.server_address[1]] = handler
        return f"http://127.0.0.1:{httpd.server_address[1]}/"

    start.handlers = {}
    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def mirror_dir(tmp_path_factory):
    """A directory holding copies of the four real MNIST .gz files."""
    if not all((MNIST_DIR / n).is_file() for n in GZ_NAMES.values()):
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    d = tmp_path_factory.mktemp("mirror")
    for n in GZ_NAMES.values():
        shutil.copyfile(MNIST_DIR / n, d / n)
    return d


def refused_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def leftovers(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") or p.suffix == ".part")


# ----------------------------------------------------------------------------- real data


@needs_mnist
def test_counts_and_label_histogram(mnist_train, mnist_test):
    (xtr, ytr), (xte, yte) = mnist_train, mnist_test
    assert xtr.shape == (60000, 28, 28) and ytr.shape == (60000,)
    assert xte.shape == (10000, 28, 28) and yte.shape == (10000,)
    assert xtr.dtype == np.uint8 and ytr.dtype == np.int64
    assert np.bincount(ytr, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(yte, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert ytr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yte[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@needs_mnist
def test_pixel_range(mnist_train, mnist_test):
    for x, _ in (mnist_train, mnist_test):
        assert x.min() == 0 and x.max() == 255
        assert 30 < x.mean() < 37  # MNIST mean pixel ~33.3 (train), ~33.8 (test)
        # digits are centred by centre of mass in the 28x28 field: the outermost rows and
        # columns are almost blank, and the central 20x20 holds most of the ink
        border = np.concatenate([x[:, 0, :], x[:, -1, :], x[:, :, 0], x[:, :, -1]], axis=1)
        assert np.count_nonzero(border) < 1e-3 * border.size
        assert x[:, 4:24, 4:24].sum(dtype=np.int64) > 0.9 * x.sum(dtype=np.int64)
    assert data.verify_file(MNIST_DIR / TEST_IMG) == "mnist"


@needs_mnist
def test_preprocess_values_and_shape(mnist_test):
    x, _ = mnist_test
    t = data.preprocess(x[:100])
    assert t.shape == (100, 1, 32, 32) and t.dtype == torch.float32
    # padding is background
    assert torch.all(t[:, :, :2, :] == np.float32(-0.1)) and torch.all(t[:, :, 30:, :] == np.float32(-0.1))
    assert torch.all(t[:, :, :, :2] == np.float32(-0.1)) and torch.all(t[:, :, :, 30:] == np.float32(-0.1))
    expected = -0.1 + x[:100].astype(np.float64) / 255.0 * 1.275
    np.testing.assert_allclose(t[:, 0, 2:30, 2:30].numpy(), expected, rtol=0, atol=1e-6)
    assert t.min().item() == pytest.approx(data.PAPER_BACKGROUND, abs=1e-7)
    assert t.max().item() == pytest.approx(data.PAPER_INK, abs=1e-6)
    # torch input, single image, [N,1,28,28]
    assert torch.equal(data.preprocess(torch.from_numpy(x[:100])), t)
    assert torch.equal(data.preprocess(x[3]), t[3:4])
    assert torch.equal(data.preprocess(x[:100, None]), t)


def test_preprocess_extremes_and_errors():
    img = np.zeros((2, 28, 28), np.uint8)
    img[1] = 255
    img[0, 5, 7] = 51  # -0.1 + 51/255*1.275 = 0.155
    t = data.preprocess(img)
    assert t[0, 0, 7, 9].item() == pytest.approx(0.155, abs=1e-6)
    assert t[0, 0, 0, 0].item() == pytest.approx(-0.1, abs=1e-7)
    assert t[1, 0, 2:30, 2:30].sub(1.175).abs().max().item() < 1e-6
    assert t[1, 0, 0:2].eq(np.float32(-0.1)).all()
    assert data.PAPER_BACKGROUND == -0.1 and data.PAPER_INK == 1.175
    with pytest.raises(TypeError):
        data.preprocess(img.astype(np.float32))
    with pytest.raises(TypeError):
        data.preprocess(torch.zeros(1, 28, 28))
    with pytest.raises(ValueError):
        data.preprocess(np.zeros((1, 32, 32), np.uint8))


@needs_mnist
def test_load_tensors(monkeypatch):
    monkeypatch.setenv("LENET5_FAST_DATA", str(MNIST_DIR))
    x, y = data.load_tensors(split="test", limit=256)
    assert x.shape == (256, 1, 32, 32) and x.dtype == torch.float32
    assert y.shape == (256,) and y.dtype == torch.int64
    assert y[:3].tolist() == [7, 2, 1]


# ----------------------------------------------------------------------------- formats


@needs_mnist
def test_raw_and_dotted_names_load(tmp_path, mnist_test, raw_test_bytes):
    img, lbl = raw_test_bytes
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "t10k-images-idx3-ubyte").write_bytes(img)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(lbl)
    x, y = data.load_mnist(raw, split="test")
    assert np.array_equal(x, mnist_test[0]) and np.array_equal(y, mnist_test[1])

    dotted = tmp_path / "dotted"
    dotted.mkdir()
    (dotted / "t10k-images.idx3-ubyte").write_bytes(img)
    (dotted / "t10k-labels.idx1-ubyte").write_bytes(lbl)
    x, y = data.load_mnist(dotted, split="test")
    assert np.array_equal(x, mnist_test[0]) and np.array_equal(y, mnist_test[1])
    # read_idx detects gzip by magic bytes, not by name
    (tmp_path / "labels.idx").write_bytes(gzip.compress(lbl))
    assert np.array_equal(data.read_idx(tmp_path / "labels.idx"), mnist_test[1])


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_all_types(tmp_path, code, compress):
    rng = np.random.default_rng(code)
    dt = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.int16, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}[code]
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        arr = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True).astype(dt)
    else:
        arr = rng.standard_normal((3, 4, 5)).astype(dt)
    out = data.read_idx(write_idx(tmp_path / "f.idx", arr, code, compress))
    assert out.dtype == np.dtype(dt) and out.dtype.isnative
    assert np.array_equal(out, arr)
    out[0, 0, 0] = 0  # writable


def test_read_idx_structural_errors(tmp_path):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    good = write_idx(tmp_path / "good", arr, 0x08).read_bytes()

    (tmp_path / "short").write_bytes(good[:-1])
    with pytest.raises(DataError, match=r"short.*truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "long").write_bytes(good + b"\0")
    with pytest.raises(DataError, match=r"long.*trailing"):
        data.read_idx(tmp_path / "long")
    (tmp_path / "magic").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match=r"magic.*bad IDX magic"):
        data.read_idx(tmp_path / "magic")
    (tmp_path / "type").write_bytes(good[:2] + b"\x0a" + good[3:])
    with pytest.raises(DataError, match=r"type.*unsupported IDX type code 0x0A"):
        data.read_idx(tmp_path / "type")
    (tmp_path / "hdr").write_bytes(good[:6])
    with pytest.raises(DataError, match="truncated IDX header"):
        data.read_idx(tmp_path / "hdr")
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DataError, match="too short"):
        data.read_idx(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "nope")
    # gzip: truncated and trailing decompressed content
    (tmp_path / "short.gz").write_bytes(gzip.compress(good[:-1]))
    with pytest.raises(DataError, match=r"short\.gz.*truncated"):
        data.read_idx(tmp_path / "short.gz")
    (tmp_path / "long.gz").write_bytes(gzip.compress(good + b"\0"))
    with pytest.raises(DataError, match=r"long\.gz.*trailing"):
        data.read_idx(tmp_path / "long.gz")


def test_read_idx_huge_header_is_not_allocated(tmp_path):
    # header claims 4G x 4G x 4G uint8 values; the file has 10 bytes of payload
    blob = bytes([0, 0, 0x08, 3]) + np.array([0xFFFFFFFF] * 3, ">u4").tobytes() + bytes(10)
    (tmp_path / "huge").write_bytes(blob)
    (tmp_path / "huge.gz").write_bytes(gzip.compress(blob))
    with pytest.raises(DataError, match="over the limit"):
        data.read_idx(tmp_path / "huge")
    with pytest.raises(DataError, match="over the limit"):
        data.read_idx(tmp_path / "huge.gz")


# ----------------------------------------------------------------------------- corruption


@needs_mnist
@pytest.mark.parametrize("verify", [True, False])
def test_flipped_byte_in_gz(tmp_path, verify):
    d = copy_test_split(tmp_path)
    blob = bytearray((d / TEST_LBL).read_bytes())
    blob[len(blob) // 2] ^= 0x55
    (d / TEST_LBL).write_bytes(bytes(blob))
    with pytest.raises(DataError, match=TEST_LBL):
        data.load_mnist(d, split="test", verify=verify)


@needs_mnist
def test_recompressed_gz_is_accepted_by_content_md5(tmp_path, raw_test_bytes):
    # A different .gz of the same data (here: the gzip header's mtime changed) has another md5
    # but the same decompressed content: accepted (this is what Debian's fashion-mnist does).
    d = copy_test_split(tmp_path)
    blob = bytearray((d / TEST_LBL).read_bytes())
    blob[4] ^= 0x01  # MTIME field of the gzip header
    (d / TEST_LBL).write_bytes(bytes(blob))
    assert md5(d / TEST_LBL) != md5(MNIST_DIR / TEST_LBL)
    x, y = data.load_mnist(d, split="test")
    assert len(y) == 10000
    # ...but an MD5SUMS that lists the original md5 catches the change
    (d / "MD5SUMS").write_text(f"{md5(MNIST_DIR / TEST_LBL)}  {TEST_LBL}\n")
    with pytest.raises(DataError, match=r"MD5SUMS"):
        data.load_mnist(d, split="test")


@needs_mnist
def test_truncated_gz(tmp_path):
    d = copy_test_split(tmp_path)
    blob = (d / TEST_IMG).read_bytes()
    (d / TEST_IMG).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=rf"{TEST_IMG}.*truncated"):
        data.load_mnist(d, split="test")
    with pytest.raises(DataError, match=rf"{TEST_IMG}.*truncated"):
        data.load_mnist(d, split="test", verify=False)


@needs_mnist
def test_truncated_raw(tmp_path, raw_test_bytes):
    img, lbl = raw_test_bytes
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(img[:-784])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lbl)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*10000x28x28.*truncated"):
        data.load_mnist(tmp_path, split="test")


@needs_mnist
def test_wrong_magic(tmp_path, raw_test_bytes):
    img, lbl = raw_test_bytes
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(img)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03" + lbl[4:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path, split="test")
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04" + lbl[4:])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.*bad IDX magic"):
        data.load_mnist(tmp_path, split="test", verify=False)


@needs_mnist
def test_label_count_mismatch_and_range(tmp_path, mnist_test):
    x, y = mnist_test
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x, 0x08)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:9999], 0x08)
    with pytest.raises(DataError, match=r"10000 images.*9999 labels"):
        data.load_mnist(tmp_path, split="test")
    bad = y.copy()
    bad[17] = 10
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", bad, 0x08)
    with pytest.raises(DataError, match=r"outside 0\.\.9"):
        data.load_mnist(tmp_path, split="test", verify=False)


def test_missing_file_lists_what_was_looked_for(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_mnist(tmp_path, split="train")
    msg = str(e.value)
    for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte"):
        assert name in msg
    assert str(tmp_path) in msg and "--data" in msg
    with pytest.raises(DataError, match="does not exist"):
        data.load_mnist(tmp_path / "nowhere", split="test")
    with pytest.raises(ValueError, match="split"):
        data.load_mnist(tmp_path, split="validation")


@needs_mnist
def test_verify_false_lets_renamed_valid_file_through(tmp_path):
    # the (valid) test files under the training names: not MNIST's training files
    shutil.copyfile(MNIST_DIR / TEST_IMG, tmp_path / "train-images-idx3-ubyte.gz")
    shutil.copyfile(MNIST_DIR / TEST_LBL, tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*md5 mismatch"):
        data.load_mnist(tmp_path, split="train")
    x, y = data.load_mnist(tmp_path, split="train", verify=False)
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)


@needs_mnist
def test_md5sums_file_is_honoured(tmp_path):
    d = copy_test_split(tmp_path)
    (d / "MD5SUMS").write_text(
        f"# comment\n{md5(d / TEST_IMG)}  {TEST_IMG}\n{md5(d / TEST_LBL)} *{TEST_LBL}\n{'0' * 32}  other.gz\n"
    )
    data.load_mnist(d, split="test")
    (d / "MD5SUMS").write_text(f"{'0' * 32}  {TEST_IMG}\n")
    with pytest.raises(DataError, match=rf"{TEST_IMG}.*MD5SUMS"):
        data.load_mnist(d, split="test")
    data.load_mnist(d, split="test", verify=False)
    # an unknown name is checked against MD5SUMS only
    shutil.copyfile(MNIST_DIR / TEST_LBL, d / "labels.gz")
    (d / "MD5SUMS").write_text(f"{'0' * 32}  labels.gz\n")
    with pytest.raises(DataError, match="MD5SUMS"):
        data.verify_file(d / "labels.gz")
    (d / "MD5SUMS").write_text(f"{md5(d / 'labels.gz')}  labels.gz\n")
    assert data.verify_file(d / "labels.gz") is None
    (d / "MD5SUMS").write_text("not a checksum line\n")
    with pytest.raises(DataError, match=r"MD5SUMS, line 1"):
        data.verify_file(d / "labels.gz")


def test_find_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LENET5_FAST_DATA", str(tmp_path / "env"))
    assert data.find_dataset_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data.find_dataset_dir() == tmp_path / "env"
    monkeypatch.delenv("LENET5_FAST_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.find_dataset_dir() == tmp_path / "home" / ".cache" / "lenet5_fast" / "mnist"


# ----------------------------------------------------------------------------- download


@needs_mnist
def test_download_from_local_mirror(tmp_path, serve, mirror_dir):
    url = serve(mirror_dir)
    dest = tmp_path / "dest" / "mnist"
    assert data.download_mnist(dest, mirrors=[refused_url(), url], timeout=5) == dest
    for n in GZ_NAMES.values():
        assert md5(dest / n) == md5(MNIST_DIR / n)
    assert leftovers(dest) == []
    handler = serve.handlers[int(url.rsplit(":", 1)[1].strip("/"))]
    assert handler.requests == 4
    # files present with the right md5 are not fetched again
    data.download_mnist(dest, mirrors=[url], timeout=5)
    assert handler.requests == 4
    x, y = data.load_mnist(dest, split="test")
    assert len(y) == 10000


@needs_mnist
def test_download_corrupt_mirror_leaves_nothing(tmp_path, serve, mirror_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    for n in GZ_NAMES.values():
        os.symlink(mirror_dir / n, bad / n)
    blob = bytearray((mirror_dir / GZ_NAMES[("train", "labels")]).read_bytes())
    blob[1000] ^= 0xFF
    os.unlink(bad / GZ_NAMES[("train", "labels")])
    (bad / GZ_NAMES[("train", "labels")]).write_bytes(bytes(blob))
    url = serve(bad)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*md5 mismatch") as e:
        data.download_mnist(dest, mirrors=[url], timeout=5)
    assert "offline" in str(e.value) and "--data" in str(e.value)
    assert not (dest / GZ_NAMES[("train", "labels")]).exists()
    assert leftovers(dest) == []
    # a corrupt file on disk is replaced by a good download
    (dest / GZ_NAMES[("train", "labels")]).write_bytes(bytes(blob))
    data.download_mnist(dest, mirrors=[url, serve(mirror_dir)], timeout=5)
    assert md5(dest / GZ_NAMES[("train", "labels")]) == md5(MNIST_DIR / GZ_NAMES[("train", "labels")])
    assert leftovers(dest) == []


def test_download_all_mirrors_refuse(tmp_path, serve):
    (tmp_path / "empty_mirror").mkdir()
    missing = serve(tmp_path / "empty_mirror")  # 404 for everything
    with pytest.raises(DataError) as e:
        data.download_mnist(tmp_path / "dest", mirrors=[refused_url(), missing], timeout=5)
    msg = str(e.value)
    assert "cannot connect" in msg and "HTTP 404" in msg
    assert "offline" in msg and "--data DIR" in msg
    assert leftovers(tmp_path / "dest") == []


@needs_mnist
def test_load_mnist_download_true(tmp_path, serve, mirror_dir, monkeypatch):
    monkeypatch.setattr(data, "MNIST_MIRRORS", (refused_url(), serve(mirror_dir)))
    monkeypatch.setenv("LENET5_FAST_DATA", str(tmp_path / "cache"))
    x, y = data.load_mnist(split="test", download=True)
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == MNIST_TEST_COUNTS
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(GZ_NAMES.values())


@needs_mnist
def test_cli_download_flag(tmp_path, serve, mirror_dir, monkeypatch, capsys):
    """`lenet5-fast eval --data DIR --download` fetches MNIST into DIR; without --download a
    missing DIR is a clear error that names the flag."""
    import json

    import torch

    from lenet5_fast.checkpoint import save_checkpoint
    from lenet5_fast.cli import main
    from lenet5_fast.model import LeNet5

    monkeypatch.setattr(data, "MNIST_MIRRORS", (refused_url(), serve(mirror_dir)))
    torch.manual_seed(0)
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, LeNet5(), None)
    dest = tmp_path / "fresh"
    assert main(["eval", "--checkpoint", str(ck), "--data", str(dest), "--limit", "100", "--no-gallery"]) == 2
    assert "--download" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ck), "--data", str(dest), "--download", "--limit", "100",
                 "--no-gallery", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 100
    assert sorted(p.name for p in dest.iterdir()) == sorted(GZ_NAMES.values())


# ----------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_fashion_mnist_loads(split, n):
    x, y = data.load_mnist(FASHION_DIR, split=split)
    assert x.shape == (n, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10  # balanced classes
    assert x.max() == 255
    for kind in ("images", "labels"):
        assert data.verify_file(FASHION_DIR / GZ_NAMES[(split, kind)]) == "fashion-mnist"


@needs_fashion
@needs_mnist
def test_mixed_datasets_rejected_and_fashion_not_overwritten(tmp_path, serve, mirror_dir):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copyfile(MNIST_DIR / TEST_IMG, mixed / TEST_IMG)
    shutil.copyfile(FASHION_DIR / TEST_LBL, mixed / TEST_LBL)
    with pytest.raises(DataError, match="same dataset"):
        data.load_mnist(mixed, split="test")
    data.load_mnist(mixed, split="test", verify=False)
    # download_mnist refuses to clobber another dataset's file
    fash = tmp_path / "fashion"
    fash.mkdir()
    shutil.copyfile(FASHION_DIR / TEST_LBL, fash / TEST_LBL)
    with pytest.raises(DataError, match="Fashion-MNIST.*refusing to overwrite"):
        data.download_mnist(fash, mirrors=[serve(mirror_dir)], timeout=5)
    assert md5(fash / TEST_LBL) == md5(FASHION_DIR / TEST_LBL)
