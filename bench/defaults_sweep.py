"""The trainer's defaults per optimizer x variant, chosen on a validation split.

Runs ``lenet5_fast.train.train`` itself (the same passes, seeding and checks as
``lenet5-fast train``) on the first 50,000 MNIST training digits and reports the error on the
last 10,000 after every pass; the test set is never read. Each ``--run`` is a comma-separated
list of TrainConfig settings; anything not given is the trainer's default.

    python bench/defaults_sweep.py --data ../shared/data/mnist --epochs 3 \\
        --run optimizer=sgd,variant=modern,batch_size=32,lr=0.1 --run optimizer=adam,batch_size=32

One JSON line per run on stdout (validation error and running loss per pass, or where it
stopped); ``--json FILE`` appends them to a file.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--run", action="append", required=True, help="key=value,... (TrainConfig fields)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="append the results to this file (JSON lines)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    x, y = load_tensors(a.data, "train")
    split = ((x[:50000].contiguous(), y[:50000].contiguous()), (x[50000:].contiguous(), y[50000:].contiguous()))
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
        rec = dict(run=text, config=m.get("config"), stopped=stopped, diverged=m.get("diverged"),
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
