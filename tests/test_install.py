"""The core distribution: what works without the optional extras, and what is said when one is missing.

The core (``pip install pmsm-export``) converts and verifies for targets onnx and nir; torch comes
with ``[torch]`` and lava-nc with ``[lava]`` (Python 3.10 only). An environment that has the
extras installed still tests the core: each command runs in a fresh interpreter in which
importing torch or lava fails as it does where they are not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
from conftest import SAMPLES

import pmsm

OPTIONAL_TOP_LEVEL = ("torch", "lava", "onnxscript", "brevitas", "ray", "junitparser")

# Runs the pmsm-export command with some top-level packages unimportable (None in sys.modules makes
# `import name` raise ImportError, as for a package that is not installed).
WITHOUT = """
import sys
blocked, argv = sys.argv[1].split(","), sys.argv[2:]
for name in filter(None, blocked):
    sys.modules[name] = None
from pmsm.cli import main
sys.exit(main(argv))
"""


def pmsm_export_without(blocked, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, ",".join(blocked), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def python_without(blocked, code: str) -> subprocess.CompletedProcess:
    prelude = "".join(f"import sys; sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300)


def test_importing_the_package_and_its_converter_loads_no_optional_package():
    """torch is left out of this check: onnxruntime-extensions 0.15.2 imports it by itself when it
    is installed (its ``cvt`` module); the commands below show that nothing needs it."""
    code = ("import sys, pmsm, pmsm.cli, pmsm.pipeline, pmsm.plan, pmsm.exporter.convert, "
            "pmsm.runtime.execute, pmsm.targets.nir\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'lava', 'onnxscript', 'brevitas', 'ray'}}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_core_requirements_name_no_extra_package():
    requirements = metadata.requires("pmsm-export") or []
    core = [r for r in requirements if "extra ==" not in r]
    names = {r.split(";")[0].split("[")[0].strip().split("=")[0].split("<")[0].split(">")[0].lower() for r in core}
    assert names == {"numpy", "onnx", "onnxruntime", "onnxruntime-extensions", "onnx-graphsurgeon", "nir",
                     "matplotlib"}


def test_lava_extra_is_limited_to_python_310_by_its_marker():
    requirements = metadata.requires("pmsm-export") or []
    lava = [r for r in requirements if r.startswith("lava-nc")]
    assert len(lava) == 1 and 'python_version < "3.11"' in lava[0] and 'extra == "lava"' in lava[0]


@pytest.mark.parametrize("target, output", [("onnx", "m.spiking.onnx"), ("nir", "m.nir")])
def test_without_torch_and_lava_a_sample_converts_and_verifies_bit_exact_at_t1(target, output, tmp_path):
    shutil.copy(os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx"), tmp_path / "m.onnx")
    result = pmsm_export_without(OPTIONAL_TOP_LEVEL, "m.onnx", "--target", target, "--verify", "--timesteps", "1,2",
                                 "--data", os.path.join(SAMPLES, "digits_test.npz"), "--report", "r.json",
                                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / output).is_file()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["verification"]["backends"]["onnx"]["1"]["max_abs_diff"] == 0
    assert report["verification"]["passed"]


@pytest.mark.parametrize("source", ["m.onnx", "m.nir"])
def test_lava_target_without_lava_nc_exits_2_with_one_line_saying_how_to_get_it(source, tmp_path):
    sample = os.path.join(SAMPLES, "digits_mlp_pmsm_L2.onnx")
    if source.endswith(".nir"):
        pmsm.export(sample, target="nir", output=str(tmp_path / source))
    else:
        shutil.copy(sample, tmp_path / source)
    result = pmsm_export_without(["lava"], source, "--target", "lava", "--verify", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'pmsm-export[lava]'" in lines[0] and "lava-nc" in lines[0]
    assert sorted(os.listdir(tmp_path)) == [source]


def test_lava_is_refused_on_python_311_and_later_naming_python_310():
    code = ("import sys\nsys.version_info = (3, 12, 0, 'final', 0)\n"
            "from pmsm.targets.lava.availability import require_lava\nrequire_lava()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "MissingExtraError: the lava target needs lava-nc, which runs only on Python 3.10 (this is Python 3.12)" \
        in result.stderr


def test_python_api_without_lava_raises_an_import_error_that_is_a_user_error():
    result = python_without(["lava"], "\n".join([
        "from pmsm.runtime.base.errors import PmsmError",
        "try:",
        "    import pmsm.targets.lava",
        "except ImportError as error:",
        "    assert isinstance(error, PmsmError) and error.exit_code == 2, type(error)",
        "    print(error)",
    ]))
    assert result.returncode == 0, result.stderr
    assert "pmsm-export[lava]" in result.stdout


def test_pmsm_layer_without_torch_raises_an_import_error_naming_the_extra():
    result = python_without(["torch"], "import pmsm.exporter.quant")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("ImportError: pmsm.exporter.quant needs torch")
    assert "pip install 'pmsm-export[torch]'" in result.stderr
