"""CIFAR-10 from its standard python-pickle batches (``cifar-10-python.tar.gz``): finding them,
the md5-checked download, extraction, loading without executing code, and the network input.

A data directory ``root`` may hold the batch files themselves (``data_batch_1`` .. ``data_batch_5``,
``test_batch``, ``batches.meta``), or a ``cifar-10-batches-py`` directory with them, or the archive
``cifar-10-python.tar.gz`` (its md5 is checked, then the batch files alone are extracted into
``root/cifar-10-batches-py``). ``download=True`` fetches the archive when none of these is there.

The batches are pickles. They are read by an unpickler whose ``find_class`` knows only the names
a batch refers to (numpy's array and dtype reconstruction, ``_codecs.encode``) and maps them to
stand-ins that only record their arguments, so no function of the file's choosing ever runs;
the arrays are then built from their raw bytes and checked (uint8 ``[n, 3072]``, as many labels
as images, labels 0..9). Sizes are bounded: a batch file or archive member over 64 MiB, or an
archive with more than 64 members or 512 MiB of content, is refused. Every problem raises
:class:`lenet5_fast.data.DataError` naming the file.
"""
from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .checkpoint import atomic_write_bytes
from .data import DataError, _download_one, _md5_file

__all__ = ["CIFAR10_URL", "CIFAR10_MD5", "ARCHIVE_NAME", "BATCHES_DIR", "TRAIN_BATCHES", "TEST_BATCH",
           "META_FILE", "CLASSES", "DEFAULT_CIFAR10_DIR", "download_cifar10", "load_cifar10",
           "label_names", "preprocess_cifar", "load_cifar10_tensors"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DEFAULT_CIFAR10_DIR = Path("~/.cache/lenet5_fast/cifar10")

_MAX_FILE_BYTES = 64 << 20      # a real batch is 31 MB
_MAX_ARCHIVE_BYTES = 256 << 20  # the real archive is 163 MiB
_MAX_MEMBERS = 64               # the real archive has 9
_MAX_CONTENT_BYTES = 512 << 20  # the real archive's content is 178 MiB
_PIXELS = 3 * 32 * 32


# ---------------------------------------------------------------------------------------------
# unpickling without running code

class _Marker:
    """What the name ``numpy.ndarray`` stands for in a batch: an argument, never called."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _Marker()
_INT_DTYPES = ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8")


class _Array:
    """Stands for ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')``; keeps the state
    that ``__setstate__`` receives: ([version,] shape, dtype, is_fortran, raw bytes)."""

    def __init__(self, cls, shape=None, typecode=None):
        if cls is not _NDARRAY:
            raise pickle.UnpicklingError(f"_reconstruct of {cls!r}, expected numpy.ndarray")
        self.state = None

    def __setstate__(self, state):
        self.state = state


def _text(v):
    """A Python 2 str arrives as bytes (``encoding="bytes"``); a Python 3 one as str."""
    return v.decode("latin-1") if isinstance(v, bytes) else v


class _Dtype:
    """Stands for ``numpy.dtype(code, align, copy)`` of a plain integer type."""

    def __init__(self, code, align=False, copy=True):
        code = _text(code)
        if not isinstance(code, str) or code not in _INT_DTYPES:
            raise pickle.UnpicklingError(f"dtype {code!r}, expected one of {_INT_DTYPES}")
        self.code, self.byteorder = code, "|"

    def __setstate__(self, state):
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags)
        if not isinstance(state, tuple) or len(state) < 2 or _text(state[1]) not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError("bad dtype state")
        if any(v is not None for v in state[2:5]):
            raise pickle.UnpicklingError("structured or sub-array dtypes are not CIFAR-10 data")
        self.byteorder = _text(state[1])

    def numpy(self) -> np.dtype:
        dt = np.dtype(self.code)
        return dt if self.byteorder in ("|", "=") else dt.newbyteorder(self.byteorder)


def _latin1(text, encoding="latin1"):
    """``_codecs.encode(text, 'latin1')``, how Python 3 pickles bytes at protocol 2."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode other than str -> latin1 bytes")
    return text.encode("latin-1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Array,
    ("numpy._core.multiarray", "_reconstruct"): _Array,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1,
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing the global {module}.{name}: a CIFAR-10 batch needs "
                                         f"only numpy arrays, lists and bytes") from None


def _unpickle(raw: bytes, where: str):
    try:
        return _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # a hostile or corrupt pickle can raise many kinds: report them as one
        raise DataError(f"{where}: not a CIFAR-10 python batch (cannot unpickle it: "
                        f"{type(e).__name__}: {e})") from None


def _array(obj, where: str, what: str) -> np.ndarray:
    """The numpy array an ``_Array`` stand-in describes, checked against its raw bytes."""
    state = obj.state if isinstance(obj, _Array) else None
    if isinstance(state, tuple) and len(state) == 5:
        state = state[1:]  # (version, shape, dtype, is_fortran, raw)
    if not (isinstance(state, tuple) and len(state) == 4):
        raise DataError(f"{where}: {what} is not a numpy array")
    shape, dtype, fortran, raw = state
    if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= _MAX_FILE_BYTES for d in shape)):
        raise DataError(f"{where}: {what} has a bad shape {shape!r}")
    if not isinstance(dtype, _Dtype) or not isinstance(raw, (bytes, bytearray)):
        raise DataError(f"{where}: {what} is not a plain integer array")
    dt = dtype.numpy()
    count = int(np.prod(shape))
    if count * dt.itemsize != len(raw):
        raise DataError(f"{where}: {what} declares shape {list(shape)} of {dt} ({count * dt.itemsize} bytes) "
                        f"but holds {len(raw)} bytes")
    arr = np.frombuffer(bytes(raw), dtype=dt)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _entry(d: dict, key: str):
    return d.get(key.encode(), d.get(key))


def _parse_batch(obj, where: str) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, expected a dict)")
    data, labels = _entry(obj, "data"), _entry(obj, "labels")
    if data is None or labels is None:
        keys = sorted(repr(k) for k in obj)[:8]
        raise DataError(f"{where}: not a CIFAR-10 batch (no 'data' and 'labels' entries; keys {', '.join(keys)})")
    images = _array(data, where, "'data'")
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != _PIXELS:
        raise DataError(f"{where}: 'data' must be uint8 [n, {_PIXELS}] (32x32 RGB rows), got "
                        f"{images.dtype} {list(images.shape)}")
    if isinstance(labels, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
            raise DataError(f"{where}: 'labels' must be a list of integers")
        lab = np.array(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    else:
        lab = _array(labels, where, "'labels'").astype(np.int64).reshape(-1)
    if lab.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {lab.shape[0]} labels")
    if lab.size and (lab.min() < 0 or lab.max() > 9):
        raise DataError(f"{where}: labels outside 0..9 (min {lab.min()}, max {lab.max()})")
    return images.reshape(-1, 3, 32, 32).copy(), lab


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise DataError(f"{path}: {size} bytes, more than a CIFAR-10 batch can be ({_MAX_FILE_BYTES})")
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e})") from e


# ---------------------------------------------------------------------------------------------
# finding, downloading, extracting

def _root(root) -> Path:
    return Path(DEFAULT_CIFAR10_DIR if root is None or str(root) == "" else root).expanduser().absolute()


def _batches_in(directory: Path, names: Sequence[str]) -> Optional[Path]:
    for d in (directory, directory / BATCHES_DIR):
        if all((d / n).is_file() for n in names):
            return d
    return None


def download_cifar10(dest_dir=None, url: Optional[str] = None, md5: Optional[str] = None,
                     timeout: float = 60) -> Path:
    """Downloads ``cifar-10-python.tar.gz`` into ``dest_dir`` (default ``~/.cache/lenet5_fast/cifar10``)
    unless it is there with the right md5; written to a temporary file and renamed only once its
    md5 is right. Returns the archive's path. Raises DataError when the download fails."""
    url, md5 = url or CIFAR10_URL, md5 or CIFAR10_MD5
    dest = _root(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{dest}: cannot create the data directory ({e})") from e
    target = dest / ARCHIVE_NAME
    if target.is_file() and _md5_file(target) == md5:
        return target
    err = _download_one(url, target, md5, timeout, max_bytes=_MAX_ARCHIVE_BYTES)
    if err is not None:
        raise DataError(f"could not download {url} into {dest}: {err}. This machine may be offline: download "
                        f"{ARCHIVE_NAME} (md5 {md5}) elsewhere and put it, or its {BATCHES_DIR} directory, "
                        f"into {dest}")
    return target


def _extract(archive: Path, dest: Path, verify: bool) -> None:
    """Writes the archive's batch files (and nothing else) into ``dest``."""
    if verify:
        got = _md5_file(archive)
        if got != CIFAR10_MD5:
            raise DataError(f"{archive}: md5 mismatch: the file has md5 {got}, CIFAR-10's {ARCHIVE_NAME} has "
                            f"{CIFAR10_MD5}. The file is corrupt or not CIFAR-10; delete it and download it "
                            f"again, or pass verify=False to use it anyway.")
    wanted = set(TRAIN_BATCHES) | {TEST_BATCH, META_FILE}
    found: Dict[str, bytes] = {}
    members = content = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                members, content = members + 1, content + max(0, m.size)
                if members > _MAX_MEMBERS or content > _MAX_CONTENT_BYTES:
                    raise DataError(f"{archive}: more than {_MAX_MEMBERS} members or {_MAX_CONTENT_BYTES} bytes; "
                                    f"not {ARCHIVE_NAME}")
                name = m.name.rsplit("/", 1)[-1]
                if name not in wanted or not m.isfile():
                    continue
                if m.size > _MAX_FILE_BYTES:
                    raise DataError(f"{archive}: member {m.name} is {m.size} bytes, more than a CIFAR-10 batch "
                                    f"can be ({_MAX_FILE_BYTES})")
                f = tar.extractfile(m)
                found[name] = f.read() if f is not None else b""
    except DataError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{archive}: not a readable tar.gz archive (corrupt or truncated?): {e}") from e
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{archive}: the archive lacks {', '.join(missing)}; not {ARCHIVE_NAME}")
    for name, raw in found.items():
        atomic_write_bytes(dest / name, lambda f, raw=raw: f.write(raw))


def _locate(root, names: Sequence[str], download: bool, verify: bool) -> Path:
    directory = _root(root)
    found = _batches_in(directory, names)
    if found is not None:
        return found
    archive = directory / ARCHIVE_NAME
    if not archive.is_file() and download:
        download_cifar10(directory)
    if archive.is_file():
        _extract(archive, directory / BATCHES_DIR, verify)
        found = _batches_in(directory, names)
    if found is None:
        where = str(directory) if directory.is_dir() else f"{directory} (the directory does not exist)"
        raise DataError(f"CIFAR-10 batches not found in {where}: looked for {', '.join(names)} there and in "
                        f"{BATCHES_DIR}/, and for {ARCHIVE_NAME}. Pass download=True (CLI: --download) to "
                        f"fetch it ({CIFAR10_URL}, 163 MiB), or --data DIR for a directory that holds it.")
    return found


# ---------------------------------------------------------------------------------------------
# loading

def load_cifar10(root=None, split: str = "train", download: bool = False,
                 verify: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """One split of CIFAR-10: uint8 images [N, 3, 32, 32] (RGB) and int64 labels [N]; train is
    data_batch_1..5 (50,000), test is test_batch (10,000). ``verify``: check the archive's md5
    when extracting it (batch files found as files are checked for structure only)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    directory = _locate(root, names, download, verify)
    parts = [_parse_batch(_unpickle(_read_file(directory / n), str(directory / n)), str(directory / n))
             for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def label_names(root=None) -> List[str]:
    """The class names in ``batches.meta`` (CIFAR-10's are :data:`CLASSES`)."""
    directory = _locate(root, (META_FILE,), False, True)
    where = str(directory / META_FILE)
    meta = _unpickle(_read_file(directory / META_FILE), where)
    names = _entry(meta, "label_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == 10 and all(isinstance(n, (bytes, str)) for n in names)):
        raise DataError(f"{where}: no list of 10 'label_names'")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def preprocess_cifar(images) -> torch.Tensor:
    """uint8 [N, 3, 32, 32] -> float32 pixels / 255 (the Keras write-up's input; no padding)."""
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.dim() != 4 or tuple(t.shape[1:]) != (3, 32, 32):
        raise ValueError(f"preprocess_cifar expects uint8 [N, 3, 32, 32], got {t.dtype} {list(t.shape)}")
    return t.to(torch.float32).div_(255.0)


def load_cifar10_tensors(root=None, split: str = "train", download: bool = False,
                         limit: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(x float32 [N, 3, 32, 32] in [0, 1], y int64 [N])``; ``limit`` keeps the first N."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    images, labels = load_cifar10(root, split, download=download)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return preprocess_cifar(np.ascontiguousarray(images)), torch.from_numpy(np.ascontiguousarray(labels))
