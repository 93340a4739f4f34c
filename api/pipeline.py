"""What the `pmsm-export` command does, target by target."""
from __future__ import annotations

import argparse

from pmsm.errors import BadInputError


def run_command(args: argparse.Namespace) -> int:
    raise BadInputError(f"target '{args.target}' is not available in this version")
