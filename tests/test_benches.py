"""The benchmark scripts import the installed package, as users run them after `pip install .`:
no sys.path edits (which would pick up the source tree, where there is no compiled _C), and no
import of a lenet5_fast module that does not exist (a guarded import of a missing module makes
a benchmark silently drop a contender)."""
import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import lenet5_fast

BENCH = Path(__file__).resolve().parents[1] / "bench"
# bench/cpu.py is being reworked on the fused-engine branch (it still edits sys.path there).
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "cpu.py")


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
