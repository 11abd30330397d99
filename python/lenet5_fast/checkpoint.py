"""Checkpoints: the model's weights, its configuration, the optimizer's state and the training
history, in one file.

The file is a ``torch.save`` of a dict holding only tensors and plain data (str, int, float,
bool, None, lists, dicts), so it is read back with ``torch.load(weights_only=True)``: loading
never executes code. It carries ``format`` and ``version``; anything else (a corrupt or
truncated file, another program's checkpoint, a newer version) raises :class:`CheckpointError`.
Its ``sha256`` entry is a checksum of everything else in it (every tensor's dtype, shape and
bytes, the configuration, the optimizer state, the history), checked on every load: flipped
bytes that still unpickle are a :class:`CheckpointError` naming the file, never a silently
different model. A file written before the checksum existed loads with an
:class:`UncheckedCheckpointWarning`. Writing goes to a temporary file in the same directory,
then ``os.replace``: a crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import hashlib
import struct
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .data import atomic_write_bytes

# Reading and writing a checkpoint needs no model; only building one does: model_from_checkpoint
# (and save_checkpoint's type check) import lenet5_fast.model when called, so that importing
# this module does not import the model, which imports it back (LeNet5.from_pretrained).

__all__ = ["CheckpointError", "UncheckedCheckpointWarning", "checksum", "FORMAT", "VERSION", "model_config", "save_checkpoint", "load_checkpoint",
           "model_from_checkpoint", "atomic_write_bytes"]

FORMAT = "lenet5_fast.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or not a lenet5_fast checkpoint of a known version."""


class UncheckedCheckpointWarning(UserWarning):
    """A checkpoint written before checkpoints carried a checksum: loaded without one."""


def _feed(h, obj) -> None:
    """Feeds ``obj`` (tensors and plain data) to the hash ``h``, each value tagged with its type,
    dict entries in key order, so that equal contents give equal digests."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif obj is None or isinstance(obj, (bool, int, str, bytes)):
        h.update(f"{type(obj).__name__}{len(repr(obj))}:{obj!r};".encode())
    else:
        raise TypeError(f"checkpoint: cannot store a {type(obj).__name__} (tensors and plain data only)")


def checksum(ck: Dict[str, Any]) -> str:
    """sha256 of a checkpoint's contents, every entry but ``sha256`` itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ck.items() if k != "sha256"})
    return h.hexdigest()


def model_config(model: "LeNet5") -> Dict[str, Any]:
    """The constructor arguments that rebuild ``model``'s architecture."""
    cfg = dict(variant=model.variant, in_channels=model.in_channels, num_classes=model.num_classes,
               map_j=model.map_j)
    if model.variant == "classic":
        cfg["c3_table"] = [list(r) for r in model.c3.table]
    return cfg


def save_checkpoint(path, model: "LeNet5", optimizer: Optional[torch.optim.Optimizer] = None,
                    **meta: Any) -> None:
    """Atomically writes a checkpoint. ``meta``: plain data (pass index, history, config...)."""
    from .model import LeNet5

    if not isinstance(model, LeNet5):
        raise TypeError(f"save_checkpoint: model must be a lenet5_fast.LeNet5, got {type(model).__name__}")
    state = dict(format=FORMAT, version=VERSION, model_config=model_config(model),
                 model={k: v.detach().cpu() for k, v in model.state_dict().items()},
                 optimizer=optimizer.state_dict() if optimizer is not None else None,
                 optimizer_name=type(optimizer).__name__ if optimizer is not None else None,
                 meta=meta)
    state["sha256"] = checksum(state)
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path) -> Dict[str, Any]:
    """Reads and validates a checkpoint (never executes code). Raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file: report them as one
        raise CheckpointError(f"{path} is not a readable lenet5_fast checkpoint (corrupt, truncated, or "
                              f"another format): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lenet5_fast checkpoint (no format marker {FORMAT!r})")
    if not isinstance(ck.get("version"), int) or ck["version"] > VERSION or ck["version"] < 1:
        raise CheckpointError(f"{path} is a lenet5_fast checkpoint of version {ck.get('version')!r}; "
                              f"this lenet5_fast reads version {VERSION} (upgrade lenet5_fast?)")
    if "sha256" not in ck:
        warnings.warn(f"{path} carries no checksum (written by an older lenet5_fast): loaded without checking "
                      f"its contents", UncheckedCheckpointWarning, stacklevel=2)
    else:
        try:
            digest = checksum(ck)
        except TypeError as e:
            raise CheckpointError(f"{path} is damaged: {e}") from None
        if digest != ck["sha256"]:
            raise CheckpointError(f"{path} is damaged: its contents do not match the checksum saved with them "
                                  f"(sha256 {digest[:16]}..., saved {str(ck['sha256'])[:16]}...)")
    if not isinstance(ck.get("model"), dict) or not isinstance(ck.get("model_config"), dict) \
            or not all(isinstance(v, torch.Tensor) for v in ck["model"].values()):
        raise CheckpointError(f"{path}: the checkpoint's model entry is damaged")
    ck.setdefault("meta", {})
    return ck


def model_from_checkpoint(ck_or_path) -> "LeNet5":
    """A LeNet5 rebuilt from a checkpoint (or its path), weights loaded, in eval mode."""
    from .model import LeNet5

    where = "checkpoint" if isinstance(ck_or_path, dict) else f"checkpoint {ck_or_path}"
    ck = load_checkpoint(ck_or_path) if not isinstance(ck_or_path, dict) else ck_or_path
    cfg = dict(ck["model_config"])
    table = cfg.get("c3_table")
    if table is not None and not (isinstance(table, list) and all(
            isinstance(row, list) and all(type(i) is int for i in row) for row in table)):
        raise CheckpointError(f"{where}: its C3 connection table must be a list of lists of input map indices "
                              f"(ints), got {table!r}")
    try:
        model = LeNet5(**cfg)
        model.load_state_dict(ck["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{where} does not fit a LeNet5 ({cfg}): {e}") from e
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        raise CheckpointError(f"{where} holds non-finite weights")
    return model.eval()

