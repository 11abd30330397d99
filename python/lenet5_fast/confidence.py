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
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["DEFAULT_REJECT", "default_reject", "Prediction", "model_outputs", "posterior", "classify",
           "rejection_curve", "rejection_for_error", "plot_rejection"]

# The default rejection thresholds on the confidence, per variant (chosen on training digits
# and generated non-digits, see README "Your own digits").
DEFAULT_REJECT = {"classic": 0.005, "modern": 0.99}


def default_reject(model) -> float:
    """The default rejection threshold for ``model``'s variant."""
    return DEFAULT_REJECT[model.variant]


class Prediction(NamedTuple):
    """Per image: the predicted class, its confidence (top posterior) and the margin."""
    label: Tensor        # long [N]
    confidence: Tensor   # float [N] in [0, 1]
    margin: Tensor       # float [N] >= 0
    posterior: Tensor    # float [N, 10]


@torch.no_grad()
def model_outputs(model, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The raw outputs (distances or logits) [N, 10] of ``model`` on ``x``, in batches, through
    the fused native forward when it supports the model (``model(x)`` takes it)."""
    model.eval()
    outs = [model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(outs) if outs else torch.empty(0, model.num_classes)


def posterior(model, out: Tensor) -> Tensor:
    """Class probabilities [N, C] from raw outputs: the MAP posterior with the model's j
    (classic; sums to less than 1) or the softmax of the logits (modern)."""
    out = out.double()
    if model.variant == "classic":
        rubbish = torch.full_like(out[:, :1], -float(model.map_j))
        return torch.softmax(torch.cat([rubbish, -out], dim=1), dim=1)[:, 1:]
    return torch.softmax(out, dim=1)


def classify(model, out: Tensor) -> Prediction:
    """Class, confidence, margin and posterior from raw outputs [N, C]."""
    if out.dim() != 2 or out.shape[1] < 2:
        raise ValueError(f"classify: expected outputs [N, classes], got shape {tuple(out.shape)}")
    p = posterior(model, out)
    scores = model.scores(out.double())
    top2 = scores.topk(2, dim=1)
    label = top2.indices[:, 0]
    return Prediction(label, p.gather(1, label[:, None])[:, 0], top2.values[:, 0] - top2.values[:, 1], p)


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
