"""The machine's FMA ceiling, measured: the register-only FMA probe (``_C._fma_probe``) at every
SIMD level the CPU supports, each with every chain count that fits the level's registers.

A level's figure is its best chain count's; the ceiling is the best level's. Saturating the FMA
units takes latency x ports independent chains (Zen 3: 4 x 2 = 8; Intel with two 512-bit
ports: 4 x 2 = 8), so the figure grows with the count until then and stays flat after: the
table of counts shows where it stopped growing ("saturated at"), which is the check that the
probe is not what limits the figure. Runs are interleaved (every level and count once per
round) and the best of the rounds is kept.

    PYTHONPATH=python python bench/ceiling.py [--threads 1 2] [--rounds 5]

bench/cpu.py and bench/fused_batch_native.py import :func:`measure`.
"""
from __future__ import annotations

import argparse
import sys
import time

from lenet5_fast import _C

LEVEL_NAMES = {0: "portable", 1: "avx2", 2: "avx512"}


def _gflops(iters: int, threads: int, chains: int) -> float:
    s = time.perf_counter()
    flops = _C._fma_probe(iters, threads, chains)
    return flops / (time.perf_counter() - s) / 1e9


def measure(threads: int, rounds: int = 5, run_s: float = 0.1) -> dict:
    """The probe on `threads` threads at every supported SIMD level and chain count:
    ``{"gflops": ceiling, "level": name, "per_level": {level: best GFLOP/s}, "per_count":
    {level: {chains: GFLOP/s}}, "saturated_at": {level: chains}}`` (levels as strings "1", "2";
    the portable level has no probe and is left out)."""
    levels = list(range(1, _C.simd_supported() + 1))
    plan = {}  # (level, chains) -> iterations per run
    try:
        for lvl in levels:
            _C.set_simd_level(lvl)
            n = 1 << 12
            while True:  # calibrate the default count to ~run_s, then scale to the others
                s = time.perf_counter()
                _C._fma_probe(n, threads, 0)
                if time.perf_counter() - s >= run_s or n >= 1 << 34:
                    break
                n *= 2
            per_iter = _C._fma_probe(1, 1, 0)  # FLOPs of one round of the default probe
            for c in _C._fma_probe_counts():
                plan[lvl, c] = max(1, int(n * per_iter / _C._fma_probe(1, 1, c)))
        best = {k: 0.0 for k in plan}
        for _ in range(rounds):
            for (lvl, c), iters in plan.items():
                _C.set_simd_level(lvl)
                best[lvl, c] = max(best[lvl, c], _gflops(iters, threads, c))
    finally:
        _C.set_simd_level(-1)
    per_count = {str(l): {str(c): g for (l2, c), g in best.items() if l2 == l} for l in levels}
    per_level = {l: max(v.values()) for l, v in per_count.items()}
    saturated = {l: int(next(c for c, g in v.items() if g >= 0.97 * per_level[l])) for l, v in per_count.items()}
    top = max(per_level, key=per_level.get) if per_level else None
    return {"gflops": per_level[top] if top else 0.0, "level": LEVEL_NAMES[int(top)] if top else "portable",
            "per_level": per_level, "per_count": per_count, "saturated_at": saturated}


def describe(c: dict) -> str:
    """One line: each level's best with the count it saturated at, and the ceiling."""
    parts = [f"{LEVEL_NAMES[int(l)]} {g:.1f} (flat from {c['saturated_at'][l]} chains)"
             for l, g in c["per_level"].items()]
    return ", ".join(parts) + f" -> **{c['gflops']:.1f} GFLOP/s** ({c['level']})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--run-s", type=float, default=0.1)
    args = ap.parse_args(argv)
    for t in args.threads:
        c = measure(t, args.rounds, args.run_s)
        print(f"{t} thread(s): {describe(c)}")
        for l, v in c["per_count"].items():
            print(f"  {LEVEL_NAMES[int(l)]:>7}: " + "  ".join(f"{k:>2} chains {g:6.1f}" for k, g in v.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
