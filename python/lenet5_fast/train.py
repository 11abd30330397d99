"""Training as in the paper: passes over the training set, SDLM with per-sample updates (or
SGD/Adam, or mini-batches), optional on-the-fly distortions, train and test error after every
pass, an atomic checkpoint per pass, exact resume, ``metrics.json`` and the Fig. 5 plot.

Everything random in pass ``p`` (distortions, sample order, the 500 Gauss-Newton samples)
comes from a generator seeded with ``(seed, p)``, so a run resumed from a checkpoint makes the
same updates as one that was never interrupted. A run directory is self-describing: its
checkpoint holds every setting (:class:`TrainConfig`, with the defaults filled in, the data
directory and the engine used) and a fingerprint of the data, so ``resume`` needs nothing else
and refuses settings that would make it another run.

Defaults per optimizer x variant (:data:`DEFAULTS`) were chosen on a validation split
(``bench/results/train/defaults-sweep.md``). A run that diverges (non-finite loss or weights, a
training loss above its start, saturated or dead outputs) stops with :class:`TrainingDiverged`
and keeps its last good checkpoint; SIGINT (Ctrl-C) stops it after the current update with a
checkpoint of that exact state (:class:`TrainingInterrupted`), from which ``resume`` continues.

One pass goes through :func:`run_pass`, which uses the native fused engines
(``lenet5_fast.fused``) where they support the model (classic or modern LeNet5, CPU, float32):
SDLM at batch 1 as one native pass, any other optimizer or batch through the fused op under
autograd; the op-by-op path (autograd over the per-layer ops) otherwise or with ``--no-fused``.
The choice is made once per run and recorded in its config.
"""
from __future__ import annotations

import contextlib
import copy
try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None
import hashlib
import json
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from .checkpoint import atomic_write_bytes, load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import _create_temp
from .model import LAYER_NAMES, VARIANTS, LeNet5
from .ops import SCALED_TANH, Act
from .optim import PAPER_HESSIAN_SAMPLES, PAPER_MU, SDLM, TRAINING_MAX_STEP, gauss_newton_diagonal, paper_eta

from . import fused as _fused

__all__ = ["TrainConfig", "DEFAULTS", "DEFAULT", "train", "resume_config", "run_pass", "evaluate", "make_optimizer",
           "pass_generator", "plot_errors", "data_fingerprint", "OPTIMIZERS", "MissingExtra",
           "TrainingDiverged", "TrainingInterrupted", "PassInterrupted", "DATASETS", "load_dataset",
           "dataset_channels", "RunLock", "RunInUse"]

OPTIMIZERS = ("sdlm", "sgd", "adam")
DATASETS = ("mnist", "fashion-mnist", "cifar10")
#: Where Debian's dataset-fashion-mnist package puts the four .gz files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# The defaults of the settings left None in a TrainConfig, per (optimizer, variant): chosen on a
# validation split (train on MNIST's first 50,000 training digits, test on the last 10,000): good
# after 3 passes (bench/results/train/defaults-sweep.md) and after a first short run, one pass
# over 10,000 digits (<= 8% error and no worse than pure PyTorch's LeNet-5 with the same
# optimizer: bench/results/train/first-run.md; bench/defaults_sweep.py --first-run). sdlm +
# classic is the paper's recipe: per-sample updates, the paper's eta schedule (lr None), mu 0.02,
# every step bounded by 0.0005. Mini-batch SDLM uses the batch's mean gradient under the same
# bound, so it learns slowly: SDLM's default is batch 1.
# The modern variant's h_kk are far below the damping eta/max_step, so its SDLM steps sit at the
# bound: it gets a larger one (0.002). The ReLU network starts from He's initial weights (see
# init_weights; from the paper's, Adam needs a pass to get going: 17% error after 10,000 digits).
DEFAULTS: Dict[Tuple[str, str], Dict[str, object]] = {
    ("sdlm", "classic"): dict(batch_size=1, eta_scale=1.0, max_step=TRAINING_MAX_STEP, init="paper"),
    ("sdlm", "modern"): dict(batch_size=1, eta_scale=1.0, max_step=0.002, init="he"),
    ("sgd", "classic"): dict(batch_size=32, lr=0.0015, momentum=0.9, max_step=TRAINING_MAX_STEP, init="paper"),
    ("sgd", "modern"): dict(batch_size=32, lr=0.01, momentum=0.9, max_step=TRAINING_MAX_STEP, init="he"),
    ("adam", "classic"): dict(batch_size=32, lr=2e-3, max_step=TRAINING_MAX_STEP, init="paper"),
    ("adam", "modern"): dict(batch_size=32, lr=1e-3, max_step=TRAINING_MAX_STEP, init="he"),
    # The Keras write-up's layout (plain tanh, average pooling) starts as Keras does (Glorot's
    # uniform weights, biases 0) and takes that write-up's recipe for Adam (batch 128); sgd and
    # sdlm as for the modern network (not swept: checked by tests/test_defaults.py only).
    ("sdlm", "keras"): dict(batch_size=1, eta_scale=1.0, max_step=0.002, init="glorot"),
    ("sgd", "keras"): dict(batch_size=32, lr=0.01, momentum=0.9, max_step=TRAINING_MAX_STEP, init="glorot"),
    ("adam", "keras"): dict(batch_size=128, lr=1e-3, max_step=TRAINING_MAX_STEP, init="glorot"),
}
# max_step's "not given" (None is a value of its own: no bound, the paper's exact steps).
DEFAULT = "default"
INITS = ("paper", "he", "glorot", "pytorch")

# Settings that mean something for one optimizer only.
OPTIMIZER_SETTINGS = {"eta_scale": "sdlm", "mu": "sdlm", "max_step": "sdlm", "hessian_samples": "sdlm",
                      "momentum": "sgd", "nesterov": "sgd"}


class MissingExtra(RuntimeError):
    """An optional dependency (matplotlib, pillow) is not installed."""


class TrainingDiverged(RuntimeError):
    """The run diverged (non-finite loss or weights, training loss above its start, saturated or
    dead outputs); its last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) stopped the run; ``checkpoint.pt`` holds the exact state it stopped in and
    ``resume`` continues from there. ``str()`` says how."""


class PassInterrupted(Exception):
    """:func:`run_pass` stopped early because ``should_stop()`` said so: the first ``done`` samples
    of ``order`` were used (``loss``: their loss sum, ``errors``: their training errors) and the
    model and optimizer are in the state after them."""

    def __init__(self, done: int, loss: float, errors: int):
        super().__init__(f"pass stopped after {done} samples")
        self.done, self.loss, self.errors = done, loss, errors


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# float32's largest value: a rate beyond it cannot be applied to float32 weights at all
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


@dataclass
class TrainConfig:
    """Every setting of a run. ``None`` in ``batch_size``, ``lr``, ``eta_scale``, ``momentum`` and
    ``init``, and ``"default"`` in ``max_step``, mean the default for the optimizer x variant
    (:data:`DEFAULTS`), filled in by :meth:`resolved` when the run starts and saved so; for
    sdlm, ``lr=None`` is the paper's eta schedule (times ``eta_scale``) and a number a constant
    eta, ``max_step=None`` the paper's exact, unbounded steps."""
    epochs: int = 20                 # passes over the training set
    optimizer: str = "sdlm"          # sdlm | sgd | adam
    batch_size: Optional[int] = None  # 1 = per-sample updates, as in the paper (sdlm's default)
    lr: Optional[float] = None       # sgd/adam learning rate; for sdlm a constant eta instead of the schedule
    eta_scale: Optional[float] = None  # sdlm: multiplies the paper's eta schedule
    mu: float = PAPER_MU             # sdlm
    max_step: Union[float, None, str] = DEFAULT  # sdlm: bound on every step (None: the paper's, diverges)
    hessian_samples: int = PAPER_HESSIAN_SAMPLES
    momentum: Optional[float] = None  # sgd
    nesterov: bool = False           # sgd: Nesterov momentum
    distort: bool = False
    variant: str = "classic"
    seed: int = 0
    train_limit: Optional[int] = None   # use only the first N training / test samples
    test_limit: Optional[int] = None
    fused: bool = True               # use lenet5_fast.fused where it supports the case; train() records whether it does
    data_dir: Optional[str] = None   # where train() read the data (None: tensors were given)
    init: Optional[str] = None       # initial weights: "paper" (uniform +-2.4/F) or "he" (modern: see init_weights)
    dataset: str = "mnist"           # mnist | fashion-mnist | cifar10

    def resolved(self) -> "TrainConfig":
        """A copy with the defaults of its optimizer x variant filled in where this has None."""
        defaults = DEFAULTS.get((self.optimizer, self.variant))
        if defaults is None:
            self.validate()  # says what is wrong with optimizer / variant
        unset = {k for k, v in asdict(self).items() if (v is None and k != "max_step") or v == DEFAULT}
        return replace(self, **{k: v for k, v in defaults.items() if k in unset})

    def validate(self) -> "TrainConfig":
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("epochs", "hessian_samples", "batch_size", "train_limit", "test_limit"):
            v = getattr(self, name)
            if (v is not None or name in ("epochs", "hessian_samples")) and not (_is_int(v) and v >= 1):
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("lr", "eta_scale", "mu", "max_step"):
            v = getattr(self, name)
            if name == "max_step" and v == DEFAULT:
                continue
            if (v is not None or name == "mu") and not (_is_number(v) and 0 < v <= FLOAT32_MAX):
                raise ValueError(f"{name} must be a positive number (at most {FLOAT32_MAX:.3g}), got {v!r}")
        if self.momentum is not None and not (_is_number(self.momentum) and 0 <= self.momentum < 1):
            raise ValueError(f"momentum must be a number in [0, 1), got {self.momentum!r}")
        if not (_is_int(self.seed) and 0 <= self.seed < 2**32):
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed!r}")
        if self.nesterov and (self.optimizer != "sgd" or (self.momentum is not None and not self.momentum > 0)):
            raise ValueError(f"nesterov needs the sgd optimizer with a momentum > 0, got {self.optimizer}"
                             + (f" with momentum {self.momentum}" if self.momentum is not None else ""))
        for name in ("distort", "fused", "nesterov"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.init is not None and self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "he" and self.variant != "modern":
            raise ValueError("init 'he' is for the modern variant's ReLU layers; the classic network starts "
                             "as in the paper")
        if self.init in ("glorot", "pytorch") and self.variant == "classic":
            raise ValueError(f"init {self.init!r} is for the modern and keras variants; the classic network "
                             "starts as in the paper")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir must be a str or None, got {self.data_dir!r}")
        return self


def check_settings(settings: Dict[str, object]) -> None:
    """Refuses settings that mean nothing for the run's optimizer (``momentum`` with adam...)."""
    optimizer = settings.get("optimizer", TrainConfig.optimizer)
    for name, only in OPTIMIZER_SETTINGS.items():
        if name in settings and optimizer != only:
            raise ValueError(f"{_flag(name)} applies to --optimizer {only} only, not {optimizer}")


def _flag(name: str) -> str:
    return {"fused": "--no-fused", "data_dir": "--data"}.get(name, "--" + name.replace("_", "-"))


def resume_config(saved, given: Optional[Dict[str, object]], passes_done: int, where) -> TrainConfig:
    """The config of a resumed run: ``saved`` (a checkpoint's ``meta["config"]``) with its
    defaults filled in. ``given``: settings asked for now; ``epochs`` replaces the saved number
    of passes (not below ``passes_done``), ``data_dir`` is checked by :func:`train` (the same
    data may have moved), and any other that differs from the run's raises ValueError."""
    if not isinstance(saved, dict):
        raise ValueError(f"{where} has no training configuration to resume from")
    known = {f.name for f in fields(TrainConfig)}
    given = dict(given or {})
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown training settings {unknown}")
    saved = {"init": "paper", **saved}  # runs saved before the init setting all started as in the paper
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in known}).resolved()
    conflicts = [f"{_flag(k)} {v!r} (the run has {_run_value(cfg, k)})" for k, v in given.items()
                 if k not in ("epochs", "data_dir") and v != getattr(cfg, k)]
    if conflicts:
        raise ValueError(f"cannot resume {where} with " + ", ".join(conflicts) + ": a resumed run keeps the "
                         "settings it was started with (start a new run with another --out to change them)")
    if "epochs" in given:
        epochs = given["epochs"]
        if _is_int(epochs) and epochs < passes_done:
            raise ValueError(f"{where} has already trained {passes_done} passes; --epochs {epochs} would undo them")
        cfg.epochs = epochs
    return cfg.validate()


def _run_value(cfg: TrainConfig, name: str) -> str:
    """A resolved setting of a run as its conflict message says it ("None" says nothing)."""
    v = getattr(cfg, name)
    if v is not None:
        return repr(v)
    if name == "lr" and cfg.optimizer == "sdlm":
        return "no --lr: the paper's eta schedule"
    if name == "max_step":
        return "--max-step none: the paper's exact steps"
    if OPTIMIZER_SETTINGS.get(name, cfg.optimizer) != cfg.optimizer:
        return f"no {_flag(name)}: it trains with {cfg.optimizer}"
    return f"no {_flag(name)}"


@torch.no_grad()
def init_weights(model: LeNet5, init: str) -> LeNet5:
    """Sets the initial weights (from torch's global generator). "paper": as the layers start,
    uniform in +-2.4/F, F the fan-in. "he": the modern variant's ReLU layers uniform in
    +-sqrt(6/F) (He et al. 2015) and its linear output layer in +-sqrt(3/F), biases 0. With the
    paper's scale the ReLU network's signal shrinks about tenfold per layer (the squashing's
    slope at 0 makes up for it in the classic one), so its gradients start near 1e-6 and SGD or
    SDLM do not move it (Adam's normalised steps do). "glorot" (Keras' default, for the keras
    and modern variants): uniform in +-sqrt(6/(F + G)), G the fan-out, biases 0. "pytorch"
    (torch.nn's default for Conv2d and Linear, for the modern and keras variants): weights and
    biases uniform in +-1/sqrt(F)."""
    if init == "paper":
        return model
    if (init, model.variant) not in (("he", "modern"), ("glorot", "modern"), ("glorot", "keras"),
                                     ("pytorch", "modern"), ("pytorch", "keras")):
        raise ValueError(f"init_weights: {init!r} is not an initialisation for the {model.variant} variant")
    for layer in model.layers():
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.nn.Parameter):
            continue
        fan_in = weight[0].numel()
        if init == "pytorch":
            bound = 1.0 / math.sqrt(fan_in)
            weight.uniform_(-bound, bound)
            layer.bias.uniform_(-bound, bound)
            continue
        if init == "glorot":
            bound = math.sqrt(6.0 / (fan_in + weight.shape[0] * weight[0, 0].numel()))
        else:
            bound = math.sqrt((6.0 if layer.act == Act.RELU else 3.0) / fan_in)
        weight.uniform_(-bound, bound)
        layer.bias.zero_()
    return model


def make_optimizer(model: LeNet5, cfg: TrainConfig) -> torch.optim.Optimizer:
    cfg = cfg.resolved()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sdlm":
        return SDLM(params, lr=_eta(cfg, 0), mu=cfg.mu, max_step=cfg.max_step)
    # torch's fused kernels: one native call updates every parameter (on this package's network,
    # 2.5-3.6x less CPU time per step than the per-parameter loop and 2-3x less than foreach;
    # README "Training speed"); elementwise, so the same for any thread count.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, fused=fused)
    return torch.optim.Adam(params, lr=cfg.lr, fused=fused)


def _eta(cfg: TrainConfig, p: int) -> float:
    return cfg.lr if cfg.lr is not None else paper_eta(p) * cfg.eta_scale


def dataset_channels(dataset: str) -> int:
    return 3 if dataset == "cifar10" else 1


def dataset_dir(dataset: str, root=None) -> Path:
    """The directory a dataset is read from: ``root`` if given, else its default (MNIST:
    ``data.find_dataset_dir``; Fashion-MNIST: Debian's directory; CIFAR-10: ``cifar``'s)."""
    if dataset == "cifar10":
        from .cifar import _root
        return _root(root)
    if dataset == "fashion-mnist" and (root is None or str(root) == ""):
        return Path(FASHION_MNIST_DIR)
    from .data import find_dataset_dir
    return find_dataset_dir(root)


def load_dataset(dataset: str, data_dir, split: str, download: bool = False,
                 limit: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """One split as (x float32 [N, C, 32, 32], y int64 [N]): MNIST and Fashion-MNIST as the paper's
    padded input (``data.preprocess``), CIFAR-10 as pixels / 255 (``cifar``). Fashion-MNIST is
    read from Debian's directory unless ``data_dir`` is given."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if dataset == "cifar10":
        from .cifar import load_cifar10_tensors
        return load_cifar10_tensors(data_dir, split, download=download, limit=limit)
    if dataset == "fashion-mnist" and download:
        raise ValueError("--download fetches MNIST and CIFAR-10 only; for Fashion-MNIST run "
                         "`apt-get install dataset-fashion-mnist` (it reads " + FASHION_MNIST_DIR +
                         ") or copy its four .gz files into a directory given with --data")
    from .data import load_tensors
    return load_tensors(dataset_dir(dataset, data_dir), split, download=download, limit=limit, dataset=dataset)


def pass_generator(seed: int, pass_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(pass_index) + 1)


def data_fingerprint(data) -> str:
    """sha256 of the training and test tensors (shapes, dtypes and bytes): a resumed run checks
    that it trains on the data it started with."""
    h = hashlib.sha256()
    for t in (data[0][0], data[0][1], data[1][0], data[1][1]):
        a = t.detach().cpu().contiguous()
        h.update(f"{tuple(a.shape)} {a.dtype};".encode())
        h.update(a.numpy().reshape(-1).view("u1"))
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# progress

class Progress:
    """A one-line progress bar on stderr: rate, ETA, running loss and error. On a terminal it
    redraws in place; otherwise (a log file) it prints a line every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, stream=None, interval: Optional[float] = None,
                 before: Tuple[int, float, int] = (0, 0.0, 0)):
        self.total, self.desc = total, desc
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self.start = self.last = time.perf_counter()
        # a pass resumed in the middle: (samples, loss sum, errors) done before; update() then
        # takes the counts of this run and shows the whole pass's
        self.before = before

    def line(self, done: int, loss: float, err: float) -> str:
        el = time.perf_counter() - self.start
        rate = (done - self.before[0]) / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        width = 24
        fill = int(width * done / max(1, self.total))
        return (f"{self.desc} |{'#' * fill}{'.' * (width - fill)}| {done}/{self.total} "
                f"[{_hms(el)}<{_hms(eta)}, {rate:.1f} samples/s] loss {loss:.4f} err {err:.2f}%")

    def update(self, done: int, loss: float, err: float, final: bool = False) -> None:
        """``done`` samples so far with mean loss ``loss`` and error ``err`` (%), counted from
        where this run of the pass started (``before`` is added)."""
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        n0, loss0, err0 = self.before
        if n0:
            done, loss, err = n0 + done, (loss0 + loss * done) / (n0 + done), (err0 + err / 100.0 * done) * 100.0 / (n0 + done)
        text = self.line(done, loss, err)
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


# ---------------------------------------------------------------------------------------------
# one pass, evaluation

def _use_fused(model: LeNet5, x: Tensor, cfg: TrainConfig) -> bool:
    """Whether this run trains on the fused engines: the per-sample SDLM pass (SDLM at batch 1)
    or the fused op through autograd (any optimizer, any batch), where they support the model."""
    return bool(cfg.fused and x.shape[0] > 0 and _fused.supports(model, x[:cfg.batch_size]))


def _per_sample_sdlm(optimizer, cfg: TrainConfig) -> bool:
    return isinstance(optimizer, SDLM) and cfg.batch_size == 1 and cfg.variant == "classic"


def run_pass(model: LeNet5, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, order: Tensor,
             cfg: TrainConfig, hessian_idx: Optional[Tensor] = None,
             progress: Optional[Progress] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> Tuple[float, int, bool]:
    """One pass over ``x[order]``: re-estimates SDLM's h_kk on ``x[hessian_idx]`` first (None:
    keep the optimizer's estimate, as a pass resumed in the middle does), then updates per sample
    (batch 1) or per mini-batch. Returns (sum of per-sample losses, training errors during the
    pass, whether a fused engine ran it). With ``cfg.fused`` the pass runs on the fused engines
    where they support the model: SDLM at batch 1 as one native pass (single-threaded), anything
    else through ``model(x)``'s fused op; without it, layer by layer. ``should_stop`` is asked
    before every update (every 2,000 samples on the per-sample pass); when it says True the pass
    raises :class:`PassInterrupted`, leaving the model as the updates so far made it."""
    cfg = cfg.resolved()
    fused = _use_fused(model, x, cfg)
    per_sample = fused and _per_sample_sdlm(optimizer, cfg)
    if isinstance(optimizer, SDLM) and hessian_idx is not None:
        xs, ys = x[hessian_idx], y[hessian_idx]
        optimizer.set_hessian(_fused.sdlm_hessian(model, xs, ys) if fused and cfg.variant == "classic"
                              else gauss_newton_diagonal(model, xs, ys))
    stop = should_stop if should_stop is not None else (lambda: False)
    n = order.numel()
    total_loss, errors, done = 0.0, 0, 0
    if per_sample:
        steps = optimizer.step_sizes()
        chunk = 2000  # the fused engine runs a chunk at a time, so the bar can move
        for i in range(0, n, chunk):
            if stop():
                raise PassInterrupted(i, total_loss, errors)
            loss, err = _fused.sdlm_pass(model, x, y, order[i:i + chunk], steps)
            total_loss, errors, done = total_loss + float(loss), errors + int(err), min(n, i + chunk)
            if progress:
                progress.update(done, total_loss / done, 100.0 * errors / done)
        return total_loss, errors, True

    with contextlib.nullcontext() if fused else _fused.disabled():
        total_loss, errors = _minibatch_pass(model, optimizer, x, y, order, cfg, progress, stop)
    return total_loss, errors, fused


def _minibatch_pass(model, optimizer, x, y, order, cfg, progress, stop) -> Tuple[float, int]:
    n = order.numel()
    total_loss, errors = 0.0, 0
    xo, yo = x[order], y[order]  # one gather, then contiguous slices
    model.train()
    bs = cfg.batch_size
    for i in range(0, n, bs):
        if stop():
            raise PassInterrupted(i, total_loss, errors)
        xb, yb = xo[i:i + bs], yo[i:i + bs]
        optimizer.zero_grad(set_to_none=True)
        # the fused engines compute the loss and every gradient in one call (model.loss_of)
        loss, out = model.loss_of(xb, yb, "sum", outputs=True)
        (loss / yb.shape[0]).backward()
        optimizer.step()
        with torch.no_grad():
            total_loss += float(loss)
            errors += int((model.scores(out).argmax(1) != yb).sum())
        done = min(n, i + bs)
        if progress:
            progress.update(done, total_loss / done, 100.0 * errors / done)
    return total_loss, errors


@torch.no_grad()
def evaluate(model: LeNet5, x: Tensor, y: Tensor, batch_size: int = 1000,
             return_predictions: bool = False):
    """(errors, mean loss[, predictions]) of ``model`` on (x, y), in batches."""
    model.eval()
    errors, loss, preds = 0, 0.0, []
    for i in range(0, x.shape[0], batch_size):  # model(xb): the fused forward where it applies
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out = model(xb)
        p = model.scores(out).argmax(1)
        errors += int((p != yb).sum())
        loss += float(model.loss(out, yb, reduction="sum"))
        preds.append(p)
    res = (errors, loss / max(1, x.shape[0]))
    if not return_predictions:
        return res
    return res + (torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long),)


# The squashing's bound A (1.7159): a classic unit beyond 99% of it is saturated.
_SATURATED = 0.99 * SCALED_TANH[0]


@torch.no_grad()
def output_problem(model: LeNet5, x: Tensor) -> Optional[str]:
    """What is broken in the network's response to the probe images ``x`` (a few hundred), or
    None: non-finite outputs, F6 saturated (classic: 90% of its outputs beyond +-1.70) or dead
    (modern: every ReLU 0 for every image), or outputs that no longer depend on the input."""
    model.eval()
    h, f6 = x, None
    for name in LAYER_NAMES:
        h = getattr(model, name)(h)
        if name == "f6":
            f6 = h
    if not bool(torch.isfinite(h).all()):
        return "its outputs are not finite"
    if model.variant == "classic":
        saturated = float((f6.abs() >= _SATURATED).float().mean())
        if saturated >= 0.9:
            return f"{100 * saturated:.0f}% of F6's outputs are saturated (beyond +-1.70)"
    elif bool((f6 == 0).all()):
        return "every F6 unit outputs 0 for every probe image (dead ReLUs)"
    spread = float(h.std(dim=0).max()) if h.shape[0] > 1 else 1.0
    if spread <= 1e-6 * (1.0 + float(h.abs().max())):
        return "its outputs no longer depend on the input"
    return None


# ---------------------------------------------------------------------------------------------
# plots

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtra("matplotlib is not installed; install it with `pip install 'lenet5_fast[plot]'` "
                           "to get the PNG figures") from e
    return plt


def _save_figure(fig, path) -> None:
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))


def plot_errors(history: List[dict], path) -> None:
    """Training and test error (%) per pass, the paper's Fig. 5, as a PNG."""
    plt = _pyplot()
    passes = [h["pass"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(passes, [h["train_error"] for h in history], "o-", label="training set error")
    ax.plot(passes, [h["test_error"] for h in history], "s-", label="test set error")
    ax.set_xlabel("training set iterations (passes)")
    ax.set_ylabel("error rate (%)")
    ax.set_xticks(passes if len(passes) <= 20 else passes[::max(1, len(passes) // 20)])
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("LeNet-5 training and test error")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the training loop

def machine_info() -> dict:
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                python=platform.python_version())


def _write_json(path, obj) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


class _StopOnSigint:
    """While active (in the main thread), a first SIGINT only asks the run to stop (``stop()``
    is then True) and a second raises KeyboardInterrupt at once."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.requested, self.installed, self.previous = log, False, False, None

    def __call__(self) -> bool:
        return self.requested

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("interrupted: stopping after the current update and saving a checkpoint "
                 "(Ctrl-C again to stop at once, without one)")

    def __enter__(self) -> "_StopOnSigint":
        if threading.current_thread() is threading.main_thread():
            try:
                self.previous = signal.signal(signal.SIGINT, self._handler)
                self.installed = True
            except (ValueError, OSError):  # pragma: no cover - no signals here
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:  # None: a handler not set from Python; Python's own is the closest
            signal.signal(signal.SIGINT, self.previous if self.previous is not None else signal.default_int_handler)


class RunInUse(RuntimeError):
    """Another process is training into the same run directory."""


class RunLock:
    """The one writer of a run directory: an exclusive ``flock`` on ``DIR/run.lock``, held while
    the run trains. It checks first that ``DIR`` is (or can be made) a writable directory, so a
    bad ``--out`` fails before any training. A second run into ``DIR`` raises :class:`RunInUse`
    at once, naming the process that holds it (the file records its pid, start and command); the
    lock goes with its process, so a run that died never blocks the next. (No lock where the
    platform has no ``fcntl``.)"""

    NAME = "run.lock"

    def __init__(self, out: Path, command: Optional[str] = None):
        self.out, self.command, self.fd = Path(out), command, None

    def __enter__(self) -> "RunLock":
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(out / self.NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OSError(e.errno, f"cannot write to the run directory {out}: {e.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(self.fd, 4096).decode(errors="replace").strip()
                self._close()
                raise RunInUse(f"{out} is being trained by another process ({holder or 'pid unknown'}); wait for it "
                               f"to end or choose another --out") from None
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                              f"{self.command or ' '.join(sys.argv)}\n".encode())
            fd, tmp = _create_temp(out / "metrics.json")  # a file can be created here, not only opened
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            self._close()
            raise OSError(e.errno, f"cannot write to the run directory {out}: {e.strerror}") from None
        return self

    def _close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None

    def __exit__(self, *exc) -> None:
        self._close()


def _resume_hint(out: Path) -> str:
    return f"lenet5-fast train --out {shlex.quote(str(out))} --resume"


def train(cfg: Union[TrainConfig, Dict[str, object], None], data_dir, out_dir, resume: bool = False,
          log: Callable[[str], None] = print, progress_stream=None, data=None,
          command: Optional[str] = None, download: bool = False) -> dict:
    """Trains, writing to ``out_dir``: ``checkpoint.pt`` (latest) and ``checkpoint-passNN.pt``
    after every pass, ``metrics.json`` (updated every pass; ``"complete": true`` at the end) and
    ``errors.png``.

    A new run takes a :class:`TrainConfig` (None fields: :data:`DEFAULTS`). ``resume=True``
    continues the run in ``out_dir`` with every setting it was started with, the data directory
    included; ``cfg`` is then None or a dict of the settings asked for now: ``epochs`` may
    change, anything else must match the run (else ValueError). ``data``: optional
    ((x_train, y_train), (x_test, y_test)) instead of reading ``data_dir``; ``download``: fetch
    MNIST into ``data_dir`` (md5-checked) when its files are missing.

    Raises :class:`TrainingDiverged` (the last good checkpoint is kept) and, on SIGINT,
    :class:`TrainingInterrupted` after saving the exact state it stopped in."""
    out = Path(out_dir)
    if not resume:
        cfg = _validated(cfg)  # a bad setting is refused before the run directory is touched
    elif not (out / "checkpoint.pt").exists():
        raise ValueError(f"{out} holds no run to resume (no checkpoint.pt)")
    try:
        with RunLock(out, command), _StopOnSigint(log) as stop:
            return _train(cfg, data_dir, out, resume, log, progress_stream, data, command, download, stop)
    except KeyboardInterrupt as e:
        if isinstance(e, TrainingInterrupted):
            raise
        ck_path = out / "checkpoint.pt"  # a second Ctrl-C: stopped at once
        raise TrainingInterrupted(f"stopped at once; {ck_path} holds the last state saved. Continue with: "
                                  f"{_resume_hint(out)}" if ck_path.exists() else
                                  "stopped at once, before a checkpoint was written") from None


def _train(cfg, data_dir, out: Path, resume: bool, log, progress_stream, data, command, download,
           stop: Callable[[], bool]) -> dict:
    """The run's steps: set it up (new or resumed), attach and check its data, pick its engine,
    then train its passes."""
    command = command or " ".join(sys.argv)
    run = _resumed_run(cfg, out, command) if resume else _new_run(cfg, out, command)
    run.log, run.progress_stream = log, progress_stream
    run.attach_data(data_dir, data, download)
    run.choose_engine()
    run.log_start()
    return run.train_passes(stop)


def _validated(cfg) -> TrainConfig:
    """A new run's config (a TrainConfig or a dict of its fields), validated, defaults filled in."""
    if isinstance(cfg, dict):
        cfg = TrainConfig(**cfg)
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"train: cfg must be a TrainConfig, got {type(cfg).__name__}")
    return cfg.validate().resolved().validate()


def _new_run(cfg, out: Path, command: str) -> "_Run":
    """A run starting in ``out``: its config validated and resolved, the initial weights seeded."""
    cfg = _validated(cfg)
    if (out / "checkpoint.pt").exists():
        raise ValueError(f"{out} already holds a run (checkpoint.pt); use --resume to continue it, "
                         f"or choose another --out")
    torch.manual_seed(cfg.seed)  # the initial weights
    model = init_weights(LeNet5(variant=cfg.variant, in_channels=dataset_channels(cfg.dataset)), cfg.init)
    return _Run(out, cfg, model, make_optimizer(model, cfg), resumed=False, commands=[command])


def _resumed_run(given, out: Path, command: str) -> "_Run":
    """The run saved in ``out/checkpoint.pt``, with ``given`` (None or a dict of settings asked
    for now) checked against it by :func:`resume_config`."""
    ck_path = out / "checkpoint.pt"
    if isinstance(given, TrainConfig):
        raise TypeError("train(resume=True): give None or a dict of the settings to change "
                        "(e.g. {'epochs': 30}), not a TrainConfig; the run's own config is used")
    if not ck_path.exists():
        raise ValueError(f"{out} holds no run to resume (no checkpoint.pt)")
    ck = load_checkpoint(ck_path)
    meta = ck["meta"]
    history = list(meta.get("history", []))
    cfg = resume_config(meta.get("config"), given, len(history), out)
    model = model_from_checkpoint(ck)
    optimizer = make_optimizer(model, cfg)
    if ck["optimizer"] is not None:
        if ck.get("optimizer_name") != type(optimizer).__name__:
            raise ValueError(f"{ck_path} was saved with {ck.get('optimizer_name')}, not {type(optimizer).__name__}")
        optimizer.load_state_dict(ck["optimizer"])
    return _Run(out, cfg, model, optimizer, resumed=True, commands=list(meta.get("commands", [])) + [command],
                history=history, wall_before=float(meta.get("wall_seconds", 0.0)),
                position=int(meta.get("position", 0)), partial=dict(meta.get("partial") or {}),
                saved_fingerprint=meta.get("data_fingerprint"), start_loss=meta.get("start_loss"))


class _Overlap:
    """A per-sample SDLM pass on the fused engine is single-threaded: with 2+ threads, pass p's
    evaluation, checkpoints, metrics and plot (:meth:`_Run.finish_pass`, on copies of the model
    and optimizer) run here in the background while pass p + 1 trains, and pass p's line is
    logged after pass p + 1's progress bar. Lines, files and weights are those of the sequential
    run, in the same order: every step that writes or stops (an interruption, a divergence found
    in pass p's evaluation, the end) first calls :meth:`wait`. A divergence found there stops
    the run after pass p + 1, whose updates are dropped: the checkpoint keeps pass p - 1, as
    sequentially."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.pending = log, None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenet5-eval")

    def __enter__(self) -> "_Overlap":
        return self

    def __exit__(self, *exc) -> None:
        self.pool.shutdown(wait=True)

    def submit(self, finish: Callable, *args) -> None:
        self.pending = self.pool.submit(finish, *args)

    def wait(self) -> None:
        """Waits for the pass finishing in the background; logs its lines or raises its failure."""
        if self.pending is not None:
            job, self.pending = self.pending, None
            _log_or_raise(job.result(), self.log)


def _log_or_raise(finished: Tuple[Optional[List[str]], Optional[TrainingDiverged]], log) -> None:
    lines, failure = finished
    if failure is not None:
        raise failure
    for line in lines:
        log(line)


class _Run:
    """One run while it trains: its settings, model and optimizer, the passes done (``history``),
    where in the current pass it stands (``position``, ``partial``), and its run directory."""

    def __init__(self, out: Path, cfg: TrainConfig, model: LeNet5, optimizer: torch.optim.Optimizer,
                 resumed: bool, commands: List[str], history: Optional[List[dict]] = None,
                 wall_before: float = 0.0, position: int = 0, partial: Optional[dict] = None,
                 saved_fingerprint: Optional[str] = None, start_loss: Optional[float] = None):
        self.out, self.ck_path = out, out / "checkpoint.pt"
        self.cfg, self.model, self.optimizer, self.resumed, self.commands = cfg, model, optimizer, resumed, commands
        self.history = history if history is not None else []
        self.wall_before, self.position, self.partial = wall_before, position, partial or {}
        self.saved_fingerprint, self.start_loss = saved_fingerprint, start_loss
        self.log: Callable[[str], None] = print
        self.progress_stream = None
        self.plot_note: Optional[str] = None
        self.t_run = time.perf_counter()  # reset when the passes start (train_passes)

    # -- set-up ---------------------------------------------------------------------------------

    def attach_data(self, data_dir, data, download: bool) -> None:
        """Reads the run's data (unless given as tensors) and checks it: the model's channels,
        the fingerprint a resumed run saved, non-empty splits, the saved position inside them."""
        cfg = self.cfg
        if data is None:
            where = dataset_dir(cfg.dataset, data_dir if data_dir is not None else cfg.data_dir)
            if self.resumed and cfg.data_dir is not None and str(where) != cfg.data_dir:
                self.log(f"note: reading the data from {where}; the run was started on {cfg.data_dir}")
            data = (load_dataset(cfg.dataset, where, "train", download=download, limit=cfg.train_limit),
                    load_dataset(cfg.dataset, where, "test", download=download, limit=cfg.test_limit))
            cfg.data_dir = str(where)
        (x_train, y_train), (x_test, y_test) = data
        if x_train.dim() != 4 or x_train.shape[1] != self.model.in_channels:
            raise ValueError(f"the {cfg.variant} model takes {self.model.in_channels}-channel images, got training "
                             f"data of shape {tuple(x_train.shape)}")
        self.fingerprint = data_fingerprint(data)
        if self.saved_fingerprint is not None and self.fingerprint != self.saved_fingerprint:
            raise ValueError(f"cannot resume {self.out}: the data{' in ' + cfg.data_dir if cfg.data_dir else ''} "
                             f"is not the data this run was trained on (their sha256 differ)")
        n = x_train.shape[0]
        if n == 0 or x_test.shape[0] == 0:
            raise ValueError(f"no {'training' if n == 0 else 'test'} samples to train on")
        if not 0 <= self.position < n:
            raise ValueError(f"{self.ck_path}: position {self.position} in pass {len(self.history) + 1} is outside "
                             f"its {n} samples")
        self.x_train, self.y_train, self.x_test, self.y_test, self.n = x_train, y_train, x_test, y_test, n

    def choose_engine(self) -> None:
        """Records the engine a new run uses (a resumed one must get the one it started on) and
        the loss at the initial weights, the divergence check's reference."""
        fused_now = _use_fused(self.model, self.x_train, self.cfg)
        if not self.resumed:
            self.cfg.fused = fused_now  # the engine this run uses, from now on and when resumed
        elif self.cfg.fused and not fused_now:
            raise ValueError(f"cannot resume {self.out}: it was trained on the fused native engine, which this "
                             f"installation does not provide; op by op it would not be the same run")
        if self.start_loss is None and not self.history and self.position == 0:
            self.start_loss = evaluate(self.model, self.x_train[:1000], self.y_train[:1000])[1]

    def log_start(self) -> None:
        cfg, resume = self.cfg, self.resumed
        self.log(("resuming" if resume else "training") + f" LeNet-5 ({cfg.variant}) on {cfg.dataset} with "
                 f"{cfg.optimizer}, batch {cfg.batch_size}{', distortions' if cfg.distort else ''}, "
                 f"{'fused engine' if cfg.fused else 'op by op'}: {self.n} training and {self.x_test.shape[0]} test "
                 f"samples, {cfg.epochs} passes"
                 + (f", from pass {len(self.history) + 1}" + (f" sample {self.position}" if self.position else "")
                    if resume else "") + f", {torch.get_num_threads()} threads")

    # -- what the run writes ----------------------------------------------------------------------

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t_run

    def meta(self, **extra) -> dict:
        return dict(config=asdict(self.cfg), history=self.history, data_fingerprint=self.fingerprint,
                    start_loss=self.start_loss, commands=self.commands, pass_index=len(self.history), **extra)

    def write_metrics(self, wall: float, **extra) -> dict:
        history = self.history
        last = history[-1] if history else {}
        metrics = dict(config=asdict(self.cfg), machine=machine_info(), passes=len(history), history=history,
                       test_error=last.get("test_error"), train_error=last.get("train_error"),
                       wall_seconds=wall, complete=len(history) >= self.cfg.epochs, start_loss=self.start_loss,
                       command=self.commands[0], resumed_with=self.commands[1:], **extra)
        _write_json(self.out / "metrics.json", metrics)
        return metrics

    def diverged(self, p: int, problem: str, loss_sum: float, run_err: int, start: int,
                 tr_loss=None, tr_err=None) -> TrainingDiverged:
        """Records why pass p failed in metrics.json; the error to raise (the checkpoint keeps the
        last good state)."""
        n, ck_path = self.n, self.ck_path
        kept = "no checkpoint was written" if not ck_path.exists() else \
            f"{ck_path} keeps pass {len(self.history)}" + (f" and {start} samples of pass {p + 1}" if start else "") + \
            ", the last good one"
        self.write_metrics(self.wall(), diverged={
            "pass": p + 1, "reason": problem, "running_train_loss": loss_sum / n,
            "running_train_error": 100.0 * run_err / n, "train_loss": tr_loss,
            "train_error": None if tr_err is None else 100.0 * tr_err / n})
        cfg = self.cfg
        return TrainingDiverged(f"training stopped in pass {p + 1}, diverged or not learning: {problem}; {kept}. "
                                f"Start a new run with other settings: a smaller learning rate (--lr, or "
                                f"--eta-scale for sdlm) if the loss grew, else a larger one"
                                + (" or --init he" if cfg.variant == "modern" and cfg.init != "he" else ""))

    def finish_pass(self, p, model, optimizer, t0, t_train, loss_sum, run_err, fused, start):
        """Evaluates pass p's weights (a training loss not below its start stops the run), writes
        its checkpoints, metrics.json and plot. Returns (lines to log, None) or (None, the
        TrainingDiverged to raise). May run in the background (:class:`_Overlap`), on copies of
        the model and optimizer, while the next pass trains."""
        cfg, n, history = self.cfg, self.n, self.history
        tr_err, tr_loss = evaluate(model, self.x_train, self.y_train)
        if self.start_loss is not None and not tr_loss < self.start_loss:
            problem = f"the training loss {tr_loss:.4g} is not below its start, {self.start_loss:.4g}"
            return None, self.diverged(p, problem, loss_sum, run_err, start, tr_loss, tr_err)
        te_err, te_loss = evaluate(model, self.x_test, self.y_test)
        rec = dict(pass_=p + 1, lr=optimizer.param_groups[0]["lr"], fused=fused,
                   mu=SDLM.damping(optimizer.param_groups[0]) if isinstance(optimizer, SDLM) else None,
                   running_train_loss=loss_sum / n, running_train_error=100.0 * run_err / n,
                   train_error=100.0 * tr_err / n, train_loss=tr_loss,
                   test_error=100.0 * te_err / self.x_test.shape[0], test_loss=te_loss,
                   train_seconds=t_train, seconds=time.perf_counter() - t0, samples_per_s=n / t_train)
        rec["pass"] = rec.pop("pass_")
        mu_text = "" if rec["mu"] is None else f", mu {rec['mu']:g}"
        history.append(rec)
        lines = [f"pass {p + 1}/{cfg.epochs}: train error {rec['train_error']:.2f}% test error "
                 f"{rec['test_error']:.2f}% (running loss {rec['running_train_loss']:.4f}, lr {rec['lr']:g}{mu_text}, "
                 f"{t_train:.1f}s training, {rec['samples_per_s']:.0f} samples/s{', fused' if fused else ''})"]
        wall = self.wall()
        save_checkpoint(self.out / f"checkpoint-pass{p + 1:02d}.pt", model, optimizer, wall_seconds=wall,
                        **self.meta())
        save_checkpoint(self.ck_path, model, optimizer, wall_seconds=wall, **self.meta())
        self.write_metrics(wall)
        if self.plot_note is None:
            try:
                plot_errors(history, self.out / "errors.png")
            except MissingExtra as e:
                self.plot_note = str(e)
                lines.append(f"note: errors.png not written: {e}")
        return lines, None

    # -- training ---------------------------------------------------------------------------------

    def pass_inputs(self, p: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Pass p's images (distorted when asked), sample order and Gauss-Newton samples, all drawn
        from the generator seeded by (seed, p)."""
        g = pass_generator(self.cfg.seed, p)
        xp = self.x_train
        if self.cfg.distort:
            from .distort import distort
            xp = distort(self.x_train, generator=g)
        order = torch.randperm(self.n, generator=g)
        hidx = torch.randperm(self.n, generator=g)[:min(self.n, self.cfg.hessian_samples)]
        return xp, order, hidx

    def save_interrupted(self, p: int, done: int, partial: dict) -> TrainingInterrupted:
        """Saves the exact state after ``done`` samples of pass p; the error to raise."""
        wall = self.wall()
        save_checkpoint(self.ck_path, self.model, self.optimizer, wall_seconds=wall, position=done,
                        **self.meta(partial=partial))
        self.write_metrics(wall, interrupted={"pass": p + 1, "position": done})
        return TrainingInterrupted(f"interrupted in pass {p + 1} after {done} of {self.n} samples; {self.ck_path} "
                                   f"holds that state. Continue with: {_resume_hint(self.out)}")

    def check_health(self, p: int, loss_sum: float, run_err: int, start: int) -> None:
        """Divergence, from what the pass computed anyway plus a forward pass of 256 probe images
        (the training loss against its start is checked in :meth:`finish_pass`)."""
        model = self.model
        if not math.isfinite(loss_sum) or not all(bool(torch.isfinite(q).all()) for q in model.parameters()):
            raise self.diverged(p, f"the loss or the weights are no longer finite (running loss {loss_sum / self.n:g})",
                                loss_sum, run_err, start)
        problem = output_problem(model, self.x_train[:256])
        if problem is not None:
            raise self.diverged(p, problem, loss_sum, run_err, start)

    def train_pass(self, p: int, stop: Callable[[], bool], overlap: _Overlap) -> None:
        """Pass p (from the saved position when resumed mid-pass), its health check, then its
        evaluation and files (in the background when :class:`_Overlap` applies)."""
        cfg, n, model, optimizer = self.cfg, self.n, self.model, self.optimizer
        t0 = time.perf_counter()
        xp, order, hidx = self.pass_inputs(p)
        if isinstance(optimizer, SDLM):
            optimizer.set_lr(_eta(cfg, p))
        partial = self.partial
        start, loss0, err0, secs0 = self.position, float(partial.get("loss", 0.0)), int(partial.get("errors", 0)), \
            float(partial.get("train_seconds", 0.0))
        self.position, self.partial = 0, {}
        bar = Progress(n, f"pass {p + 1}/{cfg.epochs}", stream=self.progress_stream, before=(start, loss0, err0))
        try:
            loss_sum, run_err, fused = run_pass(model, optimizer, xp, self.y_train, order[start:], cfg,
                                                hidx if start == 0 else None, bar, stop)
        except PassInterrupted as e:
            overlap.wait()  # pass p - 1's checkpoint first: this one holds the later state
            raise self.save_interrupted(p, start + e.done, dict(
                loss=loss0 + e.loss, errors=err0 + e.errors,
                train_seconds=secs0 + time.perf_counter() - t0)) from None
        loss_sum, run_err = loss_sum + loss0, run_err + err0
        bar.update(n - start, (loss_sum - loss0) / max(1, n - start), 100.0 * (run_err - err0) / max(1, n - start),
                   final=True)
        t_train = secs0 + time.perf_counter() - t0
        overlap.wait()  # the previous pass's line, after this pass's finished bar
        self.check_health(p, loss_sum, run_err, start)
        if fused and _per_sample_sdlm(optimizer, cfg) and p + 1 < cfg.epochs and torch.get_num_threads() > 1 \
                and not stop():
            overlap.submit(self.finish_pass, p, *copy.deepcopy((model, optimizer)), t0 - secs0, t_train, loss_sum,
                           run_err, fused, start)
        else:
            _log_or_raise(self.finish_pass(p, model, optimizer, t0 - secs0, t_train, loss_sum, run_err, fused, start),
                          self.log)

    def train_passes(self, stop: Callable[[], bool]) -> dict:
        """The passes left; after each, stops if asked (``stop()``). Returns the final metrics."""
        self.t_run = time.perf_counter()
        with _Overlap(self.log) as overlap:
            for p in range(len(self.history), self.cfg.epochs):
                self.train_pass(p, stop, overlap)
                if stop() and p + 1 < self.cfg.epochs:
                    overlap.wait()  # pass p's files and line first, as a sequential run has them
                    raise TrainingInterrupted(f"interrupted after pass {p + 1}; {self.ck_path} holds it. "
                                              f"Continue with: {_resume_hint(self.out)}")
            overlap.wait()
        return self.write_metrics(self.wall())
