"""A seeded fuzz test of the command: structural mutations of the bundled samples (and of a QDQ and
a QONNX model), broken data files, hostile paths and odd arguments.

Every mutation is built to be invalid for certain (a model cut inside its graph field, a node
reading a tensor nothing makes, a scale of NaN, ...), so every case must end the same way: exit
2, one line on stderr, no traceback, nothing written, every input unchanged. The quick subset
(the first case of each category) runs in ``make test``; all cases (several hundred) run in
``make test-all``. Each case draws its random choices from a generator seeded by
its own name, so a failure reproduces alone (``pytest -m '' tests/test_fuzz.py -k <name>``).
"""
from __future__ import annotations

import copy
import os
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import SAMPLES, build_qdq_mlp
from hostile import DeviceGuard, assert_refused, build_qonnx_mlp, run_command, snapshot, zip_bomb

SAMPLE_SEEDS = sorted(name[:-5] for name in os.listdir(SAMPLES) if name.endswith(".onnx"))
SEEDS = SAMPLE_SEEDS + ["qdq_mlp", "qonnx_mlp"]
VARIANTS = 2  # random variants of each (category, seed) in the full run
_FLOAT_TYPES = (TensorProto.FLOAT,)


def seed_model(name: str) -> onnx.ModelProto:
    if name == "qdq_mlp":
        return build_qdq_mlp()
    if name == "qonnx_mlp":
        return build_qonnx_mlp()
    return onnx.load(os.path.join(SAMPLES, name + ".onnx"))


# ---------------------------------------------------------------------------------------------
# Model mutations: each returns the mutated model (a ModelProto) or the file's bytes
# ---------------------------------------------------------------------------------------------


def _float_initializers(model, standard_readers_only=False):
    custom = {name for node in model.graph.node if node.domain not in ("", "ai.onnx") for name in node.input}
    shape_inputs = {node.input[1] for node in model.graph.node if node.op_type == "Reshape" and len(node.input) > 1}
    return [t for t in model.graph.initializer if t.data_type in _FLOAT_TYPES and t.name not in shape_inputs
            and not (standard_readers_only and t.name in custom)]


def _pick(rng, items):
    assert items, "nothing to mutate"
    return items[int(rng.integers(len(items)))]


def truncated_inside_the_graph(model, rng):
    data = model.SerializeToString()
    return data[: int(rng.integers(len(data) // 10, len(data) * 9 // 10))]


def random_bytes(model, rng):
    return rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()


def initializer_shape_not_its_data(model, rng):
    tensor = _pick(rng, [t for t in _float_initializers(model) if t.dims])
    axis = int(rng.integers(len(tensor.dims)))
    tensor.dims[axis] += int(rng.integers(1, 5))
    return model


def initializer_retyped(model, rng):
    tensor = _pick(rng, _float_initializers(model, standard_readers_only=True))
    value = numpy_helper.to_array(tensor)
    kind = _pick(rng, ["int64", "int32", "float16", "float64", "bool", "string"])
    if kind == "string":
        tensor.CopyFrom(helper.make_tensor(tensor.name, TensorProto.STRING, list(value.shape), [b"w"] * value.size))
    else:
        tensor.CopyFrom(numpy_helper.from_array(value.astype(kind), tensor.name))
    return model


def weight_not_finite(model, rng):
    tensor = _pick(rng, _float_initializers(model))
    value = numpy_helper.to_array(tensor).copy()
    value.reshape(-1)[int(rng.integers(value.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
    tensor.CopyFrom(numpy_helper.from_array(value, tensor.name))
    return model


def quantizer_scale_not_finite_positive(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Quant")])
    tensor = next(t for t in model.graph.initializer if t.name == node.input[1])
    bad = _pick(rng, [0.0, -0.5, np.nan, np.inf, -np.inf])
    tensor.CopyFrom(numpy_helper.from_array(np.full(tuple(tensor.dims), bad, np.float32), tensor.name))
    return model


def zero_point_outside_its_dtype(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.op_type == "QuantizeLinear"])
    tensor = next(t for t in model.graph.initializer if t.name == node.input[2])
    low, high = (0, 255) if tensor.data_type == TensorProto.UINT8 else (-128, 127)
    name, data_type = tensor.name, tensor.data_type
    tensor.Clear()
    tensor.name, tensor.data_type = name, data_type
    tensor.int32_data.append(_pick(rng, [high + 1, high + 1000, low - 1, 1 << 30]))
    return model


def qonnx_bit_width_not_sane(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.op_type == "Quant"])
    tensor = next(t for t in model.graph.initializer if t.name == node.input[3])
    bad = _pick(rng, [0.0, -1.0, 33.0, 128.0, 1e30, 2.5, np.nan, np.inf])
    tensor.CopyFrom(numpy_helper.from_array(np.array(bad, np.float32), tensor.name))
    return model


def opset_unknown_or_repeated(model, rng):
    how = _pick(rng, ["999", "appended", "none"])
    default = next(op for op in model.opset_import if op.domain in ("", "ai.onnx"))
    if how == "999":
        default.version = 999
    elif how == "appended":
        model.opset_import.append(helper.make_opsetid("", int(rng.integers(1, 999))))
    else:
        model.opset_import.remove(default)
    return model


def ir_version_out_of_range(model, rng):
    model.ir_version = _pick(rng, [0, 15, 99, 1 << 40])
    return model


def graph_output_listed_twice_or_missing(model, rng):
    if rng.integers(2):
        model.graph.output.append(copy.deepcopy(model.graph.output[0]))
    else:
        model.graph.output[0].name = "no_such_tensor"
    return model


def input_dimension_impossible(model, rng):
    dims = model.graph.input[0].type.tensor_type.shape.dim
    axis = int(rng.integers(1, len(dims)))
    bad = _pick(rng, [0, -1, -(1 << 20), 1 << 62, dims[axis].dim_value + 1])
    dims[axis].dim_value = bad
    return model


def node_reads_a_missing_tensor(model, rng):
    node = _pick(rng, [n for n in model.graph.node if any(n.input)])
    index = _pick(rng, [i for i, name in enumerate(node.input) if name])
    node.input[index] = f"missing_{int(rng.integers(1 << 30))}"
    return model


def node_reads_its_own_or_a_later_output(model, rng):
    nodes = model.graph.node
    position = _pick(rng, [i for i, n in enumerate(nodes) if any(n.input)])
    later = nodes[int(rng.integers(position, len(nodes)))]
    index = _pick(rng, [i for i, name in enumerate(nodes[position].input) if name])
    nodes[position].input[index] = later.output[0]
    return model


def two_nodes_write_one_tensor(model, rng):
    first, second = rng.choice(len(model.graph.node), 2, replace=False)
    model.graph.node[int(second)].output[0] = model.graph.node[int(first)].output[0]
    return model


def op_unknown(model, rng):
    node = _pick(rng, list(model.graph.node))
    if rng.integers(2):
        node.op_type = f"NoSuchOp{int(rng.integers(1000))}"
        node.domain = ""
    else:
        node.domain = "com.example.fuzz"
        model.opset_import.append(helper.make_opsetid("com.example.fuzz", 1))
    return model


def attribute_unknown_or_mistyped(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.domain in ("", "ai.onnx") and n.op_type != "Constant"])
    if node.attribute and rng.integers(2):
        attribute = node.attribute[int(rng.integers(len(node.attribute)))]
        replacement = helper.make_attribute(attribute.name, "text" if attribute.type != onnx.AttributeProto.STRING
                                            else 1.5)
        node.attribute.remove(attribute)
        node.attribute.append(replacement)
    else:
        node.attribute.append(helper.make_attribute("fuzz_unknown", int(rng.integers(100))))
    return model


def node_removed(model, rng):
    used = {name for n in model.graph.node for name in n.input} | {o.name for o in model.graph.output}
    node = _pick(rng, [n for n in model.graph.node if any(o in used for o in n.output)])
    model.graph.node.remove(node)
    return model


def node_loses_its_inputs(model, rng):
    node = _pick(rng, [n for n in model.graph.node if n.domain in ("", "ai.onnx") and len(n.input) > 0])
    del node.input[:]
    return model


def constant_of_enormous_shape(model, rng):
    elements = int(10 ** rng.integers(12, 16))
    model.graph.initializer.append(numpy_helper.from_array(np.array([elements], np.int64), "fuzz_huge_shape"))
    model.graph.node.append(helper.make_node("ConstantOfShape", ["fuzz_huge_shape"], ["fuzz_huge"], name="huge"))
    model.graph.output.append(helper.make_tensor_value_info("fuzz_huge", TensorProto.FLOAT, [elements]))
    return model


def _floor_chains(model):
    """(scale division, L multiplication, Clip, de-quantizing Div, de-quantizing Mul) of every
    PMSM/QCFS floor chain ``clip(floor(x / s * L + 0.5), lo, L) / L * s``."""
    readers = {name: n for n in model.graph.node for name in n.input}
    producers = {o: n for n in model.graph.node for o in n.output}
    chains = []
    for floor in (n for n in model.graph.node if n.op_type == "Floor"):
        add = producers[floor.input[0]]
        mul = producers[add.input[0]]
        div = producers[mul.input[0]]
        clip = readers[floor.output[0]]
        dequantize = readers[clip.output[0]]
        chains.append((div, mul, clip, dequantize, readers[dequantize.output[0]]))
    return chains


def _set_constant(model, node, index, value):
    """Give input ``index`` of ``node`` a constant of its own holding ``value``."""
    name = f"fuzz_{node.name}_{index}"
    model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
    node.input[index] = name


def quantizer_degenerate(model, rng):
    """L = 0 (every use, or only in the de-quantizing Div), a scale of 0 (every use, or only in the
    de-quantizing Mul): finite weights, so only the quantizer's meaning can tell."""
    chains = _floor_chains(model)
    div, mul, clip, dequantize, rescale = _pick(rng, chains)
    how = _pick(rng, ["L=0", "L=0 de-quantizing", "s=0", "s=0 de-quantizing", "L=0 every chain"])
    if how == "L=0":
        for node, index in ((mul, 1), (clip, 2), (dequantize, 1)):
            _set_constant(model, node, index, 0.0)
    elif how == "L=0 de-quantizing":
        _set_constant(model, dequantize, 1, 0.0)
    elif how == "s=0":
        _set_constant(model, div, 1, 0.0)
        _set_constant(model, rescale, 1, 0.0)
    elif how == "s=0 de-quantizing":
        _set_constant(model, rescale, 1, 0.0)
    else:
        set_initializer_to(model, clip.input[2], 0.0)
    return model


def set_initializer_to(model, name, value):
    tensor = next(t for t in model.graph.initializer if t.name == name)
    shape = numpy_helper.to_array(tensor).shape
    tensor.CopyFrom(numpy_helper.from_array(np.full(shape, value, np.float32), name))


def subgraphs_nested_deep(model, rng):
    """An ``If`` nested 11 to 32 deep in a branch nothing reads (30 deep: ONNX Runtime would take
    hours to load it). Built from the outside in, since protobuf refuses to copy a message nested
    that deep."""
    depth = int(rng.integers(11, 33))
    leaf = helper.make_graph([helper.make_node("Constant", [], ["fuzz_leaf"],
                                               value=numpy_helper.from_array(np.array([1.0], np.float32)))],
                             "leaf", [], [helper.make_tensor_value_info("fuzz_leaf", TensorProto.FLOAT, [1])])
    graph = model.graph
    for level in range(depth):  # the nesting goes down the then-branches; each else-branch is a leaf
        out, cond = f"fuzz_if_{level}", f"fuzz_cond_{level}"
        graph.node.append(helper.make_node("Constant", [], [cond], value=numpy_helper.from_array(np.array(True))))
        node = graph.node.add(op_type="If", name=out, input=[cond], output=[out])
        node.attribute.add(name="else_branch", type=onnx.AttributeProto.GRAPH).g.CopyFrom(leaf)
        then = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH).g
        then.name = f"level_{level + 1}"
        then.output.append(helper.make_tensor_value_info(f"fuzz_if_{level + 1}", TensorProto.FLOAT, [1]))
        graph = then
    graph.node.append(helper.make_node("Constant", [], [f"fuzz_if_{depth}"],
                                       value=numpy_helper.from_array(np.array([1.0], np.float32))))
    return model


def input_shape_no_sample_can_take(model, rng):
    """The data input declared of rank 0, or with every dimension (or one after the batch) symbolic."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    how = _pick(rng, ["rank 0", "all symbolic", "one symbolic"])
    if how == "rank 0":
        del dims[:]
    elif how == "all symbolic":
        for i, dim in enumerate(dims):
            dim.dim_param = f"d{i}"
    else:
        dims[int(rng.integers(1, len(dims)))].dim_param = "size"
    return model


FLOOR_CHAIN_SEEDS = tuple(seed for seed in SAMPLE_SEEDS if "pmsm" in seed or "unsigned" in seed)

MODEL_MUTATIONS: dict[str, tuple[Callable, tuple[str, ...]]] = {  # name -> (mutation, seeds it applies to)
    "truncated": (truncated_inside_the_graph, tuple(SEEDS)),
    "random-bytes": (random_bytes, tuple(SEEDS)),
    "shape-not-data": (initializer_shape_not_its_data, tuple(SEEDS)),
    "retyped": (initializer_retyped, tuple(SEEDS)),
    "weight-nan-inf": (weight_not_finite, tuple(SEEDS)),
    "bad-scale": (quantizer_scale_not_finite_positive, ("qdq_mlp", "qonnx_mlp")),
    "zero-point-range": (zero_point_outside_its_dtype, ("qdq_mlp",)),
    "bit-width": (qonnx_bit_width_not_sane, ("qonnx_mlp",)),
    "opset": (opset_unknown_or_repeated, tuple(SEEDS)),
    "ir-version": (ir_version_out_of_range, tuple(SEEDS)),
    "graph-output": (graph_output_listed_twice_or_missing, tuple(SEEDS)),
    "input-dim": (input_dimension_impossible, tuple(SEEDS)),
    "dangling-input": (node_reads_a_missing_tensor, tuple(SEEDS)),
    "cycle": (node_reads_its_own_or_a_later_output, tuple(SEEDS)),
    "not-ssa": (two_nodes_write_one_tensor, tuple(SEEDS)),
    "unknown-op": (op_unknown, tuple(SEEDS)),
    "attribute": (attribute_unknown_or_mistyped, tuple(SEEDS)),
    "node-removed": (node_removed, tuple(SEEDS)),
    "inputs-removed": (node_loses_its_inputs, tuple(SEEDS)),
    "constant-bomb": (constant_of_enormous_shape, tuple(SEEDS)),
    "degenerate-quantizer": (quantizer_degenerate, FLOOR_CHAIN_SEEDS),
    "nested-subgraphs": (subgraphs_nested_deep, tuple(SEEDS)),
    "input-shape": (input_shape_no_sample_can_take, tuple(SEEDS)),
}
# Variants that differ only by the random draw; a few categories draw from small sets, so more.
EXTRA_VARIANTS = {"bad-scale": 6, "zero-point-range": 6, "bit-width": 8, "degenerate-quantizer": 6}


# ---------------------------------------------------------------------------------------------
# External data, data files, paths and arguments: each returns argv, given the case folder
# ---------------------------------------------------------------------------------------------


EXTERNAL_DATA_KINDS = ("parent", "absolute", "symlink", "fifo", "missing", "offset", "length", "folder")
DATA_FILE_KINDS = ("nan", "inf", "rank", "features", "no-x", "labels-length", "labels-float", "object", "strings",
                   "complex", "truncated", "garbage", "empty", "bomb")
PATH_KINDS = ("model", "data", "report-model", "report-data", "report-output", "hard-link", "symlink",
              "dangling-symlink", "dev-null", "dev-full", "report-dev-null", "fifo", "folder", "slash",
              "missing-folder", "proc", "long-name", "picture-on-output", "empty-output", "empty-data",
              "empty-report", "empty-model", "nul")
ARGUMENT_KINDS = ("t-zero", "t-negative", "t-huge", "t-above-max", "t-many", "t-words", "t-empty", "target",
                  "report-without-verify", "data-without-verify", "limit-zero", "limit-words", "seconds-nan",
                  "unknown-flag", "nodes-limit", "weights-limit", "memory")


def with_external_data(folder, seed, rng, how):
    path = folder / "model.onnx"
    onnx.save(seed_model(seed), str(path), save_as_external_data=True, location="model.data", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    if how == "symlink":
        os.symlink("/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd", folder / "link.data")
    elif how == "fifo":
        os.mkfifo(folder / "pipe.data")
    elif how == "folder":
        (folder / "sub.data").mkdir()
    location = {"parent": "../" * int(rng.integers(1, 6)) + "etc/passwd", "absolute": "/etc/passwd",
                "symlink": "link.data", "fifo": "pipe.data", "missing": "gone.data", "folder": "sub.data"}.get(how)
    tensor = _pick(rng, [t for t in model.graph.initializer if t.external_data])
    for entry in tensor.external_data:
        if entry.key == "location" and location:
            entry.value = location
        elif entry.key == "offset" and how == "offset":
            entry.value = str(1 << 40)
        elif entry.key == "length" and how == "length":
            entry.value = str(int(entry.value) + (1 << 30))
    onnx.save(model, str(path))
    return [path, "-o", folder / "out.onnx"]


def bad_data_file(folder, seed, rng, how):
    model = folder / "model.onnx"
    onnx.save(seed_model(seed), str(model))
    data = folder / "data.npz"
    good = rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    if how in ("nan", "inf"):
        good.reshape(-1)[int(rng.integers(good.size))] = np.nan if how == "nan" else np.inf
        np.savez(data, x=good)
    elif how == "rank":
        np.savez(data, x=good.reshape(6, 64))
    elif how == "features":
        np.savez(data, x=rng.uniform(0, 1, (6, 1, 8, 9)).astype(np.float32))
    elif how == "no-x":
        np.savez(data, images=good)
    elif how == "labels-length":
        np.savez(data, x=good, y=np.zeros(5, np.int64))
    elif how == "labels-float":
        np.savez(data, x=good, y=np.zeros(6, np.float32))
    elif how == "object":
        np.savez(data, x=np.array([None, {"a": 1}], dtype=object))
    elif how == "strings":
        np.savez(data, x=np.array(["a", "b"]))
    elif how == "complex":
        np.savez(data, x=good.astype(np.complex64))
    elif how == "truncated":
        np.savez(data, x=good)
        data.write_bytes(data.read_bytes()[: int(rng.integers(10, 400))])
    elif how == "garbage":
        data.write_bytes(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())
    elif how == "empty":
        np.savez(data, x=np.zeros((0, 1, 8, 8), np.float32))
    else:
        zip_bomb(data, declared_rows=int(10 ** rng.integers(8, 12)), zeros=1 << 20)
    return [model, "--verify", "--data", data, "-o", folder / "out.onnx"]


def hostile_path(folder, seed, rng, how):
    model = folder / "model.onnx"
    onnx.save(seed_model(seed), str(model))
    data = folder / "data.npz"
    np.savez(data, x=rng.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32))
    out = folder / "out.onnx"
    verify = ["--verify", "--data", data]
    if how == "hard-link":
        os.link(model, folder / "alias.onnx")
    elif how in ("symlink", "dangling-symlink"):
        os.symlink(model if how == "symlink" else folder / "nowhere", folder / "link.onnx")
    elif how == "fifo":
        os.mkfifo(folder / "pipe.onnx")
    elif how == "folder":
        (folder / "sub").mkdir()
    return {
        "model": [model, "-o", model], "data": [model, *verify, "-o", data],
        "report-model": [model, *verify, "-o", out, "--report", model],
        "report-data": [model, *verify, "-o", out, "--report", data],
        "report-output": [model, *verify, "-o", out, "--report", out],
        "hard-link": [model, "-o", folder / "alias.onnx"], "symlink": [model, "-o", folder / "link.onnx"],
        "dangling-symlink": [model, "-o", folder / "link.onnx"], "dev-null": [model, "-o", "/dev/null"],
        "dev-full": [model, "-o", "/dev/full"], "report-dev-null": [model, *verify, "-o", out, "--report", "/dev/null"],
        "fifo": [model, "-o", folder / "pipe.onnx"], "folder": [model, "-o", folder / "sub"],
        "slash": [model, "-o", str(folder / "new") + "/"], "missing-folder": [model, "-o", folder / "a" / "b.onnx"],
        "proc": [model, "-o", "/proc/self/out.onnx"], "long-name": [model, "-o", folder / ("x" * 256)],
        "picture-on-output": [model, *verify, "-o", folder / "r-spikes.png", "--report", folder / "r.json"],
        "empty-output": [model, "-o", ""], "empty-data": [model, "--verify", "--data", ""],
        "empty-report": [model, "--verify", "--report", ""], "empty-model": [""],
        "nul": [model, "-o", "out\0.onnx"],
    }[how]


def odd_arguments(folder, seed, rng, how):
    model = folder / "model.onnx"
    onnx.save(seed_model(seed), str(model))
    return {
        "t-zero": [model, "--timesteps", "0"], "t-negative": [model, "--timesteps", "2,-1"],
        "t-huge": [model, "--timesteps", str(1 << 63)], "t-above-max": [model, "--timesteps", "1025"],
        "t-many": [model, "--timesteps", ",".join(str(t) for t in range(1, 40))],
        "t-words": [model, "--timesteps", "one"], "t-empty": [model, "--timesteps", ","],
        "target": [model, "--target", "loihi3"], "report-without-verify": [model, "--report", folder / "r.json"],
        "data-without-verify": [model, "--data", folder / "d.npz"], "limit-zero": [model, "--max-nodes", "0"],
        "limit-words": [model, "--max-weight-bytes", "lots"], "seconds-nan": [model, "--max-load-seconds", "nan"],
        "unknown-flag": [model, "--fast"], "nodes-limit": [model, "--max-nodes", "3"],
        "weights-limit": [model, "--max-weight-bytes", "100"],
        "memory": [model, "--verify", "-o", folder / "out.onnx", "--timesteps", str(1 << 40), "--max-timesteps",
                   str(1 << 40)],
    }[how]


SOME_SEEDS = (SAMPLE_SEEDS[0], SAMPLE_SEEDS[-1], "qdq_mlp")
INPUT_MUTATIONS = {  # name -> (builder, its kinds, seeds it applies to); every kind on every seed
    "external-data": (with_external_data, EXTERNAL_DATA_KINDS, tuple(SEEDS)),
    "data-file": (bad_data_file, DATA_FILE_KINDS, SOME_SEEDS),
    "path": (hostile_path, PATH_KINDS, SOME_SEEDS),
    "arguments": (odd_arguments, ARGUMENT_KINDS, SOME_SEEDS),
}


# ---------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    category: str
    seed: str
    variant: str  # a number (the random draw) for model mutations, the kind for the others

    @property
    def name(self) -> str:
        return f"{self.category}-{self.variant}-{self.seed}"

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(self.name.encode()))

    def build(self, folder) -> list:
        if self.category in MODEL_MUTATIONS:
            mutated = MODEL_MUTATIONS[self.category][0](seed_model(self.seed), self.rng())
            path = folder / "model.onnx"
            path.write_bytes(mutated if isinstance(mutated, bytes) else mutated.SerializeToString())
            return [path, "-o", folder / "out.onnx"]
        return INPUT_MUTATIONS[self.category][0](folder, self.seed, self.rng(), self.variant)


def all_cases() -> list[Case]:
    cases = []
    for category, (_, seeds) in MODEL_MUTATIONS.items():
        for seed in seeds:
            cases += [Case(category, seed, str(v)) for v in range(EXTRA_VARIANTS.get(category, VARIANTS))]
    for category, (_, kinds, seeds) in INPUT_MUTATIONS.items():
        cases += [Case(category, seed, kind) for kind in kinds for seed in seeds]
    return cases


CASES = all_cases()
QUICK = [next(c for c in CASES if c.category == category) for category in dict.fromkeys(c.category for c in CASES)]


def test_the_fuzz_corpus_is_several_hundred_cases_over_every_category():
    assert len(CASES) >= 300
    assert {c.category for c in QUICK} == set(MODEL_MUTATIONS) | set(INPUT_MUTATIONS)


def _check(case: Case, tmp_path, capfd, monkeypatch):
    DeviceGuard(monkeypatch)
    folder = tmp_path / "case"
    folder.mkdir()
    argv = case.build(folder)
    before = snapshot(folder)
    outcome = run_command(argv, capfd)
    assert_refused(outcome, before, snapshot(folder))


@pytest.mark.parametrize("case", QUICK, ids=lambda c: c.name)
def test_a_mutated_input_is_refused_in_one_line_leaving_everything_as_it_was(case, tmp_path, capfd, monkeypatch):
    _check(case, tmp_path, capfd, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c not in QUICK], ids=lambda c: c.name)
def test_every_mutated_input_is_refused_in_one_line_leaving_everything_as_it_was(case, tmp_path, capfd,
                                                                                  monkeypatch):
    _check(case, tmp_path, capfd, monkeypatch)
