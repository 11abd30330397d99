"""Training as in the paper: passes over the training set, SDLM with per-sample updates (or
SGD/Adam, or mini-batches), optional on-the-fly distortions, train and test error after every
pass, an atomic checkpoint per pass, exact resume, ``metrics.json`` and the Fig. 5 plot.

Everything random in pass ``p`` (distortions, sample order, the 500 Gauss-Newton samples)
comes from a generator seeded with ``(seed, p)``, so a run resumed from a checkpoint makes the
same updates as one that was never interrupted.

One pass goes through :func:`run_pass`, which uses the native fused engine
(``lenet5_fast.fused``) when it exists and supports the case (classic LeNet5, CPU, float32,
SDLM with batch 1), and the op-by-op path (autograd over the custom ops) otherwise.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

from .checkpoint import atomic_write_bytes, load_checkpoint, model_from_checkpoint, save_checkpoint
from .model import LeNet5
from .optim import PAPER_HESSIAN_SAMPLES, PAPER_MU, SDLM, TRAINING_MAX_STEP, gauss_newton_diagonal, paper_eta

try:  # the native fused engine lands separately; everything works without it
    from . import fused as _fused
except ImportError:  # pragma: no cover - depends on the build
    _fused = None

__all__ = ["TrainConfig", "train", "run_pass", "evaluate", "make_optimizer", "pass_generator",
           "plot_errors", "OPTIMIZERS", "MissingExtra", "DATASETS", "load_dataset", "dataset_channels"]

OPTIMIZERS = ("sdlm", "sgd", "adam")
DATASETS = ("mnist", "fashion-mnist", "cifar10")
#: Where Debian's dataset-fashion-mnist package puts the four .gz files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class MissingExtra(RuntimeError):
    """An optional dependency (matplotlib, pillow) is not installed."""


@dataclass
class TrainConfig:
    epochs: int = 20                 # passes over the training set
    optimizer: str = "sdlm"          # sdlm | sgd | adam
    batch_size: int = 1              # 1 = per-sample updates, as in the paper
    lr: Optional[float] = None       # sgd/adam learning rate; for sdlm a constant eta instead of the schedule
    eta_scale: float = 1.0           # sdlm: multiplies the paper's eta schedule
    mu: float = PAPER_MU             # sdlm
    max_step: Optional[float] = TRAINING_MAX_STEP  # sdlm: bound on every step (None: the paper's, diverges)
    hessian_samples: int = PAPER_HESSIAN_SAMPLES
    momentum: float = 0.9            # sgd
    nesterov: bool = False           # sgd: Nesterov momentum
    distort: bool = False
    variant: str = "classic"
    seed: int = 0
    train_limit: Optional[int] = None   # use only the first N training / test samples
    test_limit: Optional[int] = None
    fused: bool = True               # use lenet5_fast.fused when it supports the case
    dataset: str = "mnist"           # mnist | fashion-mnist | cifar10

    def validate(self) -> "TrainConfig":
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.nesterov and (self.optimizer != "sgd" or not self.momentum > 0):
            raise ValueError(f"nesterov needs the sgd optimizer with a momentum > 0, got {self.optimizer} "
                             f"with momentum {self.momentum}")
        for name in ("epochs", "batch_size", "hessian_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("lr", "eta_scale", "mu", "max_step"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("train_limit", "test_limit"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}")
        return self


def make_optimizer(model: LeNet5, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sdlm":
        return SDLM(params, lr=_eta(cfg, 0), mu=cfg.mu, max_step=cfg.max_step)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr or 0.01, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.Adam(params, lr=cfg.lr or 1e-3)


def _eta(cfg: TrainConfig, p: int) -> float:
    return cfg.lr if cfg.lr is not None else paper_eta(p) * cfg.eta_scale


def dataset_channels(dataset: str) -> int:
    return 3 if dataset == "cifar10" else 1


def load_dataset(dataset: str, data_dir, split: str, download: bool = False,
                 limit: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """One split as (x float32 [N, C, 32, 32], y int64 [N]): MNIST and Fashion-MNIST as the paper's
    padded input (``data.preprocess``), CIFAR-10 as pixels / 255 (``cifar``). Fashion-MNIST is
    read from Debian's directory unless ``data_dir`` is given."""
    if dataset == "cifar10":
        from .cifar import load_cifar10_tensors
        return load_cifar10_tensors(data_dir, split, download=download, limit=limit)
    if dataset == "fashion-mnist":
        if download:
            raise ValueError("--download fetches MNIST and CIFAR-10 only; for Fashion-MNIST run "
                             "`apt-get install dataset-fashion-mnist` (it reads " + FASHION_MNIST_DIR +
                             ") or copy its four .gz files into a directory given with --data")
        data_dir = data_dir or FASHION_MNIST_DIR
    elif dataset != "mnist":
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    from .data import load_tensors
    return load_tensors(data_dir, split, download=download, limit=limit, dataset=dataset)


def pass_generator(seed: int, pass_index: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(pass_index) + 1)


# ---------------------------------------------------------------------------------------------
# progress

class Progress:
    """A one-line progress bar on stderr: rate, ETA, running loss and error. On a terminal it
    redraws in place; otherwise (a log file) it prints a line every ``interval`` seconds."""

    def __init__(self, total: int, desc: str, stream=None, interval: Optional[float] = None):
        self.total, self.desc = total, desc
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.interval = interval if interval is not None else (0.2 if self.tty else 30.0)
        self.start = self.last = time.perf_counter()

    def line(self, done: int, loss: float, err: float) -> str:
        el = time.perf_counter() - self.start
        rate = done / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        width = 24
        fill = int(width * done / max(1, self.total))
        return (f"{self.desc} |{'#' * fill}{'.' * (width - fill)}| {done}/{self.total} "
                f"[{_hms(el)}<{_hms(eta)}, {rate:.1f} samples/s] loss {loss:.4f} err {err:.2f}%")

    def update(self, done: int, loss: float, err: float, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
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

def _use_fused(model: LeNet5, optimizer, x: Tensor, cfg: TrainConfig) -> bool:
    return (cfg.fused and _fused is not None and isinstance(optimizer, SDLM) and cfg.batch_size == 1
            and getattr(model, "variant", None) == "classic" and bool(_fused.supports(model, x)))


def run_pass(model: LeNet5, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, order: Tensor,
             cfg: TrainConfig, hessian_idx: Optional[Tensor] = None,
             progress: Optional[Progress] = None) -> Tuple[float, int, bool]:
    """One pass over ``x[order]``: re-estimates SDLM's h_kk on ``x[hessian_idx]`` first, then
    updates per sample (batch 1) or per mini-batch. Returns (sum of per-sample losses, training
    errors during the pass, whether the fused engine ran it)."""
    fused = _use_fused(model, optimizer, x, cfg)
    if isinstance(optimizer, SDLM):
        if hessian_idx is None:
            raise ValueError("run_pass: SDLM needs the indices of its Gauss-Newton samples")
        xs, ys = x[hessian_idx], y[hessian_idx]
        optimizer.set_hessian(_fused.sdlm_hessian(model, xs, ys) if fused else gauss_newton_diagonal(model, xs, ys))
    n = order.numel()
    total_loss, errors, done = 0.0, 0, 0
    if fused:
        steps = optimizer.step_sizes()
        chunk = 2000  # the fused engine runs a chunk at a time, so the bar can move
        for i in range(0, n, chunk):
            loss, err = _fused.sdlm_pass(model, x, y, order[i:i + chunk], steps)
            total_loss, errors, done = total_loss + float(loss), errors + int(err), min(n, i + chunk)
            if progress:
                progress.update(done, total_loss / done, 100.0 * errors / done)
        return total_loss, errors, True

    xo, yo = x[order], y[order]  # one gather, then contiguous slices
    model.train()
    bs = cfg.batch_size
    for i in range(0, n, bs):
        xb, yb = xo[i:i + bs], yo[i:i + bs]
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        per = model.loss(out, yb, reduction="none")
        per.mean().backward()
        optimizer.step()
        with torch.no_grad():
            total_loss += float(per.sum())
            errors += int((model.scores(out).argmax(1) != yb).sum())
        done = min(n, i + bs)
        if progress:
            progress.update(done, total_loss / done, 100.0 * errors / done)
    return total_loss, errors, False


@torch.no_grad()
def evaluate(model: LeNet5, x: Tensor, y: Tensor, batch_size: int = 1000,
             return_predictions: bool = False):
    """(errors, mean loss[, predictions]) of ``model`` on (x, y), in batches."""
    model.eval()
    use_fused = _fused is not None and model.variant == "classic" and bool(_fused.supports(model, x))
    errors, loss, preds = 0, 0.0, []
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        out = _fused.forward(model, xb) if use_fused else model(xb)
        p = model.scores(out).argmax(1)
        errors += int((p != yb).sum())
        loss += float(model.loss(out, yb, reduction="sum"))
        preds.append(p)
    res = (errors, loss / max(1, x.shape[0]))
    return res + (torch.cat(preds),) if return_predictions else res


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


def train(cfg: TrainConfig, data_dir, out_dir, resume: bool = False,
          log: Callable[[str], None] = print, progress_stream=None, data=None,
          command: Optional[str] = None, download: bool = False) -> dict:
    """Trains, writing to ``out_dir``: ``checkpoint.pt`` (latest) and ``checkpoint-passNN.pt``
    after every pass, ``metrics.json`` (updated every pass; ``"complete": true`` at the end) and
    ``errors.png``. ``resume=True`` continues from ``out_dir/checkpoint.pt`` with the config
    saved there (only ``epochs`` and ``fused`` may change). ``data``: optional
    ((x_train, y_train), (x_test, y_test)) instead of reading ``data_dir``; ``download``: fetch
    MNIST into ``data_dir`` (md5-checked) when its files are missing."""
    out = Path(out_dir)
    ck_path = out / "checkpoint.pt"
    history: List[dict] = []
    wall_before = 0.0
    if resume:
        ck = load_checkpoint(ck_path)
        saved = ck["meta"].get("config")
        if not isinstance(saved, dict):
            raise ValueError(f"{ck_path} has no training configuration to resume from")
        known = {f.name for f in fields(TrainConfig)}
        cfg = TrainConfig(**{**{k: v for k, v in saved.items() if k in known},
                             "epochs": cfg.epochs, "fused": cfg.fused})
        history = list(ck["meta"].get("history", []))
        wall_before = float(ck["meta"].get("wall_seconds", 0.0))
        model = model_from_checkpoint(ck)
        optimizer = make_optimizer(model, cfg)
        if ck["optimizer"] is not None:
            if ck.get("optimizer_name") != type(optimizer).__name__:
                raise ValueError(f"{ck_path} was saved with {ck.get('optimizer_name')}, not {type(optimizer).__name__}")
            optimizer.load_state_dict(ck["optimizer"])
        log(f"resuming {out} after pass {len(history)} of {cfg.epochs}")
    else:
        cfg.validate()
        if ck_path.exists():
            raise ValueError(f"{out} already holds a run (checkpoint.pt); use --resume to continue it, "
                             f"or choose another --out")
        torch.manual_seed(cfg.seed)  # the initial weights
        model = LeNet5(variant=cfg.variant, in_channels=dataset_channels(cfg.dataset))
        optimizer = make_optimizer(model, cfg)
    cfg.validate()

    if data is None:
        data = (load_dataset(cfg.dataset, data_dir, "train", download=download, limit=cfg.train_limit),
                load_dataset(cfg.dataset, data_dir, "test", download=download, limit=cfg.test_limit))
    (x_train, y_train), (x_test, y_test) = data
    if x_train.dim() != 4 or x_train.shape[1] != model.in_channels:
        raise ValueError(f"the {cfg.variant} model takes {model.in_channels}-channel images, got training "
                         f"data of shape {tuple(x_train.shape)}")
    n = x_train.shape[0]
    log(f"training LeNet-5 ({cfg.variant}) on {cfg.dataset} with {cfg.optimizer}, batch {cfg.batch_size}"
        f"{', distortions' if cfg.distort else ''}: {n} training and {x_test.shape[0]} test samples, "
        f"{cfg.epochs} passes, {torch.get_num_threads()} threads")
    plot_note = None
    t_run = time.perf_counter()

    def finish_pass(p, model, optimizer, t_train, loss_sum, run_err, fused) -> List[str]:
        """Evaluates pass p's weights, writes its checkpoints, metrics.json and plot; returns the
        lines to log. Runs in the background when it overlaps the next pass (on copies)."""
        nonlocal plot_note
        t_eval = time.perf_counter()
        tr_err, tr_loss = evaluate(model, x_train, y_train)
        te_err, te_loss = evaluate(model, x_test, y_test)
        done = time.perf_counter()
        rec = dict(pass_=p + 1, lr=optimizer.param_groups[0]["lr"], fused=fused,
                   mu=SDLM.damping(optimizer.param_groups[0]) if isinstance(optimizer, SDLM) else None,
                   running_train_loss=loss_sum / n, running_train_error=100.0 * run_err / n,
                   train_error=100.0 * tr_err / n, train_loss=tr_loss,
                   test_error=100.0 * te_err / x_test.shape[0], test_loss=te_loss,
                   train_seconds=t_train, seconds=t_train + done - t_eval, samples_per_s=n / t_train)
        rec["pass"] = rec.pop("pass_")
        mu_text = "" if rec["mu"] is None else f", mu {rec['mu']:g}"
        history.append(rec)
        lines = [f"pass {p + 1}/{cfg.epochs}: train error {rec['train_error']:.2f}% test error "
                 f"{rec['test_error']:.2f}% (running loss {rec['running_train_loss']:.4f}, lr {rec['lr']:g}{mu_text}, "
                 f"{t_train:.1f}s training, {rec['samples_per_s']:.0f} samples/s{', fused' if fused else ''})"]
        wall = wall_before + done - t_run
        meta = dict(config=asdict(cfg), history=history, wall_seconds=wall, pass_index=p + 1)
        save_checkpoint(out / f"checkpoint-pass{p + 1:02d}.pt", model, optimizer, **meta)
        save_checkpoint(ck_path, model, optimizer, **meta)
        metrics = dict(config=asdict(cfg), machine=machine_info(), passes=p + 1, history=history,
                       test_error=rec["test_error"], train_error=rec["train_error"], wall_seconds=wall,
                       complete=p + 1 == cfg.epochs, command=command or " ".join(sys.argv))
        _write_json(out / "metrics.json", metrics)
        if plot_note is None:
            try:
                plot_errors(history, out / "errors.png")
            except MissingExtra as e:
                plot_note = str(e)
                lines.append(f"note: errors.png not written: {e}")
        return lines

    # A pass on the fused engine is single-threaded: pass p's evaluation, checkpoints, metrics
    # and plot (on copies of the model and optimizer) then run in the background while pass
    # p + 1 trains, and pass p's line is logged after pass p + 1's progress bar. The lines,
    # checkpoints and metrics are those of the sequential run, in the same order.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lenet5-eval") as background:
        pending = None

        def log_pending():
            nonlocal pending
            if pending is not None:
                job, pending = pending, None
                for line in job.result():
                    log(line)

        for p in range(len(history), cfg.epochs):
            t0 = time.perf_counter()
            g = pass_generator(cfg.seed, p)
            xp = x_train
            if cfg.distort:
                from .distort import distort
                xp = distort(x_train, generator=g)
            order = torch.randperm(n, generator=g)
            hidx = torch.randperm(n, generator=g)[:min(n, cfg.hessian_samples)]
            if isinstance(optimizer, SDLM):
                optimizer.set_lr(_eta(cfg, p))
            bar = Progress(n, f"pass {p + 1}/{cfg.epochs}", stream=progress_stream)
            try:
                loss_sum, run_err, fused = run_pass(model, optimizer, xp, y_train, order, cfg, hidx, bar)
                t_train = time.perf_counter() - t0
                bar.update(n, loss_sum / n, 100.0 * run_err / n, final=True)
            finally:
                log_pending()  # the previous pass's line, after this pass's finished bar
            if not math.isfinite(loss_sum):
                raise RuntimeError(f"training diverged in pass {p + 1} (loss {loss_sum}); lower the learning rate")
            if fused and p + 1 < cfg.epochs and torch.get_num_threads() > 1:
                copies = copy.deepcopy((model, optimizer))
                pending = background.submit(finish_pass, p, *copies, t_train, loss_sum, run_err, fused)
            else:
                for line in finish_pass(p, model, optimizer, t_train, loss_sum, run_err, fused):
                    log(line)
        log_pending()
    if len(history) >= cfg.epochs and not (out / "metrics.json").exists():
        raise ValueError(f"{out}: no metrics.json next to the checkpoint")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["complete"] = len(history) >= cfg.epochs
    _write_json(out / "metrics.json", metrics)
    return metrics
