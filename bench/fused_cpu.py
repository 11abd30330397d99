"""Timing of the fused CPU paths (lenet5_fast.fused; the per-image engine, csrc/engine/fused_sample.cpp):
batch-1 latency, inference images/s at batch 1/64/1024, the autograd entry points
(lenet5_sample_forward_save / lenet5_sample_backward) at batch 1/4/16, and seconds per
60,000-sample pass of per-sample SDLM.

    PYTHONPATH=python python bench/fused_cpu.py [--threads N] [--pass-samples 10000] [--repeats 7]

Every number is the min and the median over repeats. Wall-clock time is what a user sees;
on a shared machine it includes time the process was not running, so single-threaded runs
also report thread CPU time (time.thread_time), which excludes it. Fractions of the FMA
ceiling use 0.67 MFLOP per forward image and 1.73 MFLOP per training step (forward, backward,
update) against --peak GFLOP/s (default 460: 2 cores x 2 AVX-512 FMA units x 16 lanes x 2 flop
x 3.6 GHz; a machine with AVX2 only, or one 512-bit FMA unit per core, has half that or less).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lenet5_fast import LeNet5, _C, fused

FORWARD_MFLOP = 0.67
TRAIN_MFLOP = 1.73
SIMD_NAMES = {0: "portable", 1: "AVX2+FMA", 2: "AVX-512F"}


def _stats(samples):
    return min(samples), statistics.median(samples)


def _time(fn, repeats, inner, clock):
    out = []
    for _ in range(repeats):
        t0 = clock()
        for _ in range(inner):
            fn()
        out.append((clock() - t0) / inner)
    return _stats(out)


def _data(n, mnist):
    if mnist:
        from lenet5_fast.data import load_tensors

        try:
            x, y = load_tensors(mnist, "train", limit=n)
            if x.shape[0] == n:
                return x, y, "MNIST train"
        except Exception as e:  # noqa: BLE001 - fall back to synthetic data
            print(f"(MNIST not loaded: {e}; using synthetic digits)")
    g = torch.Generator().manual_seed(0)
    x = torch.full((n, 1, 32, 32), -0.1)
    x[:, :, 6:26, 8:24] += (torch.rand(n, 1, 20, 16, generator=g) > 0.6).float() * 1.275
    return x, torch.randint(0, 10, (n,), generator=g), "synthetic"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for batched inference")
    ap.add_argument("--pass-samples", type=int, default=10000, help="samples in the timed SDLM pass (scaled to 60,000)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peak", type=float, default=460.0, help="FMA ceiling of the machine in GFLOP/s")
    ap.add_argument("--mnist", default=os.environ.get("LENET5_MNIST", "/work/shared/data/mnist"))
    ap.add_argument("--simd-level", type=int, default=-1, help="force a lower SIMD level (0 portable, 1 AVX2)")
    args = ap.parse_args(argv)

    _C.set_simd_level(args.simd_level)
    torch.manual_seed(0)
    model = LeNet5()
    x_all, y_all, source = _data(max(1024, args.pass_samples), args.mnist)
    cores = os.cpu_count()
    print(f"lenet5_fast fused CPU benchmark: SIMD {SIMD_NAMES[_C.simd_level()]}, {cores} CPUs, "
          f"torch threads {torch.get_num_threads()}, data {source}, load average "
          f"{os.getloadavg()[0]:.1f}")

    # --- batch-1 latency: native call alone, and through fused.forward (validation, allocation)
    x1 = x_all[:1].contiguous()
    out1 = torch.empty(1, 10)
    net = fused._net(model, "bench").args
    native = lambda: _C.lenet5_forward(*net, x1.data_ptr(), out1.data_ptr(), 1, 1)  # noqa: E731
    python = lambda: fused.forward(model, x1)  # noqa: E731
    for fn in (native, python):
        fn()
    n_inner = 2000
    w_native = _time(native, args.repeats, n_inner, time.perf_counter)
    c_native = _time(native, args.repeats, n_inner, time.thread_time)
    w_python = _time(python, args.repeats, n_inner, time.perf_counter)
    print("\nbatch-1 latency (us, min / median)")
    print(f"  native call          wall {w_native[0]*1e6:7.2f} / {w_native[1]*1e6:7.2f}   "
          f"thread CPU {c_native[0]*1e6:7.2f} / {c_native[1]*1e6:7.2f}")
    print(f"  fused.forward()      wall {w_python[0]*1e6:7.2f} / {w_python[1]*1e6:7.2f}")

    # --- throughput
    print(f"\ninference throughput (images/s, min-time / median-time), % of {args.peak:.0f} GFLOP/s")
    for batch, threads in ((1, 1), (64, 1), (64, args.threads), (1024, 1), (1024, args.threads)):
        if threads != 1 and threads == 1:
            continue
        xb = x_all[:batch].contiguous()
        ob = torch.empty(batch, 10)
        fn = lambda: _C.lenet5_forward(*net, xb.data_ptr(), ob.data_ptr(), batch, threads)  # noqa: E731
        fn()
        inner = max(1, 4096 // batch)
        best, med = _time(fn, args.repeats, inner, time.perf_counter)
        ips = batch / best
        line = (f"  batch {batch:5d}  threads {threads}: {ips:10,.0f} / {batch / med:10,.0f}   "
                f"{100 * ips * FORWARD_MFLOP * 1e6 / (args.peak * 1e9):5.1f}%")
        if threads == 1:
            cbest, _ = _time(fn, args.repeats, inner, time.thread_time)
            line += f"   (thread CPU time: {batch / cbest:10,.0f} images/s)"
        print(line)

    # --- autograd entry points of the per-image engine (lenet5_sample_forward_save / _backward)
    print("\nautograd entry points, 1 thread (us per image, thread CPU, min / median)")
    grads = [torch.zeros_like(p) for p in model.parameters() if p.requires_grad]
    gptr = [g.data_ptr() for g in grads]
    for batch in (1, 4, 16):
        xb = x_all[:batch].contiguous()
        ob = torch.empty(batch, 10)
        saved = torch.empty(batch, _C.lenet5_sample_saved_floats())
        gout = torch.randn(batch, 10)
        fwd = lambda: _C.lenet5_sample_forward_save(*net, xb.data_ptr(), ob.data_ptr(), saved.data_ptr(), batch, 1)  # noqa: E731
        bwd = lambda: _C.lenet5_sample_backward(*net, saved.data_ptr(), gout.data_ptr(), batch, gptr, 1)  # noqa: E731
        fwd(), bwd()
        inner = max(1, 2000 // batch)
        f = _time(fwd, args.repeats, inner, time.thread_time)
        b = _time(bwd, args.repeats, inner, time.thread_time)
        print(f"  batch {batch:3d}: forward_save {f[0] / batch * 1e6:6.2f} / {f[1] / batch * 1e6:6.2f}   "
              f"backward {b[0] / batch * 1e6:6.2f} / {b[1] / batch * 1e6:6.2f}")

    # --- SDLM pass
    n = args.pass_samples
    x, y = x_all[:n].contiguous(), y_all[:n].contiguous()
    h = fused.sdlm_hessian(model, x[:500], y[:500])
    steps = [2e-5 / (0.02 + t) for t in h]
    start = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    order = torch.randperm(n)
    walls, cpus = [], []
    for _ in range(max(1, min(args.repeats, 3))):
        with torch.no_grad():
            for p, s in zip((p for p in model.parameters() if p.requires_grad), start):
                p.copy_(s)
        t0, c0 = time.perf_counter(), time.thread_time()
        loss, errors = fused.sdlm_pass(model, x, y, order, steps)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.thread_time() - c0)
    (wb, wm), (cb, cm) = _stats(walls), _stats(cpus)
    scale = 60000 / n
    print(f"\nSDLM pass, batch 1, {n} samples timed, scaled to 60,000 (s, min / median)")
    print(f"  wall        {wb * scale:6.2f} / {wm * scale:6.2f}   ({wb / n * 1e6:.1f} us/sample, "
          f"{100 * TRAIN_MFLOP * 1e6 * n / wb / (args.peak * 1e9):.1f}% of {args.peak:.0f} GFLOP/s)")
    print(f"  thread CPU  {cb * scale:6.2f} / {cm * scale:6.2f}   ({cb / n * 1e6:.1f} us/sample)")
    print(f"  last pass: mean loss {loss / n:.3f}, training errors {errors} ({100 * errors / n:.1f}%)")

    t0 = time.perf_counter()
    fused.sdlm_hessian(model, x[:500], y[:500])
    print(f"\nGauss-Newton diagonal over 500 samples, {torch.get_num_threads()} threads: "
          f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    _C.set_simd_level(-1)


if __name__ == "__main__":
    main()
