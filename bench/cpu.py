"""CPU benchmark: LeNet-5 training and inference throughput, our kernels against PyTorch.

Contenders, all with the same weights (one state_dict):
  (a) ref        the pure-PyTorch reference model (lenet5_fast.reference.LeNet5), eager
  (b) ref+compile the same under torch.compile (default inductor, dynamic shapes)
  (c) ours       lenet5_fast.LeNet5: the native ops through torch.library, eager autograd
  (d) fused      lenet5_fast.fused (whole-network native path) when that module exists, else n/a

Training step (identical for every contender): forward, MAP loss, backward, and an SGD-like
update p -= lr * grad (torch._foreach_add_). Inference: forward under no_grad. Batch sizes 1,
16, 64, 256, 1024. Each measurement is the best of several timed runs (each run ~0.2 s of
repeated steps), the contenders interleaved run by run so load from other processes hits
them alike. Also: batch-1 inference latency, and seconds per batch-1 SDLM pass over 60,000
images (a pass = forward + loss backward + a per-parameter-step update per image; ours and
ref are estimated from a timed run of 2,000 images (500 with --quick), fused uses
fused.sdlm_pass). FLOPs: 0.67 MFLOP per image forward, 1.73 MFLOP per training image; the
ceiling is measured at run time by a register-only FMA probe (_C._fma_probe) on all threads.

Usage: python bench/cpu.py [--quick] [--json] [--out bench/results/cpu.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))

import lenet5_fast  # noqa: E402
from lenet5_fast import _C, reference  # noqa: E402

try:  # the fused whole-network path lives on another branch until merged
    from lenet5_fast import fused  # type: ignore
except Exception:  # noqa: BLE001
    fused = None

FWD_FLOP = 0.67e6
TRAIN_FLOP = 1.73e6
LR = 1e-4


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    return ",".join(sorted(f for f in fl if f.startswith(("avx", "fma"))))
    except OSError:
        pass
    return "?"


def fma_ceiling(threads: int) -> dict:
    """Best-of-5 FMA throughput (GFLOP/s, wall clock) on 1 and on `threads` threads."""
    out = {}
    for t in sorted({1, threads}):
        best = 0.0
        for _ in range(5):
            s = time.perf_counter()
            flops = _C._fma_probe(20_000_000, t)
            best = max(best, flops / (time.perf_counter() - s) / 1e9)
        out[t] = best
    return out


def make_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def train_step_fn(model, fwd, x, y):
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        out = fwd(x)
        loss = model.loss(out, y)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-LR)
    return step


def infer_fn(fwd, x):
    def step():
        with torch.no_grad():
            fwd(x)
    return step


class Timer:
    """Round-robin timing of several callables: best (and median) seconds per call."""

    def __init__(self, fns: dict, target_s: float):
        self.fns = {k: v for k, v in fns.items() if v is not None}
        self.iters = {}
        self.errors = {}
        for k, fn in list(self.fns.items()):
            try:
                fn()  # warm up (and compile)
                fn()
            except Exception as e:  # noqa: BLE001
                self.errors[k] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                del self.fns[k]
                continue
            s = time.perf_counter()
            fn()
            dt = max(time.perf_counter() - s, 1e-6)
            self.iters[k] = max(1, int(target_s / dt))
        self.samples = {k: [] for k in self.fns}

    def run(self, rounds: int) -> dict:
        for _ in range(rounds):
            for k, fn in self.fns.items():
                n = self.iters[k]
                s = time.perf_counter()
                for _ in range(n):
                    fn()
                self.samples[k].append((time.perf_counter() - s) / n)
        return {k: (min(v), statistics.median(v)) for k, v in self.samples.items()}


def sdlm_like_pass(model, fwd, xs, ys, budget_s=1e9):
    """Batch-1 steps: forward, MAP loss backward, p -= step_p * grad with per-parameter steps,
    over xs (or until budget_s seconds have passed). Returns (seconds, images done)."""
    params = [p for p in model.parameters() if p.requires_grad]
    steps_ = [torch.full_like(p, 1e-4) for p in params]
    s = time.perf_counter()
    i = 0
    for i in range(xs.shape[0]):
        if time.perf_counter() - s > budget_s:
            break
        out = fwd(xs[i:i + 1])
        loss = model.loss(out, ys[i:i + 1])
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            torch._foreach_addcmul_(params, steps_, [p.grad for p in params], value=-1.0)
    else:
        i = xs.shape[0]
    return time.perf_counter() - s, i


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if v >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch sizes 1 and 256 only, fewer rounds")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--compile-all", action="store_true",
                    help="torch.compile at every batch size (default: 1 and 256 only; each size is a fresh compile)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu.md"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batches = [1, 256] if args.quick else [1, 16, 64, 256, 1024]
    rounds = 3 if args.quick else 5
    target = 0.1 if args.quick else 0.2
    torch.manual_seed(0)
    ours = lenet5_fast.LeNet5()
    ref = reference.LeNet5()
    ref.load_state_dict(ours.state_dict())
    ref_c = None
    compile_note = ""
    if not args.no_compile:
        ref_c = reference.LeNet5()
        ref_c.load_state_dict(ours.state_dict())
        try:
            # Static shapes, one graph per batch size: inductor's dynamic-shape path fails on
            # this model (a sympy relational in avg_pool2d's stride order, torch 2.13).
            torch._dynamo.config.automatic_dynamic_shapes = False
            torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
            ref_c_fwd = torch.compile(ref_c, dynamic=False)
        except Exception as e:  # noqa: BLE001
            ref_c, compile_note = None, f"torch.compile unavailable: {e}"
    fused_ok = fused is not None
    ceiling = fma_ceiling(threads)
    peak = ceiling[threads] * 1e9

    results = {"train": {}, "infer": {}}
    t0 = time.perf_counter()
    for n in batches:
        x, y = make_batch(n)
        compile_here = args.compile_all or n in (1, 256)
        for kind in ("train", "infer"):
            fns = {}
            if kind == "train":
                fns["ref"] = train_step_fn(ref, ref, x, y)
                fns["ref_compile"] = train_step_fn(ref_c, ref_c_fwd, x, y) if ref_c is not None and compile_here else None
                fns["ours"] = train_step_fn(ours, ours, x, y)
                fns["fused"] = None  # the fused path trains at batch 1 only (sdlm_pass), below
            else:
                fns["ref"] = infer_fn(ref, x)
                fns["ref_compile"] = infer_fn(ref_c_fwd, x) if ref_c is not None and compile_here else None
                fns["ours"] = infer_fn(ours, x)
                if fused_ok and fused.supports(ours, x):
                    fns["fused"] = infer_fn(lambda t: fused.forward(ours, t), x)
            timer = Timer(fns, target)
            best = timer.run(rounds)
            row = {}
            for k in ("ref", "ref_compile", "ours", "fused"):
                if k in best:
                    sec, med = best[k]
                    row[k] = {"images_per_s": n / sec, "median_images_per_s": n / med, "s_per_step": sec}
                else:
                    row[k] = {"error": timer.errors[k]} if k in timer.errors else None
            flop = TRAIN_FLOP if kind == "train" else FWD_FLOP
            for k in ("ours", "fused", "ref_compile"):
                if row.get(k) and "images_per_s" in row[k]:
                    row[k]["vs_ref"] = row[k]["images_per_s"] / row["ref"]["images_per_s"]
                    row[k]["fraction_of_fma_ceiling"] = row[k]["images_per_s"] * flop / peak
            results[kind][n] = row
        print(f"batch {n} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    # batch-1 SDLM-style pass over 60,000 images
    m = 500 if args.quick else 2000
    xs, ys = make_batch(m, seed=1)
    sdlm = {"samples_timed": m, "budget_s": 10.0 if args.quick else 30.0}
    ours_s = lenet5_fast.LeNet5()
    ours_s.load_state_dict(ours.state_dict())
    ref_s = reference.LeNet5()
    ref_s.load_state_dict(ours.state_dict())
    budget = 10.0 if args.quick else 30.0
    sdlm_like_pass(ours_s, ours_s, xs[:20], ys[:20])  # warm up
    sdlm_like_pass(ref_s, ref_s, xs[:20], ys[:20])
    sec, done = sdlm_like_pass(ours_s, ours_s, xs, ys, budget)
    sdlm["ours_s_per_60k"], sdlm["ours_samples"] = sec * 60000 / done, done
    sec, done = sdlm_like_pass(ref_s, ref_s, xs, ys, budget)
    sdlm["ref_s_per_60k"], sdlm["ref_samples"] = sec * 60000 / done, done
    sdlm["fused_s_per_60k"] = None
    if fused_ok and hasattr(fused, "sdlm_pass"):
        try:
            order = torch.arange(m)
            h = fused.sdlm_hessian(ours_s, xs[:500], ys[:500])
            steps = [(2e-5 / (0.02 + t)).contiguous() for t in h]  # small enough not to diverge
            s = time.perf_counter()
            fused.sdlm_pass(ours_s, xs, ys, order, steps)
            sdlm["fused_s_per_60k"] = (time.perf_counter() - s) * 60000 / m
        except Exception as e:  # noqa: BLE001
            sdlm["fused_error"] = str(e)

    machine = {
        "cpu": cpu_model(), "cpu_simd_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "torch": torch.__version__, "threads": threads, "kernel_isa": _C.simd_isa(),
        "simd_supported": _C.simd_supported(),
        "fma_ceiling_gflops": {str(k): round(v, 1) for k, v in ceiling.items()},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "python": platform.python_version(), "fused_module": fused_ok,
        "compile": ("torch.compile(dynamic=False), default inductor, "
                    + ("every batch size" if args.compile_all else "batch 1 and 256 only (n/a elsewhere: --compile-all)"))
        if ref_c is not None else compile_note or "skipped",
        "quick": args.quick,
    }
    out = {"machine": machine, "train": results["train"], "infer": results["infer"], "sdlm_batch1_pass": sdlm}
    md = render(out, batches)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(md)
    return 0


def render(out: dict, batches) -> str:
    m = out["machine"]
    ceil = m["fma_ceiling_gflops"]
    lines = [
        "# CPU benchmark (bench/cpu.py)",
        "",
        f"- Machine: {m['cpu']} ({m['cpu_simd_flags']}), {m['logical_cpus']} logical CPUs; "
        f"torch {m['torch']}, {m['threads']} threads; kernels: `{m['kernel_isa']}` "
        f"(simd_supported = {m['simd_supported']}); Python {m['python']}; {m['date']}.",
        f"- FMA ceiling measured now (register-only FMA probe, wall clock): "
        + ", ".join(f"{v} GFLOP/s on {k} thread(s)" for k, v in ceil.items())
        + f". Load average at the end: {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}"
        " (the machine is shared: timings are the best of several interleaved runs).",
        f"- (a) ref = `lenet5_fast.reference.LeNet5` eager; (b) ref+compile = {m['compile']}; "
        "(c) ours = `lenet5_fast.LeNet5` (native ops, eager autograd); (d) fused = "
        + ("`lenet5_fast.fused`" if m["fused_module"] else "n/a (lenet5_fast.fused not present in this build)")
        + ". Same state_dict for all.",
        "- Training step = forward + MAP loss + backward + SGD-like update (same code for all). "
        "Fraction of ceiling uses 1.73 MFLOP per training image, 0.67 MFLOP per inference image.",
        "",
    ]
    for kind, title in (("train", "Training (images/s)"), ("infer", "Inference (images/s)")):
        lines += [f"## {title}", "",
                  "| batch | (a) ref | (b) ref+compile | (c) ours | (d) fused | ours / ref | compile / ref | fused / ref | ours % of FMA ceiling |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n in batches:
            r = out[kind][n]
            g = lambda k, f="images_per_s": ((r[k].get(f, "failed" if f == "images_per_s" else None)) if r.get(k) else None)  # noqa: E731
            pct = g("ours", "fraction_of_fma_ceiling")
            lines.append(
                f"| {n} | {fmt(g('ref'))} | {fmt(g('ref_compile'))} | {fmt(g('ours'))} | {fmt(g('fused'))} | "
                f"{fmt(g('ours', 'vs_ref'), 'x')} | {fmt(g('ref_compile', 'vs_ref'), 'x')} | {fmt(g('fused', 'vs_ref'), 'x')} | "
                f"{fmt(None if pct is None else 100 * pct, '%')} |")
        lines.append("")
    r1 = out["infer"][batches[0]]
    lat = {k: (1e6 / r1[k]["images_per_s"] if r1.get(k) and "images_per_s" in r1[k] else None)
           for k in ("ref", "ref_compile", "ours", "fused")}
    lines += ["## Batch-1 inference latency (us per image, best run)", "",
              "| (a) ref | (b) ref+compile | (c) ours | (d) fused |", "|---:|---:|---:|---:|",
              f"| {fmt(lat['ref'])} | {fmt(lat['ref_compile'])} | {fmt(lat['ours'])} | {fmt(lat['fused'])} |", ""]
    s = out["sdlm_batch1_pass"]
    lines += ["## Batch-1 SDLM-style pass over 60,000 images (seconds)", "",
              "| (a) ref | (c) ours (op by op) | (d) fused | ours / ref speed-up | fused / ref speed-up |",
              "|---:|---:|---:|---:|---:|",
              f"| {fmt(s['ref_s_per_60k'])} (est.) | {fmt(s['ours_s_per_60k'])} (est.) | "
              f"{fmt(s['fused_s_per_60k']) if s['fused_s_per_60k'] else 'n/a'} | "
              f"{fmt(s['ref_s_per_60k'] / s['ours_s_per_60k'], 'x')} | "
              f"{fmt(s['ref_s_per_60k'] / s['fused_s_per_60k'], 'x') if s['fused_s_per_60k'] else 'n/a'} |", "",
              *([f"fused pass failed: {s['fused_error']}", ""] if s.get("fused_error") else []),
              f"ref and ours are estimated from timed runs of batch-1 steps (ours: {s['ours_samples']:,} images, "
              f"ref: {s['ref_samples']:,} images, each run capped at {s['budget_s']:.0f} s), scaled to 60,000; "
              "fused (when present) from fused.sdlm_pass over the first images of the same set.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
