"""What third-party NIR consumers do with our files (docs/nir.md §10): rerun on release.

Each consumer is installed from the package registry into its own venv under
``/tmp/pmsm-nir-consumers/<name>`` (kept between runs). torch is large (several GB): it is installed
once into ``/tmp/pmsm-nir-consumers/torch`` and shared through a ``.pth`` file placed *after* each
venv's own site-packages, so a consumer that pins another torch still gets its own. The NIR files
(both profiles of the digits L = 2 samples) are written by this project; each consumer loads them with
its own NIR importer and runs every test image at T = 1 (and T = 2 where it keeps state), one image at
a time; the figures are compared here with the project's interpreter.

    .venv/bin/python benchmarks/nir_consumers.py [--only snntorch,norse] [--samples 360]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np

ROOT = "/tmp/pmsm-nir-consumers"
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONSUMERS = {  # name: (packages to install, needs torch)
    "nir": (["nir==1.0.8"], False),
    "nirtorch": (["nirtorch==2.6"], True),
    "snntorch": (["snntorch==1.0.0", "nirtorch==2.6", "nir==1.0.8"], True),
    "norse": (["norse==1.1.0"], True),
    "sinabs": (["sinabs==3.1.3"], True),
    "spyx": (["spyx==0.1.20"], False),
    "rockpool": (["rockpool==3.1.0"], True),
}
TORCH = "torch==2.14.1"

# Run inside the consumer's venv: load, run each image, print one JSON line.
DRIVER = textwrap.dedent('''
    import json, sys, traceback
    import numpy as np
    consumer, path, data, timesteps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    x = np.load(data)["x"]
    def first_line(exc):
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"{type(exc).__name__}: {text}"[:160]
    try:
        import nir
        graph = nir.read(path)
        if consumer == "nir":
            print(json.dumps({"status": "reads", "detail": f"{len(graph.nodes)} nodes, type-checked"})); sys.exit()
        import torch
        if consumer == "nirtorch":
            import nirtorch
            net = nirtorch.nir_to_torch(graph, {})
        elif consumer == "snntorch":
            from snntorch.import_nir import import_from_nir
            net = import_from_nir(graph)
        elif consumer == "norse":
            import norse.torch as norse
            net = norse.from_nir(graph)
        elif consumer == "sinabs":
            import sinabs
            net = sinabs.from_nir(graph, batch_size=1)
        elif consumer == "rockpool":
            from rockpool.nn.modules import from_nir
            net = from_nir(graph)
        elif consumer == "spyx":
            import spyx.nir
            net = spyx.nir.from_nir(graph, np.zeros((1, 1) + x.shape[1:], np.float32), dt=1)
            print(json.dumps({"status": "loads", "detail": "loaded, not run"})); sys.exit()
    except SystemExit:
        raise
    except BaseException as exc:
        print(json.dumps({"status": "does not load", "detail": first_line(exc)})); sys.exit()
    outs = []
    try:
        with torch.no_grad():
            for image in x:
                state, total = None, 0
                for t in range(timesteps):
                    xi = torch.tensor(image[None])
                    result = net(xi) if state is None else net(xi, state)
                    out, state = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    total = total + out.detach().float().numpy().reshape(-1)
                outs.append(total / timesteps)
    except BaseException as exc:
        print(json.dumps({"status": "fails to run", "detail": first_line(exc)})); sys.exit()
    np.save(path + "." + consumer + ".npy", np.stack(outs))
    print(json.dumps({"status": "runs", "detail": ""}))
''')


def venv(name: str, packages: list[str], torch: bool) -> str | None:
    folder = os.path.join(ROOT, name)
    python = os.path.join(folder, "bin", "python")
    stamp = os.path.join(folder, ".installed")
    if os.path.exists(stamp):
        return python
    if torch:
        shared = venv("torch", [TORCH], False)
        if shared is None:
            return None
    subprocess.run([sys.executable, "-m", "venv", "--clear", folder], check=True)
    if torch:
        site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        shared_site = subprocess.run([shared, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        with open(os.path.join(site, "zz_shared_torch.pth"), "w") as f:
            f.write(shared_site + "\n")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-1:]
        print(f"  {name}: install failed: {lines[0][:200] if lines else 'unknown'}")
        return None
    open(stamp, "w").close()
    return python


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(CONSUMERS))
    parser.add_argument("--samples", type=int, default=360)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from pmsm import pipeline
    from pmsm.targets.nir import NirInterpreter, write_nir
    from pmsm.targets.nir.standard import to_standard

    os.makedirs(ROOT, exist_ok=True)
    data = np.load(os.path.join(HERE, "samples", "digits_test.npz"))
    x, y = data["x"][:args.samples], data["y"][:args.samples]
    data_path = os.path.join(ROOT, "digits.npz")
    np.savez(data_path, x=x, y=y)
    files = {}
    for sample in ("digits_mlp_pmsm_L2", "digits_cnn_pmsm_L2"):
        export = pipeline.convert(os.path.join(HERE, "samples", sample + ".onnx"), "nir")
        reference = NirInterpreter(export.nir_graph).run(x, 1).output
        for profile, graph in (("pmsm", export.nir_graph), ("standard", to_standard(export.nir_graph)[0])):
            path = os.path.join(ROOT, f"{sample}.{profile}.nir")
            write_nir(graph, path)
            files[(sample, profile)] = (path, reference)
    driver = os.path.join(ROOT, "driver.py")
    with open(driver, "w") as f:
        f.write(DRIVER)
    print(f"{'consumer':10s} {'profile':9s} {'sample':20s} {'result':14s} detail")
    for name in args.only.split(","):
        packages, torch = CONSUMERS[name]
        python = venv(name, packages, torch)
        if python is None:
            print(f"{name:10s} {'-':9s} {'-':20s} {'no install':14s}")
            continue
        for (sample, profile), (path, reference) in files.items():
            try:
                run = subprocess.run([python, driver, name, path, data_path, "1"], capture_output=True, text=True,
                                     timeout=900)
                line = next((l for l in reversed(run.stdout.splitlines()) if l.startswith("{")), None)
                result = json.loads(line) if line else {"status": "crashed", "detail": (run.stderr.strip().splitlines() or [""])[-1][:160]}
            except subprocess.TimeoutExpired:
                result = {"status": "timeout", "detail": "over 900 s"}
            detail = result["detail"]
            if result["status"] == "runs":
                out = np.load(path + f".{name}.npy")
                agree = float(np.mean(out.argmax(1) == reference.argmax(1)))
                detail = f"T=1: accuracy {np.mean(out.argmax(1) == y):.1%}, agrees with ours on {agree:.1%}"
            print(f"{name:10s} {profile:9s} {sample:20s} {result['status']:14s} {detail}", flush=True)


if __name__ == "__main__":
    main()
