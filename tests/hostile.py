"""Helpers of the hostile-input tests: run the command in the process, guard the devices, and
prove that a refused run wrote nothing and changed no input."""
from __future__ import annotations

import builtins
import hashlib
import io
import os
import stat
import zipfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pmsm.cli import main

QONNX = "qonnx.custom_op.general"


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def run_command(argv: list[str], capfd) -> Outcome:
    """``pmsm-export argv`` in this process; an exception other than the command's own reaches
    the test (it would have been a traceback). ``capfd`` sees what C libraries write to fd 2 too."""
    capfd.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's way of refusing an argument
        code = stop.code
    captured = capfd.readouterr()
    return Outcome(code, captured.out, captured.err)


def snapshot(*folders) -> dict[str, str]:
    """Every file under ``folders`` (hidden ones included) -> sha256 of its bytes."""
    found = {}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            for name in dirs + files:
                path = os.path.join(root, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    found[path] = f"<{stat.filemode(os.lstat(path).st_mode)}>"
                    continue
                with open(path, "rb") as handle:
                    found[path] = hashlib.sha256(handle.read()).hexdigest()
    return found


def assert_refused(outcome: Outcome, before: dict, after: dict, mentions: str | None = None) -> None:
    """Exit 2, one line on stderr that is not a traceback, nothing written, no input changed."""
    assert outcome.code == 2, f"exit {outcome.code}: {outcome.err}{outcome.out}"
    assert "Traceback" not in outcome.err
    assert len(outcome.error_lines) == 1, outcome.err
    assert outcome.error_lines[0].startswith("pmsm-export: error: "), outcome.err
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"
    if mentions is not None:
        assert mentions in outcome.err, outcome.err


class DeviceGuard:
    """Fails the test before a rename or an open for writing could touch a device node or a FIFO.

    The command refuses such outputs before doing anything; this guard makes sure that a
    regression cannot turn the test into the very damage it checks for (``/dev/null`` replaced
    by a plain file on a machine where the tests run as root).
    """

    def __init__(self, monkeypatch):
        real_replace, real_rename, real_open = os.replace, os.rename, builtins.open

        def guarded(path):
            try:
                mode = os.lstat(path).st_mode
            except (OSError, TypeError, ValueError):
                return
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
                raise AssertionError(f"the command was about to write over the special file {path}")

        def replace(src, dst, *args, **kwargs):
            guarded(dst)
            return real_replace(src, dst, *args, **kwargs)

        def rename(src, dst, *args, **kwargs):
            guarded(dst)
            return real_rename(src, dst, *args, **kwargs)

        def open_(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
                guarded(file)
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(builtins, "open", open_)


def build_qonnx_mlp(bits: float = 4.0, seed: int = 0) -> onnx.ModelProto:
    """``x [1,1,8,8] -> Flatten -> Quant(8 bit) -> Gemm -> Relu -> Quant(bits) -> Gemm -> y [1,10]``,
    activation quantizers as Brevitas writes them in QONNX."""
    rng = np.random.default_rng(seed)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    inits = [
        const("w1", rng.normal(0, 0.3, (16, 64))), const("b1", rng.normal(0, 0.1, 16)),
        const("w2", rng.normal(0, 0.3, (10, 16))), const("b2", np.zeros(10)),
        const("s_in", 1 / 255), const("zp_in", 0.0), const("bits_in", 8.0),
        const("s_h", 0.1), const("zp_h", 0.0), const("bits_h", bits),
    ]
    nodes = [
        helper.make_node("Flatten", ["x"], ["xf"], name="flatten", axis=1),
        helper.make_node("Quant", ["xf", "s_in", "zp_in", "bits_in"], ["xq"], name="input_quant", domain=QONNX,
                         signed=0, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Gemm", ["xq", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["hr"], name="relu1"),
        helper.make_node("Quant", ["hr", "s_h", "zp_h", "bits_h"], ["hq"], name="hidden_quant", domain=QONNX,
                         signed=0, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Gemm", ["hq", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(nodes, "qonnx_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(QONNX, 1)])
    model.ir_version = 10
    return model


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def set_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    initializer(model, name).CopyFrom(numpy_helper.from_array(np.asarray(value), name))


def zip_bomb(path, declared_rows: int, zeros: int = 4 << 20):
    """An .npz whose 'x' header declares [declared_rows, 1, 8, 8] float32 over a few MB of zeros."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (declared_rows, 1, 8, 8)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(buffer.getvalue())
            member.write(bytes(zeros))
