"""Figures of the package's layout, for a checkout (this one by default): modules, import arrows
between them, import cycles, imports that run up a layer, imports inside functions (and how many
say why), and the five biggest modules. Read with ``ast`` by the same code as tests/test_layout.py.

    .venv/bin/python benchmarks/layout_figures.py [CHECKOUT ...]

A checkout without ``runtime/base`` (before the base layer existed) is measured with the four
layers it had: runtime < exporter < targets < the front door.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_layout  # noqa: E402 - the layout test's reader


def figures(root: Path) -> dict:
    test_layout.ROOT = root
    if not (root / "runtime" / "base").is_dir():
        test_layout.LAYERS = ("pmsm.runtime", "pmsm.exporter", "pmsm.targets", "pmsm")
    known = test_layout.modules()
    imports = test_layout.all_imports()
    arrows = {(i.source, i.target) for i in imports}
    biggest = sorted(((len(path.read_text().splitlines()), module) for module, path in known.items()), reverse=True)[:5]
    return {
        "modules": len(known),
        "import arrows": len(arrows),
        "modules in import cycles": sum(len(c) for c in test_layout.cycles(imports)),
        "import cycles": len(test_layout.cycles(imports)),
        "imports up a layer": len({(i.source, i.target) for i in imports
                                   if test_layout.layer_of(i.target) > test_layout.layer_of(i.source)}),
        "imports inside functions": sum(1 for i in imports if i.in_function),
        "of which without a reason": sum(1 for i in imports if i.in_function and not i.reason),
        "five biggest modules (lines)": ", ".join(f"{module} {lines}" for lines, module in biggest),
    }


def main() -> None:
    roots = [Path(p).resolve() for p in sys.argv[1:]] or [Path(__file__).resolve().parent.parent]
    for root in roots:
        print(f"== {root}")
        for name, value in figures(root).items():
            print(f"  {name}: {value}")


if __name__ == "__main__":
    main()
