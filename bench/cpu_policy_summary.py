"""Each contender of bench/cpu.py under the OpenMP wait policy that suits it, from two runs.

torch's own ops (the pure-PyTorch reference) and, when torch's OpenMP runtime is in the
process, our engines' thread tasks too (csrc/support/parallel.cpp) run on OpenMP, whose wait
policy (OMP_WAIT_POLICY, read when the runtime starts) suits contenders differently. One process
has one policy, so bench/cpu.py runs twice on the same machine, minutes apart, and this script
takes each contender's better images/s of the two
and the ratios of those:

    python bench/cpu.py                                                  # the default policy
    OMP_WAIT_POLICY=PASSIVE python bench/cpu.py --out bench/results/cpu-omp-passive.md
    python bench/cpu_policy_summary.py bench/results/cpu.json bench/results/cpu-omp-passive.json \\
        --out bench/results/cpu-best-policy.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FLOP = {"train": 1.73e6, "infer": 0.67e6}  # per image, as bench/cpu.py counts
CONTENDERS = (("ref", "(a) ref"), ("opbyop", "(c) op-by-op"), ("fused", "(d) fused"))


def best(runs, mode, variant, batch, name):
    """(images/s, policy) of the better run, or (None, '')."""
    got = []
    for policy, run in runs:
        r = ((run.get(mode) or {}).get(variant) or {}).get(batch) or {}
        r = r.get(name) or {}
        if "images_per_s" in r:
            got.append((r["images_per_s"], policy))
    return max(got) if got else (None, "")


def summary(paths) -> str:
    runs = []
    for p in paths:
        run = json.loads(Path(p).read_text())
        runs.append(((run.get("machine") or {}).get("omp_wait_policy") or Path(p).stem, run))
    ceiling = min(run["fma_ceiling"]["2"]["gflops"] for _, run in runs) * 1e9 if all(
        "2" in run["fma_ceiling"] for _, run in runs) else None
    lines = ["# CPU benchmark: each contender under its better OpenMP policy", "",
             "From " + ", ".join(f"`{p}` ({policy})" for p, (policy, _) in zip(paths, runs)) +
             ": each contender's best images/s over the runs (policy in brackets), ratios of those. "
             "% of ceiling: against the lower of the runs' 2-thread FMA probes"
             + (f" ({ceiling / 1e9:.1f} GFLOP/s)" if ceiling else "") + ". Written by `bench/cpu_policy_summary.py`.",
             ""]
    for mode, title in (("train", "Training"), ("infer", "Inference")):
        lines += [f"## {title} (images/s)", "",
                  "| variant | batch | " + " | ".join(c for _, c in CONTENDERS) + " | (c)/(a) | (d)/(a) | (d) % of ceiling |",
                  "|---|---:|" + "---:|" * (len(CONTENDERS) + 3)]
        variants = runs[0][1].get(mode) or {}
        for variant, batches in variants.items():
            for batch in batches:
                vals = {n: best(runs, mode, variant, batch, n) for n, _ in CONTENDERS}
                ref = vals["ref"][0]
                cells = [f"{v:,.0f} ({p})" if v else "n/a" for v, p in (vals[n] for n, _ in CONTENDERS)]
                ratio = lambda n: f"{vals[n][0] / ref:.2f}x" if vals[n][0] and ref else "n/a"  # noqa: E731
                pct = f"{100 * vals['fused'][0] * FLOP[mode] / ceiling:.1f}%" if vals["fused"][0] and ceiling else "n/a"
                lines.append(f"| {variant} | {batch} | " + " | ".join(cells) + f" | {ratio('opbyop')} | "
                             f"{ratio('fused')} | {pct} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="bench/cpu.py JSON files of the same machine")
    ap.add_argument("--out", default=None, help="write the markdown here too")
    args = ap.parse_args(argv)
    text = summary(args.runs)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
