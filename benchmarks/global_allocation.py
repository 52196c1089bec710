"""Global allocation: how many channels each layer loses, decided by the game at a fixed
parameter budget, against the same ratio in every layer.

Arms, all one-shot with the least-squares refit, 10 shots, 3 models × 5 draws:

* ``uniform``: every layer loses the same share of its channels (25 / 50 / 75 %);
* ``global``: one network-wide greedy elimination (``greedy``: each step removes the channel
  that costs the least value per parameter saved) or one mean-normalised global ranking
  (``l1``) removes channels until their parameter costs reach a share of the total (20–80 %).

The arms' points fall at different parameter counts; the report compares each global point
with the uniform arm's accuracy interpolated (linearly in parameters kept) at the same count.

    python benchmarks/global_allocation.py --threads 1

Writes ``global_allocation.md``, ``.csv`` and ``.png`` to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
RECIPES = ("digits", "mnist_lenet")
UNIFORM_RATIOS = (0.25, 0.5, 0.75)
GLOBAL_SHARES = (0.2, 0.35, 0.5, 0.65, 0.8)  # of the summed channel costs (first-order)


def run_arms(name: str, out: Path) -> list[dict]:
    from lightning_shapley.recipes.runner import run_recipe
    from lightning_shapley.recipes.schema import load_recipe

    uniform = load_recipe(HERE / "allocation" / f"{name}.yaml")
    uniform.pruning.ratios = list(UNIFORM_RATIOS)
    rows = _read(run_recipe(uniform, out / f"{name}-uniform"), name, "uniform")
    glob = load_recipe(HERE / "allocation" / f"{name}.yaml")
    glob.pruning.scope, glob.pruning.cost = "global", "params"
    glob.pruning.ratios = list(GLOBAL_SHARES)
    return rows + _read(run_recipe(glob, out / f"{name}-global"), name, "global")


def _read(folder: Path, name: str, arm: str) -> list[dict]:
    with open(folder / "results.csv") as f:
        return [dict({k: v if k == "criterion" else float(v) for k, v in row.items()},
                     model=name, arm=arm) for row in csv.DictReader(f)]  # fmt: skip


def report(rows: list[dict], results: Path) -> None:
    cells = defaultdict(list)
    for r in rows:
        if r["criterion"] != "unpruned":
            cells[(r["model"], r["criterion"], r["arm"], r["ratio"])].append(r)
    lines = ["# Global allocation at a parameter budget", "",
             "One-shot pruning with the least-squares refit, 10 shots, 3 models × 5 draws, no "
             "fine-tuning. `uniform`: every layer loses the ratio; `global`: one ranking (the "
             "network-wide greedy elimination for `greedy`, a mean-normalised ranking for `l1`) "
             "removes channels until their parameter costs reach 20–80 % of the total. The last "
             "column compares a global point with the uniform arm's accuracy interpolated at "
             "the same parameters kept.", "",
             "| model | criterion | arm | params kept | test accuracy | global − uniform at the "
             "same parameters (points) |", "|---|---|---|---|---|---|"]  # fmt: skip
    table = []
    for (model, criterion, arm, ratio), members in sorted(cells.items()):
        base = [r["params"] for r in rows if (r["model"], r["criterion"]) == (model, "unpruned")]
        unpruned = statistics.fmean(base)
        kept = statistics.fmean(r["params"] for r in members) / unpruned
        accuracy = [r["accuracy"] for r in members]
        mean, std = statistics.fmean(accuracy), statistics.stdev(accuracy)
        table.append(dict(model=model, criterion=criterion, arm=arm, ratio=ratio,
                          params_kept=kept, accuracy_mean=mean, accuracy_std=std))  # fmt: skip
    for row in table:
        uniform = sorted((r["params_kept"], r["accuracy_mean"]) for r in table
                         if (r["model"], r["criterion"], r["arm"]) ==
                         (row["model"], row["criterion"], "uniform"))  # fmt: skip
        row["uniform_at_same_params"] = _interpolate(uniform, row["params_kept"])
        versus = row["uniform_at_same_params"]
        difference = ""
        if row["arm"] == "global" and versus is not None:
            difference = f"{100 * (row['accuracy_mean'] - versus):+.1f}"
        lines.append(
            f"| {row['model']} | {row['criterion']} | {row['arm']} | {row['params_kept']:.1%} | "
            f"{100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f} | {difference} |"
        )
    (results / "global_allocation.md").write_text("\n".join(lines) + "\n")
    with open(results / "global_allocation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    _plot(table, results / "global_allocation.png")
    print("\n".join(lines))


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """The accuracy at ``x`` parameters kept on the uniform arm's curve (``None`` outside it)."""
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(x1 - x0, 1e-12)
    return None


def _plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in table})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for criterion in sorted({r["criterion"] for r in table}):
            for arm, style in (("uniform", "--"), ("global", "-")):
                key = (model, criterion, arm)
                points = sorted((r["params_kept"], r["accuracy_mean"]) for r in table
                                if (r["model"], r["criterion"], r["arm"]) == key)  # fmt: skip
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, marker="o", label=f"{criterion}, {arm}")
        ax.set_title(model)
        ax.set_xlabel("share of parameters kept")
        ax.set_ylabel("test accuracy, no fine-tuning")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "global_allocation")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    rows = [row for name in args.recipes for row in run_arms(name, args.out)]
    report(rows, args.out.parent)


if __name__ == "__main__":
    main()
