"""Global allocation: how many channels each layer loses, decided by the game at a fixed
parameter budget, against the same ratio in every layer.

Arms, all one-shot with the least-squares refit, 10 shots, 3 models × 5 draws:

* ``uniform``: every layer loses the same share of its channels (25 / 50 / 75 %);
* ``global``: one network-wide greedy elimination (``greedy``: each step removes the channel
  that costs the least value per parameter saved) or one mean-normalised global ranking
  (``l1``) removes channels until the parameters saved match what the uniform arm saved.

    python benchmarks/global_allocation.py --threads 1

Writes ``global_allocation.md``, ``.csv`` and ``.png`` to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
RECIPES = ("digits", "mnist_lenet")
UNIFORM_RATIOS = (0.25, 0.5, 0.75)


def run_arms(name: str, out: Path) -> list[dict]:
    from lightning_shapley.recipes.runner import run_recipe
    from lightning_shapley.recipes.schema import load_recipe

    rows = []
    uniform = load_recipe(HERE / "allocation" / f"{name}.yaml")
    uniform.pruning.ratios = list(UNIFORM_RATIOS)
    rows += _read(run_recipe(uniform, out / f"{name}-uniform"), name, "uniform")
    unpruned = statistics.fmean(r["params"] for r in rows if r["criterion"] == "unpruned")
    saved = {  # the share of the prunable cost the uniform arm removed, per ratio
        ratio: statistics.fmean(1 - r["params"] / unpruned for r in rows
                                if r["ratio"] == ratio and r["criterion"] != "unpruned")
        for ratio in UNIFORM_RATIOS
    }  # fmt: skip
    glob = load_recipe(HERE / "allocation" / f"{name}.yaml")
    glob.pruning.scope, glob.pruning.cost = "global", "params"
    glob.pruning.ratios = _matching_ratios(glob, saved)
    rows += _read(run_recipe(glob, out / f"{name}-global"), name, "global")
    return rows


def _matching_ratios(recipe, saved: dict[float, float]) -> list[float]:
    """Shares of the layers' channel parameters that save what the uniform arm saved of all."""
    import torch

    from lightning_shapley.pruning import (
        channel_costs,
        channel_group,
        count_params_and_macs,
        prunable_layer_names,
    )
    from lightning_shapley.recipes.data import load_data
    from lightning_shapley.recipes.runner import build_model

    data = load_data(recipe.data)
    model = build_model(recipe.model, data.num_classes, data.input_shape)
    example = torch.as_tensor(data.pool[0][0]).unsqueeze(0)
    layers = prunable_layer_names(model, example)
    costs = channel_costs(model, layers, example, "params")
    channel_total = sum(costs[layer] * channel_group(model, layer, example).n_channels
                        for layer in layers)  # fmt: skip
    total = count_params_and_macs(model, example)[0]
    return [min(0.95, share * total / channel_total) for share in saved.values()]


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
             "removes channels until the parameters saved match the uniform arm's.", "",
             "| model | criterion | arm | params kept | test accuracy |",
             "|---|---|---|---|---|"]  # fmt: skip
    table = []
    for (model, criterion, arm, ratio), members in sorted(cells.items()):
        base = [r["params"] for r in rows if (r["model"], r["criterion"]) == (model, "unpruned")]
        unpruned = statistics.fmean(base)
        kept = statistics.fmean(r["params"] for r in members) / unpruned
        accuracy = [r["accuracy"] for r in members]
        mean, std = statistics.fmean(accuracy), statistics.stdev(accuracy)
        table.append(dict(model=model, criterion=criterion, arm=arm, ratio=ratio,
                          params_kept=kept, accuracy_mean=mean, accuracy_std=std))  # fmt: skip
        lines.append(f"| {model} | {criterion} | {arm} | {kept:.1%} | "
                     f"{100 * mean:.1f} ± {100 * std:.1f} |")  # fmt: skip
    (results / "global_allocation.md").write_text("\n".join(lines) + "\n")
    with open(results / "global_allocation.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    _plot(table, results / "global_allocation.png")
    print("\n".join(lines))


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
