"""What third-party NIR consumers do with our files (docs/nir.md §10): rerun on release.

Each consumer is installed from the package registry with pip into its own venv under ``--root``
(default ``/tmp/pmsm-nir-consumers/<venv>``): ``--venvs reuse`` (the default) keeps the venvs a
previous run made and creates the missing ones, ``--venvs recreate`` makes them all anew. torch is
large (several GB): it is installed once into ``<root>/torch`` (the version of this project's
environment) and shared through a ``.pth`` file placed after each venv's own site-packages, so a
consumer that pins another torch still gets its own. A consumer whose pins exclude nir 1.0.8 is also
run with nir 1.0.8 forced over them (``pip install --no-deps``).

The NIR files are written by this project's command (``pmsm-export X.onnx --target nir
[--nir-profile standard]``) from the digits L = 2 samples and from an onnxruntime ``quantize_static``
QDQ CNN (uint8 activations, tests/producers.py; its standard profile is refused, K = 255). Each
consumer loads them with its own NIR importer and runs the 360 digits test images, one at a time, at
T = 1 and T = 2 (the readout is the mean over the steps, docs/nir.md §1); the outputs are compared
here with this project's interpreter running the PMSM file (``NirInterpreter``). "exact" means the
same prediction on every image and outputs within 2**-17 of the largest output (float32 sums in
another order; the interpreter sums exactly, §4a).

    .venv/bin/python benchmarks/nir_consumers.py [--venvs reuse|recreate] [--only norse,snntorch]
        [--samples 360] [--root DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = ("digits_mlp_pmsm_L2", "digits_cnn_pmsm_L2", "digits_mlp_unsigned_L2", "digits_cnn_unsigned_L2")
QDQ_CNN = "digits_cnn_qdq_u8"
TIMESTEPS = {"pmsm": (1, 2), "standard": (1,)}  # the standard profile is exact at T = 1 only (§9)
RUN_TIMEOUT_S = 900


@dataclass(frozen=True)
class Consumer:
    name: str
    venv: str  # consumers sharing an installation share a venv
    packages: tuple[str, ...]
    torch: bool
    loader: str  # how the driver loads a graph (DRIVER)
    forced: tuple[str, ...] = ()  # installed last with --no-deps, over the consumer's own pins


CONSUMERS = (
    Consumer("nir 1.0.8", "nir", ("nir==1.0.8",), False, "nir"),
    Consumer("nirtorch 2.6", "nirtorch", ("nirtorch==2.6", "nir==1.0.8"), True, "nirtorch"),
    # snntorch declares no dependencies: its import_nir needs nir and nirtorch
    Consumer("snntorch 1.0.0", "snntorch", ("snntorch==1.0.0", "nirtorch==2.6", "nir==1.0.8"), True, "snntorch"),
    Consumer("norse 1.1.0", "norse", ("norse==1.1.0",), True, "norse"),
    Consumer("norse 1.1.0 modules on nirtorch.nir_to_torch", "norse", ("norse==1.1.0",), True, "norse-nir_to_torch"),
    Consumer("sinabs 3.1.3", "sinabs", ("sinabs==3.1.3",), True, "sinabs"),
    Consumer("sinabs 3.1.3, nir 1.0.8 forced", "sinabs-nir108", ("sinabs==3.1.3",), True, "sinabs", ("nir==1.0.8",)),
    Consumer("sinabs 3.1.3, nir 1.0.8 and nirtorch 2.6 forced", "sinabs-nir108-nirtorch26", ("sinabs==3.1.3",), True,
             "sinabs", ("nir==1.0.8", "nirtorch==2.6")),
    Consumer("spyx 0.1.20", "spyx", ("spyx==0.1.20",), False, "spyx"),
    Consumer("rockpool 3.1.0", "rockpool", ("rockpool[nir]==3.1.0",), True, "rockpool"),
    Consumer("rockpool 3.1.0, nir 1.0.8 forced", "rockpool-nir108", ("rockpool[nir]==3.1.0",), True, "rockpool",
             ("nir==1.0.8",)),
)
REPORTED_PACKAGES = ("nir", "nirtorch", "torch", "numpy", "snntorch", "norse", "sinabs", "spyx", "jax", "rockpool")

# Runs inside a consumer's venv: load the file with the consumer's importer, run every image for each
# T, save the mean outputs, print one JSON line.
DRIVER = textwrap.dedent('''
    import json, logging, sys, time, warnings
    from importlib.metadata import version, PackageNotFoundError
    import numpy as np
    loader, path, data, steps, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
    steps = [int(t) for t in steps.split(",")]
    x = np.load(data)["x"]
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    def versions():
        found = {}
        for name in %(packages)r:
            try:
                found[name] = version(name)
            except PackageNotFoundError:
                pass
        return found
    def report(status, detail=""):
        print(json.dumps({"status": status, "detail": detail, "versions": versions()}))
        sys.exit()
    def first_line(exc):
        text = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {text}"[:240]
    def fresh(net):  # a new sample: forget the membranes of modules that keep them inside
        if loader == "sinabs":
            import sinabs
            sinabs.reset_states(net)
        for m in net.modules():
            if loader == "snntorch" and hasattr(m, "reset_mem"):
                m.reset_mem()
    try:
        import nir
        graph = nir.read(path)
        if loader == "nir":
            report("reads", f"{len(graph.nodes)} nodes, type-checked")
        if loader == "spyx":
            import jax.numpy as jnp
            import spyx.nir
            nets = {t: spyx.nir.from_nir(nir.read(path), jnp.zeros((1, t) + x.shape[1:]), dt=1) for t in steps}
        else:
            import torch
            torch.set_num_threads(1)  # one image at a time: a second thread does not help, and the cores are shared
            if loader == "nirtorch":
                import nirtorch
                net = nirtorch.nir_to_torch(graph, {})
            elif loader == "snntorch":
                from snntorch.import_nir import import_from_nir
                net = import_from_nir(graph)
            elif loader == "norse":
                import norse.torch
                net = norse.torch.from_nir(graph)
            elif loader == "norse-nir_to_torch":  # norse's own node map, nirtorch's current executor
                from functools import partial
                import nirtorch
                from norse.torch.utils.import_nir import _import_norse_module
                norse_map = partial(_import_norse_module, ignore_warnings=True)
                net = nirtorch.nir_to_torch(graph, {type(n): norse_map for n in graph.nodes.values()
                                                    if not isinstance(n, (nir.Input, nir.Output))})
            elif loader == "sinabs":
                import sinabs
                net = sinabs.from_nir(graph, batch_size=1)
            elif loader == "rockpool":
                from rockpool.nn.modules import from_nir
                net = from_nir(graph)
    except SystemExit:
        raise
    except BaseException as exc:
        report("does not load", first_line(exc))
    start = time.perf_counter()
    try:
        for t_count in steps:
            if loader == "spyx":
                snn, params = nets[t_count]
                xt = jnp.repeat(jnp.asarray(x)[:, None], t_count, axis=1)  # [N, T, ...]: the same image each step
                spikes, _ = snn.apply(params, xt)
                mean = np.asarray(spikes, np.float64).reshape(len(x), t_count, -1).mean(axis=1)
            else:
                rows = []
                with torch.no_grad():
                    for image in x:
                        fresh(net)
                        state, total = None, 0.0
                        for _ in range(t_count):
                            xi = torch.tensor(image[None])
                            result = net(xi) if state is None else net(xi, state)
                            value, state = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
                            while isinstance(value, (tuple, list)):
                                value = value[0]
                            total = total + value.detach().double().numpy().reshape(-1)
                        rows.append(total / t_count)
                mean = np.stack(rows)
            np.save(f"{out}.T{t_count}.npy", mean.astype(np.float32))
    except BaseException as exc:
        report("fails to run", first_line(exc))
    report("runs", f"{time.perf_counter() - start:.1f} s")
''' % {"packages": REPORTED_PACKAGES})


# ----------------------------------------------------------------------------------------- venvs


def _purelib(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


def _du_mb(folder: str) -> float:
    total = 0
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total / 2 ** 20


def _pip(python: str, args: list[str]) -> str | None:
    """None when the install worked, else pip's first error line."""
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-compile", *args],
                          capture_output=True, text=True)
    if done.returncode == 0:
        return None
    lines = [line for line in done.stderr.splitlines() if "ERROR" in line] or done.stderr.splitlines()[-1:]
    return (lines[0] if lines else "unknown error")[:240]


def venv(root: str, name: str, packages: tuple[str, ...], torch: bool, forced: tuple[str, ...],
         recreate: bool) -> tuple[str | None, dict]:
    """The venv's python (None when the install failed) and its install record."""
    folder = os.path.join(root, name)
    python = os.path.join(folder, "bin", "python")
    stamp = os.path.join(folder, ".installed.json")
    if os.path.exists(stamp) and not recreate:
        with open(stamp) as f:
            return python, json.load(f)
    shared_site = None
    if torch:
        shared, record = venv(root, "torch", (f"torch=={version('torch').split('+')[0]}",), False, (), False)
        if shared is None:
            return None, record
        shared_site = _purelib(shared)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--clear", folder], check=True)
    if shared_site:  # "zz": after the venv's own packages, so its own torch (if any) wins
        with open(os.path.join(_purelib(python), "zz_shared_torch.pth"), "w") as f:
            f.write(shared_site + "\n")
    error = _pip(python, list(packages)) or (_pip(python, ["--no-deps", *forced]) if forced else None)
    record = {"packages": list(packages) + [f"{p} (forced)" for p in forced],
              "install_s": round(time.perf_counter() - start, 1), "size_mb": round(_du_mb(folder)),
              "error": error}
    if error:
        return None, record
    with open(stamp, "w") as f:
        json.dump(record, f)
    return python, record


# ----------------------------------------------------------------------------------------- files


def _cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "pmsm-export")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pmsm.cli"]


def make_files(root: str) -> dict:
    """``{(model, profile): path or refusal}`` written by the command, and the models' paths."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from producers import ProducerZoo  # the onnxruntime QDQ CNN of the producer tests

    models = {s: os.path.join(REPO, "samples", s + ".onnx") for s in SAMPLES}
    qdq = os.path.join(root, "models", QDQ_CNN + ".onnx")
    if not os.path.exists(qdq):
        built = ProducerZoo(os.path.join(root, "models")).build("qdq-u8", "cnn").path
        os.replace(built, qdq)
    models[QDQ_CNN] = qdq
    files = {}
    os.makedirs(os.path.join(root, "files"), exist_ok=True)
    for model, source in models.items():
        for profile in TIMESTEPS:
            path = os.path.join(root, "files", f"{model}.{profile}.nir")
            if os.path.exists(path):
                os.remove(path)  # always the current writer's file
            extra = ["--nir-profile", "standard"] if profile == "standard" else []
            done = subprocess.run(_cli() + [source, "--target", "nir", *extra, "-o", path], capture_output=True,
                                  text=True)
            lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
            files[(model, profile)] = path if done.returncode == 0 else "refused: " + (lines[-1] if lines else "")
    return files


def references(files: dict, x: np.ndarray) -> dict:
    """This project's interpreter on each model's PMSM file: ``{(model, T): output}``."""
    from pmsm.targets.nir import NirInterpreter, read_nir

    out = {}
    for (model, profile), path in files.items():
        if profile == "pmsm":
            graph = read_nir(path)
            for t in TIMESTEPS["pmsm"]:
                out[(model, t)] = NirInterpreter(graph).run(x, t).output
    return out


# ----------------------------------------------------------------------------------------- table


def verdict(theirs: np.ndarray, ours: np.ndarray, y: np.ndarray) -> str:
    if theirs.shape != ours.shape:
        return f"wrong: returns a value of shape {theirs.shape[1:]} (another node's), not the output's {ours.shape[1:]}"
    agree = float(np.mean(theirs.argmax(1) == ours.argmax(1)))
    diff = float(np.max(np.abs(theirs.astype(np.float64) - ours)))
    exact = agree == 1.0 and diff <= 2.0 ** -17 * float(np.max(np.abs(ours)))
    head = "**exact**" if exact else "wrong"
    return f"{head}: accuracy {np.mean(theirs.argmax(1) == y):.1%}, agrees {agree:.1%}, max diff {diff:.2g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venvs", choices=("reuse", "recreate"), default="reuse")
    parser.add_argument("--only", default="", help="comma-separated venv names (nir, norse, sinabs-nir108, ...)")
    parser.add_argument("--samples", type=int, default=360)
    parser.add_argument("--root", default="/tmp/pmsm-nir-consumers")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    chosen = [c for c in CONSUMERS if not args.only or c.venv in args.only.split(",")]

    with np.load(os.path.join(REPO, "samples", "digits_test.npz")) as data:
        x, y = data["x"][:args.samples], data["y"][:args.samples]
    data_path = os.path.join(root, "digits.npz")
    np.savez(data_path, x=x, y=y)
    files = make_files(root)
    ours = references(files, x)
    driver = os.path.join(root, "driver.py")
    with open(driver, "w") as f:
        f.write(DRIVER)
    if args.venvs == "recreate":
        shutil.rmtree(os.path.join(root, "torch"), ignore_errors=True)

    rows, installs = [], {}
    for consumer in chosen:
        python, record = venv(root, consumer.venv, consumer.packages, consumer.torch, consumer.forced,
                              args.venvs == "recreate" and consumer.venv not in installs)
        installs[consumer.venv] = record
        for (model, profile), path in files.items():
            if python is None:
                rows.append((consumer.name, profile, model, "", f"not installed: {record['error']}"))
                continue
            if path.startswith("refused"):
                rows.append((consumer.name, profile, model, "", f"no file ({path})"))
                continue
            steps = TIMESTEPS[profile]
            out = f"{path}.{consumer.venv}.{consumer.loader}"
            for t in steps:
                if os.path.exists(f"{out}.T{t}.npy"):
                    os.remove(f"{out}.T{t}.npy")
            try:
                run = subprocess.run([python, driver, consumer.loader, path, data_path, ",".join(map(str, steps)), out],
                                     capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
                line = next((l for l in reversed(run.stdout.splitlines()) if l.startswith("{")), None)
                result = json.loads(line) if line else {
                    "status": "crashed", "detail": (run.stderr.strip().splitlines() or [""])[-1][:240]}
            except subprocess.TimeoutExpired:
                result = {"status": "timeout", "detail": f"over {RUN_TIMEOUT_S} s"}
            versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
            if result["status"] != "runs":
                rows.append((consumer.name, profile, model, versions, f"{result['status']}: {result['detail']}"))
                continue
            cells = [f"T={t}: " + verdict(np.load(f"{out}.T{t}.npy"), ours[(model, t)], y) for t in steps]
            rows.append((consumer.name, profile, model, versions, "runs; " + "; ".join(cells)))
            print(f"  {consumer.name} / {profile} / {model}: {rows[-1][-1]}", flush=True)

    print("\n| consumer | profile | model | result |\n|---|---|---|---|")
    for name, profile, model, _, result in rows:
        print(f"| {name} | {profile} | {model} | {result.replace('|', '/')} |")
    print("\nversions found by each run:")
    for name in dict.fromkeys(r[0] for r in rows):
        found = sorted({r[3] for r in rows if r[0] == name and r[3]})
        print(f"  {name}: {found[0] if found else '-'}")
    print("\ninstalls (pip, this machine):")
    for name, record in installs.items():
        print(f"  {name}: {', '.join(record['packages'])}: {record['install_s']} s, {record['size_mb']} MB"
              + (f" (failed: {record['error']})" if record.get("error") else ""))


if __name__ == "__main__":
    main()
