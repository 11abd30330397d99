"""The package's structure: its import graph has no circle (the op layer depends on nothing above
it; the independent oracle imports nothing from the package), and the facts the reference
oracle writes again from the paper agree with the package's (Table I, the MAP loss, the RBF
codes, the activation codes)."""
import ast
from pathlib import Path

import pytest
import torch

import lenet5_fast
from lenet5_fast import _C, model, reference
from lenet5_fast.codes import output_codes
from lenet5_fast.layers import PAPER_C3_TABLE

PACKAGE = Path(lenet5_fast.__file__).parent

# Imports inside a function that deliberately reach up at call time (the module-level graph has
# no such edge): (importer, imported): why.
CALL_TIME_UP = {
    ("model", "weights"): "LeNet5.from_pretrained loads the shipped weights, which build a LeNet5",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports(path: Path, modules) -> dict:
    """{imported module: True if at module level (import time), False if only inside functions}."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    if name == "__init__":
        package = []
    found = {}

    def target(node):
        if isinstance(node, ast.ImportFrom):
            if not node.level:
                base = (node.module or "").split(".")
                if base[0] != "lenet5_fast":
                    return []
                base = base[1:]
            else:
                base = package[:len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            out = []
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                out.append(sub if sub in modules else ".".join(base) or "__init__")
            return out
        if isinstance(node, ast.Import):
            return [a.name[len("lenet5_fast."):] for a in node.names if a.name.startswith("lenet5_fast.")]
        return []

    def walk(nodes, top):
        for node in nodes:
            for t in target(node):
                if t != name and t in modules:
                    found[t] = found.get(t, False) or top
            inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            walk(ast.iter_child_nodes(node), inner)

    walk(ast.parse(path.read_text()).body, True)
    return found


def import_graph():
    """{module: {module it imports: at module level?}} over the package ("_C": the native module,
    a leaf; "__init__": the package itself)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {m: _imports(p, set(files) | {"_C"}) for m, p in files.items()}
    graph["_C"] = {}
    return graph


def _cycle(graph) -> list:
    """A circle of the graph {node: [nodes]} as a list of nodes, or []."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        stack.pop()
        return []

    for n in graph:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def test_import_graph_has_no_circle():
    graph = import_graph()
    assert {"ops", "reference", "model", "fused", "checkpoint", "weights"} <= set(graph)
    top = {m: [t for t, at_top in targets.items() if at_top] for m, targets in graph.items()}
    assert _cycle(top) == [], "a circle of module-level imports"
    every = {m: [t for t in targets if (m, t) not in CALL_TIME_UP] for m, targets in graph.items()}
    assert _cycle(every) == [], "a circle of imports (module level or inside functions)"
    for (m, t) in CALL_TIME_UP:
        assert graph[m].get(t) is False, f"{m} -> {t} is listed as a call-time import"


def test_layers_of_the_import_graph():
    graph = import_graph()
    assert graph["reference"] == {}, "the oracle imports nothing from the package"
    below_ops = {"_C", "_validate", "formulas"}
    assert set(graph["ops"]) <= below_ops, "the op layer depends on nothing above it"
    for m in below_ops:
        assert set(graph[m]) <= below_ops
    assert "model" not in graph["checkpoint"] or graph["checkpoint"]["model"] is False, \
        "reading a checkpoint does not import the model at module level"


def test_paper_c3_table_is_table_i():
    """Table I of LeCun et al. (1998), read column by column: C3 map o -> the S2 maps it reads."""
    table_i = {0: (0, 1, 2), 1: (1, 2, 3), 2: (2, 3, 4), 3: (3, 4, 5), 4: (0, 4, 5), 5: (0, 1, 5),
               6: (0, 1, 2, 3), 7: (1, 2, 3, 4), 8: (2, 3, 4, 5), 9: (0, 3, 4, 5), 10: (0, 1, 4, 5),
               11: (0, 1, 2, 5), 12: (0, 1, 3, 4), 13: (1, 2, 4, 5), 14: (0, 2, 3, 5), 15: (0, 1, 2, 3, 4, 5)}
    assert [tuple(sorted(r)) for r in PAPER_C3_TABLE] == [table_i[o] for o in range(16)]
    assert [tuple(sorted(r)) for r in reference.PAPER_C3_TABLE] == [table_i[o] for o in range(16)]
    assert sum(map(len, PAPER_C3_TABLE)) == 60  # 60 kernels: 1,516 parameters with the 16 biases


def test_reference_codes_loss_and_activations_agree_with_the_package():
    assert torch.equal(reference.output_codes(), output_codes())
    assert reference.ACTIVATIONS == dict(_C.activations)
    assert reference.DEFAULT_MAP_J == model.DEFAULT_MAP_J
    g = torch.Generator().manual_seed(0)
    y = torch.rand(7, 10, generator=g, dtype=torch.float64) * 30
    t = torch.randint(0, 10, (7,), generator=g)
    for j in (0.0, 1.0, 5.0):
        for reduction in ("mean", "sum", "none"):
            torch.testing.assert_close(reference.map_loss(y, t, j, reduction), model.map_loss(y, t, j, reduction),
                                       rtol=1e-12, atol=1e-12)
    offsets, inputs = reference.table_to_csr(PAPER_C3_TABLE)
    package = lenet5_fast.ops.connection_table_to_csr(PAPER_C3_TABLE, 6)
    assert torch.equal(offsets, package[0]) and torch.equal(inputs, package[1])
