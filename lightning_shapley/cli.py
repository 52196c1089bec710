"""The ``lightning-shapley`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-shapley``."""
    parser = argparse.ArgumentParser(prog="lightning-shapley", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="channel Shapley values of a digits CNN, offline")
    demo.add_argument("--layer", default="3", help="layer whose channels are the players")
    demo.add_argument("--shots", type=int, default=10, help="calibration examples per class")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from lightning_shapley.demo import run_demo

        run_demo(layer=args.layer, shots=args.shots, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
