"""Do two installations of pmsm-export write the same files? Byte for byte, and how fast.

A check for restructurings that must not change behaviour: it builds a corpus of models once (the
samples and the models the tests build: QDQ ViTs with default and extended op types, a
ConvNeXt-style block, CIFAR-size QDQ ResNet-18 and MobileNetV2, onnxruntime and Brevitas models of
the digits), runs ``pmsm-export`` of each installation on every model for every target that takes
it (spiking ONNX, NIR, the NIR standard profile; ``--verify --report`` on the samples), and compares
the files written. Reports are compared without the fields that measure time (``*seconds``,
``wall*``) or name the output folder; every other byte of every file must be equal.
It also times, side by side and alternating, the two commands the restructuring must keep fast:
``--target nir --check`` on the QDQ ViT and ``--target onnx`` on the QDQ ResNet-18.

    .venv/bin/python benchmarks/outputs_unchanged.py --before OLD/.venv/bin/pmsm-export \\
        [--after .venv/bin/pmsm-export] [--corpus /tmp/pmsm-corpus] [--rounds 3] [--models vit,resnet]

Exit status 0 when every file is identical, 1 otherwise (the differing files are listed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TIME_KEYS = ("seconds", "wall")
SAMPLE_VERIFY = ("digits_cnn_pmsm_L2.onnx", "digits_mlp_unsigned_L4.onnx", "digits_vit_pmsm_L4.onnx")


def build_corpus(folder: Path) -> list[Path]:
    """The models (built once per folder; later runs reuse them)."""
    folder.mkdir(parents=True, exist_ok=True)
    models = sorted((ROOT / "samples").glob("*.onnx"))
    done = folder / ".built"
    if not done.exists():
        _build_test_models(folder)
        done.touch()
    return models + sorted(folder.glob("*.onnx"))


def _build_test_models(folder: Path) -> None:
    import warnings

    import onnx

    warnings.simplefilter("ignore")
    import cifar_models
    import resnet_qdq

    for arch in ("resnet18", "mobilenet_v2"):
        cifar_models.quantized(arch, folder)
    resnet_qdq.build_qdq_resnet18(folder)
    import test_architectures as arch_tests

    for op_types in ("default", "all"):
        work = folder / f"vit_{op_types}"
        work.mkdir(exist_ok=True)
        model, shape = arch_tests.vit()
        onnx.save(arch_tests.export_quantized(model, shape, 1, op_types, work), str(folder / f"vit_qdq_{op_types}.onnx"))
        shutil.rmtree(work)
    work = folder / "convnext"
    work.mkdir(exist_ok=True)
    onnx.save(arch_tests.export_quantized(arch_tests.ConvNeXtBlock().eval(), (3, 16, 16), 2, "default", work),
              str(folder / "convnext_qdq_b2.onnx"))
    shutil.rmtree(work)
    import producers

    made = producers.ProducerZoo(folder / "producers")
    for producer, arch in (("qdq-u8", "cnn"), ("brevitas-qonnx", "mlp"), ("brevitas-qcdq", "cnn"),
                           (producers.TORCH_PRODUCERS[0], "cnn")):
        try:
            built = made.build(producer, arch)
        except Exception as error:  # a producer this environment lacks: the corpus goes without it
            print(f"corpus: {producer}/{arch} skipped: {error}", file=sys.stderr)
            continue
        shutil.copy(built.path, folder / f"producer_{producer}_{arch}.onnx")
    shutil.rmtree(folder / "producers")


def runs_for(model: Path) -> list[tuple[str, list[str]]]:
    """(name, arguments) of every command run on ``model``; outputs go to ``{out}``."""
    runs = [("onnx", ["--target", "onnx", "-o", "{out}/model.spiking.onnx"]),
            ("nir", ["--target", "nir", "-o", "{out}/model.nir"]),
            ("nir-standard", ["--target", "nir", "--nir-profile", "standard", "-o", "{out}/model.nir"]),
            ("onnx-no-compensation", ["--target", "onnx", "--no-compensation", "-o", "{out}/model.spiking.onnx"])]
    if model.name in SAMPLE_VERIFY:
        data = str(ROOT / "samples" / "digits_test.npz")
        runs += [("onnx-verify", ["--target", "onnx", "-o", "{out}/model.spiking.onnx", "--verify", "--data", data,
                                  "--timesteps", "1,2", "--report", "{out}/report.json"]),
                 ("nir-verify", ["--target", "nir", "-o", "{out}/model.nir", "--verify", "--data", data,
                                 "--timesteps", "1,2", "--report", "{out}/report.json"])]
    return runs


def run_one(command: str, model: Path, arguments: list[str]) -> dict:
    """Run ``command MODEL ARGUMENTS`` in a fresh folder: exit status, stderr's last line and a
    digest per file written."""
    with tempfile.TemporaryDirectory(prefix="pmsm-unchanged-") as out:
        args = [a.replace("{out}", out) for a in arguments]
        done = subprocess.run([command, str(model), *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        files = {}
        for path in sorted(Path(out).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(out))] = _digest(path, out)
        stderr = [line for line in done.stderr.splitlines() if line.strip()]
        return {"exit": done.returncode, "stderr": stderr[-1] if stderr else "", "files": files}


def _digest(path: Path, out: str) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        document = _without_times(json.loads(data))
        data = json.dumps(document, sort_keys=True).replace(out, "{out}").encode()
    return hashlib.sha256(data).hexdigest()


def _without_times(value):
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not any(t in k for t in TIME_KEYS)}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


def compare(before: str, after: str, models: list[Path]) -> int:
    differing, total = [], 0
    for model in models:
        for name, arguments in runs_for(model):
            old, new = run_one(before, model, arguments), run_one(after, model, arguments)
            total += 1
            same = old == new
            print(f"{'same' if same else 'DIFFERENT':9s} {model.name} [{name}] exit {new['exit']}, "
                  f"{len(new['files'])} file(s)", flush=True)
            if not same:
                differing.append((model.name, name, old, new))
    print(f"\n{total - len(differing)} of {total} runs wrote identical files")
    for model, name, old, new in differing:
        print(f"  {model} [{name}]:\n    before {json.dumps(old)}\n    after  {json.dumps(new)}")
    return 1 if differing else 0


def timings(before: str, after: str, corpus: Path, rounds: int) -> None:
    """Fastest of ``rounds`` wall times of each command, before and after alternating."""
    cases = [("--target nir --check, QDQ ViT", corpus / "vit_qdq_default.onnx", ["--target", "nir", "--check"]),
             ("--target onnx, QDQ ResNet-18", corpus / "resnet18_qdq_u8.onnx", ["--target", "onnx", "-o", "{out}/m.onnx"])]
    print("\ncommand | before (s) | after (s) | after / before")
    for label, model, arguments in cases:
        if not model.exists():
            print(f"{label}: {model.name} missing")
            continue
        best = {before: float("inf"), after: float("inf")}
        for _ in range(rounds):
            for command in (before, after):
                start = time.perf_counter()
                run_one(command, model, arguments)
                best[command] = min(best[command], time.perf_counter() - start)
        print(f"{label} | {best[before]:.2f} | {best[after]:.2f} | {best[after] / best[before]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", required=True, help="pmsm-export of the installation to compare with")
    parser.add_argument("--after", default=str(Path(sys.executable).parent / "pmsm-export"))
    parser.add_argument("--corpus", default=os.path.join(tempfile.gettempdir(), "pmsm-corpus"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-timings", action="store_true")
    parser.add_argument("--models", default="", help="only the models whose file name contains one of these "
                                                     "comma-separated words")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    models = build_corpus(corpus)
    if args.models:
        models = [m for m in models if any(word in m.name for word in args.models.split(","))]
    status = compare(args.before, args.after, models)
    if not args.no_timings:
        timings(args.before, args.after, corpus, args.rounds)
    return status


if __name__ == "__main__":
    sys.exit(main())
