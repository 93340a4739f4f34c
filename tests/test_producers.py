"""Quantized networks from real producers convert to spiking ONNX and are bit-exact at T = 1.

Every producer in tests/producers.py (torch's two exporters with eight kinds of quantizer idiom,
onnxruntime's quantize_static at 8 and 16 bits, standard and contrib Q/DQ, Brevitas QONNX and QCDQ) writes a trained MLP and a trained CNN
(residual add, max pool, average pool, strided convolution, flatten). Each file is converted with
``to_spiking_onnx`` and run on the 360 digits test images by ONNX Runtime sessions these tests build
themselves (graph optimizations disabled, 1 and 2 intra-op threads):

- T = 1, as the user runs the source: the batch-1 export one sample at a time, and the same network
  exported at a fixed batch of ``BATCH``, ``BATCH`` samples at a time. The spiking model runs at
  the same batch size and its output equals the source's bit for bit, through the neuron's kernel
  (the custom op) and through its standard-op body;
- T = 2, 4: accuracy stays near the ANN's (printed in the summary at the end of the session);
- the source at ONNX Runtime's default optimization level is compared too, as information.

One architecture per producer runs by default; ``-m slow`` runs the rest of the matrix.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from producers import (
    ARCHITECTURES,
    BREVITAS_PRODUCERS,
    PRODUCERS,
    ProducerZoo,
    accuracy,
)

from pmsm.runtime import portable
from pmsm.exporter.convert import convert, network_for_targets, to_spiking_onnx
from pmsm.runtime import ortop, qonnx
from pmsm.runtime.execute import AnnRunner, SpikingModel
from pmsm.runtime.lean import lean_model
from pmsm.runtime.schema import TIME_LOOP

pytestmark = pytest.mark.torch  # every producer trains its network in torch

TIMESTEPS = (1, 2, 4)
THREADS = (1, 2)
BATCH = 40  # the fixed batch of the second export of each network: 9 runs over the test split
LOOP_BYTES = 8 * 1024  # the time loop's own declarations, at most, on the small producer networks
ACCURACY_MARGIN = 0.05  # T = 2, 4 may lose at most this much accuracy against the ANN
ACTIVATION_QUANTIZER_OPS = {"Floor", "Round", "QuantizeLinear", "DequantizeLinear", "Quant", "IntQuant",
                            "BipolarQuant", "Clip", "Min", "Max"}

DEFAULT_CASES = {
    ("pmsm-dynamo", "cnn"), ("pmsm-legacy", "mlp"),
    ("floor-dynamo", "mlp"), ("floor-legacy", "cnn"),
    ("ste-dynamo", "mlp"), ("ste-legacy", "cnn"),
    ("qcfs-legacy", "cnn"), ("qcfs-dynamo", "mlp"),
    ("minmax-dynamo", "cnn"), ("minmax-legacy", "mlp"),
    ("fakequant-dynamo", "mlp"), ("fakequant-legacy", "cnn"),
    ("clampfirst-dynamo", "mlp"), ("clampfirst-legacy", "cnn"),
    ("relufloor-dynamo", "cnn"), ("relufloor-legacy", "mlp"),
    ("qdq-u8", "cnn"), ("qdq-s8", "mlp"), ("qdq-a16", "cnn"), ("qdq-au16", "mlp"), ("qdq-c8", "mlp"),
    ("brevitas-qonnx", "cnn"), ("brevitas-qcdq", "mlp"),
    ("brevitas-qonnx-legacy", "mlp"), ("brevitas-qcdq-legacy", "cnn"),
}


def _extras(producer: str) -> list:
    """Brevitas comes with the ``producers`` extra; the other producers need torch alone."""
    return [pytest.mark.producers] if producer in BREVITAS_PRODUCERS else []


CASES = [
    pytest.param(producer, arch, id=f"{producer}-{arch}",
                 marks=_extras(producer) + ([] if (producer, arch) in DEFAULT_CASES else [pytest.mark.slow]))
    for producer in PRODUCERS for arch in ARCHITECTURES
]


@dataclass
class Verified:
    """What one producer's model gave on the test split."""

    producer: str
    arch: str
    neurons: int
    ann: dict[int, np.ndarray]  # threads -> the batch-1 source, one sample at a time
    snn_t1: dict[int, np.ndarray]  # threads -> its spiking model at T = 1, one sample at a time
    ann_batch: dict[int, np.ndarray]  # threads -> the batch-BATCH export, BATCH samples at a time
    snn_batch_t1: dict[int, np.ndarray]  # threads -> its spiking model at T = 1, BATCH samples at a time
    body_t1: np.ndarray  # the spiking model's standard-op body (no kernel registered) at T = 1, batch 1
    body_batch_t1: np.ndarray  # the same at batch BATCH
    lean_t1: np.ndarray  # the spiking model's lean form (pmsm.runtime.lean, standard ops) at T = 1, batch 1
    lean_batch_t1: np.ndarray  # the same at batch BATCH
    lean_t2_equal: bool  # the lean form equals the kernel bit for bit at T = 2, batch 1
    ann_ort_opt: np.ndarray  # the source at ONNX Runtime's default optimization level
    size_ratio: float  # spiking file / source file
    snn: dict[int, np.ndarray] = field(default_factory=dict)  # T -> mean readout
    body_ops: set[str] = field(default_factory=set)  # ops inside the time loop
    checker_error: str = ""


def ort_run(model: onnx.ModelProto, x: np.ndarray, threads: int, timesteps: int | None = None,
            kernel: bool = True, lean: bool = False) -> np.ndarray:
    """``model``'s first output on ``x``, from a session built here: optimizations off, ``threads``
    intra-op threads, as many samples per run as the model's fixed batch (QONNX and neuron kernels
    of this package registered where the model needs them; ``kernel=False``: a spiking model runs
    the standard-op body of its neuron, as a plain ONNX Runtime session does)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 4
    spiking = timesteps is not None
    if (spiking and kernel) or qonnx.uses_qonnx(model):
        options.register_custom_ops_library(ortop.get_library_path())
    runnable = model if spiking else qonnx.with_qonnx_defaults(model)
    if lean:
        runnable = lean_model(model)
    session = ort.InferenceSession(runnable.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value or len(x)
    assert len(x) % batch == 0
    outputs = []
    for start in range(0, len(x), batch):
        feed = {model.graph.input[0].name: x[start:start + batch]}
        if spiking:
            feed["timesteps"] = np.array(timesteps, np.int64)
        outputs.append(session.run(None, feed)[0])
    return np.concatenate(outputs)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return ProducerZoo(tmp_path_factory.mktemp("producers"))


@pytest.fixture(scope="session")
def summary(request, zoo):
    rows: dict[tuple[str, str], Verified] = {}
    yield rows
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if rows and reporter is not None:
        with capture.global_and_fixture_disabled() if capture else _nothing():
            reporter.write_line("")
            for line in summary_table(rows, zoo.data.y_test):
                reporter.write_line(line)


@pytest.fixture(scope="session")
def verified(zoo, summary):
    """Convert and run each (producer, architecture) once per session."""

    def get(producer: str, arch: str) -> Verified:
        if (producer, arch) not in summary:
            summary[(producer, arch)] = verify(zoo, producer, arch)
        return summary[(producer, arch)]

    return get


def verify(zoo: ProducerZoo, producer: str, arch: str) -> Verified:
    built = zoo.build(producer, arch)
    source = built.model
    batched_source = zoo.build(producer, arch, batch=BATCH).model
    x = zoo.data.x_test
    spiking, records = to_spiking_onnx(source)
    batched_spiking, _ = to_spiking_onnx(batched_source)
    result = Verified(
        producer, arch, len(records),
        ann={t: ort_run(source, x, t) for t in THREADS},
        snn_t1={t: ort_run(spiking, x, t, timesteps=1) for t in THREADS},
        ann_batch={t: ort_run(batched_source, x, t) for t in THREADS},
        snn_batch_t1={t: ort_run(batched_spiking, x, t, timesteps=1) for t in THREADS},
        body_t1=ort_run(spiking, x, 1, timesteps=1, kernel=False),
        body_batch_t1=ort_run(batched_spiking, x, 1, timesteps=1, kernel=False),
        lean_t1=ort_run(spiking, x, 1, timesteps=1, kernel=False, lean=True),
        lean_batch_t1=ort_run(batched_spiking, x, 1, timesteps=1, kernel=False, lean=True),
        lean_t2_equal=bool(np.array_equal(ort_run(spiking, x[:64], 1, timesteps=2, kernel=False, lean=True).view(np.uint32),
                                          ort_run(spiking, x[:64], 1, timesteps=2).view(np.uint32))),
        ann_ort_opt=AnnRunner(source, optimized=True).run(x)[0],
        size_ratio=len(spiking.SerializeToString()) / built.path.stat().st_size,
    )
    loop = next(n for n in spiking.graph.node if n.name == TIME_LOOP)
    result.body_ops = {n.op_type for n in loop.attribute[0].g.node}
    try:
        onnx.checker.check_model(spiking)
    except onnx.checker.ValidationError as error:
        result.checker_error = str(error)
    model = SpikingModel(spiking)
    for timesteps in TIMESTEPS:
        result.snn[timesteps] = model.run(x, timesteps).output
    return result


def summary_table(rows: dict[tuple[str, str], Verified], labels: np.ndarray) -> list[str]:
    lines = [
        f"producer x architecture on the digits test split (T=1 max diff at batch 1 | batch {BATCH}, "
        "1 and 2 threads; size: spiking / source file; ORT-opt: source at ORT's default level vs disabled)",
        f"{'producer':22s} {'arch':4s} {'neurons':>7s} {'T=1 diff':>9s} {'size':>5s} {'ANN':>7s} {'T=1':>7s} "
        f"{'T=2':>7s} {'T=4':>7s} {'ORT-opt diff':>12s}",
    ]
    for (producer, arch), v in sorted(rows.items(), key=lambda kv: (PRODUCERS.index(kv[0][0]), kv[0][1])):
        diff = max(max(_max_diff(v.snn_t1[t], v.ann[t]), _max_diff(v.snn_batch_t1[t], v.ann_batch[t])) for t in THREADS)
        accs = [accuracy(v.ann[1], labels)] + [accuracy(v.snn[t], labels) for t in TIMESTEPS]
        lines.append(
            f"{producer:22s} {arch:4s} {v.neurons:7d} {diff:9.3g} {v.size_ratio:5.2f} "
            + " ".join(f"{100 * a:6.2f}%" for a in accs)
            + f" {_max_diff(v.ann_ort_opt, v.ann[1]):12.3g}"
        )
    return lines


@contextlib.contextmanager
def _nothing():
    yield


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_spiking_onnx_is_bit_exact_with_the_source_run_one_sample_at_a_time(verified, producer, arch):
    v = verified(producer, arch)
    for threads in THREADS:
        assert v.snn_t1[threads].shape == v.ann[threads].shape
        assert _max_diff(v.snn_t1[threads], v.ann[threads]) == 0.0, f"{threads} thread(s)"


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_spiking_onnx_is_bit_exact_with_the_source_exported_and_run_at_batch_n(verified, producer, arch):
    v = verified(producer, arch)
    for threads in THREADS:
        assert _max_diff(v.snn_batch_t1[threads], v.ann_batch[threads]) == 0.0, f"{threads} thread(s)"


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_standard_op_body_is_bit_exact_with_the_source_at_batch_one_and_batch_n(verified, producer, arch):
    v = verified(producer, arch)
    assert _max_diff(v.body_t1, v.ann[1]) == 0.0, "batch 1"
    assert _max_diff(v.body_batch_t1, v.ann_batch[1]) == 0.0, f"batch {BATCH}"


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_lean_form_is_bit_exact_with_the_source_and_equals_the_kernel_at_t2(verified, producer, arch):
    v = verified(producer, arch)
    assert np.array_equal(v.lean_t1.view(np.uint32), v.ann[1].view(np.uint32)), "batch 1"
    assert np.array_equal(v.lean_batch_t1.view(np.uint32), v.ann_batch[1].view(np.uint32)), f"batch {BATCH}"
    assert v.lean_t2_equal


@pytest.mark.parametrize("producer, arch", CASES)
def test_more_timesteps_keep_accuracy_near_the_ann(verified, zoo, producer, arch):
    v = verified(producer, arch)
    labels = zoo.data.y_test
    ann = accuracy(v.ann[1], labels)
    assert ann > 0.85, f"{producer} {arch}: the ANN itself trained badly ({ann:.3f})"
    for timesteps in (2, 4):
        snn = accuracy(v.snn[timesteps], labels)
        assert snn >= ann - ACCURACY_MARGIN, f"T={timesteps}: {snn:.3f} against ANN {ann:.3f}"


@pytest.mark.parametrize("producer, arch", CASES)
def test_every_activation_quantizer_became_a_neuron(verified, producer, arch):
    v = verified(producer, arch)
    assert v.neurons >= (2 if arch == "mlp" else 4)
    assert not v.body_ops & ACTIVATION_QUANTIZER_OPS, "a quantizer was left in the time loop"


@pytest.mark.parametrize("producer, arch", CASES)
def test_spiking_file_is_about_the_size_of_its_source(verified, zoo, producer, arch):
    """Weights stay as the source stores them (int8 behind DequantizeLinear stays int8); what the
    spiking file adds is the neuron's function body (about 5 kB) and the loop around the network:
    its body's declared inputs and outputs, the initial states and the readout (a few kB more, which
    shows on these 15-40 kB files)."""
    source_bytes = zoo.build(producer, arch).path.stat().st_size
    spiking_bytes = verified(producer, arch).size_ratio * source_bytes
    body_bytes = len(portable.neuron_function(17).SerializeToString())
    assert spiking_bytes <= 1.1 * source_bytes + body_bytes + LOOP_BYTES


@pytest.mark.parametrize("producer, arch", CASES)
def test_spiking_model_passes_the_onnx_checker(verified, producer, arch):
    assert verified(producer, arch).checker_error == ""


@pytest.mark.parametrize("producer, arch", CASES)
def test_ort_optimized_source_is_reported_not_required_equal(verified, producer, arch):
    """ONNX Runtime's default level fuses QDQ pairs into integer kernels whose rounding may move a
    logit by a quantization step; the summary shows it, nothing asserts equality."""
    v = verified(producer, arch)
    assert v.ann_ort_opt.shape == v.ann[1].shape and np.all(np.isfinite(v.ann_ort_opt))


@pytest.mark.parametrize("producer", [pytest.param(p, marks=_extras(p)) for p in ("qdq-u8", "brevitas-qcdq")])
def test_spiking_model_keeps_the_source_interface(zoo, producer):
    """Same input and output names and shapes; QDQ on the logits and initializers listed as inputs included."""
    source = zoo.build(producer, "cnn" if producer == "qdq-u8" else "mlp").model
    spiking, _ = to_spiking_onnx(source)
    assert [o.name for o in spiking.graph.output] == [o.name for o in source.graph.output]
    assert [i.name for i in spiking.graph.input] == [source.graph.input[0].name, "timesteps"]
    assert spiking.graph.input[0].type == source.graph.input[0].type


@pytest.mark.parametrize("producer, arch", CASES)
def test_nir_file_read_back_and_interpreted_predicts_like_the_spiking_onnx(zoo, producer, arch, tmp_path):
    """NIR runs max pooling on each step's values, so it is checked against the spiking model
    built without temporal compensation."""
    from pmsm.targets.nir import NirInterpreter, read_nir, network_to_nir, write_nir

    conversion = convert(zoo.build(producer, arch).model, compensation=False)
    path = str(tmp_path / "model.nir")
    write_nir(network_to_nir(network_for_targets(conversion.network)), path)
    interpreter = NirInterpreter(read_nir(path))
    reference = SpikingModel(conversion.spiking)
    for timesteps in (1, 2):
        nir_run = interpreter.run(zoo.data.x_test, timesteps, collect_spikes=True)
        onnx_run = reference.run(zoo.data.x_test, timesteps, collect_spikes=True)
        np.testing.assert_array_equal(nir_run.output.argmax(1), onnx_run.output.argmax(1))
        total = sum(int(np.abs(s).sum()) for s in onnx_run.spikes.values())
        mismatched = sum(int(np.count_nonzero(nir_run.spikes[k] != s)) for k, s in onnx_run.spikes.items())
        # folding scales into weights re-associates float arithmetic: rare boundary cases only
        assert mismatched <= 2e-3 * total, f"{mismatched} of {total} spikes differ at T={timesteps}"
