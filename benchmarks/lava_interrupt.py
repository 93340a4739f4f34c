"""Time from Ctrl-C (or SIGTERM, ``timeout``, SIGKILL) to the end of a Lava run, and the processes
it leaves behind (figures, not a test; the checks are tests/test_lava_shutdown.py).

``run`` (default): the residual test graph, 20 000 samples at T = 4 (the tests' long run),
signalled once it runs, or at a random moment of its first ``--early`` seconds (start-up
included). ``command``: ``pmsm-export --target lava --verify --workers 2`` on the digits test set
repeated 12 times (5 chunks), signalled once Lava runs in a worker. ``phases``: ``pmsm-export
--target lava --verify --report`` on a CIFAR-size MobileNetV2 (68 Lava processes; ``--small``: the
digits CNN), signalled at a random moment of each phase of the run (converting, compiling the
Lava network, forking its processes, running, writing the report), as the command itself
reports entering them; prints, per phase, the time from the signal to the last process of the
session gone, what was left (processes, scratch and staging folders) and whether stderr held a
traceback (these runs are not niced). ``--load K`` adds K busy loops; they and the other modes'
runs get nice 19, so that the machine's other work keeps its share.

    .venv/bin/python benchmarks/lava_interrupt.py [run|command|phases] [--tries 10] [--load 0] [--early 0]
                                                  [--signal ctrl-c|sigterm|timeout|sigkill] [--small]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import shutil
import tempfile
import textwrap
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from test_lava_shutdown import (LONG_RUN, SAMPLES, TESTS, alive_in_session, lava_verify_command,  # noqa: E402
                                start_in_own_session, stop, stop_once_lava_runs, wait_for_no_survivor)

GIVE_UP_SECONDS = 60.0
PHASES = ("conversion", "compile", "fork", "running", "writing")
# The command, with a line on stdout as it enters each phase (wrapping the functions that begin them)
PHASED_COMMAND = textwrap.dedent("""
    import sys
    import pmsm.pipeline as pipeline
    import pmsm.targets.lava.run as run
    import pmsm.targets.lava.shutdown as shutdown
    from lava.magma.runtime.runtime import Runtime
    from pmsm.cli import main

    def announce(name, function):
        def announced(*args, **kwargs):
            print("phase", name, flush=True)
            return function(*args, **kwargs)
        return announced

    pipeline.convert = announce("conversion", pipeline.convert)
    shutdown.WorkerGuard.create_runtime = announce("compile", shutdown.WorkerGuard.create_runtime)
    Runtime._build_processes = announce("fork", Runtime._build_processes)
    run._Stepper.run = announce("running", run._Stepper.run)
    pipeline._stage_report = announce("writing", pipeline._stage_report)
    sys.argv[0] = "pmsm-export"
    sys.exit(main())
""")


def phase_try(command: list, phase: str, how: str, folder: str) -> dict:
    """Run ``command`` (PHASED_COMMAND's arguments) with its temporary folder in ``folder``, signal
    it ``how`` at a random moment of the first ``phase`` it enters (within 0.3 s of its start)."""
    scratch = tempfile.mkdtemp(prefix="pmsm-b-", dir="/tmp")
    # not niced: a stopped run's workers need the CPU to die, and a niced run on a loaded machine
    # measures the machine's other work instead (a MobileNetV2 at nice 10, load 15: up to 4.8 s)
    process = start_in_own_session([sys.executable, "-c", PHASED_COMMAND] + command,
                                   env={**os.environ, "TMPDIR": scratch})
    entered = threading.Event()

    def watch():
        for line in process.stdout:
            if line.strip() == f"phase {phase}":
                entered.set()
        entered.set()          # the command ended without entering the phase
    threading.Thread(target=watch, daemon=True).start()
    try:
        entered.wait(GIVE_UP_SECONDS * 5)
        if process.poll() is not None:
            return {"phase": phase, "missed": True}
        time.sleep(random.uniform(0.0, 0.3))
        alive = len(alive_in_session(process.pid))
        stop(process, how)
        signalled = time.monotonic()
        while alive_in_session(process.pid) and time.monotonic() < signalled + GIVE_UP_SECONDS:
            time.sleep(0.02)
        seconds = time.monotonic() - signalled
        left = alive_in_session(process.pid)
        process.wait(30)
        stderr = process.stderr.read()
        staging = [n for n in os.listdir(folder) if n.startswith(".pmsm-staging")]
        if "Traceback" in stderr or "Exception ignored" in stderr:
            print(stderr, file=sys.stderr)
        return {"phase": phase, "seconds": seconds, "left": len(left), "alive": alive,
                "folders": len(os.listdir(scratch)) + len(staging), "status": process.returncode,
                "traceback": "Traceback" in stderr or "Exception ignored" in stderr,
                "lines": len([line for line in stderr.splitlines() if line.strip()])}
    finally:
        if alive_in_session(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


def phases(args) -> None:
    with tempfile.TemporaryDirectory(prefix="pmsm-bench-", dir="/tmp") as folder:
        if args.small:
            model, shape = os.path.join(SAMPLES, "digits_cnn_pmsm_L2.onnx"), None
        else:
            from cifar_models import INPUT_SHAPE, quantized

            model, shape = str(quantized("mobilenet_v2", os.path.join(folder, "cifar"))), INPUT_SHAPE
        data = os.path.join(folder, "d.npz")
        if shape is None:
            digits = np.load(os.path.join(SAMPLES, "digits_test.npz"))
            np.savez(data, x=digits["x"][:64], y=digits["y"][:64])
        else:
            np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (8, *shape)).astype(np.float32))
        command = [model, "--target", "lava", "-o", os.path.join(folder, "net.nir"), "--verify", "--data", data,
                   "--timesteps", "2", "--report", os.path.join(folder, "report.json")]
        print(f"{'phase':<11} {'signal':<8} {'alive':>5} {'ended after':>11} {'left':>4} {'folders':>7} "
              f"{'exit':>4} {'stderr lines':>12} traceback", flush=True)
        for phase in (args.phase or PHASES):
            for n in range(args.tries):
                how = args.signal if args.signal != "both" else ("sigterm", "ctrl-c")[n % 2]
                r = phase_try(command, phase, how, folder)
                if r.get("missed"):
                    print(f"{phase:<11} {how:<8} (the run ended before the phase)", flush=True)
                    continue
                print(f"{phase:<11} {how:<8} {r['alive']:>5} {r['seconds']:>9.2f} s {r['left']:>4} "
                      f"{r['folders']:>7} {r['status']:>4} {r['lines']:>12} {r['traceback']}", flush=True)


def signal_run(process, how: str, early: float) -> None:
    if early:
        time.sleep(random.uniform(0.3, early))
    else:
        assert process.stdout.readline().strip() == "running", process.stderr.read()
        time.sleep(random.uniform(0.0, 1.5))
    stop(process, how)


def one_try(mode: str, how: str, early: float, folder: str) -> tuple[float, int]:
    """Seconds from the signal to the end of the host (inf: it had not ended after GIVE_UP_SECONDS),
    and the processes of its session still alive a few seconds later."""
    if mode == "run":
        process = start_in_own_session(["nice", "-n", "19", sys.executable, "-c", LONG_RUN, TESTS, "layer", ""])
    else:
        process = start_in_own_session(["nice", "-n", "19"] + lava_verify_command(
            os.path.join(folder, "d.npz"), os.path.join(folder, "cnn.nir"), "--workers", "2"))
    try:
        if mode == "run":
            signal_run(process, how, early)
        else:
            stop_once_lava_runs(process, how, 14)
        started = time.monotonic()
        try:
            process.wait(GIVE_UP_SECONDS)
            seconds = time.monotonic() - started
        except subprocess.TimeoutExpired:
            seconds = float("inf")
        left = wait_for_no_survivor(process.pid) if seconds < float("inf") else alive_in_session(process.pid)
        return seconds, len(left)
    finally:
        if alive_in_session(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("run", "command", "phases"), default="run")
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--load", type=int, default=0, help="busy loops alongside")
    parser.add_argument("--early", type=float, default=0.0, help="signal at a random moment of the first S seconds")
    parser.add_argument("--signal", choices=("ctrl-c", "sigterm", "timeout", "sigkill", "both"), default="ctrl-c")
    parser.add_argument("--small", action="store_true", help="phases: the digits CNN instead of MobileNetV2")
    parser.add_argument("--phase", action="append", choices=PHASES, help="phases: only this phase (repeatable)")
    args = parser.parse_args()
    if args.mode == "phases":
        phases(args)
        return
    loads = [subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    try:
        with tempfile.TemporaryDirectory(prefix="pmsm-bench-") as folder:
            digits = np.load(os.path.join(SAMPLES, "digits_test.npz"))
            np.savez(os.path.join(folder, "d.npz"), x=np.concatenate([digits["x"]] * 12),
                     y=np.concatenate([digits["y"]] * 12))
            results = []
            for n in range(args.tries):
                seconds, left = one_try(args.mode, args.signal, args.early, folder)
                results.append((seconds, left))
                print(f"try {n + 1}: ended {seconds:.2f} s after {args.signal}, {left} processes left "
                      f"(load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for load in loads:
            load.kill()
            load.wait()
    times = sorted(seconds for seconds, _ in results)
    hung = sum(seconds == float("inf") for seconds in times)
    print(f"{args.mode}, {args.signal}{f' within {args.early:g} s' if args.early else ''}, {args.tries} tries, "
          f"{args.load} busy loops: min {times[0]:.2f} s, median {times[len(times) // 2]:.2f} s, "
          f"max {times[-1]:.2f} s; {hung} not ended after {GIVE_UP_SECONDS:g} s; "
          f"{sum(left > 0 for _, left in results)} left processes behind")


if __name__ == "__main__":
    main()
