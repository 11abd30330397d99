"""SDLM settings on a validation split: how the trainer's SDLM damping was chosen.

Trains the classic LeNet-5 with per-sample SDLM (the fused native pass) on the first 50,000
MNIST training digits and reports the error on the last 10,000 after every pass; the test set
is never read. Each setting is ``mu[:eta_scale[:j]]``; every setting runs for every seed.

    python bench/sdlm_sweep.py --data ../shared/data/mnist --settings 1 0.5 0.02:0.1 --seeds 0 1 2
    python bench/sdlm_sweep.py --data DIR --settings 1 --mu-after-first 0.02 --passes 2
    python bench/sdlm_sweep.py --data DIR --settings 0.02 --max-step 5e-4 --seeds 0 1 2   # the trainer's default

``--mu-after-first M`` runs the first pass with the setting's mu and every later pass with M
(does mu = 0.02 diverge only from the initial weights?). Results: one JSON line per run on
stdout (per-pass validation and training error), and ``--json FILE`` collects them.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from lenet5_fast import LeNet5
from lenet5_fast.data import load_tensors
from lenet5_fast.optim import SDLM, paper_eta
from lenet5_fast.train import TrainConfig, evaluate, pass_generator, run_pass


def run(x, y, xv, yv, mu, eta_scale, j, seed, passes, mu_after_first=None, max_step=None, hessian_samples=500):
    """One run: the trainer's passes (:func:`lenet5_fast.train.run_pass`, same seeding as
    ``lenet5-fast train``) with the SDLM optimizer, evaluated on (xv, yv) after each pass."""
    torch.manual_seed(seed)
    model = LeNet5(map_j=j)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = SDLM(params, mu=mu, max_step=max_step)
    cfg = TrainConfig(hessian_samples=hessian_samples)  # SDLM, batch 1: the fused pass
    n = x.shape[0]
    hist = []
    for p in range(passes):
        g = pass_generator(seed, p)
        order = torch.randperm(n, generator=g)
        hidx = torch.randperm(n, generator=g)[:hessian_samples]
        if p > 0 and mu_after_first is not None:
            for group in opt.param_groups:
                group["mu"] = mu_after_first
        opt.set_lr(paper_eta(p) * eta_scale)
        t0 = time.perf_counter()
        loss, _, fused_ran = run_pass(model, opt, x, y, order, cfg, hidx)
        secs = time.perf_counter() - t0
        if not fused_ran:
            raise RuntimeError("the fused engine did not run the pass (lenet5_fast.fused missing?)")
        ve, _ = evaluate(model, xv, yv)
        te, _ = evaluate(model, x, y)
        hist.append(dict(pass_=p + 1, mu=SDLM.damping(opt.param_groups[0]), eta=opt.param_groups[0]["lr"],
                         running_loss=loss / n, val_error=100.0 * ve / xv.shape[0], train_error=100.0 * te / n,
                         seconds=secs,
                         h_mean={k: float(opt.state[q]["hessian"].mean()) for k, q in
                                 zip(("c1", "c1b", "s2", "s2b", "c3", "c3b", "s4", "s4b", "c5", "c5b", "f6", "f6b"),
                                     params)}))
    return hist


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--settings", nargs="+", default=["1"], help="mu[:eta_scale[:j]] ...")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--passes", type=int, default=20)
    ap.add_argument("--mu-after-first", type=float, default=None)
    ap.add_argument("--max-step", type=float, default=None,
                    help="raise mu to eta/max_step when larger (the trainer's default: 0.0005)")
    ap.add_argument("--json", default=None, help="also write all runs to this file")
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_tensors(a.data, "train")
    x, y, xv, yv = x[:50000].contiguous(), y[:50000].contiguous(), x[50000:].contiguous(), y[50000:].contiguous()
    runs = []
    for setting in a.settings:
        parts = [float(v) for v in setting.split(":")]
        mu, scale, j = (parts + [1.0, 1.0])[:3]
        for seed in a.seeds:
            hist = run(x, y, xv, yv, mu, scale, j, seed, a.passes, a.mu_after_first, a.max_step)
            for h in hist:
                h["pass"] = h.pop("pass_")
            rec = dict(mu=mu, eta_scale=scale, j=j, seed=seed, mu_after_first=a.mu_after_first, max_step=a.max_step,
                       final_val_error=hist[-1]["val_error"], history=hist)
            runs.append(rec)
            print(json.dumps(dict(mu=mu, eta_scale=scale, j=j, seed=seed, max_step=a.max_step,
                                  val_error=[round(h["val_error"], 2) for h in hist])), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(machine=dict(platform=platform.platform(), processor=platform.processor(),
                                        torch=torch.__version__), split="train[:50000] / train[50000:]",
                           runs=runs), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
