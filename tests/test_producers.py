"""Quantized networks from real producers convert to spiking ONNX and are bit-exact at T = 1.

Every producer in tests/producers.py (torch's two exporters with three kinds of quantizer,
onnxruntime's quantize_static, Brevitas QONNX and QCDQ) writes a trained MLP and a trained CNN
(residual add, max pool, average pool, strided convolution, flatten). Each file is converted with
``to_spiking_onnx`` and run on the 360 digits test images:

- T = 1: the spiking model's output equals the source's bit for bit, with the same predictions;
- T = 2, 4: accuracy stays near the ANN's (printed in the summary at the end of the session);
- the source at ONNX Runtime's default optimization level is compared too, as information.

The source runs with graph optimizations disabled (the reference, DESIGN §9). Where the source
computes its weights at run time (``DequantizeLinear`` or QONNX ``Quant`` on weights), ONNX Runtime's
``Gemm`` takes another kernel for a single row than for a batch, so the source run one sample at a
time (it was exported at batch 1) and the source run on the whole batch can differ in the last
bit. The spiking model always runs batched, so the exactness criterion compares it with the source
run batched (``batch_agnostic_source``); against the sample-by-sample run the predictions must agree
and the difference is reported.

One architecture per producer runs by default; ``-m slow`` runs the rest of the matrix.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import onnx
import pytest

from producers import (
    ARCHITECTURES,
    BREVITAS_PRODUCERS,
    PRODUCERS,
    QDQ_PRODUCERS,
    ProducerZoo,
    accuracy,
)

from pmsm.exporter.convert import batch_agnostic_source, to_spiking_onnx
from pmsm.runtime.execute import SourceModel, SpikingModel

pytestmark = pytest.mark.torch  # every producer trains its network in torch

TIMESTEPS = (1, 2, 4)
ACCURACY_MARGIN = 0.05  # T = 2, 4 may lose at most this much accuracy against the ANN
WEIGHTS_COMPUTED_AT_RUN_TIME = QDQ_PRODUCERS + BREVITAS_PRODUCERS
QUANTIZER_OPS = {"Floor", "Round", "QuantizeLinear", "DequantizeLinear", "Quant", "IntQuant", "BipolarQuant"}

DEFAULT_CASES = {
    ("pmsm-dynamo", "cnn"), ("pmsm-legacy", "mlp"),
    ("floor-dynamo", "mlp"), ("floor-legacy", "cnn"),
    ("ste-dynamo", "mlp"), ("ste-legacy", "cnn"),
    ("qdq-u8", "cnn"), ("qdq-s8", "mlp"),
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
    ann: np.ndarray  # source, graph optimizations disabled, one sample at a time (exported at batch 1)
    ann_batched: np.ndarray  # the same source run on the whole split at once
    ann_ort_opt: np.ndarray  # the source at ONNX Runtime's default optimization level
    snn: dict[int, np.ndarray] = field(default_factory=dict)  # T -> mean readout
    spiking_ops: set[str] = field(default_factory=set)
    checker_error: str = ""


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
    source = zoo.build(producer, arch).model
    x = zoo.data.x_test
    spiking, records = to_spiking_onnx(source)
    result = Verified(
        producer, arch, len(records),
        ann=SourceModel(source).run(x)[0],
        ann_batched=SourceModel(batch_agnostic_source(source)).run(x)[0],
        ann_ort_opt=SourceModel(source, optimized=True).run(x)[0],
        spiking_ops={n.op_type for n in spiking.graph.node},
    )
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
        "producer x architecture on the digits test split (T=1 diff: vs the source run batched | "
        "run sample by sample; ORT-opt: source at ORT's default level vs disabled)",
        f"{'producer':21s} {'arch':4s} {'neurons':>7s} {'T=1 diff':>18s} {'ANN':>7s} {'T=1':>7s} {'T=2':>7s} "
        f"{'T=4':>7s} {'ORT-opt diff':>12s} {'agree':>7s}",
    ]
    for (producer, arch), v in sorted(rows.items(), key=lambda kv: (PRODUCERS.index(kv[0][0]), kv[0][1])):
        diff = f"{_max_diff(v.snn[1], v.ann_batched):.3g} | {_max_diff(v.snn[1], v.ann):.3g}"
        accs = [accuracy(v.ann, labels)] + [accuracy(v.snn[t], labels) for t in TIMESTEPS]
        agree = np.mean(v.ann_ort_opt.argmax(1) == v.ann.argmax(1))
        lines.append(
            f"{producer:21s} {arch:4s} {v.neurons:7d} {diff:>18s} "
            + " ".join(f"{100 * a:6.2f}%" for a in accs)
            + f" {_max_diff(v.ann_ort_opt, v.ann):12.3g} {100 * agree:6.1f}%"
        )
    return lines


@contextlib.contextmanager
def _nothing():
    yield


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_spiking_onnx_is_bit_exact_with_the_source(verified, producer, arch):
    v = verified(producer, arch)
    assert v.snn[1].shape == v.ann_batched.shape
    assert _max_diff(v.snn[1], v.ann_batched) == 0.0


@pytest.mark.parametrize("producer, arch", CASES)
def test_t1_predictions_are_those_of_the_source_run_sample_by_sample(verified, producer, arch):
    v = verified(producer, arch)
    assert np.array_equal(v.snn[1].argmax(axis=1), v.ann.argmax(axis=1))
    if producer not in WEIGHTS_COMPUTED_AT_RUN_TIME:
        # constant weights: ONNX Runtime computes the same numbers at any batch size
        assert _max_diff(v.snn[1], v.ann) == 0.0
    else:
        assert _max_diff(v.snn[1], v.ann) < 1e-4  # the last bit of a Gemm, never more


@pytest.mark.parametrize("producer, arch", CASES)
def test_more_timesteps_keep_accuracy_near_the_ann(verified, zoo, producer, arch):
    v = verified(producer, arch)
    labels = zoo.data.y_test
    ann = accuracy(v.ann, labels)
    assert ann > 0.85, f"{producer} {arch}: the ANN itself trained badly ({ann:.3f})"
    for timesteps in (2, 4):
        snn = accuracy(v.snn[timesteps], labels)
        assert snn >= ann - ACCURACY_MARGIN, f"T={timesteps}: {snn:.3f} against ANN {ann:.3f}"


@pytest.mark.parametrize("producer, arch", CASES)
def test_every_activation_quantizer_became_a_neuron(verified, producer, arch):
    v = verified(producer, arch)
    assert v.neurons >= (2 if arch == "mlp" else 4)
    assert not v.spiking_ops & QUANTIZER_OPS, "a quantizer was left in the spiking graph"


@pytest.mark.parametrize("producer, arch", CASES)
def test_spiking_model_passes_the_onnx_checker(verified, producer, arch):
    assert verified(producer, arch).checker_error == ""


@pytest.mark.parametrize("producer, arch", CASES)
def test_ort_optimized_source_is_reported_not_required_equal(verified, producer, arch):
    """ONNX Runtime's default level fuses QDQ pairs into integer kernels whose rounding may move a
    logit by a quantization step; the summary shows it, nothing asserts equality."""
    v = verified(producer, arch)
    assert v.ann_ort_opt.shape == v.ann.shape and np.all(np.isfinite(v.ann_ort_opt))


@pytest.mark.parametrize("producer", [pytest.param(p, marks=_extras(p)) for p in ("qdq-u8", "brevitas-qcdq")])
def test_spiking_model_keeps_the_source_interface(zoo, producer):
    """Same input and output names; QDQ on the logits and initializers listed as inputs included."""
    source = zoo.build(producer, "cnn" if producer == "qdq-u8" else "mlp").model
    spiking, _ = to_spiking_onnx(source)
    assert [o.name for o in spiking.graph.output] == [o.name for o in source.graph.output]
    assert [i.name for i in spiking.graph.input] == [source.graph.input[0].name, "timesteps"]


@pytest.mark.parametrize("producer, arch", CASES)
def test_nir_file_read_back_and_interpreted_predicts_like_the_spiking_onnx(verified, zoo, producer, arch, tmp_path):
    from pmsm.targets.nir import NirInterpreter, read_nir, spiking_onnx_to_nir, write_nir

    result = verified(producer, arch)
    spiking, _ = to_spiking_onnx(zoo.build(producer, arch).model)
    path = str(tmp_path / "model.nir")
    write_nir(spiking_onnx_to_nir(spiking), path)
    interpreter = NirInterpreter(read_nir(path))
    reference = SpikingModel(spiking)
    for timesteps in (1, 2):
        nir_run = interpreter.run(zoo.data.x_test, timesteps, collect_spikes=True)
        onnx_run = reference.run(zoo.data.x_test, timesteps, collect_spikes=True)
        np.testing.assert_array_equal(nir_run.output.argmax(1), result.snn[timesteps].argmax(1))
        total = sum(int(np.abs(s).sum()) for s in onnx_run.spikes.values())
        mismatched = sum(int(np.count_nonzero(nir_run.spikes[k] != s)) for k, s in onnx_run.spikes.items())
        # folding scales into weights re-associates float arithmetic: rare boundary cases only
        assert mismatched <= 2e-3 * total, f"{mismatched} of {total} spikes differ at T={timesteps}"
