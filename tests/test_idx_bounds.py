"""The IDX reader on hostile and damaged gzip files: a gzip bomb (a small .gz whose header
promises far more than it could hold, or than any MNIST-format file needs) is refused before
it is decompressed, and damage inside a .gz is reported as corruption, naming the file."""
import gzip
import tracemalloc
import zlib

import numpy as np
import pytest

from lenet5_fast import data
from lenet5_fast.data import DataError


def _header(dims, code=0x08):
    return bytes([0, 0, code, len(dims)]) + np.array(dims, ">u4").tobytes()


def _zeros_gz(n_mb: int) -> bytes:
    """n_mb MB of zero bytes as a multi-member gzip stream (cheap to build: one member repeated)."""
    one = gzip.compress(bytes(1 << 20), compresslevel=9, mtime=0)
    return one * n_mb


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_claiming_2g_images_is_refused_before_decompressing(tmp_path):
    # the bomb: a header for 2^31 28x28 images, then (here) 64 MB of zeros, ~64 KB of gzip
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(_header([2**31, 28, 28]), mtime=0) + _zeros_gz(64))
    assert bomb.stat().st_size < 200_000

    def read():
        with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*(limit|at most)"):
            data.read_idx(bomb)

    assert _peak_bytes(read) < 8 << 20  # the 64 MB were never decompressed into memory


def test_header_promising_more_than_the_gzip_can_hold_is_refused_at_once(tmp_path):
    # 200 MB promised (under the size limit) by a file of ~2 KB: deflate cannot expand 1032:1
    f = tmp_path / "small.gz"
    f.write_bytes(gzip.compress(_header([250_000, 28, 28]), mtime=0) + _zeros_gz(2))
    with pytest.raises(DataError, match=r"small\.gz: .*declares .* at most"):
        data.read_idx(f)
    assert _peak_bytes(lambda: _refused(f)) < 8 << 20


def _refused(path):
    try:
        data.read_idx(path)
    except DataError:
        return
    raise AssertionError(f"{path} was accepted")


def test_size_limit_applies_to_raw_files_and_can_be_raised(tmp_path):
    blob = _header([3, 28, 28]) + bytes(3 * 784)
    (tmp_path / "raw").write_bytes(blob)
    (tmp_path / "raw.gz").write_bytes(gzip.compress(blob))
    for name in ("raw", "raw.gz"):
        with pytest.raises(DataError, match=rf"{name}: .*limit of 1000 bytes"):
            data.read_idx(tmp_path / name, max_bytes=1000)
        assert data.read_idx(tmp_path / name, max_bytes=3 * 784).shape == (3, 28, 28)
    assert data.MAX_IDX_BYTES >= 1 << 30  # EMNIST's largest file (547 MB) still reads by default


def test_decompressed_content_longer_than_promised_is_still_trailing_bytes(tmp_path):
    # an intact gzip stream (CRC fine) holding more than its header promises
    f = tmp_path / "long.gz"
    f.write_bytes(gzip.compress(_header([4]) + bytes(5)))
    with pytest.raises(DataError, match=r"long\.gz.*trailing"):
        data.read_idx(f)


def _labels():
    return np.random.default_rng(0).integers(0, 10, 3000, dtype=np.uint8)


def _labels_gz():
    return gzip.compress(_header([3000]) + _labels().tobytes(), mtime=0)


def test_every_flipped_byte_inside_the_deflate_stream_says_corrupt(tmp_path):
    good = _labels_gz()
    f = tmp_path / "labels-idx1-ubyte.gz"
    trailing, other = [], []
    for pos in range(10, len(good)):  # after the 10-byte gzip header (no file name stored)
        for mask in (0x01, 0x40, 0xFF):
            bad = bytearray(good)
            bad[pos] ^= mask
            f.write_bytes(bytes(bad))
            try:
                got = data.read_idx(f)
            except DataError as e:
                msg = str(e)
                assert str(f) in msg
                if "corrupt" not in msg:
                    (trailing if "trailing" in msg else other).append((pos, mask, msg))
            else:  # only a flip in bits deflate ignores (the last byte's padding) may pass
                assert np.array_equal(got, _labels()), f"a flip at byte {pos} read as other data"
    assert not trailing and not other, (trailing[:3], other[:3])


def test_trailing_bytes_after_the_gzip_stream_are_corrupt_not_ignored(tmp_path):
    f = tmp_path / "x.gz"
    f.write_bytes(_labels_gz() + b"\x00garbage")
    with pytest.raises(DataError, match=r"x\.gz"):
        data.read_idx(f)


def test_decompressed_trailing_data_is_read_in_bounded_memory(tmp_path):
    # a valid 10-label file followed, inside the same gzip stream, by 64 MB of zeros
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [co.compress(_header([10]) + bytes(10))]
    zeros = bytes(1 << 20)
    parts += [co.compress(zeros) for _ in range(64)]
    parts.append(co.flush())
    f = tmp_path / "padded.gz"
    f.write_bytes(b"".join(parts))

    def read():
        with pytest.raises(DataError, match=r"padded\.gz.*trailing"):
            data.read_idx(f)

    assert _peak_bytes(read) < 8 << 20
