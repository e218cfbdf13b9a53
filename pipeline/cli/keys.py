"""`drivecast keys DIR NAME...`: make the CURVE key pairs of a graph that spans machines."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.errors import ConfigError
from pipeline.transport.curve import generate_keys

__all__ = ["main"]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="drivecast keys", description="Make CURVE key pairs for the machines of a graph.")
    ap.add_argument("dir", help="key directory (created with mode 0700)")
    ap.add_argument("names", nargs="+", help="machine names, as in the launch file's machines:")
    args = ap.parse_args(argv)
    try:
        for path in generate_keys(Path(args.dir), args.names):
            print(path)
    except ConfigError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0
