"""However a Lava run ends, no worker process survives it.

Lava starts one OS process per Lava process (plus its runtime service and two managers). These
tests start runs in a fresh session, end them the ways users and schedulers do (Ctrl-C at a
terminal, SIGTERM, ``timeout``, SIGKILL; an error inside a process model; data that turns out bad
mid-run) and count the session's processes that are still alive afterwards.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytest.importorskip("pmsm.targets.lava", exc_type=ImportError)  # the reason says how to get lava-nc

from pmsm.errors import BadInputError  # noqa: E402
from pmsm.targets.lava import LavaProcessError, run_lava  # noqa: E402
from test_lava import RNG, residual_graph  # noqa: E402

pytestmark = pytest.mark.lava

SURVIVOR_WAIT_SECONDS = 5.0

TESTS = os.path.dirname(os.path.abspath(__file__))
# A long run of the residual graph; prints a line once the simulation is under way.
LONG_RUN = textwrap.dedent("""
    import sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from test_lava import residual_graph
    from pmsm.targets.lava import run_lava

    x = np.random.default_rng(0).integers(-8, 9, size=(20000, 1, 4, 4)).astype(np.float32) / 4
    def progress(done, total):
        if done:
            print("running", flush=True)
    run_lava(residual_graph(), x, 4, progress=progress, lowering=sys.argv[2])
    print("finished", flush=True)
""")


def alive_in_session(session: int) -> list[int]:
    """Processes of ``session`` that are not zombies (Linux /proc)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def wait_for_no_survivor(session: int) -> list[int]:
    deadline = time.monotonic() + SURVIVOR_WAIT_SECONDS
    while (left := alive_in_session(session)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture
def long_run():
    """Start a long Lava run in its own session; yields (process, workers seen when running)."""
    started = []

    def start(lowering="layer"):
        process = subprocess.Popen([sys.executable, "-c", LONG_RUN, TESTS, lowering], start_new_session=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "running", process.stderr.read()
        return process, len(alive_in_session(process.pid))

    yield start
    for process in started:         # a failed test must not leave its own run behind
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# ctrl-c once did not end the run within 30 s while both suites loaded the machine: slow until explained
@pytest.mark.parametrize("how", ["sigterm", pytest.param("ctrl-c", marks=pytest.mark.slow), "timeout"])
def test_no_worker_survives_an_interrupted_run(long_run, how):
    process, running = long_run()
    assert running >= 5              # the host, the runtime service, three cores, the input, the readout
    if how == "sigterm":             # kill PID
        os.kill(process.pid, signal.SIGTERM)
    elif how == "ctrl-c":            # a terminal signals the whole foreground process group
        os.killpg(process.pid, signal.SIGINT)
    else:                            # coreutils timeout signals the command's process group
        os.killpg(process.pid, signal.SIGTERM)
    status = process.wait(30)
    assert status == {"sigterm": 128 + signal.SIGTERM, "timeout": 128 + signal.SIGTERM,
                      "ctrl-c": -signal.SIGINT}[how]
    assert wait_for_no_survivor(process.pid) == []
    assert "leaked shared_memory" not in process.stderr.read()


@pytest.mark.parametrize("lowering", ["layer", "synapse"])
def test_workers_exit_within_seconds_after_the_host_is_killed(long_run, lowering):
    process, running = long_run(lowering)
    assert running >= 5
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    assert wait_for_no_survivor(process.pid) == []


def test_an_error_inside_a_process_model_stops_the_run_and_its_workers(monkeypatch):
    import pmsm.targets.lava.program as program

    calls = {"n": 0}
    original = program.step

    def failing_step(u, z, params):
        calls["n"] += 1
        if calls["n"] == 40:
            raise ZeroDivisionError("injected failure")
        return original(u, z, params)

    monkeypatch.setattr(program, "step", failing_step)     # the workers are forked: they inherit it
    x = (RNG.integers(-8, 9, size=(200, 1, 4, 4)) / 4).astype(np.float32)
    before = set(multiprocessing.active_children())
    with pytest.raises(LavaProcessError, match=r"core:q\w+ failed: injected failure") as error:
        run_lava(residual_graph(), x, timesteps=2)
    assert "ZeroDivisionError" in str(error.value) and "failing_step" in str(error.value)
    assert set(multiprocessing.active_children()) <= before


def test_data_that_drives_a_layer_to_infinity_is_a_bad_input_found_mid_run():
    x = (RNG.integers(-8, 9, size=(6, 1, 4, 4)) / 4).astype(np.float32)
    x[3] = 3e38          # finite, but a convolution of it is not
    before = set(multiprocessing.active_children())
    with pytest.raises(BadInputError, match=r"layer qa: .*beyond float32 \(sample 3\)"):
        run_lava(residual_graph(), x, timesteps=2)
    assert set(multiprocessing.active_children()) <= before


def test_the_command_killed_during_its_lava_run_leaves_no_process(tmp_path):
    samples = os.path.join(os.path.dirname(TESTS), "samples")
    command = [os.path.join(os.path.dirname(sys.executable), "pmsm-export"),
               os.path.join(samples, "digits_cnn_pmsm_L2.onnx"), "--target", "lava", "-o", str(tmp_path / "cnn.nir"),
               "--verify", "--data", os.path.join(samples, "digits_test.npz"), "--timesteps", "8"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while len(alive_in_session(process.pid)) < 5:      # the command and Lava's workers
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        time.sleep(1.0)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(30) == 128 + signal.SIGTERM
        assert wait_for_no_survivor(process.pid) == []
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
