"""Speed of the spiking ONNX reference paths against the source ANN, side by side in one run (figures, not a test).

Models: a QDQ ResNet-18 (tests/cifar_models.py: torchvision's architecture on 3x32x32 inputs, random
weights, onnxruntime ``quantize_static`` with uint8 activations and per-channel int8 weights) run
``--batch`` images per ``session.run``, and the digits CNN sample (samples/digits_cnn_pmsm_L2.onnx,
exported at batch 1, so one image per ``session.run``) on ``--digits`` test images. For each: the
source ANN on ONNX Runtime with graph optimizations off (the reference semantics), then its spiking
ONNX at each T through

- ``custom op``: the ``ai.pmsm::MultiSpikeNeuron`` kernel (``SpikingModel(model)``, the reference);
- ``standard-op body``: standard ONNX ops only (``portable=True``: the file's lean form since issue 23,
  ``pmsm.runtime.lean``; the model-local function alone with ``lean=False``);

and, with ``--before REV`` (default 5524697, the revision before this benchmark; ``none`` skips it):

- ``custom op, list outputs``: the same kernel called through onnxruntime-extensions' own dispatcher,
  which hands outputs back as Python lists, as at REV;
- ``body of REV``: the function body that REV's exporter/portable.py writes.

Spikes are collected (``collect_spikes=True``, as ``--verify`` runs the reference). Each path runs
round robin with the others, piece by piece (the ResNet-18: one run of ``--batch`` images; the
digits CNN: 10 images per call), ``--rounds`` times; the figure adds up each piece's fastest time
over the rounds (the least disturbed by other load on the machine), the median of the rounds' totals
beside it; ``vs ANN`` is the median, over pieces and rounds, of the path's time over the ANN's on
the same piece moments before or after (a burst of other load falls on both). ``equal`` says whether
the outputs and every spike of the path are bit for bit those of the custom op at that T.

``--profile`` prints instead where the custom op's time goes at T = 1, with both dispatchers: the
custom op's node time in ONNX Runtime's own profile (the C++ kernel of onnxruntime-extensions: inputs
to numpy, the Python call, outputs back to tensors), the part of it spent in the Python dispatcher
(attributes, the kernel, packing the outputs), and in the kernel itself (``pmsm.runtime.neuron.step``
and its checks), per run, per call and per element; then the kernel's own cProfile.

``--loop-costs`` prints what ONNX Runtime's executor charges, with one intra-op thread and the calling
thread's CPU time: each node of a kind in a ``Loop`` body (the standard-op body's building blocks),
and a ``Loop`` carrying 33 tensors of 36,000 floats (the ResNet-18's membranes at batch 16) against
the same ``Add`` nodes in a plain graph.

``--sessions`` compares the neuron's implementations at the level of one ``session.run`` with one
intra-op thread, timed by the calling thread's CPU time (fastest of ``--rounds`` x 20 runs for the
digits CNN, ``--rounds`` for the ResNet-18): the ANN, the custom op, the body, the body of REV, and as
a floor the spiking model with each neuron written out as the four or five ops its own attributes
need (``Add``, ``Floor`` or ``Round``, ``Clip`` with constant bounds, ``Add(+0.0)`` where a bound is
0, ``Sub``), which no model-local function can be.

    .venv/bin/python benchmarks/reference_speed.py [--batch 16] [--digits 100] [--timesteps 1,4]
        [--rounds 5] [--before 5524697] [--models resnet18,digits] [--profile | --loop-costs | --sessions]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import types

import numpy as np
import onnx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # tests/cifar_models.py builds the ResNet-18


def resnet18(folder: str, batch: int):
    import cifar_models

    path = cifar_models.quantized("resnet18", folder, dynamic_batch=True)
    x = np.random.default_rng(0).uniform(0.0, 1.0, (batch, *cifar_models.INPUT_SHAPE)).astype(np.float32)
    return onnx.load(str(path)), x, batch


def digits(images: int):
    x = np.load(os.path.join(REPO, "samples", "digits_test.npz"))["x"][:images]
    return onnx.load(os.path.join(REPO, "samples", "digits_cnn_pmsm_L2.onnx")), x, None


def body_of_revision(revision: str) -> types.ModuleType:
    """exporter/portable.py as it was at ``revision``, as a module (it imports only onnx and pmsm's schema)."""
    source = subprocess.run(["git", "-C", REPO, "show", f"{revision}:exporter/portable.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType(f"portable_at_{revision}")
    exec(compile(source, f"{revision}:exporter/portable.py", "exec"), module.__dict__)  # noqa: S102
    return module


class ListOutputs:
    """While active, the kernels are called through onnxruntime-extensions' own dispatcher, which
    returns their outputs as lists (what pmsm.runtime.ortop replaced with arrays)."""

    def __enter__(self):
        from onnxruntime_extensions import PyOp, _ocos

        PyOp.install_hooker(_ocos._on_pyop_invocation)

    def __exit__(self, *exc):
        from onnxruntime_extensions import PyOp, _ocos

        from pmsm.runtime import ortop

        PyOp.install_hooker(ortop._dispatch_to(_ocos._on_pyop_invocation, ortop._array_kernels()))


def same_bits(a, b) -> bool:
    a, b = np.ascontiguousarray(a, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def bench(name: str, source, x: np.ndarray, batch, timesteps: list[int], rounds: int, before: str | None) -> None:
    from pmsm.runtime import portable
    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.runtime.execute import AnnRunner, SpikingModel

    spiking, neurons = to_spiking_onnx(source)
    ann = AnnRunner(source)
    paths = {"custom op": (SpikingModel(spiking), None), "standard-op body": (SpikingModel(spiking, portable=True), None)}
    if before:
        old = onnx.ModelProto()
        old.CopyFrom(spiking)
        del old.functions[:]
        old.functions.append(body_of_revision(before).neuron_function(portable.default_opset(spiking)))
        paths["custom op, list outputs"] = (paths["custom op"][0], ListOutputs)
        paths[f"body of {before}"] = (SpikingModel(old, portable=True), None)

    # timed in pieces: the ResNet-18 one session.run of `batch` images; the digits model (one image per
    # session.run) 10 images per SpikingModel.run, which pays its own checks once per call as --verify does
    chunk = batch or 10
    pieces = [x[i:i + chunk] for i in range(0, len(x), chunk)]

    def runner(label: str, t: int):
        if label == "ann":
            return lambda piece: ann.run(piece)
        model, context = paths[label]
        if context is None:
            return lambda piece: model.run(piece, t, collect_spikes=True)

        def run(piece):
            with context():
                return model.run(piece, t, collect_spikes=True)
        return run

    for label in ["ann", *paths]:
        runner(label, 1)(pieces[0])  # warm up every session
    print(f"\n{name}: {len(neurons)} neuron layers, {len(x)} images, {batch or 1} per session.run")
    print(f"{'T':>2}  {'path':<26}{'ms':>10}{'median':>10}{'vs ANN':>8}{'equal':>7}")
    for t in timesteps:
        labels = ["ann", *paths]
        runs = {label: runner(label, t) for label in labels}
        spent = {label: np.zeros((rounds, len(pieces))) for label in labels}
        results = {label: [None] * len(pieces) for label in labels}
        for r in range(rounds):
            for i, piece in enumerate(pieces):
                # every path on the same piece back to back, starting with another one each round: a
                # burst of other load then falls on all of them alike
                for label in labels[r % len(labels):] + labels[:r % len(labels)]:
                    begin = time.perf_counter()
                    results[label][i] = runs[label](piece)
                    spent[label][r, i] = time.perf_counter() - begin
        # each piece's fastest over the rounds, added up: the least disturbed by other load
        fastest = {label: float(times.min(axis=0).sum()) for label, times in spent.items()}
        median = {label: float(np.median(times.sum(axis=1))) for label, times in spent.items()}
        # the ratio of two paths measured on the same piece moments apart, the median over pieces and rounds
        ratio = {label: float(np.median(times / spent["ann"])) for label, times in spent.items()}
        print(f"{t:>2}  {'source ANN (opt. off)':<26}{fastest['ann'] * 1e3:>10.1f}{median['ann'] * 1e3:>10.1f}"
              f"{1.0:>8.2f}{'':>7}")
        for label in paths:
            equal = all(
                all(same_bits(a, b) for a, b in zip(got.outputs, want.outputs))
                and all(same_bits(got.spikes[k], want.spikes[k]) for k in want.spikes)
                for got, want in zip(results[label], results["custom op"]))
            print(f"{t:>2}  {label:<26}{fastest[label] * 1e3:>10.1f}{median[label] * 1e3:>10.1f}"
                  f"{ratio[label]:>8.2f}{'yes' if equal else 'NO':>7}", flush=True)


class Timed:
    """Wraps a callable, adding up the wall time spent in it and counting the calls."""

    def __init__(self, function):
        self.function, self.seconds, self.calls = function, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1


def profile(name: str, source, x: np.ndarray, runs: int = 3) -> None:
    import cProfile
    import json
    import pstats

    import onnxruntime as ort
    from onnxruntime_extensions import PyOp, _ocos

    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.runtime import ortop

    spiking, neurons = to_spiking_onnx(source)
    kernel = next(o for o in ortop._array_kernels().values() if o.op_type.endswith(ortop.NEURON_OP))
    feed = {source.graph.input[0].name: x, "timesteps": np.array(1, np.int64)}
    print(f"\n{name}: where the custom op's time goes at T = 1, {len(x)} images per run, "
          f"{len(neurons)} neuron layers, mean of {runs} runs")
    print(f"{'dispatcher':<22}{'run ms':>9}{'node ms':>9}{'python ms':>11}{'kernel ms':>11}{'calls':>7}"
          f"{'elements':>10}{'node us/call':>14}{'ns/element':>12}")
    body = kernel.body
    for label, dispatcher in (("extensions' (lists)", _ocos._on_pyop_invocation),
                              ("pmsm's (arrays)", ortop._dispatch_to(_ocos._on_pyop_invocation, ortop._array_kernels()))):
        timed_dispatcher, timed_body = Timed(dispatcher), Timed(body)
        elements = []
        counted = lambda *inputs, **attrs: elements.append(np.size(inputs[0])) or timed_body(*inputs, **attrs)  # noqa: E731
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.register_custom_ops_library(ortop.get_library_path())
        with tempfile.TemporaryDirectory(prefix="pmsm-profile-") as folder:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(folder, "profile")
            session = ort.InferenceSession(spiking.SerializeToString(), so, providers=["CPUExecutionProvider"])
            session.run(None, feed)  # warm up
            PyOp.install_hooker(timed_dispatcher)
            kernel.body = counted
            try:
                for _ in range(runs):
                    session.run(None, feed)
            finally:
                kernel.body = body
                PyOp.install_hooker(ortop._dispatch_to(_ocos._on_pyop_invocation, ortop._array_kernels()))
            with open(session.end_profiling()) as handle:
                events = json.load(handle)
        node = sum(e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
                   and e["args"].get("op_name") == ortop.NEURON_OP) * 1e-6
        model_runs = [e["dur"] * 1e-6 for e in events if e.get("cat") == "Session" and e["name"] == "model_run"]
        run_s = sum(model_runs[-runs:])
        calls = len(elements)
        print(f"{label:<22}{run_s / runs * 1e3:>9.1f}{node / runs * 1e3:>9.1f}{timed_dispatcher.seconds / runs * 1e3:>11.1f}"
              f"{timed_body.seconds / runs * 1e3:>11.1f}{calls // runs:>7}{sum(elements) // runs:>10}"
              f"{node / calls * 1e6:>14.1f}{node / sum(elements) * 1e9:>12.2f}")
    profiler = cProfile.Profile()
    inputs = [(np.ascontiguousarray(np.random.default_rng(0).normal(size=n), np.float32), np.float32(0.0))
              for n in sorted(set(elements))]
    profiler.enable()
    for z, u in inputs:
        for _ in range(20):
            body(z, u, 0, 255, 0.0, "half_even")
    profiler.disable()
    print("the kernel's own time (cProfile, 20 calls at each layer size):")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(6)


def _loop(body_nodes: list, carried: list[tuple[str, np.ndarray]], outer: list) -> onnx.ModelProto:
    """``Loop(T)`` over ``body_nodes`` reading ``z`` (a graph input) and outer initializers, carrying
    ``carried`` (``(name, initial value)``: the body computes ``name + "_next"``) and a flag."""
    from onnx import TensorProto, helper, numpy_helper

    state = [("flag", np.array(True))] + carried
    body = helper.make_graph(
        body_nodes + [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Identity", ["flag"], ["flag_next"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), None) for name, v in state],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])]
        + [helper.make_tensor_value_info(f"{name}_next", helper.np_dtype_to_tensor_dtype(v.dtype), None) for name, v in state])
    inits = [numpy_helper.from_array(v, f"{name}_0") for name, v in state] + outer
    graph = helper.make_graph(
        [helper.make_node("Loop", ["T", ""] + [f"{name}_0" for name, _ in state], [f"{name}_final" for name, _ in state],
                          body=body)], "loop",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None), helper.make_tensor_value_info("T", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("flag_final", TensorProto.BOOL, [])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def loop_costs() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 4

    def cpu_seconds(model, feed, repeats=9) -> float:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            session.run(None, feed)
            best = min(best, time.thread_time() - start)
        return best

    copies, steps = 20, 200
    z = np.random.default_rng(0).normal(size=1024).astype(np.float32)
    feed = {"z": z, "T": np.array(steps, np.int64)}
    outer = [numpy_helper.from_array(np.array(2, np.int64), "two"), numpy_helper.from_array(np.array(True), "yes")]

    def branch(op, i):
        return helper.make_graph([helper.make_node(op, ["z"], [f"r{op}{i}"])], f"b{op}{i}", [],
                                 [helper.make_tensor_value_info(f"r{op}{i}", TensorProto.FLOAT, None)])

    kinds = {
        "Constant (int64 scalar)": lambda i: helper.make_node("Constant", [], [f"o{i}"], value_int=3),
        "Cast (int64 scalar)": lambda i: helper.make_node("Cast", ["two"], [f"o{i}"], to=TensorProto.FLOAT),
        "Equal (int64 scalars)": lambda i: helper.make_node("Equal", ["two", "two"], [f"o{i}"]),
        "Floor (1,024 floats)": lambda i: helper.make_node("Floor", ["z"], [f"o{i}"]),
        "If -> Floor (1,024 floats)": lambda i: helper.make_node("If", ["yes"], [f"o{i}"], then_branch=branch("Floor", i),
                                                                  else_branch=branch("Round", i)),
        "Where (1,024 floats)": lambda i: helper.make_node("Where", ["yes", "z", "z"], [f"o{i}"]),
    }
    empty = cpu_seconds(_loop([], [], outer), feed)
    print("\nONNX Runtime's executor, graph optimizations off, 1 thread, CPU time of the calling thread:")
    print(f"  an empty Loop iteration: {empty / steps * 1e6:.2f} us")
    for label, node in kinds.items():
        spent = cpu_seconds(_loop([node(i) for i in range(copies)], [], outer), feed)
        print(f"  {label:<28} {(spent - empty) / (copies * steps) * 1e6:6.2f} us per node and iteration")
    layers, size = 33, 36000
    z = np.random.default_rng(0).normal(size=size).astype(np.float32)
    carried = [(f"u{k}", np.zeros(size, np.float32)) for k in range(layers)]
    adds = [helper.make_node("Add", [f"u{k}", "z"], [f"u{k}_next"]) for k in range(layers)]
    loop = _loop(adds, carried, [])
    one = cpu_seconds(loop, {"z": z, "T": np.array(1, np.int64)})
    nine = cpu_seconds(loop, {"z": z, "T": np.array(9, np.int64)})
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("Add", [f"u{k}", "z"], [f"u{k}_next"]) for k in range(layers)], "plain",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [size])]
        + [helper.make_tensor_value_info(f"u{k}", TensorProto.FLOAT, [size]) for k in range(layers)],
        [helper.make_tensor_value_info(f"u{k}_next", TensorProto.FLOAT, [size]) for k in range(layers)]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    flat = cpu_seconds(plain, {"z": z, **{f"u{k}": z for k in range(layers)}})
    print(f"  Loop carrying {layers} tensors of {size:,} floats, each updated by an Add: T=1 {one * 1e3:.2f} ms, "
          f"each further iteration {(nine - one) / 8 * 1e3:.2f} ms; the same Adds in a plain graph {flat * 1e3:.2f} ms")


def written_out(spiking):
    """A copy of ``spiking`` whose neurons are the ops their own attributes need (a floor, not a format)."""
    from onnx import helper, numpy_helper

    from pmsm.runtime import ortop
    from pmsm.runtime.schema import is_neuron

    model = onnx.ModelProto()
    model.CopyFrom(spiking)
    del model.functions[:]
    body = next(n for n in model.graph.node if n.op_type == "Loop").attribute[0].g
    nodes = []
    for node in body.node:
        if not is_neuron(node):
            nodes.append(node)
            continue
        p = ortop.neuron_params_of(node)
        (z, u), (s, u_next), name = node.input, node.output, f"written_out/{node.name}/"
        for bound, value in (("lo", p.lo), ("hi", p.hi), ("zero", 0.0)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name + bound))
        zero_bound = p.lo == 0 or p.hi == 0
        nodes += [helper.make_node("Add", [u, z], [name + "v"]),
                  helper.make_node("Floor" if p.rounding == "floor" else "Round", [name + "v"], [name + "r"]),
                  helper.make_node("Clip", [name + "r", name + "lo", name + "hi"], [name + "c" if zero_bound else s])]
        if zero_bound:
            nodes.append(helper.make_node("Add", [name + "c", name + "zero"], [s]))
        nodes.append(helper.make_node("Sub", [name + "v", s], [u_next]))
    del body.node[:]
    body.node.extend(nodes)
    return model


def sessions(name: str, source, x: np.ndarray, batch, timesteps: list[int], rounds: int, before: str | None) -> None:
    import onnxruntime as ort

    from pmsm.runtime import portable
    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.runtime import ortop

    spiking, _ = to_spiking_onnx(source)
    models = {"custom op": (spiking, True), "standard-op body": (spiking, False)}
    if before:
        old = onnx.ModelProto()
        old.CopyFrom(spiking)
        del old.functions[:]
        old.functions.append(body_of_revision(before).neuron_function(portable.default_opset(spiking)))
        models[f"body of {before}"] = (old, False)
    models["written out (floor)"] = (written_out(spiking), False)

    def session(model, custom_ops):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        options.log_severity_level = 4
        if custom_ops:
            options.register_custom_ops_library(ortop.get_library_path())
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    xb = x[: batch or 1]
    feed = {source.graph.input[0].name: xb}
    ann = session(source, False)
    runs = rounds * (1 if batch else 20)
    print(f"\n{name}: one session.run of {len(xb)} image(s), 1 thread, CPU ms of the calling thread, "
          f"fastest of {runs}")
    print(f"{'T':>2}  {'path':<26}{'ms':>10}{'vs ANN':>8}")
    built = {label: session(*spec) for label, spec in models.items()}
    for t in timesteps:
        feeds = {"ann": feed, **{label: {**feed, "timesteps": np.array(t, np.int64)} for label in built}}
        everything = {"ann": ann, **built}
        best = {label: float("inf") for label in everything}
        for label, s in everything.items():
            s.run(None, feeds[label])
        for _ in range(runs):
            for label, s in everything.items():
                begin = time.thread_time()
                s.run(None, feeds[label])
                best[label] = min(best[label], time.thread_time() - begin)
        for label, spent in best.items():
            shown = "source ANN (opt. off)" if label == "ann" else label
            print(f"{t:>2}  {shown:<26}{spent * 1e3:>10.3f}{spent / best['ann']:>8.2f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="ResNet-18 images per session.run")
    parser.add_argument("--digits", type=int, default=100, help="digits test images (one per session.run)")
    parser.add_argument("--timesteps", default="1,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--before", default="5524697", help="revision whose paths to measure too ('none': skip)")
    parser.add_argument("--models", default="resnet18,digits")
    parser.add_argument("--profile", action="store_true", help="where the custom op's time goes, instead")
    parser.add_argument("--loop-costs", action="store_true", help="what a node and the Loop cost, instead")
    parser.add_argument("--sessions", action="store_true", help="the implementations at session level, instead")
    args = parser.parse_args(argv)
    if args.loop_costs:
        loop_costs()
        return 0
    before = None if args.before.lower() == "none" else args.before
    timesteps = [int(t) for t in args.timesteps.split(",")]
    import onnxruntime as ort

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU cores: {os.cpu_count()} (load average {load:.1f}), onnxruntime {ort.__version__} (default threads)")
    if not (args.profile or args.sessions):
        print(f"ms for all images: each piece's fastest of {args.rounds} rounds added up, then the median round; "
              f"vs ANN: median of the paired ratios to the ANN")
    with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as folder:
        for name in args.models.split(","):
            if name == "resnet18":
                source, x, batch = resnet18(folder, args.batch)
                label = "QDQ ResNet-18 (CIFAR-size, u8)"
            elif name == "digits":
                source, x, batch = digits(args.digits)
                label = "digits CNN (samples/digits_cnn_pmsm_L2.onnx)"
            else:
                parser.error(f"unknown model {name!r}; choose from resnet18, digits")
            if args.profile:
                profile(label, source, x if batch else x[:1], runs=3 if batch else 300)
            elif args.sessions:
                sessions(label, source, x, batch, timesteps, args.rounds, before)
            else:
                bench(label, source, x, batch, timesteps, args.rounds, before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
