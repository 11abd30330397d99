"""The benchmark scripts import the installed package, as users run them after `pip install .`:
no sys.path edits (which would pick up the source tree, where there is no compiled _C), and no
import of a lenet5_fast module that does not exist (a guarded import of a missing module makes
a benchmark silently drop a contender)."""
import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lenet5_fast
from package_env import package_env

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def _imports(tree):
    """(module, name) for every lenet5_fast import, guarded or not."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lenet5_fast":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lenet5_fast":
                    yield alias.name, None


def _exists(module: str, name) -> bool:
    if importlib.util.find_spec(module) is None:
        return False
    if name is None:
        return True
    return hasattr(importlib.import_module(module), name) or importlib.util.find_spec(f"{module}.{name}") is not None


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_bench_imports_the_installed_package(script):
    tree = ast.parse(script.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) \
                and node.value.id == "sys":
            pytest.fail(f"{script.name} touches sys.path (line {node.lineno})")
    for module, name in _imports(tree):
        assert _exists(module, name), f"{script.name} imports {module}{'.' + name if name else ''}, which does not exist"
    assert lenet5_fast.__file__  # the package the scripts would import


def test_cpu_bench_smoke(tmp_path):
    """bench/cpu.py end to end in its smoke mode (tiny budget, no torch.compile), in a fresh
    process as a user runs it: every section is measured, every contender runs (no errors), the
    markdown and JSON are written where asked."""
    out, js = tmp_path / "cpu.md", tmp_path / "cpu.json"
    cmd = [sys.executable, str(BENCH / "cpu.py"), "--quick", "--no-compile", "--batches", "1", "16",
           "--rounds", "1", "--run-s", "0.005", "--sdlm-images", "300", "--sdlm-loop-images", "20",
           "--threads", "2", "--out", str(out), "--json", str(js)]
    # the package this test imported (installed, or on PYTHONPATH), nothing from the source tree
    env = package_env()
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md, res = out.read_text(), json.loads(js.read_text())
    for title in ("## Training", "## Inference", "## Batch-1 latency", "## Op by op", "## Batch-1 SDLM pass",
                  "## Targets"):
        assert title in md, title
    assert "## Errors" not in md and not res["errors"], res["errors"]
    for kind in ("train", "infer"):
        for variant in ("classic", "modern"):
            for n in ("1", "16"):
                row = res[kind][variant][n]
                for c in ("ref", "opbyop", "fused"):
                    assert row[c]["images_per_s"] > 0 and row[c]["vs_ref"] > 0, (kind, variant, n, c)
                assert row["compile"] is None
    for variant in ("classic", "modern"):
        assert res["path_checks"][variant]["fused_planned"] and res["path_checks"][variant]["opbyop_unplanned"]
        assert res["latency"][variant]["fused"]["us"] > 0 and res["per_op"][variant]["chained"]["us"] > 0
    assert res["sdlm"]["sdlm_pass"]["samples_per_s"] > 0 and res["sdlm"]["ref"]["samples_per_s"] > 0
    assert res["fma_ceiling"]["2"]["gflops"] > 0 or res["machine"]["simd_supported"] == 0
    assert {t["met"] for t in res["targets"]} <= {True, False, None}


def test_cpu_policy_summary_takes_each_contenders_better_run(tmp_path):
    import json
    import subprocess
    import sys

    def run(policy, ref, fused):
        r = {"machine": {"omp_wait_policy": policy}, "fma_ceiling": {"2": {"gflops": 100.0}},
             "train": {"classic": {"256": {"ref": {"images_per_s": ref}, "fused": {"images_per_s": fused}}}},
             "infer": {}}
        p = tmp_path / f"{policy}.json"
        p.write_text(json.dumps(r))
        return str(p)

    a, b = run("PASSIVE", 1000.0, 9000.0), run("ACTIVE", 3000.0, 6000.0)
    out = tmp_path / "best.md"
    subprocess.run([sys.executable, str(BENCH / "cpu_policy_summary.py"), a, b, "--out", str(out)], check=True,
                   capture_output=True, timeout=60)
    text = out.read_text()
    # the reference's better run is ACTIVE's, ours PASSIVE's: 9000 / 3000 = 3x, 9000 * 1.73 MFLOP / 100 GFLOP/s
    assert "| classic | 256 | 3,000 (ACTIVE) | n/a | 9,000 (PASSIVE) | n/a | 3.00x | 15.6% |" in text, text
