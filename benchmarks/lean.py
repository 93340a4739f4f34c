"""Issue 23's figures (not a test): the spiking file at the ANN's cost, start-up, conversion.

``speed``: for each network of ``benchmarks/lean_models.py`` (QDQ ResNet-18, ViT 4x192, DeiT-style,
EfficientNet-B0; batch 16, random weights) the spiking file is made by this checkout's converter and,
with ``--before-python``, by another checkout's (its ``pmsm-export``, e.g. ``/work/main/.venv/bin``);
then, in one process, round robin, each run once per round (``--rounds``, fastest kept):

- ``ANN``: the source on ONNX Runtime with graph optimizations off (the semantics the file is exact
  against); every other figure is a ratio to it, measured side by side;
- ``body T=1`` / ``body T=4``: the spiking file in plain ONNX Runtime (no custom op library,
  optimizations off): this checkout's file in its lean form (``pmsm.runtime.lean``, as
  ``SpikingModel(portable=True)`` and the README run it), the ``before`` file as it is (its
  function body);
- ``fn body T=1``: this checkout's file as it is, its generic function body inlined;
- ``custom op T=1``: the same file with the reference kernel registered;
- ``int8 ANN``: the source at ONNX Runtime's default level (QDQ fused into integer kernels).

``--cpu-time`` runs every session with one intra-op thread and times the calling thread's CPU time,
which other load on a shared machine barely moves.

``--before-lean REVISION`` adds a line per network: this checkout's file in the lean form
``runtime/lean.py`` wrote at ``REVISION`` and in the current one, at T = 1, 2 and 4, side by side,
and whether their outputs are the same bits.

``exact`` says whether both bodies equal the ANN bit for bit at T = 1, ``equal`` whether the body
and the custom op agree bit for bit at T = 1, 2 and 4 (this checkout's file).

``startup``: wall time, CPU time and peak resident memory (``/usr/bin/time``) of ``pmsm-export SMALL
--check`` and of converting SMALL and LARGE, for each ``--pythons`` environment (fastest of
``--repeats``; peak resident memory as ``/usr/bin/time`` reports it). SMALL: samples/digits_mlp_pmsm_L2.onnx
(71 kB); LARGE: the ViT 4x192 of ``speed``.

    .venv/bin/python benchmarks/lean.py speed [--models resnet18,vit,deit,efficientnet] [--rounds 5]
        [--before-python /work/main/.venv/bin/python] [--before-lean REVISION] [--folder DIR] [--cpu-time]
    .venv/bin/python benchmarks/lean.py startup [--pythons .venv/bin/python,.venv-core/bin/python] [--repeats 3]
    .venv/bin/python benchmarks/lean.py report [--images 2000] [--pythons ...] [--repeats 3]

``report``: ``pmsm-export CNN16 --verify --data IMAGES --timesteps 1,2`` with and without ``--report``,
alternating, in each ``--pythons`` environment, on a CNN with 16-bit activations (65,536 spike levels
a layer, ``lean_models.uint16_cnn``); the report's size is the JSON and its pictures.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lean_models  # noqa: E402

REPO = lean_models.REPO
SMALL = os.path.join(REPO, "samples", "digits_mlp_pmsm_L2.onnx")


def _convert(python: str, source: str, output: str) -> float:
    begin = time.perf_counter()
    subprocess.run([python, "-m", "pmsm.cli", source, "-o", output], check=True, capture_output=True,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    return time.perf_counter() - begin


THREADS = None  # intra-op threads of the timed sessions (None: ONNX Runtime's default)
CLOCK = time.perf_counter


def _session(path: str, optimized: bool = False, custom: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if THREADS:
        options.intra_op_num_threads = THREADS
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    if custom:
        from pmsm.runtime import ortop

        options.register_custom_ops_library(ortop.get_library_path())
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _same_bits(a, b) -> bool:
    return a.shape == b.shape and np.array_equal(np.ascontiguousarray(a).view(np.uint32),
                                                 np.ascontiguousarray(b).view(np.uint32))


def speed(args) -> None:
    import onnxruntime as ort

    global THREADS, CLOCK
    if args.cpu_time:
        # one intra-op thread runs every kernel on the calling thread, so its CPU time is the run's
        # work, whatever else the machine is doing (wall time on 2 shared cores at load 25 was noise)
        THREADS, CLOCK = 1, time.thread_time
    before_lean = _lean_module_at(args.before_lean) if args.before_lean else None
    folder = args.folder or tempfile.mkdtemp(prefix="pmsm-lean-")
    clock = "1 thread, CPU time of the calling thread" if args.cpu_time else "default threads, wall time"
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, onnxruntime {ort.__version__}; "
          f"batch 16, {clock}, fastest of {args.rounds} rounds; ratios to the ANN with optimizations off")
    header = f"{'model':<14}{'file':<8}{'convert s':>10}{'ANN ms':>9}{'body T=1':>10}{'custom T=1':>12}" \
             f"{'body T=4':>10}{'fn body T=1':>13}{'int8 ANN':>10}{'exact':>7}{'equal':>7}"
    print(header)
    for name in args.models.split(","):
        source = str(lean_models.quantized(name, folder))
        files = {}
        if args.before_python:
            files["before"] = (os.path.join(folder, f"{name}.before.spiking.onnx"), args.before_python)
        files["after"] = (os.path.join(folder, f"{name}.after.spiking.onnx"), sys.executable)
        convert_s = {label: _convert(python, source, path) for label, (path, python) in files.items()}
        x = np.random.default_rng(0).uniform(0, 1, (16, 3, 32, 32)).astype(np.float32)
        runs = {"ann": (_session(source), None), "int8": (_session(source, optimized=True), None)}
        for label, (path, _) in files.items():
            body = path
            if label == "after":
                import onnx

                from pmsm.runtime.lean import lean_model

                body = path.replace(".spiking.onnx", ".lean.onnx")
                onnx.save(lean_model(onnx.load(path)), body)
                runs[f"{label} fn body 1"] = (_session(path), 1)
            runs[f"{label} body 1"] = (_session(body), 1)
            runs[f"{label} body 4"] = (_session(body), 4)
            runs[f"{label} custom 1"] = (_session(path, custom=True), 1)
        if "after" in files:
            runs["after body 2"] = (runs["after body 1"][0], 2)
            if before_lean is not None:
                import onnx

                earlier = files["after"][0].replace(".spiking.onnx", f".lean-{args.before_lean}.onnx")
                onnx.save(before_lean.lean_model(onnx.load(files["after"][0])), earlier)
                for t in (1, 2, 4):
                    runs[f"earlier lean {t}"] = (_session(earlier), t)
            for t in (2, 4):
                runs[f"after custom {t}"] = (_session(files["after"][0], custom=True), t)
        best = dict.fromkeys(runs, float("inf"))
        outputs = {}
        for r in range(args.rounds):
            order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
            for key in order:
                if r and (key in ("after custom 2", "after custom 4") or (key == "after body 2" and before_lean is None)):
                    continue  # run once, for the equality check only (the reference kernel is slow)
                session, t = runs[key]
                feed = {"x": x} if t is None else {"x": x, "timesteps": np.array(t, np.int64)}
                begin = CLOCK()
                outputs[key] = session.run(None, feed)[0]
                best[key] = min(best[key], CLOCK() - begin)
        ann = best["ann"]
        for label in files:
            exact = _same_bits(outputs[f"{label} body 1"], outputs["ann"]) and \
                _same_bits(outputs[f"{label} custom 1"], outputs["ann"])
            equal = label != "after" or all(_same_bits(outputs[f"after body {t}"], outputs[f"after custom {t}"])
                                            for t in (1, 2, 4))
            function_body = f"{best['after fn body 1'] / ann:>12.2f}x" if label == "after" else f"{'':>13}"
            print(f"{name:<14}{label:<8}{convert_s[label]:>10.2f}{ann * 1e3:>9.1f}"
                  f"{best[f'{label} body 1'] / ann:>9.2f}x{best[f'{label} custom 1'] / ann:>11.2f}x"
                  f"{best[f'{label} body 4'] / ann:>9.2f}x{function_body}{best['int8'] / ann:>9.2f}x"
                  f"{'yes' if exact else 'NO':>7}{'yes' if equal else 'NO':>7}", flush=True)
        if before_lean is not None and "after" in files:
            same = all(_same_bits(outputs[f"earlier lean {t}"], outputs[f"after body {t}"]) for t in (1, 2, 4))
            print(f"{'':<14}lean form at {args.before_lean}: " + ", ".join(
                f"T={t} {best[f'earlier lean {t}'] / ann:.2f}x" for t in (1, 2, 4)) + "; this checkout's: " + ", ".join(
                f"T={t} {best[f'after body {t}'] / ann:.2f}x" for t in (1, 2, 4)) + f"; same outputs: {'yes' if same else 'NO'}",
                flush=True)


def _lean_module_at(revision: str):
    """``runtime/lean.py`` as it was at ``revision`` of this checkout, loaded as a module (it imports
    the rest of the package as it is now)."""
    import importlib.util

    text = subprocess.run(["git", "-C", REPO, "show", f"{revision}:runtime/lean.py"], check=True,
                          capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="pmsm-lean-"), "lean_before.py")
    with open(path, "w") as handle:
        handle.write(text)
    spec = importlib.util.spec_from_file_location("lean_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _child(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds (user + system), peak resident MB) of a child process.

    Measured by ``/usr/bin/time``: a child forked from this process inherits this process's resident
    size as the start of its ``ru_maxrss`` across ``exec`` on Linux (measured: 564 MB reported for a
    run that peaks at 77 MB), whereas ``time`` is small. CPU time is what other load on a shared
    machine moves least (wall time at load 15 on 2 cores was up to 7x the CPU time).
    """
    begin = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "pmsm-usage %M %U %S"] + argv, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": ""})
    wall = time.perf_counter() - begin
    if done.returncode:
        raise SystemExit(f"{argv}: exit {done.returncode}: {done.stderr[-500:]}")
    usage = [line.split()[1:] for line in done.stderr.splitlines() if line.startswith("pmsm-usage ")][-1]
    return wall, float(usage[1]) + float(usage[2]), int(usage[0]) / 1024


def startup(args) -> None:
    folder = args.folder or tempfile.mkdtemp(prefix="pmsm-lean-")
    large = str(lean_models.quantized("vit", folder))
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; fastest of {args.repeats}: "
          f"wall s / CPU s (user + system) / peak resident MB of the child, as /usr/bin/time reports them")
    print(f"{'environment':<44}{'--check small':>22}{'convert small':>22}{'convert large':>22}")
    for python in args.pythons.split(","):
        command = [python, "-m", "pmsm.cli"]
        cases = [[SMALL, "--check"], [SMALL, "-o", os.path.join(folder, "small.spiking.onnx")],
                 [large, "-o", os.path.join(folder, "large.spiking.onnx")]]
        _child(command + cases[0])  # byte-code written, files cached
        cells = []
        for case in cases:
            results = [_child(command + case) for _ in range(args.repeats)]
            wall, cpu, peak = (min(r[i] for r in results) for i in range(3))
            cells.append(f"{wall:.2f} / {cpu:.2f} / {peak:.0f}")
        print(f"{python:<44}" + "".join(f"{c:>22}" for c in cells), flush=True)


def report(args) -> None:
    """``pmsm-export CNN16 --verify`` with and without ``--report``, alternating, in each environment."""
    folder = args.folder or tempfile.mkdtemp(prefix="pmsm-lean-")
    source = str(lean_models.uint16_cnn(folder))
    data = os.path.join(folder, f"images_{args.images}.npz")
    rng = np.random.default_rng(2)
    np.savez(data, x=rng.uniform(0, 1, (args.images, 3, lean_models.IMAGE, lean_models.IMAGE)).astype(np.float32),
             y=rng.integers(0, lean_models.CLASSES, args.images))
    out, path = os.path.join(folder, "cnn16.spiking.onnx"), os.path.join(folder, "cnn16.report.json")
    print(f"CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; {source}: 16-bit activations, "
          f"{args.images} images, --timesteps 1,2; fastest of {args.repeats}, wall s / CPU s of the child")
    print(f"{'environment':<44}{'--verify':>16}{'--verify --report':>20}{'ratio (CPU)':>13}{'report kB':>11}")
    for python in args.pythons.split(","):
        command = [python, "-m", "pmsm.cli", source, "-o", out, "--verify", "--data", data, "--timesteps", "1,2"]
        _child(command + ["--report", path])  # byte-code written
        plain, reported = [], []
        for _ in range(args.repeats):
            plain.append(_child(command))
            reported.append(_child(command + ["--report", path]))
        (wall, cpu), (wall_r, cpu_r) = ((min(r[0] for r in runs), min(r[1] for r in runs)) for runs in (plain, reported))
        size = os.path.getsize(path) + sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                                           if f.startswith("cnn16.report") and f.endswith(".png"))
        print(f"{python:<44}{f'{wall:.1f} / {cpu:.1f}':>16}{f'{wall_r:.1f} / {cpu_r:.1f}':>20}"
              f"{cpu_r / cpu:>12.2f}x{size / 1e3:>11.0f}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["speed", "startup", "report"], nargs="?", default="speed")
    parser.add_argument("--models", default=",".join(lean_models.MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-time", action="store_true",
                        help="time one intra-op thread by its CPU time (robust to other load) instead of wall time")
    parser.add_argument("--before-python", default=None, help="an interpreter whose pmsm makes the 'before' files")
    parser.add_argument("--before-lean", default=None, metavar="REVISION",
                        help="speed: also run this checkout's file in the lean form of runtime/lean.py at REVISION "
                             "(T = 1, 2, 4), side by side with the current one")
    parser.add_argument("--pythons", default=",".join(os.path.join(REPO, v, "bin", "python") for v in (".venv", ".venv-core")))
    parser.add_argument("--folder", default=None, help="where the models are built and cached")
    parser.add_argument("--images", type=int, default=2000, help="report: images verified")
    args = parser.parse_args(argv)
    {"speed": speed, "startup": startup, "report": report}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
