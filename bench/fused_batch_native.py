"""Timing of the batched engine with images in the SIMD lanes (csrc/engine/fused_batch.cpp), called
through _C: forward + backward (all parameter gradients) at batch 256 on 1 and 2 threads, and
forward only at batch 1024, against the per-image engine's autograd entry points
(lenet5_sample_forward_save / lenet5_sample_backward, classic only) and the pure-PyTorch eager
reference (lenet5_fast.reference.LeNet5, forward + autograd backward) in the same run; plus the
FMA ceiling (bench/ceiling.py), measured here, for the fraction of the machine's FMA ceiling.

    PYTHONPATH=python python bench/fused_batch_native.py [--repeats 5] [--variant classic|modern|both]

Every number is images/s, the best of --repeats (median in brackets). Fractions of the ceiling
use 1.73 MFLOP per training image (forward + backward) and 0.67 MFLOP per forward image.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from lenet5_fast import LeNet5, _C, reference

import ceiling  # bench/ceiling.py (the script's directory is on sys.path)

FORWARD_MFLOP = 0.67
TRAIN_MFLOP = 1.73


def _aligned(n):
    buf = torch.empty(n + 16)
    off = (-buf.data_ptr() // 4) % 16
    return buf[off:off + n]


def _rate(fn, images, repeats, min_time=0.3):
    fn()  # warm-up (thread pool, scratch)
    inner, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        t = time.perf_counter() - t0
        if t >= min_time:
            break
        inner *= 2
    rates = [images * inner / t]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        rates.append(images * inner / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def _fma_peak(threads):
    """FLOP/s of the FMA ceiling on `threads` threads (bench/ceiling.py: best level and chain count)."""
    return ceiling.measure(threads, rounds=3)["gflops"] * 1e9


def _model(variant, seed=0):
    torch.manual_seed(seed)
    m = LeNet5(variant)
    with torch.no_grad():
        for name, p in m.named_parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape) * (0.2 if "bias" in name or "coef" in name else 1.5 / fan_in ** 0.5))
    return m


def _args(m):
    params = [p.data_ptr() for p in m.parameters() if p.requires_grad]
    if m.variant == "classic":
        return (0, 1, 10, params, m.output.weight.data_ptr(), m.c3.table_offsets.data_ptr(),
                m.c3.table_inputs.data_ptr())
    return (1, 1, m.num_classes, params, 0, 0, 0)


def batch_engine(m, n, threads, backward=True):
    a = _args(m)
    x = torch.rand(n, 1, 32, 32)
    out = torch.empty(n, a[2])
    saved = _aligned(_C.lenet5_batch_saved_floats(*a[:3], n)) if backward else None
    grads = [torch.empty_like(p) for p in m.parameters() if p.requires_grad]
    gp = [g.data_ptr() for g in grads]
    g = torch.randn(n, a[2])

    def step():
        _C.lenet5_batch_forward(*a, x.data_ptr(), out.data_ptr(), saved.data_ptr() if backward else 0, n, threads)
        if backward:
            _C.lenet5_batch_backward(*a, x.data_ptr(), saved.data_ptr(), g.data_ptr(), n, gp, 0, threads)
    step.keep = (x, out, saved, grads, g)  # the addresses above stay valid while step lives
    return step


def sample_engine(m, n, threads):
    net = _args(m)
    x = torch.rand(n, 1, 32, 32)
    out = torch.empty(n, 10)
    saved = _aligned(n * _C.lenet5_sample_saved_floats())
    grads = [torch.zeros_like(p) for p in m.parameters() if p.requires_grad]
    gp = [g.data_ptr() for g in grads]
    g = torch.randn(n, 10)

    def step():
        _C.lenet5_sample_forward_save(*net, x.data_ptr(), out.data_ptr(), saved.data_ptr(), n, threads)
        _C.lenet5_sample_backward(*net, saved.data_ptr(), g.data_ptr(), n, gp, threads)
    step.keep = (x, out, saved, grads, g)
    return step


def torch_eager(m, n, threads):
    r = reference.LeNet5(m.variant)
    r.load_state_dict(m.state_dict())
    x = torch.rand(n, 1, 32, 32)
    g = torch.randn(n, 10)

    def step():
        torch.set_num_threads(threads)
        r.zero_grad(set_to_none=True)
        (r(x) * g).sum().backward()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variant", default="both", choices=["classic", "modern", "both"])
    ap.add_argument("--train-batch", type=int, default=256)
    ap.add_argument("--infer-batch", type=int, default=1024)
    a = ap.parse_args()
    la = os.getloadavg()
    print(f"SIMD: {_C.simd_isa()}; cores {os.cpu_count()}; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    peaks = {t: _fma_peak(t) for t in (1, 2)}
    for t, p in peaks.items():
        print(f"FMA probe, {t} thread(s): {p / 1e9:.1f} GFLOP/s")
    variants = ["classic", "modern"] if a.variant == "both" else [a.variant]
    fmt = lambda r: f"{r[0]:9.0f} img/s (median {r[1]:.0f})"
    for v in variants:
        m = _model(v)
        print(f"\n== {v} ==")
        for t in (1, 2):
            r = _rate(batch_engine(m, a.train_batch, t), a.train_batch, a.repeats)
            pct = 100 * r[0] * TRAIN_MFLOP * 1e6 / peaks[t]
            print(f"train fwd+bwd N={a.train_batch} {t}T  fused_batch   {fmt(r)}  {pct:5.1f}% of FMA ceiling")
            if v == "classic":
                rs = _rate(sample_engine(m, a.train_batch, t), a.train_batch, a.repeats)
                print(f"train fwd+bwd N={a.train_batch} {t}T  fused_sample  {fmt(rs)}  (batch engine {r[0] / rs[0]:.2f}x)")
            re = _rate(torch_eager(m, a.train_batch, t), a.train_batch, max(2, a.repeats // 2))
            print(f"train fwd+bwd N={a.train_batch} {t}T  torch eager   {fmt(re)}  (batch engine {r[0] / re[0]:.2f}x)")
        for t in (1, 2):
            r = _rate(batch_engine(m, a.infer_batch, t, backward=False), a.infer_batch, a.repeats)
            pct = 100 * r[0] * FORWARD_MFLOP * 1e6 / peaks[t]
            print(f"forward N={a.infer_batch} {t}T        fused_batch   {fmt(r)}  {pct:5.1f}% of FMA ceiling")
    torch.set_num_threads(os.cpu_count() or 1)


if __name__ == "__main__":
    main()
