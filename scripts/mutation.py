"""Mutation testing of the package's Python core with mutmut 3 (issue 24 item 8).

Each module gets its own staging directory (``--stage``, default /tmp/lenet5-mutation/<module>):
a copy of ``python/lenet5_fast`` (with the built ``_C``) as ``src/lenet5_fast`` and of
``tests/``, and a ``setup.cfg`` that tells mutmut to mutate that one module and to run only the
module's own fast test files (``SELECTION``). mutmut runs the selection once to see which tests
reach which function, then runs each mutant against only those tests. ``FUNCTIONS`` narrows
train.py to its loss and SDLM parts. ``--sample N`` draws N of a module's mutants (seeded) when
running all of them would take too long; the summary says how many there were.

    nice -n 19 /work/venvs/defaults/bin/python scripts/mutation.py --module codes --module model
    nice -n 19 /work/venvs/defaults/bin/python scripts/mutation.py --module train --sample 150

mutmut itself must be installed in the Python that runs this (``pip install mutmut==3.8.1``:
not a dependency of the package), with torch and pytest beside it. It needs the native module
built (``scripts/dev_build.sh``). Results: ``mutmut results`` in the staging directory, and one
JSON line per module on stdout (and ``--json FILE``): counts per status and the survivors'
names; ``mutmut show NAME`` there prints a mutant's diff.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the package to mutate, with its built _C (default: the source tree after scripts/dev_build.sh)
PACKAGE = Path(os.environ.get("LENET5_MUTATION_PACKAGE", REPO / "python" / "lenet5_fast"))

# The fast tests that target each module (seconds each on the 2-core development machine, not
# the whole suite): mutmut runs, per mutant, the ones of these that reach the mutated function.
SELECTION = {
    "codes": ["tests/test_codes.py", "tests/test_model.py"],
    "model": ["tests/test_model.py", "tests/test_codes.py", "tests/test_fused_loss.py", "tests/test_mutants.py"],
    "layers": ["tests/test_layers.py", "tests/test_model.py", "tests/test_mutants.py"],
    "optim": ["tests/test_optim.py", "tests/test_sdlm_settings.py", "tests/test_mutants.py"],
    "train": ["tests/test_train.py", "tests/test_sdlm_settings.py", "tests/test_optim.py", "tests/test_mutants.py"],
}
PYTEST_ARGS = ["-p", "no:cacheprovider", "-x", "-q", "-k", "not compile"]
# train.py: only its loss and SDLM parts (mutmut's names: module.x_function or module.xǁClassǁmethod).
FUNCTIONS = {
    "train": ["make_optimizer", "_eta", "_per_sample_sdlm", "run_pass", "_minibatch_pass", "evaluate",
              "pass_inputs"],
}


def stage(module: str, root: Path) -> Path:
    d = root / module
    if d.exists():
        shutil.rmtree(d)
    (d / "src").mkdir(parents=True)
    shutil.copytree(PACKAGE, d / "src" / "lenet5_fast",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if not list((d / "src" / "lenet5_fast").glob("_C*.so")):
        raise SystemExit("python/lenet5_fast has no built _C: run scripts/dev_build.sh first")
    shutil.copytree(REPO / "tests", d / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    sel = "\n    ".join(SELECTION[module])
    (d / "setup.cfg").write_text(
        "[mutmut]\n"
        "source_paths=src/lenet5_fast\n"
        f"only_mutate=src/lenet5_fast/{module}.py\n"
        f"pytest_add_cli_args_test_selection=\n    {sel}\n"
        # torch.compile(fullgraph=True) fails on mutmut's trampolines even unmutated: those tests
        # are left out
        "pytest_add_cli_args=\n" + "".join(f"    {a}\n" for a in PYTEST_ARGS) +
        # torch is not fork-safe once its thread pools run: fork the workers from a clean server
        "process_isolation=forkserver\n"
        "use_git_change_detection=false\n"
        "track_dependencies=false\n"
    )
    return d


def _env(d: Path) -> dict:
    return dict(os.environ, LENET5_TEST_MNIST=str(REPO.parent / "shared" / "data" / "mnist"),
                OMP_NUM_THREADS="1", PYTHONPATH=str(d / "mutants" / "src"))


def mutmut(d: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    # PYTHONPATH (_env): child processes of tests import the mutants too
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=d, env=_env(d), check=check,
                          capture_output=True, text=True)


def mutant_names(d: Path, module: str) -> list:
    """Every mutant mutmut generated for the module (from its .meta file)."""
    meta = d / "mutants" / "src" / "lenet5_fast" / f"{module}.py.meta"
    return sorted(json.loads(meta.read_text())["exit_code_by_key"])


def function_of(name: str) -> str:
    """The function or method a mutant changes: lenet5_fast.train.x__eta__mutmut_3 -> _eta,
    lenet5_fast.train.xǁ_Runǁpass_inputs__mutmut_1 -> pass_inputs."""
    base = name.split("__mutmut_")[0].rsplit(".", 1)[-1]
    return base.rsplit("ǁ", 1)[-1] if base.startswith("xǁ") else base[2:]


def generate(d: Path) -> None:
    """mutmut's mutant generation alone (its run's first step), so the names can be sampled."""
    code = ("import mutmut.__main__ as m, os; from pathlib import Path; os.makedirs('mutants', exist_ok=True); "
            "m.set_mutant_under_test('mutant_generation'); m.copy_src_dir(); m.copy_also_copy_files(); "
            "m.setup_source_paths(); m.store_lines_covered_by_tests(); m.create_mutants(1)")
    subprocess.run([sys.executable, "-c", code], cwd=d, check=True, capture_output=True, text=True)


def verify(d: Path, module: str, names, timeout: float) -> dict:
    """Runs each mutant (mutmut's trampolines pick it from MUTANT_UNDER_TEST) against the module's
    whole SELECTION with today's tests/ (copied in first): killed when a test fails or errors."""
    shutil.rmtree(d / "mutants" / "tests")
    shutil.copytree(REPO / "tests", d / "mutants" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    out = {}
    for n in names:
        try:
            # the tests written from mutation testing first: with -x a killed mutant stops there
            tests = sorted(SELECTION[module], key=lambda t: t not in ("tests/test_mutants.py", "tests/test_codes.py"))
            r = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=d / "mutants",
                               env=dict(_env(d), MUTANT_UNDER_TEST=n), capture_output=True, text=True,
                               timeout=timeout)
            out[n] = "survived" if r.returncode == 0 else "no tests" if r.returncode == 5 else "killed"
        except subprocess.TimeoutExpired:
            out[n] = "timeout"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--module", action="append", choices=sorted(SELECTION), required=True)
    ap.add_argument("--stage", type=Path, default=Path("/tmp/lenet5-mutation"))
    ap.add_argument("--sample", type=int, default=None, help="run N mutants drawn at random (seed 0) per module")
    ap.add_argument("--verify", action="store_true", help="keep the staging directory of an earlier run and "
                    "run its surviving mutants again against today's tests (the module's whole selection)")
    ap.add_argument("--timeout", type=float, default=600, help="--verify: seconds per mutant")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    for module in a.module:
        d = a.stage / module
        if a.verify:
            before = json.loads((d / "result.json").read_text())
            res = verify(d, module, before["survived"], a.timeout)
            rec = dict(module=module, verified=len(res), after={k: sum(v == k for v in res.values())
                                                                  for k in set(res.values())},
                       survived=sorted(n for n, v in res.items() if v != "killed"), selection=SELECTION[module])
            print(json.dumps(rec, ensure_ascii=False), flush=True)
            if a.json:
                with open(a.json, "a") as f:
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            continue
        d = stage(module, a.stage)
        generate(d)
        names = mutant_names(d, module)
        if module in FUNCTIONS:
            names = [n for n in names if function_of(n) in FUNCTIONS[module]]
        total = len(names)
        if a.sample is not None and a.sample < len(names):
            names = sorted(random.Random(0).sample(names, a.sample))
        r = mutmut(d, "run", "--max-children", str(a.max_children), *names, check=False)
        (d / "run.log").write_text(r.stdout + r.stderr)
        meta = json.loads((d / "mutants" / "src" / "lenet5_fast" / f"{module}.py.meta").read_text())
        codes = {n: meta["exit_code_by_key"].get(n) for n in names}
        # mutmut's exit codes: 1 killed (a test failed), 0 survived, 33 no test reached it,
        # 34 skipped, 36 / -24 / 24 timeout, 37 caught by type check, None not run
        status = {0: "survived", 1: "killed", 33: "no tests", 36: "timeout", -24: "timeout", 24: "timeout",
                  -11: "segfault", 3: "killed"}
        counts = {}
        for n, c in codes.items():
            counts[status.get(c, f"exit {c}")] = counts.get(status.get(c, f"exit {c}"), 0) + 1
        killed = sum(v for k, v in counts.items() if k in ("killed", "timeout", "segfault"))
        rec = dict(module=module, mutants=total, run=len(names), counts=counts,
                   kill_rate=round(100.0 * killed / max(1, len(names)), 1),
                   survived=sorted(n for n, c in codes.items() if c in (0, 33, None)),
                   selection=SELECTION[module], functions=FUNCTIONS.get(module))
        (d / "result.json").write_text(json.dumps(rec, ensure_ascii=False))
        print(json.dumps(rec, ensure_ascii=False), flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
