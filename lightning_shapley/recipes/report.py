"""The report a recipe run writes: ``results.csv``, ``summary.md`` and plots."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

from lightning_shapley.recipes.schema import Recipe

__all__ = ["summarize", "write_report"]

COLUMNS = ("instance", "criterion", "ratio", "shots", "seed", "fine_tune_epochs", "accuracy",
           "loss", "params", "macs", "seconds", "evaluations")  # fmt: skip


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(rows: list[dict]) -> dict:
    """Accuracy mean ± std by (shots, fine-tune epochs) → criterion → ratio, and costs."""
    accuracy: dict = defaultdict(lambda: defaultdict(dict))
    groups: dict = defaultdict(list)
    for row in rows:
        if row["criterion"] != "unpruned":
            key = (row["shots"], row["fine_tune_epochs"], row["criterion"], row["ratio"])
            groups[key].append(row)
    for (shots, epochs, criterion, ratio), members in groups.items():
        accuracy[(shots, epochs)][criterion][ratio] = _mean_std([r["accuracy"] for r in members])
    cost: dict = defaultdict(list)
    for row in rows:
        if row["criterion"] != "unpruned" and row["fine_tune_epochs"] == min(
            r["fine_tune_epochs"] for r in rows
        ):
            cost[row["criterion"]].append(row)
    unpruned = [r["accuracy"] for r in rows if r["criterion"] == "unpruned"]
    return {
        "accuracy": accuracy,
        "cost": {
            c: (_mean_std([r["seconds"] for r in m]), _mean_std([r["evaluations"] for r in m]))
            for c, m in cost.items()
        },
        "unpruned": _mean_std(unpruned) if unpruned else (float("nan"), 0.0),
    }


def _markdown(summary: dict, recipe: Recipe, n_rows: int) -> str:
    mean, std = summary["unpruned"]
    model = recipe.model.class_path or recipe.model.architecture
    data = recipe.data.class_path or recipe.data.dataset
    lines = [f"# {recipe.name}", "",
             f"{model} on {data}; unpruned test accuracy "
             f"{mean:.3f} ± {std:.3f}; {n_rows} results; pruning scope {recipe.pruning.scope}, "
             f"schedule {recipe.pruning.schedule}. Test accuracy, mean ± std over models and "
             "calibration draws.", ""]  # fmt: skip
    for (shots, epochs), by_criterion in sorted(summary["accuracy"].items()):
        ratios = sorted({r for v in by_criterion.values() for r in v})
        tuning = (
            "no fine-tuning"
            if epochs == 0
            else f"{epochs} fine-tuning epochs on the calibration set"
        )
        lines += [f"## {shots} shots per class, {tuning}", "",
                  "| criterion | " + " | ".join(f"{r:.0%} removed" for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]  # fmt: skip
        best = {r: max(v[r][0] for v in by_criterion.values() if r in v) for r in ratios}
        for criterion, values in sorted(by_criterion.items()):
            cells = []
            for r in ratios:
                m, s = values.get(r, (float("nan"), 0.0))
                cell = f"{m:.3f} ± {s:.3f}"
                cells.append(f"**{cell}**" if m == best[r] else cell)
            lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Cost of scoring (per model and calibration draw)", "",
              "| criterion | seconds | game evaluations |", "|---|---|---|"]  # fmt: skip
    for criterion, ((sm, ss), (em, _)) in sorted(summary["cost"].items()):
        lines.append(f"| {criterion} | {sm:.2f} ± {ss:.2f} | {em:,.0f} |")
    return "\n".join(lines) + "\n"


def _plots(summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = sorted(summary["accuracy"])
    fig, axes = plt.subplots(1, len(settings), figsize=(4.5 * len(settings), 3.8), squeeze=False)
    unpruned = summary["unpruned"][0]
    for ax, key in zip(axes[0], settings, strict=True):
        for criterion, values in sorted(summary["accuracy"][key].items()):
            ratios = sorted(values)
            width = 2.5 if "shapley" in criterion else 1.2
            ax.errorbar([100 * r for r in ratios], [values[r][0] for r in ratios],
                        yerr=[values[r][1] for r in ratios], marker="o", capsize=3,
                        label=criterion, linewidth=width)  # fmt: skip
        ax.axhline(unpruned, color="gray", linestyle=":", label="unpruned")
        shots, epochs = key
        ax.set_title(
            f"{shots} shots, " + ("no fine-tuning" if epochs == 0 else f"{epochs} FT epochs")
        )
        ax.set_xlabel("channels removed per layer (%)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_ratio.png", dpi=110)
    plt.close(fig)

    costs = summary["cost"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = sorted(costs)
    ax.barh(names, [costs[n][0][0] for n in names])
    ax.set_xlabel("seconds to score all layers (per calibration draw)")
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, recipe: Recipe) -> None:
    """Write ``results.csv``, ``summary.md``, ``accuracy_vs_ratio.png`` and ``cost.png``."""
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in COLUMNS} for row in rows)
    summary = summarize(rows)
    (out / "summary.md").write_text(_markdown(summary, recipe, len(rows)))
    _plots(summary, out)
