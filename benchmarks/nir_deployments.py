"""Hybrid NIR deployments (docs/nir.md §11): what runs where, how long the conversion takes, and
whether the deployment agrees with the spiking ONNX (compensation on) at T = 1, 2, 4.

Builds the held-out models of the tests (torchvision ViT with default and extended QDQ op types, a
ConvNeXt-style block, an EfficientNet-style block with SiLU and squeeze-excite; torch export, then
onnxruntime ``quantize_static``) and takes the digits ViT sample, then for each runs

    pmsm-export MODEL --target nir -o MODEL.nir                       (timed: the conversion)
    pmsm-export MODEL --target nir --verify --timesteps 1,2,4 --report R.json [--data digits]

and prints one row per network: regions, host stages, host ops, the share of MACs in regions,
and per T the argmax agreement of the interpreter and the torch runtime with the spiking ONNX and
the unexplained spikes (accuracy of the spiking ONNX and of the deployment on the digits data).

    .venv/bin/python benchmarks/nir_deployments.py [--folder /tmp/pmsm-deployments] [--only vit_default]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
EXPORT = str(Path(sys.executable).parent / "pmsm-export")


def build(folder: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (model, extra arguments of --verify)."""
    import onnx

    import test_nir_deployment as t

    folder.mkdir(parents=True, exist_ok=True)
    models = {}
    for kind, op_types in (("vit", "default"), ("vit", "all"), ("convnext", "default"), ("efficientnet", "default")):
        path = folder / f"{kind}_{op_types}.onnx"
        if not path.exists():
            onnx.save(onnx.load(t._model(kind, op_types, folder)), str(path))
        models[f"{kind}_{op_types}"] = (path, [])
    models["digits_vit_L4"] = (ROOT / "samples" / "digits_vit_pmsm_L4.onnx",
                               ["--data", str(ROOT / "samples" / "digits_test.npz")])
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/pmsm-deployments")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    folder = Path(args.folder)
    rows = []
    for name, (model, extra) in build(folder).items():
        if args.only and name not in args.only:
            continue
        out, report = folder / f"{name}.nir", folder / f"{name}.json"
        started = time.perf_counter()
        subprocess.run([EXPORT, str(model), "--target", "nir", "-o", str(out)], check=True, capture_output=True)
        seconds = time.perf_counter() - started
        done = subprocess.run([EXPORT, str(model), "--target", "nir", "-o", str(out), "--verify", "--timesteps",
                               "1,2,4", "--report", str(report)]
                              + extra, capture_output=True, text=True)
        r = json.loads(report.read_text())
        d = r["deployment"]
        per_t = []
        for backend in ("nir", "torch"):
            for t, tally in sorted(r["verification"]["backends"].get(backend, {}).items()):
                unexplained = sum(row["unexplained"] for row in tally.get("mismatch_by_layer", []))
                per_t.append(f"{backend} T={t}: agree {tally['argmax_agreement']:.0%}, unexplained {unexplained}"
                             + (f", acc {tally['accuracy']:.1%}" if tally.get("accuracy") is not None else ""))
        onnx_acc = {t: a for t, a in (r["accuracy"]["snn"] or {}).items() if a is not None}
        rows.append((name, len(d["regions"]), d["host_stages"], d["host_ops"], d["region_mac_share"], seconds,
                     done.returncode, per_t, onnx_acc))
    for name, regions, hosts, ops, share, seconds, code, per_t, onnx_acc in rows:
        print(f"{name}: {regions} regions, {hosts} host stages, MACs in regions {100 * share:.1f} %, "
              f"conversion {seconds:.1f} s, --verify exit {code}")
        print("  host ops: " + ", ".join(f"{op} x{n}" for op, n in ops.items()))
        for line in per_t:
            print("  " + line)
        if onnx_acc:
            print("  spiking ONNX accuracy: " + ", ".join(f"T={t} {a:.1%}" for t, a in onnx_acc.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
