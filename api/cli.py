"""The `pmsm-export` command (README: Exit codes)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from pmsm.pipeline import TARGETS, run_command
from pmsm.plan import DEFAULT_REFERENCE_SAMPLES
from pmsm.runtime.base.children import (clear_pending, exit_on_signal, interruption_behind, release_semaphores,
                                        remove_multiprocessing_folder)
from pmsm.runtime.base.errors import EXIT_BAD_INPUT, PmsmError
from pmsm.runtime.base.limits import MAX_TIMESTEP_VALUES, Limits

DESCRIPTION = """\
Convert a quantized ANN exported as ONNX into a spiking network of Polarity
Multi-Spike Mapping (PMSM) neurons that equals the quantized ANN at the first
timestep and refines with more timesteps.

targets:
  onnx   spiking ONNX run by ONNX Runtime through the ai.pmsm::MultiSpikeNeuron
         custom op (the CPU reference backend)
  nir    a NIR 1.0.8 file whose IF nodes carry the PMSM semantics in metadata
  lava   the NIR file, lowered to Lava processes and simulated (Loihi-style)
"""

EPILOG = """\
exit codes:
  0  success
  1  --verify found a mismatch beyond the criteria (T=1 spiking ONNX must equal
     the source model exactly; every backend must agree on predictions)
  2  bad input: unreadable or unsupported model, bad arguments, bad data file;
     nothing is written (on exit 1 the outputs are kept: they are the evidence)

examples:
  pmsm-export model.onnx --check
  pmsm-export model.onnx --target onnx -o model.spiking.onnx
  pmsm-export model.onnx --target lava --verify --data test.npz --timesteps 1,2,4 --report report.json
  pmsm-export model.nir --target lava --verify --data test.npz   (Lava against the NIR interpreter)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep it one line, no usage block
        self.exit(EXIT_BAD_INPUT, f"pmsm-export: error: {message} (see pmsm-export --help)\n")


def parse_timesteps(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted(set(values))


def parse_count(text: str) -> int:
    """A positive whole number, with an optional K/M/G suffix (powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    body, scale = text.strip(), 1
    if body[-1:].lower() in units:
        body, scale = body[:-1], units[body[-1].lower()]
    try:
        value = int(body) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number (K, M, G suffixes allowed), got {text!r}") \
            from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def parse_reference_samples(text: str):
    """A positive number of samples, or ``all`` (None: every sample)."""
    if text.strip().lower() == "all":
        return None
    return parse_count(text)


def parse_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pmsm-export",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL",
                        help="quantized ANN as an ONNX file, or a PMSM NIR file to lower with --target lava")
    parser.add_argument("--target", choices=TARGETS, default="onnx", help="what to produce (default: onnx)")
    parser.add_argument(
        "-o", "--output", metavar="OUT",
        help="output file (default: next to MODEL, MODEL.spiking.onnx for onnx, MODEL.nir for nir and lava); "
        "never the input itself",
    )
    parser.add_argument(
        "--timesteps", type=parse_timesteps, default=[1, 2, 4], metavar="T[,T...]",
        help="timesteps to verify and report (default: 1,2,4); the first is the NIR default",
    )
    parser.add_argument(
        "--nir-profile", choices=("pmsm", "standard"), default="pmsm",
        help="nir target: 'pmsm' (multi-spike IF + metadata, the default) or 'standard' (binary IF units only, "
        "exact at T=1 in any NIR consumer; neurons grow hi-lo times)",
    )
    parser.add_argument("--verify", action="store_true", help="run the target's backends against the reference")
    parser.add_argument(
        "--data", metavar="X.npz|X.npy|FOLDER",
        help="verification data: an .npz with array 'x' shaped like the model input and optional labels 'y', an "
        ".npy of x, or a folder of .npz shards or x*.npy (with y*.npy) files, read in chunks "
        "(default: a seeded probe batch)",
    )
    parser.add_argument(
        "--no-compensation", dest="compensation", action="store_false",
        help="run nonlinear ops (max pool, softmax, layer norm, GELU, products of activations) on each "
        "timestep's values instead of compensating them so that their mean over time is f of the mean "
        "input (T = 1 is the same either way)",
    )
    parser.add_argument("--report", metavar="R.json", help="write the verification report (schema pmsm-report/1)")
    verify = parser.add_argument_group(
        "verification at scale", "--verify streams --data in chunks (memory does not grow with the data set)")
    verify.add_argument(
        "--reference-samples", type=parse_reference_samples, default=DEFAULT_REFERENCE_SAMPLES, metavar="N|all",
        help="the spiking ONNX runs its standard-op body on every sample and the reference custom op on the first "
        f"N too, where the two must be bit-equal (default {DEFAULT_REFERENCE_SAMPLES}; 'all': every sample)")
    verify.add_argument("--workers", type=parse_count, metavar="N",
                        help="verify the chunks in N local processes (default: this process only)")
    verify.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                        help="verify the chunks on a Ray cluster (pmsm-export[ray]): at ADDRESS, or a local one "
                        "started for the run; --workers sets the number of actors (default: the cluster's CPUs)")
    verify.add_argument("--junit", metavar="J.xml",
                        help="write JUnit XML: one test case per backend and T, failures carrying the criterion")
    verify.add_argument("--summary-md", metavar="S.md", help="write a Markdown table for a pull-request comment")
    verify.add_argument("--golden", metavar="G.h5",
                        help="--target nir: write golden traces of the first --golden-samples samples of --data (the "
                        "input, every neuron layer's spike counts and the output at every step of the largest T) in "
                        "NIR's data format (nir.write_data; docs/nir.md §12)")
    verify.add_argument("--golden-samples", type=parse_count, metavar="K", default=4,
                        help="samples the golden traces record (default 4)")
    parser.add_argument(
        "--check", action="store_true",
        help="pre-flight only: list every node the target cannot take and exit (0 if none, 2 otherwise)",
    )
    defaults = Limits()
    limits = parser.add_argument_group(
        "limits", "bounds on the work of one run; a run beyond one stops at once with a message naming its flag")
    limits.add_argument("--max-nodes", type=parse_count, metavar="N",
                        help=f"nodes in the source graph, subgraphs included (default {defaults.max_nodes})")
    limits.add_argument("--max-weight-bytes", type=parse_count, metavar="BYTES",
                        help=f"declared size of all initializers, external data included (default "
                             f"{defaults.max_weight_bytes >> 30}G)")
    limits.add_argument("--max-data-elements", type=parse_count, metavar="N",
                        help=f"values declared by --data's 'x' and 'y', read before decompressing (default "
                             f"{defaults.max_data_elements})")
    limits.add_argument("--max-timesteps", type=parse_count, metavar="T",
                        help=f"largest T in --timesteps (default {defaults.max_timesteps}; at most "
                             f"{MAX_TIMESTEP_VALUES} values); --verify also checks its memory estimate "
                             "against free memory")
    limits.add_argument("--max-load-seconds", type=parse_seconds, metavar="S",
                        help=f"time ONNX Runtime may take to load and run one sample of the source and of "
                             f"the spiking model (default {defaults.max_load_seconds:g})")
    limits.add_argument("--max-subgraph-depth", type=parse_count, metavar="N",
                        help=f"how deep If/Loop/Scan bodies may nest inside one another (default "
                             f"{defaults.max_subgraph_depth}; ONNX Runtime's load time doubles with each level)")
    parser.add_argument("--version", action="version", version="%(prog)s " + __import__("pmsm").__version__)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous_sigterm = previous_sigint = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        # SIGTERM (kill, timeout, a scheduler) ends the command through its cleanup, as Ctrl-C does:
        # staging and scratch folders removed, worker processes stopped
        previous_sigterm = signal.signal(signal.SIGTERM, exit_on_signal)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # Ctrl-C raises KeyboardInterrupt as Python's handler does, except inside a fork's hooks
        # (checking a model forks): raised there, Python printed it ("Exception ignored in ...
        # ForkWindow.leave") and dropped it, and the run went on to its end (1 in 30 interrupted runs)
        previous_sigint = signal.signal(signal.SIGINT, exit_on_signal)
    clear_pending()
    try:
        return _run_command(args)
    except SystemExit as stop:
        if stop.code == 128 + signal.SIGTERM:
            print("pmsm-export: terminated", file=sys.stderr)
            _end_now_if_command(argv, stop.code)
        raise
    except PmsmError as error:
        print(f"pmsm-export: error: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # a disk that fills up, a file that vanished: outputs are discarded already
        where = f"{error.filename}: " if error.filename else ""
        print(f"pmsm-export: error: {where}{error.strerror or error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print("pmsm-export: error: out of memory; use a smaller model, less data or fewer timesteps", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("pmsm-export: interrupted", file=sys.stderr)
        _end_now_if_command(argv, 130)
        return 130
    finally:
        clear_pending()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
        if argv is None and threading.current_thread() is threading.main_thread():
            # the work is done (or undone): a signal during the interpreter's teardown has nothing
            # left to stop, and raised there it printed "Exception ignored in atexit callback"
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
            if signal.getsignal(signal.SIGTERM) is exit_on_signal:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_command(args) -> int:
    try:
        return run_command(args)
    except ImportError as error:
        stop = interruption_behind(error)
        if stop is None:
            raise
        raise stop from None


def _end_now_if_command(argv, status: int) -> None:
    """After a signal, once the cleanup has run (outputs discarded, workers stopped), the command
    (``argv`` None: this process is the command) ends at once: the interpreter's own teardown
    with torch, ONNX Runtime and a Lava network loaded took 2-3 s more (measured, MobileNetV2),
    beyond the 2 s a stopped run may take."""
    if argv is None:
        remove_multiprocessing_folder()  # the exit handlers that matter
        release_semaphores()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
