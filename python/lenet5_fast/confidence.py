"""Confidence and rejection, as the paper frames them.

The classic network's outputs are RBF distances y_i (smaller is better). Its MAP criterion
(eq. 9) reads them as a posterior: P(i | x) = exp(-y_i) / (exp(-j) + sum_k exp(-y_k)), where
exp(-j) is the "rubbish" class that takes the probability of an input far from every code; so
the ten probabilities sum to less than one, and an input far from all codes has low confidence
even when one class is nearer than the others. The modern variant's outputs are logits:
P = softmax(logits). The *margin* is the second-best distance minus the best one (best logit
minus second-best, modern).

A prediction is *rejected* when its confidence (the top posterior) is below a threshold. The
paper compares classifiers by the share of test patterns that must be rejected to bring the
error on the rest down to 0.5% (:func:`rejection_for_error`).

An :class:`Ensemble` reads one image with several networks (by default the three shipped ones,
:data:`ENSEMBLE`) and takes the *mixture* (mean) of their posteriors as its own: the networks
agree on real digits, and where they disagree (a letter, a scribble) no class keeps much
probability. ``model_outputs`` and ``classify`` take an ensemble where they take a model (its
outputs are stacked, [K, N, C]); its margin is the top mixture probability minus the second.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_REJECT", "ENSEMBLE", "default_reject", "Ensemble", "Prediction", "model_outputs",
           "posterior", "classify", "agreement", "rejection_curve", "rejection_for_error", "plot_rejection"]

# The default rejection thresholds on the confidence, per variant (README "Confidence and
# rejection"). classic, modern: round values keeping >= 97% of the MNIST test digits for each
# shipped network. ensemble (the mixture of ENSEMBLE's posteriors): the round value keeping 98%
# of the MNIST *training* digits (98.06%; one point above the 97% aimed at, for the gap between
# digits the networks were trained on and new ones; it keeps 97.14% of the test digits).
DEFAULT_REJECT = {"classic": 0.005, "modern": 0.99, "ensemble": 0.38}

# The shipped networks whose mixture `lenet5-fast predict` uses by default (the ensemble's
# threshold is calibrated for exactly these).
ENSEMBLE = ("paper", "paper-distort", "modern-adam")


def default_reject(model) -> float:
    """The default rejection threshold for ``model``'s variant (an :class:`Ensemble`'s is
    "ensemble")."""
    return DEFAULT_REJECT[model.variant]


class Ensemble:
    """Several networks that read the same image; their posteriors are averaged (a mixture with
    equal weights). ``names`` label the members (in outputs and messages)."""

    variant = "ensemble"

    def __init__(self, models, names=None):
        self.models = list(models)
        if len(self.models) < 2:
            raise ValueError("an ensemble needs at least two networks")
        classes = {m.num_classes for m in self.models}
        if len(classes) != 1:
            raise ValueError(f"the ensemble's networks disagree on the number of classes: {sorted(classes)}")
        self.num_classes = classes.pop()
        self.names = list(names) if names is not None else [f"net{i}" for i in range(len(self.models))]
        if len(self.names) != len(self.models):
            raise ValueError("one name per network")

    @classmethod
    def from_pretrained(cls, names=ENSEMBLE) -> "Ensemble":
        """The shipped weights ``names`` (default :data:`ENSEMBLE`), sha256-checked, eval mode."""
        from . import weights

        return cls([weights.load(n) for n in names], names)

    def eval(self) -> "Ensemble":
        for m in self.models:
            m.eval()
        return self

    def __repr__(self) -> str:
        return f"Ensemble({', '.join(self.names)})"


class Prediction(NamedTuple):
    """Per image: the predicted class, its confidence (top posterior) and the margin."""
    label: Tensor        # long [N]
    confidence: Tensor   # float [N] in [0, 1]
    margin: Tensor       # float [N] >= 0
    posterior: Tensor    # float [N, 10]


@torch.no_grad()
def model_outputs(model, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The raw outputs (distances or logits) [N, 10] of ``model`` on ``x``, in batches, through
    the fused native forward when it supports the model (``model(x)`` takes it). For an
    :class:`Ensemble`, each member's, stacked: [K, N, 10]."""
    if isinstance(model, Ensemble):
        return torch.stack([model_outputs(m, x, batch_size) for m in model.models])
    model.eval()
    outs = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, model.num_classes)


def posterior(model, out: Tensor) -> Tensor:
    """Class probabilities [N, C] from raw outputs: the MAP posterior with the model's j
    (classic; sums to less than 1) or the softmax of the logits (modern); for an
    :class:`Ensemble` (outputs [K, N, C]) the mean of its members' posteriors."""
    if isinstance(model, Ensemble):
        if out.dim() != 3 or out.shape[0] != len(model.models):
            raise ValueError(f"posterior: expected outputs [{len(model.models)}, N, classes] for {model!r}, "
                             f"got shape {tuple(out.shape)}")
        return torch.stack([posterior(m, o) for m, o in zip(model.models, out)]).mean(0)
    out = out.double()
    if model.variant == "classic":
        rubbish = torch.full_like(out[:, :1], -float(model.map_j))
        return torch.softmax(torch.cat([rubbish, -out], dim=1), dim=1)[:, 1:]
    return torch.softmax(out, dim=1)


def classify(model, out: Tensor) -> Prediction:
    """Class, confidence, margin and posterior from raw outputs [N, C]. For an :class:`Ensemble`
    (outputs [K, N, C]): the class of the highest mixture probability, that probability, and the
    margin to the second highest."""
    if isinstance(model, Ensemble):
        p = posterior(model, out)
        top2 = p.topk(2, dim=1)
        return Prediction(top2.indices[:, 0], top2.values[:, 0], top2.values[:, 0] - top2.values[:, 1], p)
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(f"classify: expected outputs [N, classes], got shape {tuple(out.shape)}")
    p = posterior(model, out)
    scores = model.scores(out.double())
    top2 = scores.topk(2, dim=1)
    label = top2.indices[:, 0]
    return Prediction(label, p.gather(1, label[:, None])[:, 0], top2.values[:, 0] - top2.values[:, 1], p)


def agreement(ensemble: Ensemble, out: Tensor) -> Tensor:
    """bool [N]: whether every member of ``ensemble`` picks the same class (outputs [K, N, C])."""
    labels = torch.stack([classify(m, o).label for m, o in zip(ensemble.models, out)])
    return (labels == labels[0]).all(0)


def rejection_curve(confidence, correct):
    """(rejected %, error % among the accepted) when rejecting the k least confident, for
    k = 0 .. N-1 (ties are rejected together). numpy arrays."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    n = conf.size
    if n == 0 or ok.size != n:
        raise ValueError("rejection_curve: one correctness flag per confidence, at least one")
    order = np.argsort(conf, kind="stable")
    conf, wrong = conf[order], ~ok[order]
    errors_left = wrong.sum() - np.concatenate([[0], np.cumsum(wrong)[:-1]])  # after rejecting k
    k = np.arange(n)
    # with ties, rejecting k only makes sense where a new confidence value starts
    starts = np.concatenate([[True], conf[1:] != conf[:-1]])
    k, errors_left = k[starts], errors_left[starts]
    return 100.0 * k / n, 100.0 * errors_left / (n - k)


def rejection_for_error(confidence, correct, target_error: float = 0.5):
    """The smallest share (%) of the samples that must be rejected (least confident first) for
    the error on the rest to be at most ``target_error`` %, and the confidence threshold that
    does it (reject below it)."""
    rejected, error = rejection_curve(confidence, correct)
    i = int(np.argmax(error <= target_error + 1e-12)) if (error <= target_error + 1e-12).any() else None
    if i is None:
        return 100.0, float("inf")
    conf = np.sort(np.asarray(confidence, dtype=np.float64))
    k = int(round(rejected[i] * conf.size / 100.0))
    return float(rejected[i]), float(conf[k])


def plot_rejection(path, confidence, correct, title: str = "") -> None:
    """Error on the accepted samples against the share rejected, as a PNG (needs matplotlib)."""
    from .checkpoint import atomic_write_bytes
    from .train import _pyplot

    plt = _pyplot()
    rejected, error = rejection_curve(confidence, correct)
    r05, _ = rejection_for_error(confidence, correct, 0.5)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rejected, error, "-", lw=1.5)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.axvline(r05, color="grey", lw=0.8, ls="--")
    ax.annotate(f"{r05:.2f}% rejected for 0.5% error", (r05, 0.5), xytext=(8, 10), textcoords="offset points",
                fontsize=8)
    ax.set_xlim(0, max(5.0, min(100.0, 2 * r05 + 1)))
    ax.set_ylim(0, max(float(error[0]) * 1.1, 0.6))
    ax.set_xlabel("rejected (%), least confident first")
    ax.set_ylabel("error on the accepted (%)")
    ax.set_title(title or "error against rejection", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write_bytes(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
