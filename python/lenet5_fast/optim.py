"""Stochastic diagonal Levenberg-Marquardt (SDLM), the paper's optimizer (LeCun et al. 1998,
appendix C).

Each trainable parameter w_k gets its own step ``eta / (mu + h_kk)``, where ``h_kk`` is a
diagonal Gauss-Newton estimate of the second derivative of the loss with respect to w_k,
averaged over a few hundred samples (500 in the paper) and re-estimated before every pass.
``eta`` follows the paper's schedule over passes (:func:`paper_eta`), ``mu = 0.02``.

With h_kk computed as specified, the paper's first eta values make the per-sample updates
diverge (measured; see the README's "SDLM as implemented"): the estimates for C1..C5 are 1e-5
(at the initial weights) to 3e-2 (trained), below mu, so their steps are ~eta/mu = 0.025 times
a gradient summed over hundreds of shared connections. ``max_step`` bounds every step:
the damping becomes ``max(mu, eta / max_step)``. By default (in :class:`SDLM` and in the
trainer) ``max_step`` is :data:`TRAINING_MAX_STEP` = 0.0005, the largest step of the paper's own
last passes (eta/mu = 0.00001/0.02), so those passes run exactly as published and the earlier
ones are damped just enough; ``max_step=None`` gives the paper's exact steps.

The Gauss-Newton terms are propagated backward through the network like a gradient, by each
layer's own backward (``layer.backward_terms``: the ops' backward kernels) in ``gauss_newton``
mode: the incoming tensor is d2E/dy2, every activation contributes f'(a)^2, weights and inputs
enter squared (see ``csrc/lenet5.h``). See :class:`SDLM` for an example (``tests/test_optim.py``
runs it).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from .layers import EuclideanRBF, _Layer

__all__ = ["SDLM", "paper_eta", "gauss_newton_diagonal", "PAPER_MU", "TRAINING_MAX_STEP",
           "PAPER_HESSIAN_SAMPLES"]

PAPER_MU = 0.02
# The trainer's bound on every SDLM step: the paper's last eta over its mu (see above).
TRAINING_MAX_STEP = 5e-4  # = 0.00001 / 0.02
PAPER_HESSIAN_SAMPLES = 500
# (first pass where it no longer applies, eta): 0.0005 for 2 passes, 0.0002 for 3, 0.0001 for 3,
# 0.00005 for 4, then 0.00001.
_PAPER_SCHEDULE = ((2, 5e-4), (5, 2e-4), (8, 1e-4), (12, 5e-5))


def paper_eta(pass_index: int) -> float:
    """The paper's global learning rate for 0-based pass ``pass_index``."""
    if isinstance(pass_index, bool) or not isinstance(pass_index, int) or pass_index < 0:
        raise ValueError(f"paper_eta: pass index must be an int >= 0, got {pass_index!r}")
    for end, eta in _PAPER_SCHEDULE:
        if pass_index < end:
            return eta
    return 1e-5


def _trainable(model: nn.Module) -> List[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def gauss_newton_diagonal(model: nn.Module, x: Tensor, y: Tensor) -> List[Tensor]:
    """The diagonal Gauss-Newton estimate h_kk of every trainable parameter of a
    :class:`lenet5_fast.LeNet5`, averaged over the samples ``x[N,C,32,32]``, labels ``y[N]``.

    Classic variant (MAP loss E = y_c + log(exp(-j) + sum_i exp(-y_i))): at the RBF outputs
    h_y_i = q_i (1 - q_i), q the softmax over [-j, -y_0..-y_9]; through the RBF layer this gives
    sum_i h_y_i 4 (x_j - w_ij)^2, plus 2 (the exact second derivative of the y_c term). Modern
    variant (cross-entropy): h_z = p (1 - p) at the logits. Then every layer's own backward in
    Gauss-Newton mode (``layer.backward_terms``), down to C1. Returns tensors in
    ``[p for p in model.parameters() if p.requires_grad]`` order, each shaped like its parameter.
    """
    layers = model.layers() if hasattr(model, "layers") else None
    if not layers or not all(isinstance(m, _Layer) for m in layers):
        raise TypeError("gauss_newton_diagonal: the model must be a lenet5_fast.LeNet5 "
                        "(a .layers() list of lenet5_fast layers)")
    if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"gauss_newton_diagonal: x must be a non-empty [N, C, H, W] tensor, got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
        raise ValueError(f"gauss_newton_diagonal: y must be a [{x.shape[0]}] tensor of labels")
    n = x.shape[0]
    y = y.to(device=x.device, dtype=torch.long)

    inputs, outputs = [], []
    h = x
    for layer in layers:
        inputs.append(h)
        h = layer(h)
        outputs.append(h)

    out = outputs[-1]
    h_param = {}
    last = layers[-1]
    if isinstance(last, EuclideanRBF):
        j = float(getattr(model, "map_j", 1.0))
        logits = torch.cat([torch.full_like(out[:, :1], -j), -out], dim=1)
        q = torch.softmax(logits, dim=1)[:, 1:]
        h, terms = last.backward_terms(q * (1 - q), inputs[-1], out, gauss_newton=True)
        h = h + 2.0  # d2(y_c)/dx_j^2 = 2 for the correct class's distance
        for prm, t in terms:  # a trainable code: the y_c term adds 2 per sample of that class
            counts = torch.bincount(y, minlength=last.weight.shape[0]).to(t.dtype)
            h_param[id(prm)] = t + 2.0 * counts[:, None]
        rest = layers[:-1]
    else:  # modern: the last layer is a linear FullConnection giving logits for cross-entropy
        p = torch.softmax(out, dim=1)
        h = p * (1 - p)
        rest = layers

    for i in range(len(rest) - 1, -1, -1):
        h, terms = rest[i].backward_terms(h, inputs[i], outputs[i], gauss_newton=True, input_grad=i > 0)
        for prm, t in terms:
            h_param[id(prm)] = t

    return [h_param[id(p)] / n for p in _trainable(model)]


class SDLM(Optimizer):
    """Stochastic diagonal Levenberg-Marquardt: ``w_k -= lr / (mu + h_kk) * grad_k``.

    ``lr`` is the paper's global eta (set it per pass with :meth:`set_lr` and
    :func:`paper_eta`); ``h_kk`` comes from :meth:`set_hessian` or :meth:`update_hessian` and is
    kept in the optimizer state (so it travels in ``state_dict()``). ``step()`` uses whatever
    ``.grad`` holds: the gradient of one sample's loss (the paper), or of a mini-batch mean.
    The defaults are the trainer's: ``mu`` 0.02 and every step bounded by ``max_step`` =
    :data:`TRAINING_MAX_STEP` (0.0005); ``max_step=None`` gives the paper's exact steps, which
    diverge on MNIST.

    Example: two passes of per-sample updates over the first 1,000 MNIST training digits (read
    from ``$LENET5_FAST_DATA``; ``lenet5_fast.train`` does the same, faster)::

        import torch
        import lenet5_fast as L
        from lenet5_fast.data import load_tensors
        from lenet5_fast.optim import SDLM, paper_eta

        x, y = load_tensors(split="train", limit=1000)
        model = L.LeNet5()
        opt = SDLM(model.parameters())
        for p in range(2):
            opt.set_lr(paper_eta(p))
            opt.update_hessian(model, x[:500], y[:500])  # h_kk, before every pass
            for i in torch.randperm(len(x)).tolist():
                opt.zero_grad()
                model.loss(model(x[i:i + 1]), y[i:i + 1]).backward()
                opt.step()
        xt, yt = load_tensors(split="test", limit=1000)
        error = float((model.predict(xt) != yt).float().mean())
        print(error)  # about 0.4 (chance: 0.9); with max_step=None it stays at 0.9
    """

    def __init__(self, params: Iterable, lr: float = 5e-4, mu: float = PAPER_MU,
                 max_step: Optional[float] = TRAINING_MAX_STEP):
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"SDLM: lr must be > 0, got {lr!r}")
        if not (isinstance(mu, (int, float)) and mu > 0):
            raise ValueError(f"SDLM: mu must be > 0, got {mu!r}")
        if max_step is not None and not (isinstance(max_step, (int, float)) and max_step > 0):
            raise ValueError(f"SDLM: max_step must be > 0 or None, got {max_step!r}")
        super().__init__(params, dict(lr=float(lr), mu=float(mu),
                                      max_step=None if max_step is None else float(max_step)))

    @staticmethod
    def damping(group: dict) -> float:
        """The mu used for a parameter group: ``mu``, raised to ``lr / max_step`` when that is
        larger, so that no step ``lr / (mu + h_kk)`` exceeds ``max_step``."""
        cap = group.get("max_step")
        return group["mu"] if cap is None else max(group["mu"], group["lr"] / cap)

    def _params(self) -> List[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def set_lr(self, lr: float) -> None:
        """Sets the global eta of every parameter group."""
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"SDLM: lr must be > 0, got {lr!r}")
        for g in self.param_groups:
            g["lr"] = float(lr)

    @torch.no_grad()
    def set_hessian(self, hessians: Sequence[Tensor]) -> None:
        """Sets h_kk: one tensor per parameter, in parameter order, each shaped like it, >= 0."""
        params = self._params()
        hessians = list(hessians)
        if len(hessians) != len(params):
            raise ValueError(f"SDLM.set_hessian: got {len(hessians)} tensors for {len(params)} parameters")
        for k, (p, h) in enumerate(zip(params, hessians)):
            if not isinstance(h, Tensor) or h.shape != p.shape:
                raise ValueError(f"SDLM.set_hessian: entry {k} must be a tensor of shape {tuple(p.shape)}, "
                                 f"got {tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__}")
            if not bool(torch.isfinite(h).all()) or bool((h < 0).any()):
                raise ValueError(f"SDLM.set_hessian: entry {k} has negative or non-finite values")
            self.state[p]["hessian"] = h.detach().to(dtype=p.dtype, device=p.device).clone()

    def update_hessian(self, model: nn.Module, x: Tensor, y: Tensor) -> List[Tensor]:
        """Re-estimates h_kk on samples (x, y) with :func:`gauss_newton_diagonal` and sets it."""
        h = gauss_newton_diagonal(model, x, y)
        self.set_hessian(h)
        return h

    def has_hessian(self) -> bool:
        return all("hessian" in self.state[p] for p in self._params())

    @torch.no_grad()
    def step_sizes(self) -> List[Tensor]:
        """Per-parameter step eta / (mu + h_kk), in parameter order (mu as :meth:`damping`)."""
        if not self.has_hessian():
            raise RuntimeError("SDLM: no Gauss-Newton estimate yet; call set_hessian() or update_hessian() first")
        return [g["lr"] / (self.damping(g) + self.state[p]["hessian"]) for g in self.param_groups
                for p in g["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self.has_hessian():
            raise RuntimeError("SDLM: no Gauss-Newton estimate yet; call set_hessian() or update_hessian() first")
        for g in self.param_groups:
            lr, mu = g["lr"], self.damping(g)
            for p in g["params"]:
                if p.grad is None:
                    continue
                p.addcdiv_(p.grad, self.state[p]["hessian"] + mu, value=-lr)
        return loss
