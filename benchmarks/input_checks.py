"""What the input checks cost (figures, not tests), next to the conversion they guard.

For each model, measured side by side in one run (median of ``--repeats``): parsing the file;
onnx's full check (checker and strict shape inference); the value checks (scales, zero points,
weights, bit widths, tensor sizes); the ONNX Runtime session and one-sample run of the source in
a child process; the conversion itself; the post-flight (session and one-sample run of the
spiking model in a child process). Models: two bundled samples, and the VGG-16-sized and
ResNet-20-sized CNNs of ``benchmarks/run.py``.

    .venv/bin/python benchmarks/input_checks.py [--repeats 3] [--models mlp,cnn,vgg16,resnet20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import export_model, timed  # noqa: E402 - the models of the conversion benchmark

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
SAMPLE_MODELS = {"mlp": "digits_mlp_pmsm_L2.onnx", "cnn": "digits_cnn_pmsm_L2.onnx"}


def bench(path: str, repeats: int) -> dict:
    from pmsm.runtime.base import limits
    from pmsm.exporter import loading, validation
    from pmsm.exporter.convert import to_spiking_onnx
    from pmsm.runtime.base.memory import available_bytes
    from pmsm.exporter.postflight import check_spiking_model

    model = loading.read_model(path)
    loading._load_external_data(model, path)
    inferred = loading._check_structure(model, path)
    spiking = to_spiking_onnx(model)[0]
    return {
        "nodes": len(model.graph.node),
        "parse_s": timed(lambda: loading.read_model(path), repeats),
        "checker_s": timed(lambda: loading._check_structure(model, path), repeats),
        "values_s": timed(lambda: (validation.problems(model),
                                   validation.tensor_size_problems(model, inferred, available_bytes())), repeats),
        "ort_source_s": timed(lambda: loading._check_runs_on_onnxruntime(model, path, limits.current()), repeats),
        "convert_s": timed(lambda: to_spiking_onnx(model), repeats),
        "postflight_s": timed(lambda: check_spiking_model(spiking, path), repeats),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="mlp,cnn,vgg16,resnet20")
    args = parser.parse_args(argv)
    import pmsm.runtime.execute  # noqa: F401 - imported once before timing (onnxruntime-extensions imports torch)

    print(f"median of {args.repeats} runs, seconds")
    print(f"{'model':<10}{'nodes':>7}{'parse':>8}{'checker':>9}{'values':>8}{'ORT src':>9}{'convert':>9}"
          f"{'postflt':>9}{'checks/convert':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            path = os.path.join(SAMPLES, SAMPLE_MODELS[name]) if name in SAMPLE_MODELS else export_model(name, folder)
            f = bench(path, args.repeats)
            checks = f["parse_s"] + f["checker_s"] + f["values_s"] + f["ort_source_s"] + f["postflight_s"]
            print(f"{name:<10}{f['nodes']:>7}{f['parse_s']:>8.3f}{f['checker_s']:>9.3f}{f['values_s']:>8.3f}"
                  f"{f['ort_source_s']:>9.3f}{f['convert_s']:>9.3f}{f['postflight_s']:>9.3f}"
                  f"{checks / f['convert_s']:>16.2f}", flush=True)
    print("ORT src = ONNX Runtime session and one-sample run of the source, in a child process;\n"
          "postflt = the same for the spiking model; checks/convert = all checks together against the\n"
          "conversion time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
