"""The proof: accuracy kept after few-shot pruning without fine-tuning, every criterion.

Runs the recipes in ``benchmarks/proof/`` (digits CNN, MNIST LeNet-5, MNIST small VGG; 3
independently trained models × 5 calibration draws × 1/5/10 shots × 25/50/75 % removed, without
and with 5 epochs of few-shot fine-tuning), once without compensation and once with the
least-squares refit, and reports the *gap closed* by the default criterion:
``(ours − best classic) / (unpruned − best classic)``, twice: ours (with its refit) against the
others as commonly used (no compensation), and against the others given the same refit.

    python benchmarks/pruning_quality.py --threads 1          # everything (about an hour)
    python benchmarks/pruning_quality.py --report-only        # re-aggregate existing runs
    python benchmarks/pruning_quality.py --quick --out /tmp/q # 1 model, 1 draw, 10 shots

Writes ``pruning_quality.md``, ``pruning_quality.csv`` and ``pruning_quality.png`` to the output
folder, with one sub-folder per recipe run (its ``results.csv`` and ``summary.md``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).parent
RECIPES = ("digits", "mnist_lenet", "mnist_vgg")
COMPENSATIONS = ("none", "least_squares")
OURS = "bandit_shapley"  # the default criterion (lightning_shapley.criteria.DEFAULT_CRITERION)
PREVIOUS = "greedy"  # the default before it, compared cell by cell
MIN_GAP = 0.01  # below one point between unpruned and best classic there is no gap to close
SHAPLEY_BASELINE = "ancona_shapley"
GAME_BASED = {"bandit_shapley", "greedy", "greedy_refit", "beam", "iterated_shapley", "shapley",
              "ancona_shapley", "loo"}  # fmt: skip


def run(names, compensations, out: Path, quick: bool, subset: dict | None = None) -> None:
    from lightning_shapley.recipes.runner import run_recipe
    from lightning_shapley.recipes.schema import load_recipe

    for name in names:
        for compensation in compensations:
            recipe = load_recipe(HERE / "proof" / f"{name}.yaml")
            recipe.pruning.compensation = compensation
            if quick:
                recipe.model.instances, recipe.pruning.seeds = 1, [0]
                recipe.pruning.shots = [10]
            for key, value in (subset or {}).items():
                if value is not None:
                    target = recipe.fine_tune if key == "epochs" else recipe.pruning
                    setattr(target, key, value)
            began = time.perf_counter()
            run_recipe(recipe, out / f"{name}-{compensation}", progress=True)
            print(f"{name}, compensation {compensation}: {time.perf_counter() - began:.0f} s")


def load_rows(out: Path) -> list[dict]:
    rows = []
    for folder in sorted(out.iterdir()):
        if not (folder / "results.csv").exists():
            continue
        name, compensation = folder.name.rsplit("-", 1)
        with open(folder / "results.csv") as f:
            for row in csv.DictReader(f):
                row = {k: (v if k == "criterion" else float(v)) for k, v in row.items()}
                rows.append(dict(row, model=name, compensation=compensation))
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


ARMS = {
    "practice": ("least_squares", "none"),
    "same_refit": ("least_squares", "least_squares"),
}
"""Comparisons: ours (with its refit) against the others as commonly used (no compensation),
and against the others given the same least-squares refit."""


def gap_table(rows: list[dict], arm: str, fine_tune: int = 0) -> list[dict]:
    """Per model × shots × ratio: unpruned, best classic, the Shapley baseline, ours (mean ± std
    over models × draws) and the gap closed (mean ± std over models)."""
    ours_compensation, others_compensation = ARMS[arm]
    unpruned = {(r["model"], r["instance"]): r["accuracy"]
                for r in rows if r["criterion"] == "unpruned"}  # fmt: skip
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r["criterion"] == "unpruned" or r["fine_tune_epochs"] != fine_tune:
            continue
        mine = r["criterion"] == OURS
        if r["compensation"] == (ours_compensation if mine else others_compensation):
            key = (r["model"], r["shots"], r["ratio"])
            cells[key][r["criterion"]][(r["instance"], r["seed"])] = r["accuracy"]
    table = []
    for (model, shots, ratio), by_criterion in sorted(cells.items()):
        classic = {c: v for c, v in by_criterion.items() if c not in GAME_BASED}
        if OURS not in by_criterion or not classic:
            continue
        best = max(classic, key=lambda c: statistics.fmean(classic[c].values()))
        ours = by_criterion[OURS]
        gaps = []  # per trained model, over its draws: a ratio of means
        for instance in sorted({draw[0] for draw in ours}):
            draws = [d for d in ours if d[0] == instance]
            mine = statistics.fmean(ours[d] for d in draws)
            reference = statistics.fmean(classic[best][d] for d in draws)
            gap = unpruned[(model, instance)] - reference
            gaps.append((mine - reference) / gap if gap >= MIN_GAP else math.nan)
        top = [v for (m, _), v in unpruned.items() if m == model]
        row = dict(arm=arm, model=model, shots=int(shots), ratio=ratio, fine_tune_epochs=fine_tune,
                   unpruned=statistics.fmean(top), best_classic=best)  # fmt: skip
        baseline = by_criterion.get(SHAPLEY_BASELINE, {})
        for name, values in (("best_classic", classic[best]), ("ours", ours),
                             ("shapley_baseline", baseline)):  # fmt: skip
            if values:
                row[f"{name}_mean"], row[f"{name}_std"] = _mean_std(values.values())
        row["gap_closed_mean"], row["gap_closed_std"] = _mean_std(gaps)
        table.append(row)
    return table


def _pct(mean: float, std: float) -> str:
    return "–" if math.isnan(mean) else f"{100 * mean:.1f} ± {100 * std:.1f}"


ARM_TITLES = {
    "practice": f"ours (`{OURS}` + least-squares refit) against the others as commonly used "
    "(no compensation)",
    "same_refit": "every criterion with the same least-squares refit",
}


def report(rows: list[dict], out: Path) -> None:
    if not rows:
        raise SystemExit(f"no results under {out}")
    epochs = sorted({r["fine_tune_epochs"] for r in rows})
    tables = {(arm, ft): gap_table(rows, arm, ft) for arm in ARMS for ft in epochs}
    flat = [row for table in tables.values() for row in table]
    with open(out / "pruning_quality.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted({k for row in flat for k in row}))
        writer.writeheader()
        writer.writerows(flat)
    lines = ["# Pruning quality: the gap closed", "",
             f"The default criterion `{OURS}` against the best classic criterion (chosen per cell "
             f"by mean accuracy among {', '.join(sorted(_classic(rows)))}) and Ancona et al.'s "
             f"Shapley setting (`{SHAPLEY_BASELINE}`: 5 removal-direction permutations, labelled "
             "loss). Test accuracy in %, mean ± std over 3 models × 5 calibration draws. Gap "
             "closed in %: (ours − best classic) / (unpruned − best classic) per trained model "
             "(means over its 5 draws), mean ± std over the 3 models; – where the best classic "
             "criterion is within a point of the unpruned model. Layers pruned first to last, "
             "each scored on the partly pruned model.", ""]  # fmt: skip
    for (arm, ft), table in tables.items():
        if not table:
            continue
        tuning = "no fine-tuning" if ft == 0 else f"{int(ft)} epochs of few-shot fine-tuning"
        lines += [f"## {ARM_TITLES[arm]}; {tuning}", "",
                  "| model | shots | removed | unpruned | best classic | Ancona Shapley | ours "
                  "| gap closed |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in table:
            baseline = "–"
            if "shapley_baseline_mean" in r:
                baseline = _pct(r["shapley_baseline_mean"], r["shapley_baseline_std"])
            lines.append(
                f"| {r['model']} | {r['shots']} | {r['ratio']:.0%} | {100 * r['unpruned']:.1f} "
                f"| {_pct(r['best_classic_mean'], r['best_classic_std'])} ({r['best_classic']}) "
                f"| {baseline} | {_pct(r['ours_mean'], r['ours_std'])} "
                f"| {_pct(r['gap_closed_mean'], r['gap_closed_std'])} |"
            )
        lines.append("")
    lines += _versus_previous(rows) + _targets(tables) + _costs(rows) + _compensation_gain(rows)
    (out / "pruning_quality.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "pruning_quality.png")
    print("\n".join(lines))


def _versus_previous(rows: list[dict]) -> list[str]:
    """The default against the previous default, both with the least-squares refit, no
    fine-tuning: mean accuracy per cell over models × draws, and the mean difference per ratio."""
    cells: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        ours_or_previous = r["criterion"] in (OURS, PREVIOUS)
        if ours_or_previous and r["compensation"] == "least_squares" and r["fine_tune_epochs"] == 0:
            cells[(r["model"], int(r["shots"]), r["ratio"])][r["criterion"]].append(r)
    paired = {key: c for key, c in sorted(cells.items()) if len(c) == 2}
    if not paired:
        return []
    lines = [f"## `{OURS}` against `{PREVIOUS}`, both with the least-squares refit, no "
             "fine-tuning", "", f"| model | shots | removed | {PREVIOUS} | {OURS} | difference "
             f"| {PREVIOUS} s | {OURS} s | {PREVIOUS} evals | {OURS} evals |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    by_ratio: dict = defaultdict(list)
    for (model, shots, ratio), c in paired.items():
        mean = {k: statistics.fmean(r["accuracy"] for r in v) for k, v in c.items()}
        secs = {k: statistics.fmean(r["seconds"] for r in v) for k, v in c.items()}
        evals = {k: statistics.fmean(r["evaluations"] for r in v) for k, v in c.items()}
        by_ratio[ratio].append(mean[OURS] - mean[PREVIOUS])
        lines.append(f"| {model} | {shots} | {ratio:.0%} | {100 * mean[PREVIOUS]:.1f} "
                     f"| {100 * mean[OURS]:.1f} | {100 * (mean[OURS] - mean[PREVIOUS]):+.1f} "
                     f"| {secs[PREVIOUS]:.2f} | {secs[OURS]:.2f} | {evals[PREVIOUS]:,.0f} "
                     f"| {evals[OURS]:,.0f} |")  # fmt: skip
    lines += ["", "Mean difference over cells (points): " + ", ".join(
        f"{ratio:.0%} removed {100 * statistics.fmean(d):+.2f} ({len(d)} cells)"
        for ratio, d in sorted(by_ratio.items())) + ".", ""]  # fmt: skip
    return lines


def _classic(rows: list[dict]) -> set[str]:
    return {r["criterion"] for r in rows} - GAME_BASED - {"unpruned"}


def _targets(tables: dict) -> list[str]:
    """The targets: no fine-tuning, ≤ 10 shots, 50 % and 75 % removed, every model."""
    lines = ["## Targets (no fine-tuning, 50 % and 75 % removed, 1–10 shots)", "",
             "| comparison | cells | gap closed ≥ 50 % | ≥ 5 points where classic loses ≥ 10 "
             "| beats Ancona Shapley |", "|---|---|---|---|---|"]  # fmt: skip
    for arm in ARMS:
        part = [r for r in tables.get((arm, 0), []) if r["ratio"] >= 0.5]
        if not part:
            continue
        closed = sum(r["gap_closed_mean"] >= 0.5 for r in part)  # nan (no gap) is not counted
        losing = [r for r in part if r["unpruned"] - r["best_classic_mean"] >= 0.10]
        ahead = sum(r["ours_mean"] - r["best_classic_mean"] >= 0.05 for r in losing)
        with_baseline = [r for r in part if "shapley_baseline_mean" in r]
        beats = sum(r["ours_mean"] > r["shapley_baseline_mean"] for r in with_baseline)
        lines.append(f"| {ARM_TITLES[arm]} | {len(part)} | {closed} of {len(part)} | {ahead} of "
                     f"{len(losing)} | {beats} of {len(with_baseline)} |")  # fmt: skip
    return [*lines, ""]


def _costs(rows: list[dict]) -> list[str]:
    lines = ["## Cost per pruned model (all layers, no fine-tuning)", "",
             "| model | criterion | seconds | game evaluations |", "|---|---|---|---|"]  # fmt: skip
    groups: dict = defaultdict(list)
    for r in rows:
        if r["criterion"] != "unpruned" and r["fine_tune_epochs"] == 0:
            groups[(r["model"], r["criterion"])].append(r)
    for (model, criterion), members in sorted(groups.items()):
        seconds = statistics.fmean(r["seconds"] for r in members)
        evaluations = statistics.fmean(r["evaluations"] for r in members)
        lines.append(f"| {model} | {criterion} | {seconds:.2f} | {evaluations:,.0f} |")
    return [*lines, ""]


def _compensation_gain(rows: list[dict]) -> list[str]:
    """Accuracy with the least-squares refit minus without, per criterion and ratio."""
    by: dict = defaultdict(dict)
    for r in rows:
        if r["criterion"] != "unpruned" and r["fine_tune_epochs"] == 0:
            key = (r["model"], r["criterion"], r["ratio"], r["instance"], r["shots"], r["seed"])
            by[key][r["compensation"]] = r["accuracy"]
    gains: dict = defaultdict(list)
    for (_, criterion, ratio, *_), pair in by.items():
        if len(pair) == 2:
            gains[(criterion, ratio)].append(pair["least_squares"] - pair["none"])
    if not gains:
        return []
    ratios = sorted({ratio for _, ratio in gains})
    lines = ["## What the least-squares refit adds (points, mean over models, shots and draws)",
             "", "| criterion | " + " | ".join(f"{r:.0%} removed" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]  # fmt: skip
    for criterion in sorted({c for c, _ in gains}):
        cells = [f"{100 * statistics.fmean(gains[(criterion, r)]):+.1f}" for r in ratios]
        lines.append(f"| {criterion} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _plot(rows: list[dict], path: Path) -> None:
    """Accuracy against the share removed, 10 shots, no fine-tuning: one column per model, one
    row per comparison (ours always with its refit), one colour per criterion throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    names = sorted({r["criterion"] for r in rows} - {"unpruned"})
    colours = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    fig, axes = plt.subplots(len(ARMS), len(models), figsize=(4.5 * len(models), 7.5),
                             squeeze=False, sharey=True)  # fmt: skip
    for i, (ours_compensation, others_compensation) in enumerate(ARMS.values()):
        for j, model in enumerate(models):
            ax = axes[i][j]
            for name in names:
                wanted = ours_compensation if name == OURS else others_compensation
                points = defaultdict(list)
                for r in rows:
                    if (r["model"], r["criterion"], r["compensation"]) == (model, name, wanted) \
                            and r["fine_tune_epochs"] == 0 and r["shots"] == 10:  # fmt: skip
                        points[r["ratio"]].append(r["accuracy"])
                if not points:
                    continue
                xs = sorted(points)
                mine = name == OURS
                ax.plot(xs, [statistics.fmean(points[x]) for x in xs], marker="o",
                        color="black" if mine else colours[name], linewidth=2.5 if mine else 1.2,
                        label=f"{name} + refit" if mine else name)  # fmt: skip
            others = "no compensation" if others_compensation == "none" else "same refit"
            ax.set_title(f"{model}, 10 shots; others: {others}", fontsize=9)
            ax.set_xlabel("share of channels removed per layer")
            ax.grid(alpha=0.3)
        axes[i][0].set_ylabel("test accuracy, no fine-tuning")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--compensations", nargs="+", default=list(COMPENSATIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pruning_quality")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="1 model, 1 draw, 10 shots")
    parser.add_argument("--report-only", action="store_true", help="aggregate existing runs")
    parser.add_argument("--criteria", nargs="+", default=None, help="a subset of criteria")
    parser.add_argument("--shots", nargs="+", type=int, default=None, help="a subset of shots")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="calibration draws")
    parser.add_argument("--fine-tune", nargs="+", type=int, default=None, help="epochs")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        subset = {"criteria": args.criteria, "shots": args.shots, "seeds": args.seeds,
                  "epochs": args.fine_tune}  # fmt: skip
        run(args.recipes, args.compensations, args.out, args.quick, subset)
    report(load_rows(args.out), args.out)


if __name__ == "__main__":
    main()
