"""GPU benchmark: LeNet-5 training pass and inference throughput, PyTorch vs lenet5_fast.

Contenders, all on the same GPU in one run, with the same weights:
  (a) torch eager  — lenet5_fast.reference.LeNet5 (cuDNN convolutions)
  (b) torch.compile(mode="max-autotune") of (a)
  (c) ours         — lenet5_fast.LeNet5 on the CUDA custom ops
Training: one pass over 60,000 images at batch 256 (forward, MAP loss, backward, SGD step).
Inference: images/s at a large batch (default 65,536). Timed with CUDA events after warm-up.

    python bench/gpu.py [--json] [--batch 256] [--infer-batch 65536] [--images 60000]
Writes bench/results/gpu-<device>.md (device name from torch.cuda.get_device_name).
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path

import torch

import lenet5_fast
from lenet5_fast import reference


def _time_cuda(fn, repeat: int) -> float:
    """Median seconds of fn() over `repeat` runs, by CUDA events."""
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return times[len(times) // 2]


def _train_pass(model, x, y, batch):
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def run():
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i:i + batch], y[i:i + batch]
            opt.zero_grad(set_to_none=True)
            model.loss(model(xb), yb).backward()
            opt.step()
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--infer-batch", type=int, default=65_536)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to autotune)")
    ap.add_argument("--out", default=None, help="results Markdown file (default bench/results/gpu-<device>.md)")
    args = ap.parse_args(argv)
    if not (torch.cuda.is_available() and lenet5_fast._C.with_cuda):
        print("bench/gpu.py: needs a CUDA GPU and a lenet5_fast build with CUDA kernels", file=sys.stderr)
        return 2

    dev = torch.device("cuda")
    torch.manual_seed(0)
    ours = lenet5_fast.LeNet5().to(dev)
    ref = reference.LeNet5().to(dev)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(args.images, 1, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.images,), device=dev)
    xi = torch.randn(args.infer_batch, 1, 32, 32, device=dev)

    contenders = {"torch eager": ref, "ours": ours}
    if not args.no_compile:
        compiled = torch.compile(reference.LeNet5().to(dev), mode="max-autotune")
        compiled.load_state_dict(ours.state_dict())
        contenders = {"torch eager": ref, "torch.compile max-autotune": compiled, "ours": ours}

    rows = {}
    for name, model in contenders.items():
        state = {k: v.clone() for k, v in model.state_dict().items()}
        run = _train_pass(model, x, y, args.batch)
        run()  # warm-up (and compile/autotune)
        t_train = _time_cuda(run, max(1, args.repeat // 2))
        model.load_state_dict(state)
        with torch.no_grad():
            model(xi)
            t_inf = _time_cuda(lambda: model(xi), args.repeat)
        rows[name] = dict(train_pass_s=t_train, train_images_per_s=args.images / t_train,
                          infer_images_per_s=args.infer_batch / t_inf)

    base = rows["torch eager"]
    for r in rows.values():
        r["train_vs_eager"] = (base["train_pass_s"] / r["train_pass_s"]) if r["train_pass_s"] else None
        r["infer_vs_eager"] = r["infer_images_per_s"] / base["infer_images_per_s"]
    comp = rows.get("torch.compile max-autotune")
    if comp:
        for r in rows.values():
            r["train_vs_compiled"] = (comp["train_pass_s"] / r["train_pass_s"]) if r["train_pass_s"] else None

    device_name = torch.cuda.get_device_name(dev)
    meta = dict(device=device_name, torch=torch.__version__, cuda=torch.version.cuda, batch=args.batch,
                images=args.images, infer_batch=args.infer_batch,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    if args.json:
        print(json.dumps(dict(meta=meta, results=rows), indent=2))

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    lines = [f"# GPU benchmark: {device_name}", "",
             f"torch {meta['torch']} (CUDA {meta['cuda']}), {meta['date']}. Training: one pass over "
             f"{args.images:,} images at batch {args.batch} (forward, MAP loss, backward, SGD). "
             f"Inference: batch {args.infer_batch:,}. Median of CUDA-event timings after warm-up.", "",
             "| contender | train pass (s) | train images/s | vs eager | vs compiled | inference images/s | vs eager |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {f(r['train_pass_s'], '.3f')} | {f(r['train_images_per_s'], ',.0f')} | "
                     f"{f(r['train_vs_eager'], '.2f')}x | {f(r.get('train_vs_compiled'), '.2f')}x | "
                     f"{r['infer_images_per_s']:,.0f} | {r['infer_vs_eager']:.2f}x |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / (
        "gpu-" + re.sub(r"[^A-Za-z0-9]+", "-", device_name).strip("-").lower() + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    if not args.json:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
