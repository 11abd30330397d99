"""Pretrained LeNet-5 weights shipped with the package, in torchvision's style.

    import lenet5_fast
    lenet5_fast.weights.list()                          # ['modern-adam', 'paper', 'paper-distort']
    model = lenet5_fast.LeNet5.from_pretrained("paper-distort")
    lenet5_fast.weights.info("paper")                   # command, seed, commit, test error, sha256

Each file in this folder is a lenet5_fast checkpoint (tensors and plain data only, read with
``torch.load(weights_only=True)``: loading runs no code) with no optimizer state. ``manifest.json``
records for each how it was made (the exact training command, seed, the git commit of the code
that trained it, torch version, SIMD level), its MNIST test error and the file's sha256, which
is checked every time the file is loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["DEFAULT", "WeightsError", "list", "info", "path", "load", "sha256", "manifest", "export"]

DEFAULT = "paper-distort"     # what `lenet5-fast predict` uses when given no weights
MANIFEST = "manifest.json"


class WeightsError(ValueError):
    """Unknown weights name, or a shipped file that is missing or does not match its sha256."""


def _folder() -> Path:
    return Path(str(resources.files(__name__)))


def manifest() -> Dict[str, Any]:
    """The manifest: ``{"format": ..., "weights": {name: entry}}``."""
    try:
        return json.loads((_folder() / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"the shipped weights' manifest cannot be read ({e}); reinstall lenet5_fast") from e


def list() -> List[str]:  # noqa: A001 (torchvision-style name)
    """Names of the shipped weights."""
    return sorted(manifest()["weights"])


def info(name: str) -> Dict[str, Any]:
    """The manifest entry of ``name``: file, variant, description, command, seed, commit,
    test_error (%), test_errors (of test_samples), sha256, ..."""
    entries = manifest()["weights"]
    if name not in entries:
        raise WeightsError(f"no shipped weights named {name!r}; available: {', '.join(sorted(entries))}")
    return dict(entries[name], name=name)


def sha256(file) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path(name: str) -> Path:
    """The file of the shipped weights ``name``, after checking its sha256."""
    entry = info(name)
    file = _folder() / entry["file"]
    if not file.is_file():
        raise WeightsError(f"the shipped weights file {file} is missing; reinstall lenet5_fast")
    digest = sha256(file)
    if digest != entry["sha256"]:
        raise WeightsError(f"the shipped weights file {file} is damaged (sha256 {digest}, expected "
                           f"{entry['sha256']}); reinstall lenet5_fast")
    return file


def load(name: str = DEFAULT):
    """A :class:`lenet5_fast.LeNet5` with the shipped weights ``name``, in eval mode."""
    from ..checkpoint import UncheckedCheckpointWarning, model_from_checkpoint

    checked = path(name)  # the whole file against the manifest's sha256
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncheckedCheckpointWarning)  # files shipped before checkpoints had one
        return model_from_checkpoint(checked)


def export(checkpoint, out_file, **provenance) -> Dict[str, Any]:
    """Writes the model of a training checkpoint, without optimizer state or history, to
    ``out_file`` and returns its manifest entry (``provenance`` plus variant, sha256, size).
    Used to make the shipped files (scripts/ship_weights.py)."""
    from ..checkpoint import model_from_checkpoint, save_checkpoint

    model = model_from_checkpoint(checkpoint)
    save_checkpoint(out_file, model, None, **{k: v for k, v in provenance.items() if k in ("name", "command", "seed")})
    os.chmod(out_file, 0o644)            # readable by everyone once installed (mkstemp made it 0600)
    return dict(file=Path(out_file).name, variant=model.variant, **provenance,
                parameters=sum(p.numel() for p in model.parameters()), bytes=Path(out_file).stat().st_size,
                sha256=sha256(out_file))
