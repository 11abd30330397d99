"""Makes the pretrained weights shipped in the package (python/lenet5_fast/weights/) from
finished training runs, and their manifest: the exact command, seed, the git commit of the code
that trained them, torch version, SIMD level, MNIST test error (evaluated here, on the whole test
set) and sha256. Usage (after the three runs of README "Your own digits"):

    PYTHONPATH=python python scripts/ship_weights.py --runs runs --data DIR --commit SHA
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from lenet5_fast import _C, weights
from lenet5_fast.checkpoint import model_from_checkpoint
from lenet5_fast.data import load_tensors
from lenet5_fast.train import evaluate

# The weights are written into the source tree (python/lenet5_fast/weights/), whichever copy of
# the package runs this (PYTHONPATH=python for the tree's own).
REPO = Path(__file__).resolve().parents[1]

SHIPPED = {
    "paper": "the paper's network and training (SDLM, per-sample updates, 20 passes)",
    "paper-distort": "the paper's network and training, with random distortions of the training digits",
    "modern-adam": "the modern variant (ReLU, max-pool, full C3, softmax) trained with Adam, batch 32",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs", help="directory holding the runs paper/, paper-distort/, modern-adam/")
    ap.add_argument("--data", required=True, help="MNIST directory")
    ap.add_argument("--commit", required=True, help="git commit of the code that trained the runs")
    args = ap.parse_args()
    out_dir = REPO / "python" / "lenet5_fast" / "weights"
    x, y = load_tensors(args.data, "test")
    entries = {}
    for name, description in SHIPPED.items():
        run = Path(args.runs) / name
        metrics = json.loads((run / "metrics.json").read_text())
        if not metrics.get("complete"):
            sys.exit(f"{run} is not a finished run")
        out_file = out_dir / f"{name}.pt"
        cfg = metrics["config"]
        entry = weights.export(run / "checkpoint.pt", out_file, name=name, description=description,
                               command=metrics["command"].replace(str(args.data), "DIR").replace(str(run), "RUN"),
                               seed=cfg["seed"], commit=args.commit, config=cfg, passes=metrics["passes"],
                               train_error=round(metrics["train_error"], 4),
                               wall_seconds=round(metrics["wall_seconds"]),
                               trained_on=dict(metrics["machine"], simd_level=_C.simd_level()))
        model = model_from_checkpoint(out_file)
        errors, _ = evaluate(model, x, y)
        entry.update(test_errors=errors, test_samples=int(x.shape[0]), test_error=100.0 * errors / x.shape[0])
        if abs(entry["test_error"] - metrics["test_error"]) > 1e-9:
            print(f"note: {name}: test error now {entry['test_error']}%, the run reported {metrics['test_error']}%")
        entries[name] = entry
        print(f"{name}: {errors} errors of {x.shape[0]} ({entry['test_error']:.2f}%), sha256 {entry['sha256']}")
    manifest = dict(format="lenet5_fast.weights", version=1, default=weights.DEFAULT,
                    torch=torch.__version__, weights=entries)
    (out_dir / weights.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
