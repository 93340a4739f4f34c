"""Time from Ctrl-C (or SIGTERM, ``timeout``, SIGKILL) to the end of a Lava run, and the processes
it leaves behind (figures, not a test; the checks are tests/test_lava_shutdown.py).

``run`` (default): the residual test graph, 20 000 samples at T = 4 (the tests' long run),
signalled once it runs, or at a random moment of its first ``--early`` seconds (start-up
included). ``command``: ``pmsm-export --target lava --verify --workers 2`` on the digits test set
repeated 12 times (5 chunks), signalled once Lava runs in a worker. ``--load K`` adds K busy loops;
they and the runs get nice 19, so that the machine's other work keeps its share.

    .venv/bin/python benchmarks/lava_interrupt.py [run|command] [--tries 10] [--load 0] [--early 0]
                                                  [--signal ctrl-c|sigterm|timeout|sigkill]
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from test_lava_shutdown import (LONG_RUN, SAMPLES, TESTS, alive_in_session, lava_verify_command,  # noqa: E402
                                start_in_own_session, stop, stop_once_lava_runs, wait_for_no_survivor)

GIVE_UP_SECONDS = 60.0


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
    parser.add_argument("mode", nargs="?", choices=("run", "command"), default="run")
    parser.add_argument("--tries", type=int, default=10)
    parser.add_argument("--load", type=int, default=0, help="busy loops alongside")
    parser.add_argument("--early", type=float, default=0.0, help="signal at a random moment of the first S seconds")
    parser.add_argument("--signal", choices=("ctrl-c", "sigterm", "timeout", "sigkill"), default="ctrl-c")
    args = parser.parse_args()
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
