"""The `pmsm-export` command (DESIGN §10)."""
from __future__ import annotations

import argparse
import sys

from pmsm.errors import EXIT_BAD_INPUT, PmsmError
from pmsm.pipeline import TARGETS, run_command

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
  2  bad input: unreadable or unsupported model, bad arguments, bad data file

examples:
  pmsm-export model.onnx --check
  pmsm-export model.onnx --target onnx -o model.spiking.onnx
  pmsm-export model.onnx --target lava --verify --data test.npz --timesteps 1,2,4 --report report.json
  pmsm-export model.nir --target lava --verify --data test.npz   (Lava against the NIR interpreter)
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep it one line
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"pmsm-export: error: {message}\n")


def parse_timesteps(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted(set(values))


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
    parser.add_argument("--verify", action="store_true", help="run the target's backends against the reference")
    parser.add_argument(
        "--data", metavar="X.npz",
        help="verification data: array 'x' shaped like the model input, optional labels 'y' "
        "(default: a seeded probe batch)",
    )
    parser.add_argument("--report", metavar="R.json", help="write the verification report (schema pmsm-report/1)")
    parser.add_argument(
        "--check", action="store_true",
        help="pre-flight only: list every node the target cannot take and exit (0 if none, 2 otherwise)",
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __import__("pmsm").__version__)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except PmsmError as error:
        print(f"pmsm-export: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("pmsm-export: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
