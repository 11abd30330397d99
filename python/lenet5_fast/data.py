"""MNIST-format (IDX) data: reading, verification, download and the paper's preprocessing.

Only numpy, torch and the standard library are used.

Files
-----
The loader looks in one directory (see :func:`find_dataset_dir`) for the four
standard files::

    train-images-idx3-ubyte.gz   train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz    t10k-labels-idx1-ubyte.gz

or their uncompressed forms (``train-images-idx3-ubyte``, or the dotted
``train-images.idx3-ubyte`` variant).  Gzip is recognised by its magic bytes,
not by the file name.  Fashion-MNIST uses the same file names and format, so a
Fashion-MNIST directory loads the same way.

Verification (``verify=True``)
------------------------------
Structural checks always run: IDX magic, type code, header dimensions against
the payload size (truncated or trailing bytes), gzip CRC / end of stream,
28x28 uint8 images, as many labels as images, labels in 0..9.

Bounds: a header may promise at most :data:`MAX_IDX_BYTES` (1 GiB) of payload, and a gzip
file at most what deflate can expand its size to (1032:1); both are checked on the header,
before anything is decompressed, so a gzip bomb is refused at once. Memory grows only with the
data actually read, and data past the promised payload is read (to reach the gzip CRC, so that
damage inside the stream is reported as corruption) in bounded chunks and never kept.

With ``verify=True`` a file whose name is one of the known names must also be
one of the known datasets (MNIST or Fashion-MNIST): its md5 must be the
published md5 of the ``.gz`` file, or -- for a file that has been decompressed
or recompressed, e.g. Debian's ``dataset-fashion-mnist`` package, whose ``.gz``
files were recompressed -- the md5 of its decompressed IDX content must be the
known md5 of the uncompressed file.  The images and labels of a split must come
from the same dataset.  If the directory holds an ``MD5SUMS`` file
(``md5  filename`` per line) that lists the file, that md5 is checked too.

Every problem with a data file raises :class:`DataError` (a ``ValueError``)
naming the file and what is wrong.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import os
import re
import secrets
import shutil
import socket
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "DataError",
    "read_idx",
    "verify_file",
    "find_dataset_dir",
    "download_mnist",
    "load_mnist",
    "preprocess",
    "load_tensors",
    "PAPER_BACKGROUND",
    "PAPER_INK",
    "MNIST_MIRRORS",
    "MNIST_FILES",
    "KNOWN_GZ_MD5",
    "KNOWN_RAW_MD5",
    "DATA_ENV_VAR",
    "DEFAULT_DATA_DIR",
    "MAX_IDX_BYTES",
    "atomic_write_bytes",
]

PathLike = Union[str, "os.PathLike[str]"]


class DataError(ValueError):
    """A data file is missing, corrupt, truncated, or not the expected dataset."""


# --------------------------------------------------------------------------------------
# Known files
# --------------------------------------------------------------------------------------

#: The four MNIST / Fashion-MNIST file names (gzip-compressed form), by (split, kind).
MNIST_FILES: Dict[Tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}

#: md5 of the published .gz files, by dataset and file name.
KNOWN_GZ_MD5: Dict[str, Dict[str, str]] = {
    "mnist": {  # the published files (yann.lecun.com and its mirrors; MD5SUMS beside the project's copy)
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {  # github.com/zalandoresearch/fashion-mnist, data/fashion/
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

#: md5 of the decompressed IDX files (what ``gunzip`` produces), by dataset and file name.
KNOWN_RAW_MD5: Dict[str, Dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}

_DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}

#: Mirrors of the MNIST .gz files, tried in this order by :func:`download_mnist`.
MNIST_MIRRORS: Tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

#: Environment variable naming the data directory.
DATA_ENV_VAR = "LENET5_FAST_DATA"
#: Data directory used when neither an explicit root nor the environment variable is given.
DEFAULT_DATA_DIR = Path("~/.cache/lenet5_fast/mnist")

#: The paper's input scale: background (pixel 0) and full ink (pixel 255).
PAPER_BACKGROUND = -0.1
PAPER_INK = 1.175

_MD5SUMS_NAME = "MD5SUMS"
_MD5SUMS_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(.+?)\s*$")
_CHUNK = 1 << 20
#: The largest IDX payload :func:`read_idx` accepts by default (EMNIST's largest file is 547 MB).
MAX_IDX_BYTES = 1 << 30
# deflate expands at most 1032:1 (258 bytes per 2-bit code); a gzip file of S bytes cannot hold
# more than this ratio times S, plus a little for its header and tiny files.
_GZIP_MAX_RATIO = 1032
# When the content of a gzip file is wrong (bad header, too short, too long), up to this much of
# it is decompressed again, discarding, to reach the gzip CRC: damage inside the stream usually
# decompresses to wrong content before the CRC at its end catches it, and is then reported as
# corruption rather than as what the damaged content looks like.
_MAX_GZIP_SCAN = 64 << 20
_MAX_DOWNLOAD_BYTES = 64 << 20  # the largest MNIST file is ~9.9 MB

# IDX type codes -> big-endian numpy dtypes.
_IDX_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _canonical_name(name: str) -> str:
    """Map a file name to its canonical uncompressed name: strip ``.gz``, ``.idx3`` -> ``-idx3``."""
    if name.endswith(".gz"):
        name = name[:-3]
    return re.sub(r"\.(idx\d)-", r"-\1-", name)


def _candidate_names(split: str, kind: str) -> List[str]:
    gz = MNIST_FILES[(split, kind)]
    raw = gz[:-3]
    dotted = re.sub(r"-(idx\d)-", r".\1-", raw)
    return [gz, raw, dotted, dotted + ".gz"]


# --------------------------------------------------------------------------------------
# IDX reading
# --------------------------------------------------------------------------------------


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _parse_header(path: Path, head: bytes, compressed: bool) -> Tuple[np.dtype, int]:
    """Parse the 4-byte IDX magic (00 00 type ndim); return (dtype, ndim)."""
    what = "decompressed content" if compressed else "file"
    if len(head) < 4:
        raise DataError(f"{path}: {what} is {len(head)} bytes, too short for an IDX header (truncated?)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{path}: bad IDX magic number 0x{head[:4].hex()} "
            f"(expected 00 00 <type> <ndim>); not an IDX file"
            + ("" if compressed else " (and not gzip-compressed)")
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_TYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_TYPES)
        raise DataError(f"{path}: unsupported IDX type code 0x{code:02X} (supported: {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    return _IDX_TYPES[code], ndim


def _read_idx(path: PathLike, want_md5: bool = False,
              max_bytes: int = MAX_IDX_BYTES) -> Tuple[np.ndarray, Optional[str]]:
    """Read an IDX file; also return the md5 of its (decompressed) IDX bytes if asked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    md5 = hashlib.md5() if want_md5 else None
    try:
        size = path.stat().st_size
        if _is_gzip(path):
            try:
                with gzip.open(path, "rb") as f:
                    arr = _read_idx_stream(path, f, md5, size, True, max_bytes)
            except DataError as e:
                damage = _gzip_damage(path)
                if damage:
                    raise DataError(f"{path}: corrupt gzip data ({damage}); {e}") from e
                raise
        else:
            with open(path, "rb") as f:
                arr = _read_idx_stream(path, f, md5, size, False, max_bytes)
    except DataError:
        raise
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip data ({e})") from e
    except EOFError as e:
        raise DataError(f"{path}: gzip stream ends early, the file is truncated or corrupt ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e
    return arr, (md5.hexdigest() if md5 is not None else None)


def _read_idx_stream(path: Path, f, md5, file_size: int, compressed: bool, max_bytes: int) -> np.ndarray:
    head = f.read(4)
    dtype, ndim = _parse_header(path, head, compressed)
    dim_bytes = f.read(4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({ndim} dimensions declared, header cut short)")
    dims = tuple(int(d) for d in np.frombuffer(dim_bytes, dtype=">u4"))
    header_len = 4 + 4 * ndim
    count = 1
    for d in dims:
        count *= d
    payload = count * dtype.itemsize
    shape_txt = "x".join(str(d) for d in dims)
    promise = f"header declares {shape_txt} {dtype.name} values = {payload} payload bytes"
    what = "decompressed content" if compressed else "file"

    # Everything the header promises is checked against what the file can hold before anything
    # big is read or decompressed.
    if payload > max_bytes:
        raise DataError(f"{path}: {promise}, over the limit of {max_bytes} bytes for an IDX file "
                        f"(a corrupt header or a decompression bomb; read_idx(max_bytes=...) raises the limit)")
    if compressed and header_len + payload > _GZIP_MAX_RATIO * file_size + 1024:
        raise DataError(f"{path}: {promise}, but a gzip file of {file_size} bytes holds at most "
                        f"{_GZIP_MAX_RATIO} times that (a corrupt header or a decompression bomb)")
    if not compressed and file_size - header_len != payload:
        actual = file_size - header_len
        kind = "truncated" if actual < payload else "has trailing bytes"
        raise DataError(f"{path}: {promise}, but the file holds {actual} bytes after the "
                        f"{header_len}-byte header ({kind})")
    if md5 is not None:
        md5.update(head)
        md5.update(dim_bytes)

    # Read in chunks up to the declared size: memory grows only with data actually present.
    buf = bytearray()
    while len(buf) < payload:
        chunk = f.read(min(_CHUNK, payload - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) < payload:
        raise DataError(f"{path}: {promise}, but the {what} ends after {len(buf)} (truncated)")
    if f.read(1):  # for gzip this also reaches the end of stream, which checks the CRC
        raise DataError(f"{path}: {promise}, but the {what} continues past them (trailing bytes)")
    if md5 is not None:
        md5.update(buf)
    try:
        arr = np.frombuffer(buf, dtype=dtype).reshape(dims)
    except ValueError as e:  # e.g. more than 64 dimensions, or 0 x 4G x 4G x 4G
        raise DataError(f"{path}: header declares a {shape_txt} array, which numpy cannot hold ({e})") from e
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    else:
        arr = arr.view(dtype.newbyteorder("="))
    return arr


def _gzip_damage(path: Path) -> Optional[str]:
    """What is wrong with the gzip layer of ``path`` (bad deflate data, CRC or length mismatch,
    cut short), or None when its first :data:`_MAX_GZIP_SCAN` decompressed bytes and, if it
    ends there, its CRC are fine. Reads in chunks and keeps nothing."""
    try:
        with gzip.open(path, "rb") as f:
            done = 0
            while done <= _MAX_GZIP_SCAN:
                chunk = f.read(_CHUNK)
                if not chunk:
                    return None
                done += len(chunk)
    except (gzip.BadGzipFile, zlib.error, EOFError) as e:
        return str(e) or type(e).__name__
    except OSError:
        return None  # unreadable: the caller's own message stands
    return None


def read_idx(path: PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw, detected by magic bytes) into a numpy array.

    Supports type codes 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32 and
    0x0E float64 (big-endian on disk, returned in native byte order; the array is writable).
    The product of the header dimensions must equal the payload size exactly, and be at most
    ``max_bytes`` (default :data:`MAX_IDX_BYTES`, 1 GiB).

    Raises:
        DataError: missing file, bad magic, unsupported type code, truncated or trailing
            data, a header promising more than ``max_bytes`` or than its gzip file can hold,
            or a corrupt gzip stream (CRC error, bad deflate data, unexpected end of stream).
    """
    return _read_idx(path, max_bytes=max_bytes)[0]


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def _md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_md5sums(directory: Path) -> Dict[str, str]:
    """Parse ``directory/MD5SUMS`` (``md5  filename`` per line); {} if there is none."""
    sums_path = directory / _MD5SUMS_NAME
    if not sums_path.is_file():
        return {}
    sums: Dict[str, str] = {}
    try:
        text = sums_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DataError(f"{sums_path}: cannot read ({e})") from e
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _MD5SUMS_LINE.match(line.strip())
        if not m:
            raise DataError(f"{sums_path}, line {lineno}: expected 'md5  filename', got {line.strip()!r}")
        sums[os.path.basename(m.group(2))] = m.group(1).lower()
    return sums


def _identify(path: Path, file_md5: str, content_md5: Optional[str]) -> Optional[str]:
    """Which known dataset this file is, by its md5s; None if its name is not a known one."""
    canonical = _canonical_name(path.name)
    known_raw = {ds: sums[canonical] for ds, sums in KNOWN_RAW_MD5.items() if canonical in sums}
    if not known_raw:
        return None
    for ds, sums in KNOWN_GZ_MD5.items():
        if sums.get(canonical + ".gz") == file_md5:
            return ds
    for ds, md5 in known_raw.items():
        if md5 in (file_md5, content_md5):
            return ds
    expected = "; ".join(
        f"{_DATASET_TITLES[ds]}: {KNOWN_GZ_MD5[ds][canonical + '.gz']} (.gz) or {md5} (decompressed)"
        for ds, md5 in known_raw.items()
    )
    got = f"md5 {file_md5}"
    if content_md5 is not None and content_md5 != file_md5:
        got += f" (decompressed content md5 {content_md5})"
    raise DataError(
        f"{path}: md5 mismatch: the file has {got}, which is not any known dataset's "
        f"{canonical} ({expected}). The file is corrupt or not what its name says; delete it and "
        f"download it again, or pass verify=False to use it anyway."
    )


def _verify_loaded(path: Path, content_md5: Optional[str], md5sums: Dict[str, str]) -> Optional[str]:
    """md5 checks for a file already read (structurally valid). Returns the dataset or None."""
    compressed = _is_gzip(path)
    file_md5 = _md5_file(path) if compressed else content_md5
    if file_md5 is None:
        file_md5 = _md5_file(path)
    listed = md5sums.get(path.name)
    if listed is not None and listed != file_md5:
        raise DataError(
            f"{path}: md5 mismatch with {path.parent / _MD5SUMS_NAME}: the file has md5 {file_md5}, "
            f"MD5SUMS lists {listed}. The file is corrupt; delete it and download it again."
        )
    return _identify(path, file_md5, content_md5)


def verify_file(path: PathLike) -> Optional[str]:
    """Read and fully verify one data file.

    Checks the IDX structure, the ``MD5SUMS`` file of its directory if that lists it, and, if
    its name is a known MNIST / Fashion-MNIST name, that it is one of those datasets.

    Returns:
        ``"mnist"`` or ``"fashion-mnist"`` for a known file, ``None`` for a file whose name is
        not a known one (then only structure and ``MD5SUMS`` are checked).

    Raises:
        DataError: on any problem.
    """
    path = Path(path)
    _, content_md5 = _read_idx(path, want_md5=True)
    return _verify_loaded(path, content_md5, _read_md5sums(path.parent))


# --------------------------------------------------------------------------------------
# Writing files atomically (downloads here, checkpoints and metrics in lenet5_fast.checkpoint)
# --------------------------------------------------------------------------------------


def _create_temp(path: Path) -> Tuple[int, Path]:
    """A new, empty temporary file next to ``path`` (``.NAME.XXXXXXXX.tmp``), opened for writing,
    with the permissions any new file gets (0666 less the umask: ``tempfile.mkstemp`` would
    make it 0600, and the rename would keep that)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def atomic_write_bytes(path: PathLike, write, repeatable: bool = True) -> None:
    """Calls ``write(file)`` on a temporary file next to ``path``, fsyncs, then renames it over
    ``path``. On any error the temporary file is removed and ``path`` is untouched. The file
    gets the permissions of any new file (the umask's). A full disk is an ``OSError(ENOSPC)``
    saying so, with the size needed (found by calling ``write`` again on a byte counter, unless
    ``repeatable`` is False), whatever the writer (torch.save, a plot) made of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        full = _no_space(e, path.parent, write if repeatable else None) if isinstance(e, Exception) else None
        if full is not None:
            raise full from e
        raise


class _ByteCounter:
    """A write-only file that only counts the bytes written to it."""

    def __init__(self):
        self.size = 0

    def write(self, b) -> int:
        n = memoryview(b).nbytes
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass


def _no_space(e: BaseException, folder: Path, write) -> Optional[OSError]:
    """The OSError to raise when ``e`` came from a full disk (or quota), else None. Writers
    report it in their own words (torch.save: 'unexpected pos'): ENOSPC anywhere in the chain of
    causes, or more bytes to write than the disk has free, is a full disk."""
    full = False
    while e is not None and not full:
        full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        e = e.__cause__ or e.__context__
    needed = None
    if write is not None:
        try:
            counter = _ByteCounter()
            write(counter)
            needed = counter.size
        except Exception:
            pass
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not full and not (needed is not None and free is not None and needed > free):
        return None
    need = f"needed ~{needed / 1e6:.1f} MB" if needed is not None else "needed more"
    have = f", {free / 1e6:.1f} MB free" if free is not None else ""
    return OSError(errno.ENOSPC, f"no space left on {folder} ({need}{have})")


# --------------------------------------------------------------------------------------
# Locating and downloading
# --------------------------------------------------------------------------------------


def find_dataset_dir(root: Optional[PathLike] = None) -> Path:
    """The data directory: ``root`` if given, else ``$LENET5_FAST_DATA``, else ``~/.cache/lenet5_fast/mnist``.

    Returns an absolute path (``~`` expanded). The directory need not exist (``download=True``
    creates it).
    """
    if root is not None and str(root) != "":
        return Path(root).expanduser().absolute()
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().absolute()
    return DEFAULT_DATA_DIR.expanduser().absolute()


def _find_file(directory: Path, split: str, kind: str) -> Optional[Path]:
    for name in _candidate_names(split, kind):
        p = directory / name
        if p.is_file():
            return p
    return None


def _missing_message(directory: Path, split: str, kind: str, dataset: Optional[str] = None) -> str:
    names = ", ".join(_candidate_names(split, kind))
    where = f"{directory}" if directory.is_dir() else f"{directory} (the directory does not exist)"
    if dataset == "fashion-mnist":  # not downloaded by us: say where it comes from
        return (f"Fashion-MNIST {split} {kind} not found in {where}: looked for {names}. Install Debian's "
                f"dataset-fashion-mnist (`apt-get install dataset-fashion-mnist`), or point to a directory "
                f"holding its four .gz files with root=DIR (CLI: --data DIR).")
    return (
        f"MNIST {split} {kind} not found in {where}: looked for {names}. "
        f"Pass download=True (CLI: --download) to fetch MNIST there, or point to a directory "
        f"holding the files with root=DIR (CLI: --data DIR) or ${DATA_ENV_VAR}=DIR."
    )


def download_mnist(
    dest_dir: Optional[PathLike] = None,
    mirrors: Optional[Sequence[str]] = None,
    timeout: float = 30,
) -> Path:
    """Download the four MNIST .gz files into ``dest_dir`` and check their md5.

    Each file is tried on each mirror in turn (default :data:`MNIST_MIRRORS`). A file already
    present with the right md5 is skipped; a corrupt one is replaced. Data is written to a
    temporary file in ``dest_dir`` and moved into place with :func:`os.replace` only once its
    md5 is right, so no half-written file is ever left under a real name.

    Args:
        dest_dir: target directory (created if needed); ``None`` means :func:`find_dataset_dir`.
        mirrors: base URLs; the file name is appended.
        timeout: socket timeout in seconds for each connection / read.

    Returns:
        The directory.

    Raises:
        DataError: when every mirror fails for some file, or when ``dest_dir`` already holds a
            different dataset (e.g. Fashion-MNIST) under the MNIST names (it is not overwritten).
    """
    dest = find_dataset_dir(dest_dir)
    mirrors = list(MNIST_MIRRORS if mirrors is None else mirrors)
    if not mirrors:
        raise DataError("download_mnist: no mirrors given")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot create the data directory ({e})") from e

    for name, want in KNOWN_GZ_MD5["mnist"].items():
        target = dest / name
        if target.is_file():
            have = _existing_dataset(target, want)
            if have == "mnist":
                continue
            if have is not None:
                raise DataError(
                    f"{target}: this is {_DATASET_TITLES[have]}'s {name}, not MNIST's; refusing to "
                    f"overwrite it. Download MNIST into a different directory."
                )
            # otherwise the file is corrupt or unknown: replace it
        errors: List[str] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            err = _download_one(url, target, want, timeout)
            if err is None:
                break
            errors.append(f"  {url}: {err}")
        else:
            raise DataError(
                f"could not download {name} into {dest}; every mirror failed:\n"
                + "\n".join(errors)
                + "\nThis machine may be offline. Download the four MNIST files elsewhere "
                "(" + ", ".join(KNOWN_GZ_MD5["mnist"]) + "), copy them into a directory and pass "
                f"--data DIR (or root=DIR, or set ${DATA_ENV_VAR}=DIR)."
            )
    return dest


def _existing_dataset(target: Path, want_md5: str) -> Optional[str]:
    """Which known dataset an existing file is (by .gz md5, else by decompressed content md5)."""
    file_md5 = _md5_file(target)
    if file_md5 == want_md5:
        return "mnist"
    try:
        _, content_md5 = _read_idx(target, want_md5=True)
        return _identify(target, file_md5, content_md5)
    except DataError:
        return None


class _DownloadRefused(Exception):
    """The server's answer is not the file (too large, wrong md5)."""


def _download_one(url: str, target: Path, want_md5: str, timeout: float,
                  max_bytes: int = _MAX_DOWNLOAD_BYTES) -> Optional[str]:
    """Fetch ``url`` into ``target`` atomically; return None on success or an error string."""

    def fetch(out) -> None:
        h = hashlib.md5()
        size = 0
        req = urllib.request.Request(url, headers={"User-Agent": "lenet5_fast"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise _DownloadRefused(f"response larger than {max_bytes} bytes, not the expected file")
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != want_md5:
            raise _DownloadRefused(f"md5 mismatch: got {h.hexdigest()} ({size} bytes), expected {want_md5}")

    try:
        atomic_write_bytes(target, fetch, repeatable=False)  # a temporary file, renamed only once its md5 is right
    except _DownloadRefused as e:
        return str(e)
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        return f"cannot connect ({e.reason})"
    except (socket.timeout, TimeoutError) as e:
        return f"timed out after {timeout} s ({e})"
    except (OSError, http.client.HTTPException) as e:
        return f"{type(e).__name__}: {e}"
    return None


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def load_mnist(
    root: Optional[PathLike] = None,
    split: str = "train",
    download: bool = False,
    verify: bool = True,
    dataset: Optional[str] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Load one split of MNIST (or Fashion-MNIST: same names and format).

    Args:
        root: data directory; ``None`` means ``$LENET5_FAST_DATA`` or ``~/.cache/lenet5_fast/mnist``.
        split: ``"train"`` (60000 examples) or ``"test"`` (10000).
        download: if the split's files are missing, download MNIST into the directory.
        verify: check md5s (known datasets, and the directory's ``MD5SUMS``), and that images
            and labels come from the same dataset. Structural checks always run.
        dataset: ``"mnist"`` or ``"fashion-mnist"``: with ``verify``, the files must be that one.

    Returns:
        ``(images, labels)``: uint8 array [N, 28, 28] and int64 array [N].

    Raises:
        DataError: missing or bad files.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    directory = find_dataset_dir(root)
    img_path = _find_file(directory, split, "images")
    lbl_path = _find_file(directory, split, "labels")
    if (img_path is None or lbl_path is None) and download:
        download_mnist(directory)
        img_path = _find_file(directory, split, "images")
        lbl_path = _find_file(directory, split, "labels")
    if img_path is None:
        raise DataError(_missing_message(directory, split, "images", dataset))
    if lbl_path is None:
        raise DataError(_missing_message(directory, split, "labels", dataset))

    images, img_md5 = _read_idx(img_path, want_md5=verify)
    labels, lbl_md5 = _read_idx(lbl_path, want_md5=verify)

    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{img_path}: expected uint8 images of shape [N, 28, 28], got {images.dtype} {list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lbl_path}: expected a 1-D uint8 label array, got {labels.dtype} {list(labels.shape)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{img_path} holds {images.shape[0]} images but {lbl_path} holds {labels.shape[0]} labels; "
            f"they must match"
        )
    if labels.size and int(labels.max()) > 9:
        bad = int(np.count_nonzero(labels > 9))
        raise DataError(f"{lbl_path}: {bad} labels are outside 0..9 (max {int(labels.max())})")

    if verify:
        sums = _read_md5sums(directory)
        ds_img = _verify_loaded(img_path, img_md5, sums)
        ds_lbl = _verify_loaded(lbl_path, lbl_md5, sums)
        if ds_img is not None and ds_lbl is not None and ds_img != ds_lbl:
            raise DataError(
                f"{img_path} is {_DATASET_TITLES[ds_img]} but {lbl_path} is {_DATASET_TITLES[ds_lbl]}; "
                f"images and labels must come from the same dataset"
            )
        if dataset is not None and ds_img != dataset:
            raise DataError(f"{img_path} is {_DATASET_TITLES.get(ds_img, 'not a known dataset')}, not "
                            f"{_DATASET_TITLES.get(dataset, dataset)}; point to a directory that holds it")

    return images, labels.astype(np.int64)


# --------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------

_SCALE = (PAPER_INK - PAPER_BACKGROUND) / 255.0  # 1.275 / 255 = 0.005


def preprocess(images: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
    """The paper's input: 28x28 uint8 digits -> float32 [N, 1, 32, 32].

    Pads 2 pixels on each side and maps pixel ``p`` to ``-0.1 + p / 255 * 1.275``, so the
    background (0, and the padding) is :data:`PAPER_BACKGROUND` = -0.1 and full ink (255) is
    :data:`PAPER_INK` = 1.175. (The paper says this makes the mean roughly 0 and the
    variance roughly 1; on the MNIST training set the mean is in fact 0.028 and the standard
    deviation 0.35.) Computed in float32, so values are within 1 ulp of the exact formula.

    Args:
        images: uint8 numpy array or torch tensor, [N, 28, 28], [N, 1, 28, 28] or [28, 28].

    Returns:
        A new float32 CPU tensor [N, 1, 32, 32] (N = 1 for a single image).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"preprocess expects uint8 pixels (0..255), got numpy {images.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            raise TypeError(f"preprocess expects uint8 pixels (0..255), got torch {images.dtype}")
        t = images.detach().cpu()
    else:
        raise TypeError(f"preprocess expects a numpy array or torch tensor, got {type(images).__name__}")
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif t.dim() == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.dim() != 3 or tuple(t.shape[1:]) != (28, 28):
        raise ValueError(
            f"preprocess expects [N, 28, 28], [N, 1, 28, 28] or [28, 28] images, got {list(images.shape)}"
        )
    n = t.shape[0]
    out = torch.full((n, 1, 32, 32), PAPER_BACKGROUND, dtype=torch.float32)
    inner = out[:, 0, 2:30, 2:30]
    inner.copy_(t)  # uint8 -> float32
    inner.mul_(_SCALE).add_(PAPER_BACKGROUND)
    return out


def load_tensors(
    root: Optional[PathLike] = None,
    split: str = "train",
    download: bool = False,
    limit: Optional[int] = None,
    dataset: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Load a split and preprocess it: ``(x float32 [N, 1, 32, 32], y int64 [N])``.

    ``limit`` keeps only the first ``limit`` examples (``None``: all of them); ``dataset``
    (``"mnist"`` or ``"fashion-mnist"``) requires the files to be that dataset.
    """
    images, labels = load_mnist(root, split=split, download=download, dataset=dataset)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return preprocess(images), torch.from_numpy(np.ascontiguousarray(labels))
