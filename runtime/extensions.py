"""onnxruntime-extensions' custom-op machinery, without the rest of the package.

``import onnxruntime_extensions`` runs the package's ``__init__``, which imports its converters
(``cvt``, ``_torch_cvt``), and those import torch whenever torch is installed: measured 2026-12-07 on
this project's machine, 2.4 to 5.1 s and about 900 MB resident before the first model is read, in a
process that registers one Python op. Registering Python ops and finding the custom-op library need
only the compiled module ``_extensions_pydll`` and the small ``_ocos`` module around it, which import
neither onnx nor torch.

:func:`load` imports exactly those: it puts a package object for ``onnxruntime_extensions`` in
``sys.modules`` whose ``__init__`` has not run, imports ``_ocos`` under it, and gives the package the
names the package's ``__init__`` would give them (``get_library_path``, ``Opdef``, ``onnx_op``,
``PyCustomOpDef``, ``PyOp``, ``__version__``). Any other attribute (``OrtPyFunction``,
``gen_processing_models``, ...) runs the real ``__init__`` in that package object on first access,
so code that wants the whole package still gets it, torch and all, then and only then. When the
package was imported in full before, :func:`load` returns it as it is.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

__all__ = ["load", "PACKAGE"]

PACKAGE = "onnxruntime_extensions"
_LOCK = threading.RLock()


def load() -> types.ModuleType:
    """The ``onnxruntime_extensions`` package with its custom-op API (``onnx_op``, ``PyOp``,
    ``get_library_path``, ``_ocos``), imported without torch (see the module docstring)."""
    with _LOCK:
        package = sys.modules.get(PACKAGE)
        if package is not None and hasattr(package, "PyOp"):
            return package
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(f"{PACKAGE} is not installed (pip install {PACKAGE.replace('_', '-')})")
        package = importlib.util.module_from_spec(spec)
        package.__getattr__ = _completing(package, spec)  # module-level __getattr__ (PEP 562)
        sys.modules[PACKAGE] = package
        try:
            ocos = importlib.import_module(f"{PACKAGE}._ocos")
            version = importlib.import_module(f"{PACKAGE}._version")
        except BaseException:
            sys.modules.pop(PACKAGE, None)
            raise
        package._ocos = ocos
        package.__version__ = version.__version__
        package.get_library_path = ocos.get_library_path
        package.Opdef, package.PyCustomOpDef = ocos.Opdef, ocos.PyCustomOpDef
        package.onnx_op, package.PyOp = ocos.Opdef.declare, ocos.PyCustomOpDef
        package.enable_py_op, package.default_opset_domain = ocos.enable_py_op, ocos.default_opset_domain
        package.hash_64 = ocos.hash_64
        return package


def _completing(package: types.ModuleType, spec):
    """A module ``__getattr__`` that runs the package's real ``__init__`` once, then answers."""
    state = {"done": False}

    def __getattr__(name: str):
        # private names (this project keeps its own state on the package) never complete it
        if name.startswith("_") or state["done"]:
            raise AttributeError(f"module {PACKAGE!r} has no attribute {name!r}")
        with _LOCK:
            if not state["done"]:
                state["done"] = True
                del package.__dict__["__getattr__"]
                spec.loader.exec_module(package)  # the real __init__: converters, torch
        return getattr(package, name)

    return __getattr__
