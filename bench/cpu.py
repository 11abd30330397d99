"""CPU benchmark: every path of lenet5_fast against pure PyTorch, in one run, same weights.

Contenders (one state_dict for all; each contender has its own copy of the model, reset to
that state before every timed run):
  (a) ref         lenet5_fast.reference.LeNet5, pure PyTorch, eager: the reference
  (b) ref+compile (a) under torch.compile (default inductor, dynamic=False); batch 1 and 256
                  only unless --compile-all (each batch size is a fresh compile)
  (c) op-by-op    lenet5_fast.LeNet5 inside ``with lenet5_fast.fused.disabled():``: each of the
                  seven layers its own native op, eager autograd between them
  (d) fused       lenet5_fast.LeNet5 plain: its forward takes the fused op (one native call for
                  the network, forward and backward) whenever fused.plan accepts the model

Variants: classic (the paper's: MAP loss, model.loss) and modern (LeNet5("modern"): cross
entropy). Training step: opt.zero_grad(set_to_none=True), the loss (model.loss(model(x), y) for
(a)-(c); model.loss_of(x, y) for (d), the fused loss op the trainer uses), backward, opt.step(),
with torch.optim.SGD(lr=1e-3, fused=True) for every contender (the trainer's choice). Inference:
forward under torch.no_grad(). Batch sizes 1, 16, 32, 64, 256, 1024. Thread scaling: (d)'s
training step at batch 256 and 1024 on 1 and on 2 threads, interleaved. Also: batch-1 latency of
model.predict(x) (wall time through Python) and of the reference's forward + argmin/argmax;
batch-1 forward through the seven layers op by op, per layer and chained; and a batch-1 SDLM
pass on one thread: fused.sdlm_pass (classic; steps eta/(mu+h), eta 5e-4, mu 0.02, h from
fused.sdlm_hessian on 500 images) against per-sample Python loops (reference, op by op, the
fused op through autograd) timed on fewer images. With MNIST at --data (default: the package's data
directory; unless --no-jobs or --quick): the
README's main job (`lenet5-fast train`, 20 SDLM passes and the evaluation, wall time and final
test error) and one pass of `lenet5-fast train --optimizer sgd` / `--optimizer adam` (defaults,
batch 32; the pass's training seconds from metrics.json), each in a fresh process.

Noise: the contenders of one measurement are interleaved run by run (each run ~0.2 s of
repeated steps) and the best of N runs is reported (the median is in the JSON); the load
average is recorded at the start and the end. OpenMP's wait policy (OMP_WAIT_POLICY, recorded)
applies to every contender alike; bench/cpu_policy_summary.py combines runs under several. On a loaded machine, runs on 2 threads suffer from stragglers
(one descheduled thread holds up a parallel region) far more than runs on 1 thread.

FLOPs: 0.67 MFLOP per image forward and 1.73 MFLOP per training image (forward, backward,
update), the classic network's counts, used for the modern variant too (whose full C3 makes
its true count larger, so its fraction is an underestimate). The ceiling is measured at run
time: a register-only FMA probe (_C._fma_probe) at every SIMD level the CPU supports, on the
same thread count, the best GFLOP/s of all levels.

Usage:
    python bench/cpu.py [--threads 2] [--quick] [--data DIR] [--out bench/results/cpu.md] [--json PATH]
The markdown goes to --out, the JSON to --json (default: --out with suffix .json).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import lenet5_fast

from lenet5_fast import _C, fused, reference

import ceiling  # bench/ceiling.py (the script's directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
FWD_MFLOP = 0.67
TRAIN_MFLOP = 1.73
LR = 1e-3
BATCHES = (1, 16, 32, 64, 256, 1024)
SCALING_BATCHES = (256, 1024)
VARIANTS = ("classic", "modern")
CONTENDERS = ("ref", "compile", "opbyop", "fused")
LABELS = {"ref": "(a) ref", "compile": "(b) ref+compile", "opbyop": "(c) op-by-op", "fused": "(d) fused"}
LAYER_NAMES = ("c1", "s2", "c3", "s4", "c5", "f6", "output")
SDLM_ETA, SDLM_MU, SDLM_HESSIAN_IMAGES = 5e-4, 0.02, 500


# ---------------------------------------------------------------------------------------------
# machine

def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_flags() -> str:
    flags = _cpuinfo("flags").split()
    return ",".join(sorted(f for f in set(flags) if f.startswith(("avx", "fma")))) or "?"


def git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "csrc", "python"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + (" (+ uncommitted changes in csrc/ or python/)" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_average():
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ---------------------------------------------------------------------------------------------
# timing

class Timer:
    """Round-robin timing of several contenders: best (and median) seconds per call.

    contenders: {name: (fn, ctx, reset)}; ctx() a context manager entered around every run
    (no_grad, fused.disabled), reset() called before every run, untimed."""

    def __init__(self, contenders: dict, run_s: float):
        self.items, self.errors, self.iters, self.first_call_s = {}, {}, {}, {}
        for name, (fn, ctx, reset) in contenders.items():
            ctx = ctx or contextlib.nullcontext
            reset = reset or (lambda: None)
            try:
                with ctx():
                    s = time.perf_counter()
                    fn()  # warm up (and compile)
                    self.first_call_s[name] = time.perf_counter() - s
                    fn()
                    # calls per run from the median single call (a call descheduled by other load
                    # must not shrink the runs to one call)
                    calls, total = [], 0.0
                    while total < run_s / 4 and len(calls) < 1 << 16:
                        s = time.perf_counter()
                        fn()
                        calls.append(time.perf_counter() - s)
                        total += calls[-1]
            except Exception as e:  # noqa: BLE001
                msg = str(e).strip().splitlines()
                self.errors[name] = f"{type(e).__name__}: {msg[0][:160] if msg else ''}"
                continue
            self.iters[name] = max(1, round(run_s / max(statistics.median(calls), 1e-9)))
            self.items[name] = (fn, ctx, reset)
        self.samples = {k: [] for k in self.items}

    def run(self, rounds: int) -> dict:
        """{name: (best s/call, median s/call)}."""
        for _ in range(rounds):
            for name, (fn, ctx, reset) in self.items.items():
                reset()
                n = self.iters[name]
                with ctx():
                    s = time.perf_counter()
                    for _ in range(n):
                        fn()
                    dt = time.perf_counter() - s
                self.samples[name].append(dt / n)
        return {k: (min(v), statistics.median(v)) for k, v in self.samples.items()}


def ctx_of(*factories):
    def enter():
        stack = contextlib.ExitStack()
        for f in factories:
            stack.enter_context(f())
        return stack
    return enter


# ---------------------------------------------------------------------------------------------
# models and steps

def make_batch(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


class Models:
    """One model per contender for a variant, all from one state_dict, with their optimizers."""

    def __init__(self, variant: str, compile_ok: bool, seed: int = 0):
        torch.manual_seed(seed)
        base = lenet5_fast.LeNet5(variant)
        self.variant = variant
        self.state = copy.deepcopy(base.state_dict())
        self.models = {"ref": reference.LeNet5(variant), "compile": reference.LeNet5(variant),
                       "opbyop": lenet5_fast.LeNet5(variant), "fused": lenet5_fast.LeNet5(variant)}
        for m in self.models.values():
            m.load_state_dict(self.state)
        self.fwd = dict(self.models)
        self.compiled = None
        if compile_ok:
            self.compiled = torch.compile(self.models["compile"], dynamic=False)
            self.fwd["compile"] = self.compiled
        self.opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=LR, fused=True)
                     for k, m in self.models.items()}

    def reset(self, name: str):
        def go():
            self.models[name].load_state_dict(self.state)  # in place: the same tensors, addresses
        return go


def train_step(model, fwd, opt, x, y, fused_loss=False):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = model.loss_of(x, y) if fused_loss else model.loss(fwd(x), y)
        loss.backward()
        opt.step()
    return step


def infer_step(fwd, x):
    def step():
        fwd(x)
    return step


def contender_ctx(name: str, infer: bool):
    fs = ([torch.no_grad] if infer else []) + ([fused.disabled] if name == "opbyop" else [])
    return ctx_of(*fs)


def check_paths(ms: Models, x) -> dict:
    """That (d) takes the fused op and (c) does not, and that all contenders agree on the
    output (max abs difference to the reference, float32 rounding expected)."""
    out = {}
    fm, om = ms.models["fused"], ms.models["opbyop"]
    out["fused_planned"] = fused.plan(fm, x) is not None
    with fused.disabled():
        out["opbyop_unplanned"] = fused.plan(om, x) is None
    with torch.no_grad():
        r = ms.models["ref"](x)
        with fused.disabled():
            o = om(x)
        f = fm(x)
    out["max_abs_diff_opbyop"] = float((o - r).abs().max())
    out["max_abs_diff_fused"] = float((f - r).abs().max())
    return out


# ---------------------------------------------------------------------------------------------
# the measurements

def throughput(ms: Models, n: int, kind: str, compile_here: bool, run_s: float, rounds: int, peak: float) -> dict:
    x, y = make_batch(n)
    infer = kind == "infer"
    cs = {}
    for name in CONTENDERS:
        if name == "compile" and (ms.compiled is None or not compile_here):
            continue
        m, fwd, opt = ms.models[name], ms.fwd[name], ms.opts[name]
        fn = infer_step(fwd, x) if infer else train_step(m, fwd, opt, x, y, fused_loss=name == "fused")
        cs[name] = (fn, contender_ctx(name, infer), ms.reset(name))
    timer = Timer(cs, run_s)
    best = timer.run(rounds)
    flop = (FWD_MFLOP if infer else TRAIN_MFLOP) * 1e6
    row = {}
    for name in CONTENDERS:
        if name in best:
            sec, med = best[name]
            row[name] = {"images_per_s": n / sec, "median_images_per_s": n / med, "s_per_step": sec,
                         "iters_per_run": timer.iters[name], "first_call_s": timer.first_call_s[name]}
        elif name in timer.errors:
            row[name] = {"error": timer.errors[name]}
        else:
            row[name] = None
    ref = (row.get("ref") or {}).get("images_per_s")
    for name in CONTENDERS:
        r = row.get(name)
        if r and "images_per_s" in r:
            r["vs_ref"] = r["images_per_s"] / ref if ref else None
            r["fraction_of_fma_ceiling"] = r["images_per_s"] * flop / peak
    row["fused_engine"] = fused.path(ms.models["fused"], x, grad=not infer)
    return row


def threads_ctx(n: int):
    @contextlib.contextmanager
    def ctx():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
    return ctx


def scaling(ms: Models, n: int, threads: int, run_s: float, rounds: int) -> dict:
    """(d)'s training step (as in throughput) on 1 thread and on `threads` threads, interleaved."""
    x, y = make_batch(n)
    m, opt = ms.models["fused"], ms.opts["fused"]
    cs = {str(t): (train_step(m, m, opt, x, y, fused_loss=True), threads_ctx(t), ms.reset("fused"))
          for t in sorted({1, threads})}
    timer = Timer(cs, run_s)
    best = timer.run(rounds)
    out = {t: {"images_per_s": n / b[0], "median_images_per_s": n / b[1]} for t, b in best.items()}
    out.update({t: {"error": e} for t, e in timer.errors.items()})
    one, many = (out.get(k, {}).get("images_per_s") for k in ("1", str(threads)))
    out["speedup"] = many / one if one and many else None
    return out


def cli_job(args: list, data: Path, timeout: float) -> dict:
    """`lenet5-fast train ARGS` in a fresh process (this Python, the package this script
    imported): wall seconds, the final test error and each pass's training seconds."""
    import tempfile
    with tempfile.TemporaryDirectory(prefix="lenet5-bench-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "lenet5_fast", "train", "--data", str(data), "--out", str(run_dir), *args]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(Path(lenet5_fast.__file__).resolve().parents[1])]
                                            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        s = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"command": "lenet5-fast train " + " ".join(args), "error": f"timed out after {timeout:g} s"}
        wall = time.perf_counter() - s
        out = {"command": "lenet5-fast train " + " ".join(args), "wall_s": wall}
        if proc.returncode != 0:
            out["error"] = f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"
            return out
        metrics = json.loads((run_dir / "metrics.json").read_text())
        hist = metrics.get("history") or []
        out["test_error"] = metrics.get("test_error")
        out["pass_train_s"] = [h.get("train_seconds") for h in hist]
        return out


def latency(ms: Models, compile_ok: bool, run_s: float, rounds: int) -> dict:
    """Batch-1 us per call: model.predict (fused and op by op), the reference's forward + argmin
    (classic: distances) / argmax (modern: logits), the same compiled."""
    x, _ = make_batch(1, seed=2)
    pick = (lambda o: o.argmin(dim=1)) if ms.variant == "classic" else (lambda o: o.argmax(dim=1))
    ref, comp = ms.fwd["ref"], ms.fwd.get("compile")
    cs = {"ref": (lambda: pick(ref(x)), ctx_of(torch.no_grad), None)}
    if compile_ok and ms.compiled is not None:
        cs["compile"] = (lambda: pick(comp(x)), ctx_of(torch.no_grad), None)
    cs["opbyop"] = (lambda: ms.models["opbyop"].predict(x), ctx_of(fused.disabled), None)
    cs["fused"] = (lambda: ms.models["fused"].predict(x), None, None)
    timer = Timer(cs, run_s)
    best = timer.run(rounds)
    out = {k: {"us": v[0] * 1e6, "median_us": v[1] * 1e6} for k, v in best.items()}
    out.update({k: {"error": e} for k, e in timer.errors.items()})
    return out


def per_op_layers(ms: Models, run_s: float, rounds: int) -> dict:
    """Batch-1 forward op by op (c), no_grad: each of the seven layers alone on its input, and
    the seven chained (the model's forward inside fused.disabled(), which adds only the input
    check)."""
    m = ms.models["opbyop"]
    x, _ = make_batch(1, seed=3)
    inputs = {}
    with torch.no_grad():
        h = x
        for name in LAYER_NAMES:
            inputs[name] = h
            h = getattr(m, name)(h)
    cs = {name: ((lambda layer=getattr(m, name), t=inputs[name]: layer(t)), ctx_of(torch.no_grad), None)
          for name in LAYER_NAMES}
    cs["chained"] = (lambda: m(x), ctx_of(torch.no_grad, fused.disabled), None)
    timer = Timer(cs, run_s)
    best = timer.run(rounds)
    out = {k: {"us": v[0] * 1e6, "median_us": v[1] * 1e6} for k, v in best.items()}
    out.update({k: {"error": e} for k, e in timer.errors.items()})
    out["sum_of_layers_us"] = sum(out[k]["us"] for k in LAYER_NAMES if "us" in out.get(k, {}))
    return out


def per_sample_loop(model, xs, ys, steps, count: int, ctx=contextlib.nullcontext) -> float:
    """Samples/s of per-sample SDLM-style updates in Python: forward x[k:k+1], loss, gradients,
    p -= step * grad, for `count` samples (cycling through xs)."""
    params = [p for p in model.parameters() if p.requires_grad]
    m = xs.shape[0]
    with ctx():
        for k in range(min(5, count)):  # warm up
            loss = model.loss(model(xs[k:k + 1]), ys[k:k + 1])
            torch.autograd.grad(loss, params)
        s = time.perf_counter()
        for i in range(count):
            k = i % m
            loss = model.loss(model(xs[k:k + 1]), ys[k:k + 1])
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                torch._foreach_addcmul_(params, steps, grads, value=-1.0)
        dt = time.perf_counter() - s
    return count / dt


def sdlm(state: dict, images: int, loop_images: int, rounds: int) -> dict:
    """Batch-1 SDLM pass on one thread (classic): fused.sdlm_pass over `images` samples (best of
    `rounds` passes), and per-sample Python loops over `loop_images` samples."""
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m_data = min(images, 5000)
        xs, ys = make_batch(m_data, seed=1)
        model = lenet5_fast.LeNet5("classic")
        model.load_state_dict(state)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        h = fused.sdlm_hessian(model, xs[:SDLM_HESSIAN_IMAGES], ys[:SDLM_HESSIAN_IMAGES])
        steps = [(SDLM_ETA / (SDLM_MU + t)).contiguous() for t in h]
        by_name = dict(zip(names, steps))
        order = torch.arange(images) % m_data
        out = {"images": images, "loop_images": loop_images, "threads": 1, "eta": SDLM_ETA, "mu": SDLM_MU,
               "hessian_images": SDLM_HESSIAN_IMAGES}
        fused.sdlm_pass(model, xs, ys, order[:min(200, images)], steps)  # warm up
        rates, losses = [], []
        for _ in range(rounds):
            model.load_state_dict(state)
            s = time.perf_counter()
            loss, errors = fused.sdlm_pass(model, xs, ys, order, steps)
            rates.append(images / (time.perf_counter() - s))
            losses.append((loss / images, errors / images))
        out["sdlm_pass"] = {"samples_per_s": max(rates), "median_samples_per_s": statistics.median(rates),
                            "mean_loss": losses[-1][0], "training_error": losses[-1][1]}
        loops = {"ref": (reference.LeNet5("classic"), contextlib.nullcontext),
                 "opbyop": (lenet5_fast.LeNet5("classic"), fused.disabled),
                 "fused_op": (lenet5_fast.LeNet5("classic"), contextlib.nullcontext)}
        for name, (m, ctx) in loops.items():
            m.load_state_dict(state)
            st = [by_name[n] for n, p in m.named_parameters() if p.requires_grad]
            try:
                out[name] = {"samples_per_s": per_sample_loop(m, xs, ys, st, loop_images, ctx)}
            except Exception as e:  # noqa: BLE001
                out[name] = {"error": f"{type(e).__name__}: {str(e)[:160]}"}
        ref = out["ref"].get("samples_per_s")
        out["sdlm_pass"]["vs_ref"] = out["sdlm_pass"]["samples_per_s"] / ref if ref else None
        return out
    finally:
        torch.set_num_threads(threads_before)


# ---------------------------------------------------------------------------------------------
# targets

def targets(res: dict) -> list:
    """[(target, variant, measured, met)] from the numbers of this run: issue 21's list (2 threads,
    against the FMA ceiling measured in the same run)."""
    rows = []

    def thr(kind, variant, n, name, key="vs_ref"):
        r = res[kind].get(variant, {}).get(str(n), {}).get(name)
        return None if not r else r.get(key)

    def pct(kind, variant, n):
        got = thr(kind, variant, n, "fused", "fraction_of_fma_ceiling")
        return None if got is None else 100 * got

    for v, n, want in (("classic", 256, 45), ("classic", 32, 25), ("classic", 1024, 50), ("modern", 256, 35)):
        rows.append((f"training b{n}: fused >= {want}% of the FMA ceiling", v, pct("train", v, n), want, "%"))
    rows.append(("training b256: fused >= 8x pure PyTorch eager", "classic", thr("train", "classic", 256, "fused"), 8, "x"))
    for n in SCALING_BATCHES:
        got = (res.get("scaling", {}).get(str(n)) or {}).get("speedup")
        rows.append((f"training b{n}: {res['machine_threads']} threads >= 1.8x 1 thread", "classic", got, 1.8, "x"))
    rows.append(("inference b1024: fused >= 75% of the FMA ceiling", "classic", pct("infer", "classic", 1024), 75, "%"))
    got = res["latency"].get("classic", {}).get("fused", {}).get("us")
    rows.append(("model.predict on one image <= 10 us (wall, through Python)", "classic", got, -10, " us"))
    s = res.get("sdlm") or {}
    got = (s.get("sdlm_pass") or {}).get("samples_per_s")
    rows.append(("batch-1 SDLM pass >= 60,000 samples/s on 1 thread", "classic", got, 60000, " samples/s"))
    jobs = res.get("jobs") or {}
    main_job = jobs.get("main") or {}
    rows.append(("README's main job (20 SDLM passes + evaluation) <= 30 s wall", "classic", main_job.get("wall_s"),
                 -30, " s"))
    for opt in ("sgd", "adam"):
        passes = (jobs.get(opt) or {}).get("pass_train_s") or [None]
        rows.append((f"`lenet5-fast train --optimizer {opt}`: one pass of 60,000 images <= 1.5 s", "classic",
                     passes[0], -1.5, " s"))
    out = []
    for text, v, got, want, unit in rows:
        met = None if got is None else (got <= -want if want < 0 else got >= want)
        out.append({"target": text, "variant": v, "measured": got, "unit": unit.strip(),
                    "met": met})
    return out


# ---------------------------------------------------------------------------------------------
# output

def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}"


def cell(r, key="images_per_s", unit="", scale=1.0):
    if r is None:
        return "n/a"
    if "error" in r:
        return "failed"
    v = r.get(key)
    return fmt(None if v is None else v * scale, unit)


def render(res: dict) -> str:
    m = res["machine"]
    ceil_txt = "; ".join(f"{t} thread(s): {ceiling.describe(c)}" for t, c in res["fma_ceiling"].items())
    la0, la1 = (", ".join(f"{x:.2f}" for x in (la or [])) for la in (m["load_average_start"], m["load_average_end"]))
    L = [
        "# CPU benchmark (bench/cpu.py)",
        "",
        f"- Machine: {m['cpu']} ({m['cpu_simd_flags']}), {m['logical_cpus']} logical CPUs; kernels `{m['kernel_isa']}`; "
        f"torch {m['torch']}; **{m['threads']} threads**; OMP_WAIT_POLICY={m['omp_wait_policy'] or '(unset)'}; "
        f"Python {m['python']}; {m['date']}; "
        f"git {m['git_commit'] or 'n/a'}.",
        f"- Load average (1, 5, 15 min) at the start: {la0}; at the end: {la1}. The machine may be shared: "
        f"every number is the best of {m['rounds']} interleaved runs of ~{m['run_s']:g} s"
        + (" (**--quick**: a smoke run, not for citing)" if m["quick"] else "") + ".",
        f"- FMA ceiling on this {m['cpu']}, measured now by the register-only probe (`_C._fma_probe`, "
        f"bench/ceiling.py: every SIMD level, every chain count that fits its registers, best kept): {ceil_txt}.",
        "- (a) ref = `lenet5_fast.reference.LeNet5`, pure PyTorch eager; (b) ref+compile = "
        f"{m['compile']}; (c) op-by-op = `lenet5_fast.LeNet5` inside `fused.disabled()` (seven native ops, "
        "eager autograd); (d) fused = `lenet5_fast.LeNet5` plain (the fused op `lenet5_fast::lenet5` "
        "through autograd; engine column: which fused engine ran). Same state_dict for all, reset before every run.",
        f"- Training step: `opt.zero_grad(set_to_none=True)`, the loss (classic: MAP; modern: cross entropy; (a)-(c): "
        "`model.loss(model(x), y)`, (d): `model.loss_of(x, y)`, the fused loss op the trainer uses), backward, "
        f"`opt.step()`, `torch.optim.SGD(lr={LR:g}, fused=True)` for every contender. Inference: forward under "
        "`torch.no_grad()`. Inputs: random N(0, 1) images, random labels.",
        f"- % of ceiling: {TRAIN_MFLOP} MFLOP per training image, {FWD_MFLOP} MFLOP per inference image (the classic "
        "network's counts, used for modern too, whose full C3 does more work: its % is an underestimate), "
        f"against the {m['threads']}-thread ceiling.",
        "",
    ]
    chk = res.get("path_checks", {})
    if chk:
        L += ["Path checks (batch 16): " + "; ".join(
            f"{v}: fused planned {c['fused_planned']}, op-by-op unfused {c['opbyop_unplanned']}, max |out - ref| "
            f"op-by-op {c['max_abs_diff_opbyop']:.1e}, fused {c['max_abs_diff_fused']:.1e}" for v, c in chk.items()), ""]
    for kind, title in (("train", "Training (images/s)"), ("infer", "Inference (images/s, no_grad)")):
        L += [f"## {title}", "",
              "| variant | batch | (a) ref | (b) ref+compile | (c) op-by-op | (d) fused | engine | (b)/(a) | (c)/(a) "
              "| (d)/(a) | (d) % of ceiling |",
              "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
        for v in res["variants"]:
            for n in res["batches"]:
                r = res[kind][v][str(n)]
                L.append(f"| {v} | {n} | " + " | ".join(cell(r[c]) for c in CONTENDERS)
                         + f" | {r['fused_engine']} | "
                         + " | ".join(cell(r[c], "vs_ref", "x") for c in ("compile", "opbyop", "fused"))
                         + f" | {cell(r['fused'], 'fraction_of_fma_ceiling', '%', 100)} |")
        L.append("")
    L += ["## Batch-1 latency (us per call, wall time through Python)", "",
          "| variant | (a) ref forward+argmax | (b) ref+compile forward+argmax | (c) op-by-op `predict` "
          "| (d) fused `predict` | (a)/(d) |",
          "|---|---:|---:|---:|---:|---:|"]
    for v in res["variants"]:
        lat = res["latency"][v]
        ra, rd = lat.get("ref", {}).get("us"), lat.get("fused", {}).get("us")
        L.append(f"| {v} | " + " | ".join(cell(lat.get(c), "us") for c in CONTENDERS)
                 + f" | {fmt(ra / rd, 'x') if ra and rd else 'n/a'} |")
    L += ["", "(argmax: argmin of the RBF distances for classic, as `predict` does.)", "",
          "## Op by op (c), batch-1 forward per layer (us, no_grad)", "",
          "| variant | " + " | ".join(LAYER_NAMES) + " | sum | 7 ops chained (`model(x)` in `disabled()`) |",
          "|---|" + "---:|" * (len(LAYER_NAMES) + 2)]
    for v in res["variants"]:
        p = res["per_op"][v]
        L.append(f"| {v} | " + " | ".join(cell(p.get(k), "us") for k in LAYER_NAMES)
                 + f" | {fmt(p['sum_of_layers_us'])} | {cell(p.get('chained'), 'us')} |")
    L.append("")
    s = res.get("sdlm")
    if s:
        one = res["fma_ceiling"]["1"]["gflops"] * 1e9
        sp = s["sdlm_pass"]
        L += ["## Batch-1 SDLM pass, classic, 1 thread (samples/s)", "",
              "| (a) ref per-sample loop | (c) op-by-op loop | (d) fused op loop | `fused.sdlm_pass` | sdlm_pass / (a) "
              "| sdlm_pass % of 1-thread ceiling | s per 60,000 (sdlm_pass) |",
              "|---:|---:|---:|---:|---:|---:|---:|",
              "| " + " | ".join(cell(s.get(k), "samples_per_s") for k in ("ref", "opbyop", "fused_op", "sdlm_pass"))
              + f" | {cell(sp, 'vs_ref', 'x')} | {fmt(100 * sp['samples_per_s'] * TRAIN_MFLOP * 1e6 / one, '%')} "
              f"| {fmt(60000 / sp['samples_per_s'])} |", "",
              f"`fused.sdlm_pass` over {s['images']:,} samples (best of {m['sdlm_rounds']} passes, weights reset before "
              f"each), steps eta/(mu+h) with eta {s['eta']:g}, mu {s['mu']:g}, h = `fused.sdlm_hessian` on "
              f"{s['hessian_images']} images; mean loss {sp['mean_loss']:.3g}, training error {sp['training_error']:.3f} "
              "(random data). The loops (forward, `model.loss`, `torch.autograd.grad`, `p -= step * grad` with "
              f"`torch._foreach_addcmul_`, per sample) are timed once over {s['loop_images']:,} samples; "
              "all on one thread (`torch.set_num_threads(1)`).", ""]
    sc = res.get("scaling") or {}
    if sc:
        t = str(m["threads"])
        L += [f"## Thread scaling: (d) fused training step, classic, 1 vs {t} threads (images/s)", "",
              f"| batch | 1 thread | {t} threads | speedup |", "|---:|---:|---:|---:|"]
        for n, r in sc.items():
            L.append(f"| {n} | {cell(r.get('1'))} | {cell(r.get(t))} | {fmt(r.get('speedup'), 'x')} |")
        L += ["", "The same step as the training table's (d), interleaved run by run between the thread counts "
              "(`torch.set_num_threads`).", ""]
    jobs = res.get("jobs") or {}
    if jobs:
        L += ["## Training jobs through the CLI (MNIST, fresh process each)", "",
              "| command | wall (s) | first pass, training only (s) | final test error (%) |",
              "|---|---:|---:|---:|"]
        for j in jobs.values():
            if "error" in j:
                L.append(f"| `{j['command']}` | failed: {j['error']} | | |")
                continue
            first = (j.get("pass_train_s") or [None])[0]
            L.append(f"| `{j['command']}` | {fmt(j['wall_s'])} | {fmt(first)} | {fmt(j.get('test_error'))} |")
        L += ["", "Wall: the whole command (start-up, data loading, every pass, evaluation, checkpoints). Default "
              "threads (`--threads` not given).", ""]
    L += ["## Targets", "", "| target | variant | measured | |", "|---|---|---:|---|"]
    for t in res["targets"]:
        met = "n/a (not measured)" if t["met"] is None else ("met" if t["met"] else "**missed**")
        L.append(f"| {t['target']} | {t['variant']} | {fmt(t['measured'], ' ' + t['unit'] if t['unit'] not in ('x', '%') else t['unit'])} | {met} |")
    L.append("")
    errs = res.get("errors") or []
    if errs:
        L += ["## Errors", ""] + [f"- {e}" for e in errs] + [""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds of ~0.05 s, SDLM pass over 2,000 samples, loops over 200")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--rounds", type=int, default=None, help="timed runs per measurement (default 5, --quick 2)")
    ap.add_argument("--run-s", type=float, default=None, help="seconds per timed run (default 0.2, --quick 0.05)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--compile-all", action="store_true",
                    help="torch.compile at every batch size (default: 1 and 256 only; each is a fresh compile)")
    ap.add_argument("--sdlm-images", type=int, default=None, help="samples per fused.sdlm_pass (default 20,000)")
    ap.add_argument("--sdlm-loop-images", type=int, default=None,
                    help="samples timed for the per-sample Python loops (default 1,000)")
    ap.add_argument("--no-sdlm", action="store_true", help="skip the SDLM section")
    ap.add_argument("--no-jobs", action="store_true",
                    help="skip the CLI training jobs (README's main job, one sgd and one adam pass; --quick skips them)")
    ap.add_argument("--data", default=None,
                    help="MNIST directory for the CLI jobs (default: the package's, $LENET5_FAST_DATA or "
                         "~/.cache/lenet5_fast/mnist)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu.md"), help="markdown output")
    ap.add_argument("--json", default=None, help="JSON output (default: --out with suffix .json)")
    args = ap.parse_args(argv)

    rounds = args.rounds or (2 if args.quick else 5)
    run_s = args.run_s or (0.05 if args.quick else 0.2)
    sdlm_images = args.sdlm_images or (2000 if args.quick else 20000)
    loop_images = args.sdlm_loop_images or (200 if args.quick else 1000)
    sdlm_rounds = min(rounds, 3)
    torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = load_average()
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", file=sys.stderr, flush=True)

    compile_ok, compile_note = not args.no_compile, "skipped (--no-compile)"
    if compile_ok:
        try:
            # static shapes, one graph per batch size (and grad mode)
            torch._dynamo.config.automatic_dynamic_shapes = False
            for knob in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, knob):
                    setattr(torch._dynamo.config, knob, max(64, getattr(torch._dynamo.config, knob)))
            compile_note = ("`torch.compile(dynamic=False)`, default inductor, "
                            + ("every batch size" if args.compile_all else "batch 1 and 256 only (--compile-all for all)")
                            + "; compile time not counted")
        except Exception as e:  # noqa: BLE001
            compile_ok, compile_note = False, f"unavailable ({type(e).__name__}: {e})"

    probe_repeats = 3 if args.quick else 5
    ceil = {str(t): ceiling.measure(t, probe_repeats, min(run_s, 0.1)) for t in sorted({1, threads})}
    peak = ceil[str(threads)]["gflops"] * 1e9
    log("FMA ceiling " + ", ".join(f"{t} thread(s) {c['gflops']:.1f}" for t, c in ceil.items()) + " GFLOP/s")

    res = {"variants": args.variants, "batches": args.batches, "fma_ceiling": ceil, "train": {}, "infer": {},
           "latency": {}, "per_op": {}, "path_checks": {}, "errors": []}
    for v in args.variants:
        ms = Models(v, compile_ok)
        res["path_checks"][v] = check_paths(ms, make_batch(16)[0])
        res["train"][v], res["infer"][v] = {}, {}
        for n in args.batches:
            compile_here = args.compile_all or n in (1, 256)
            for kind in ("train", "infer"):
                row = throughput(ms, n, kind, compile_here, run_s, rounds, peak)
                res[kind][v][str(n)] = row
                for c in CONTENDERS:
                    if row.get(c) and "error" in row[c]:
                        res["errors"].append(f"{kind} {v} b{n} {LABELS[c]}: {row[c]['error']}")
            log(f"{v} batch {n} done")
        res["latency"][v] = latency(ms, compile_ok, run_s, rounds)
        res["per_op"][v] = per_op_layers(ms, run_s, rounds)
        for sect in ("latency", "per_op"):
            for c, r in res[sect][v].items():
                if isinstance(r, dict) and "error" in r:
                    res["errors"].append(f"{sect} {v} {c}: {r['error']}")
        log(f"{v} latency and per-op done")
        if v == "classic":
            for n in SCALING_BATCHES:
                if n in args.batches:
                    res.setdefault("scaling", {})[str(n)] = scaling(ms, n, threads, run_s, rounds)
            log("thread scaling done")
        if v == "classic" and not args.no_sdlm:
            res["sdlm"] = sdlm(ms.state, sdlm_images, loop_images, sdlm_rounds)
            log("SDLM done")
    from lenet5_fast.data import find_dataset_dir
    data = find_dataset_dir(args.data)
    if not (args.quick or args.no_jobs) and (data / "train-images-idx3-ubyte.gz").exists():
        res["jobs"] = {"main": cli_job([], data, 900),
                       "sgd": cli_job(["--optimizer", "sgd", "--epochs", "1"], data, 300),
                       "adam": cli_job(["--optimizer", "adam", "--epochs", "1"], data, 300)}
        for j in res["jobs"].values():
            if "error" in j:
                res["errors"].append(f"job {j['command']}: {j['error']}")
        log("CLI jobs done")
    res["machine_threads"] = threads
    res["targets"] = targets(res)
    res["machine"] = {
        "cpu": cpu_model(), "cpu_simd_flags": cpu_flags(), "logical_cpus": os.cpu_count(),
        "kernel_isa": _C.simd_isa(), "simd_supported": _C.simd_supported(), "torch": torch.__version__,
        "python": platform.python_version(), "threads": threads, "package": lenet5_fast.__file__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "git_commit": git_commit(),
        "load_average_start": load_start, "load_average_end": load_average(), "quick": args.quick,
        "rounds": rounds, "run_s": run_s, "sdlm_rounds": sdlm_rounds, "compile": compile_note,
        "lr": LR, "optimizer": "torch.optim.SGD", "fwd_mflop": FWD_MFLOP, "train_mflop": TRAIN_MFLOP,
        "fused_sample_max_batch": fused.SAMPLE_MAX_BATCH, "wall_s": time.perf_counter() - t0,
    }
    md = render(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    jpath = Path(args.json) if args.json else out.with_suffix(".json")
    jpath.parent.mkdir(parents=True, exist_ok=True)
    jpath.write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(md)
    log(f"wrote {out} and {jpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
