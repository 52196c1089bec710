"""The ``lightning-shapley`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-shapley``."""
    parser = argparse.ArgumentParser(
        prog="lightning-shapley", description="Few-shot channel pruning by Shapley values."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe (the embedded default if none is given)")
    run.add_argument("recipe", nargs="?", help="a recipe YAML file")
    run.add_argument("--output", help="report folder (default: the recipe's output)")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    commands.add_parser("show-default", help="print the embedded default recipe")
    demo = commands.add_parser("demo", help="exact channel Shapley values of a digits CNN")
    demo.add_argument("--layer", default="3", help="layer whose channels are the players")
    demo.add_argument("--shots", type=int, default=10, help="calibration examples per class")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from lightning_shapley.lab.demo import run_demo

        run_demo(layer=args.layer, shots=args.shots, seed=args.seed)
        return 0
    from lightning_shapley.recipes import DEFAULT_RECIPE, RecipeError, load_recipe, run_recipe

    if args.command == "show-default":
        print(DEFAULT_RECIPE.read_text(), end="")
        return 0
    try:
        recipe = load_recipe(args.recipe or DEFAULT_RECIPE)
    except RecipeError as error:
        print(f"lightning-shapley: {error}", file=sys.stderr)
        return 2
    try:
        out = run_recipe(recipe, args.output, progress=not args.quiet)
    except FileNotFoundError as error:
        print(f"lightning-shapley: {error}", file=sys.stderr)
        return 2
    print((out / "summary.md").read_text())
    print(f"Report written to {out}/ (results.csv, summary.md, accuracy_vs_ratio.png, cost.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
