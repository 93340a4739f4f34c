"""The package's layers import downward only, without cycles (docs/architecture.md).

Every module's imports are read with ``ast`` (nothing is imported): the layers, bottom up, are the
base (``pmsm.runtime.base``), the runtime, the exporter, the targets and the front door (``pmsm``
and its own modules). A module may import its own layer and those below; an import inside a function
is allowed only for an optional extra or a measured start-up cost, and says why in a comment on its
line or the line above.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"api": "pmsm", "exporter": "pmsm.exporter", "runtime": "pmsm.runtime", "targets": "pmsm.targets"}
LAYERS = ("pmsm.runtime.base", "pmsm.runtime", "pmsm.exporter", "pmsm.targets", "pmsm")  # bottom up


def layer_of(module: str) -> int:
    return next(i for i, prefix in enumerate(LAYERS) if module == prefix or module.startswith(prefix + "."))


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported pmsm module
    line: int
    in_function: bool
    reason: str  # the comment on the import's line or the line above it ("" when none)


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package,) + parts)] = path
    return found


def imports_of(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The pmsm modules ``module`` imports. ``from P import m`` names the module P.m when there is
    one (Python runs P's ``__init__`` first whatever is imported, so a package's own facade is
    not counted as a dependency of its submodules)."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                       for alias in node.names]
        else:
            continue
        targets = [t for t in dict.fromkeys(targets) if t in known and t != module and not module.startswith(t + ".")]
        if not targets:
            continue
        scope, in_function = parents.get(node), False
        while scope is not None:
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
                in_function = True
                break
            scope = parents.get(scope)
        reason = _comment(lines[node.end_lineno - 1]) or (lines[node.lineno - 2].strip().lstrip("#").strip()
                                                          if node.lineno > 1 and lines[node.lineno - 2].strip().startswith("#")
                                                          else "")
        found += [Import(module, t, node.lineno, in_function, reason) for t in targets]
    return found


def _comment(line: str) -> str:
    return line.split("#", 1)[1].strip() if "#" in line else ""


def all_imports() -> list[Import]:
    known = modules()
    return [i for module, path in known.items() for i in imports_of(module, path, known)]


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(all_imports()) == []


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{i.source}:{i.line} imports {i.target}" for i in all_imports()
              if layer_of(i.target) > layer_of(i.source)]
    assert upward == []


def test_every_import_inside_a_function_says_why():
    silent = [f"{i.source}:{i.line} imports {i.target}" for i in all_imports() if i.in_function and not i.reason]
    assert silent == []


def test_the_layout_check_sees_a_cycle_an_upward_import_and_a_silent_import(tmp_path):
    """The checks above can fail: made-up modules with each fault are caught."""
    made_up = [Import("pmsm.exporter.a", "pmsm.exporter.b", 1, False, ""),
               Import("pmsm.exporter.b", "pmsm.exporter.a", 1, False, ""),
               Import("pmsm.runtime.x", "pmsm.targets.nir", 3, True, "")]
    assert cycles(made_up) == [["pmsm.exporter.a", "pmsm.exporter.b"]]
    assert layer_of("pmsm.targets.nir") > layer_of("pmsm.runtime.x")
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from pmsm.runtime import neuron\n\n\ndef g():\n"
                    "    # the torch extra\n    from pmsm.runtime import neuron\n")
    found = imports_of("pmsm.exporter.m", path, {"pmsm.runtime.neuron": path, "pmsm.exporter.m": path})
    assert [(i.line, i.in_function, bool(i.reason)) for i in found] == [(2, True, False), (7, True, True)]


def test_the_layers_cover_every_module():
    assert all(layer_of(module) >= 0 for module in modules())
