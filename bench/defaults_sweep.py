"""The trainer's defaults per optimizer x variant, chosen on a validation split.

Runs ``lenet5_fast.train.train`` itself (the same passes, seeding and checks as
``lenet5-fast train``) on the first 50,000 MNIST training digits and reports the error on the
last 10,000 after every pass; the test set is never read. Each ``--run`` is a comma-separated
list of TrainConfig settings; anything not given is the trainer's default.

    python bench/defaults_sweep.py --data ../shared/data/mnist --epochs 3 \\
        --run optimizer=sgd,variant=modern,batch_size=32,lr=0.1 --run optimizer=adam,batch_size=32

One JSON line per run on stdout (validation error and running loss per pass, or where it
stopped); ``--json FILE`` appends them to a file.

The first-run criterion (issue 24): ``--train-limit 10000 --epochs 1`` trains one pass over the
first 10,000 digits (the validation error is still on the last 10,000), and ``--pytorch adam``
/ ``--pytorch sgd`` adds pure PyTorch's usual modern LeNet-5 under the same images (torch's
layers and default initialisation, the same padded input, batch 32; Adam lr 0.001, or SGD lr
0.01 momentum 0.9), the bar the defaults must meet:

    python bench/defaults_sweep.py --data ../shared/data/mnist --epochs 1 --train-limit 10000 \
        --pytorch adam --pytorch sgd --run optimizer=sgd --run optimizer=adam \
        --run optimizer=sgd,variant=modern --run optimizer=adam,variant=modern
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from dataclasses import fields

import torch


from lenet5_fast.data import load_tensors
from lenet5_fast.train import TrainConfig, train

_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def parse_run(text: str) -> dict:
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if key not in _TYPES:
            raise SystemExit(f"unknown setting {key!r} (TrainConfig fields: {', '.join(_TYPES)})")
        kind = str(_TYPES[key])
        if value.lower() == "none":
            out[key] = None
        elif "bool" in kind:
            out[key] = value.lower() in ("1", "true", "yes")
        elif "int" in kind:
            out[key] = int(value)
        elif "float" in kind:
            out[key] = float(value)
        else:
            out[key] = value
    return out


def pytorch_baseline(optimizer: str, split, epochs: int, seed: int) -> dict:
    """Pure PyTorch's usual modern LeNet-5 (Conv 6@5x5, ReLU, max-pool, Conv 16@5x5, ReLU,
    max-pool, Linear 120, 84, 10; torch's default initialisation), batch 32, on the same images:
    validation error after each pass."""
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                        nn.ReLU(), nn.Linear(84, 10))
    opt = (torch.optim.Adam(net.parameters(), lr=1e-3) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    (xt, yt), (xv, yv) = split
    t0, val = time.perf_counter(), []
    for p in range(epochs):
        order = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(seed * 1_000_003 + p + 1))
        net.train()
        for i in range(0, xt.shape[0], 32):
            b = order[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt[b]), yt[b]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            wrong = sum(int((net(xv[i:i + 1000]).argmax(1) != yv[i:i + 1000]).sum()) for i in range(0, len(xv), 1000))
        val.append(round(100.0 * wrong / xv.shape[0], 2))
    return dict(run=f"pure-pytorch modern LeNet-5, {optimizer}" + (" lr 0.001" if optimizer == "adam" else
                                                                  " lr 0.01 momentum 0.9") + ", batch 32",
                train_samples=int(xt.shape[0]), val_error=val, seconds=round(time.perf_counter() - t0, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", action="append", required=True, help="key=value,... (TrainConfig fields)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append the results to this file (JSON lines)")
    ap.add_argument("--train-limit", type=int, default=50000, help="train on the first N digits (default 50000)")
    ap.add_argument("--pytorch", action="append", default=[], choices=["adam", "sgd"],
                    help="also train pure PyTorch's modern LeNet-5 with this optimizer (the first-run bar)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_tensors(a.data, "train")
    n = min(a.train_limit, 50000)
    split = ((x[:n].contiguous(), y[:n].contiguous()), (x[50000:].contiguous(), y[50000:].contiguous()))
    for opt in a.pytorch:
        rec = pytorch_baseline(opt, split, a.epochs, a.seed)
        print(json.dumps(rec), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
    for text in a.run:
        settings = dict(epochs=a.epochs, seed=a.seed, **parse_run(text))
        cfg = TrainConfig(**settings)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            try:
                m = train(cfg, None, out, data=split, log=lambda s: None, progress_stream=io.StringIO(),
                          command="bench/defaults_sweep.py")
                stopped = None
            except RuntimeError as e:  # the trainer stopped the run (divergence)
                stopped = str(e)
                m = json.loads(open(os.path.join(out, "metrics.json")).read()) if os.path.exists(
                    os.path.join(out, "metrics.json")) else dict(history=[], config={})
        rec = dict(run=text, train_samples=n, config=m.get("config"), stopped=stopped, diverged=m.get("diverged"),
                   seconds=round(time.perf_counter() - t0, 1),
                   val_error=[round(h["test_error"], 2) for h in m["history"]],
                   train_error=[round(h["train_error"], 2) for h in m["history"]],
                   running_loss=[round(h["running_train_loss"], 4) for h in m["history"]],
                   fused=[h.get("fused") for h in m["history"]])
        print(json.dumps(rec), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
