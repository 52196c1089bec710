"""Sensitivity-n of channel criteria on LeNet-5's channel games (Ancona et al. 2018).

For a layer's channel game (value = −cross-entropy on 10 calibration digits per class, zero
ablation) and a criterion's channel scores, Sensitivity-n is the Pearson correlation, over
random subsets ``S`` of ``n`` channels, between ``Σ_{i∈S} score_i`` and ``v(N) − v(N ∖ S)``,
the loss of removing them together. A criterion whose scores add up to what removing channels
costs scores 1 at every ``n``; no criterion can, once channels interact.

The model is estimator_quality.py's ``mnist-lenet5``: LeNet-5 trained for 2 epochs on 6,000
MNIST test digits (the same seeds and split), calibrated on 10 held-out digits per class. Two
games: the first conv (``0``, 6 channels) and the second (``3``, 16 channels, the game cached
in ``results/exact_games/mnist-lenet5.pt``; the run reports how far its enumeration is from the
cache). Every coalition of each game is enumerated once (2^16 = 65,536 for layer ``3``), so
exact Shapley values are available and the subsets are looked up instead of evaluated.

Run from the repository root::

    python benchmarks/sensitivity_n.py --threads 1     # about a minute on a shared 2-core CPU

Results go to ``benchmarks/results/sensitivity_n.{md,csv,png}``.
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.calibration import few_shot_indices
from lightning_shapley.criteria import criterion_by_name
from lightning_shapley.criteria.gradient import GradientCriterion
from lightning_shapley.estimators.exact import all_coalitions, shapley_from_table
from lightning_shapley.estimators.quality import spearman
from lightning_shapley.games import ChannelGame
from lightning_shapley.lab.datasets import load_mnist_idx, split_indices
from lightning_shapley.lab.models import LeNet5
from lightning_shapley.sensitivity import plot_sensitivity_panels, sensitivity_n

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-test10k"
DEFAULT_OUT = REPO / "benchmarks" / "results"
CACHE = DEFAULT_OUT / "exact_games" / "mnist-lenet5.pt"

LAYERS = ("0", "3")
SHOTS = 10
RANDOM_SEEDS = 20


class TableGame:
    """Looks coalitions up in the values ``[2^n]`` of all of them (bit j = player j)."""

    def __init__(self, values: torch.Tensor, n_players: int) -> None:
        self.values, self.n_players = values.double(), n_players
        self._bits = 1 << torch.arange(n_players)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        return self.values[(torch.as_tensor(masks).long() * self._bits).sum(1)]


def train_lenet(mnist: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float, float]:
    """estimator_quality.py's mnist-lenet5 model: ``(model, calibration x, y, accuracy, s)``."""
    torch.manual_seed(0)
    x, y = load_mnist_idx(mnist)
    model = LeNet5()
    train, pool, test = split_indices(len(y), (0.6, 0.2, 0.2), seed=0)
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(2):
        for batch in torch.randperm(len(train), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[train][batch]), y[train][batch]).backward()
            optimizer.step()
    model.eval()
    seconds = time.perf_counter() - began
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    calibration = pool[few_shot_indices(y[pool], SHOTS, seed=0)]
    return model, x[calibration], y[calibration], accuracy, seconds


def enumerate_values(game: ChannelGame) -> torch.Tensor:
    """Values ``[2^n]`` of every coalition, 4,096 per call."""
    total = 2**game.n_players
    return torch.cat(
        [
            game(all_coalitions(game.n_players, s, min(total, s + 4096)))
            for s in range(0, total, 4096)
        ]
    ).double()


def criteria() -> dict[str, tuple[Callable[[], object], bool]]:
    """``{report name: (criterion factory, whether its scores are in value units)}`` (the exact
    Shapley values come from the enumeration)."""
    return {
        "permutation Shapley (1,024 evals)": (lambda: criterion_by_name("shapley"), True),
        "leave-one-out": (lambda: criterion_by_name("loo"), True),
        "l1": (lambda: criterion_by_name("l1"), False),
        "taylor (torch-pruning)": (lambda: criterion_by_name("taylor"), True),
        "activation_mean": (lambda: criterion_by_name("activation_mean"), False),
        "grad_input": (lambda: GradientCriterion("grad_input"), True),
        "integrated_gradients (16)": (lambda: GradientCriterion("integrated_gradients"), True),
        "deeplift": (lambda: GradientCriterion("deeplift"), True),
    }


def run_layer(
    model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor, samples: int, seed: int
) -> dict:
    """Enumerate the layer's game, score it with every criterion, compute every curve."""
    game = ChannelGame(model, layer, (x, y))
    n = game.n_players
    began = time.perf_counter()
    values = enumerate_values(game)
    enumeration = time.perf_counter() - began
    exact = shapley_from_table(values, n)
    table = TableGame(values, n)
    delta = float(values[-1] - values[0])  # v(N) − v(∅)
    ns = list(range(1, n + 1))
    rows = [
        {
            "criterion": "exact Shapley",
            "scores": exact,
            "n_evals": 2**n,
            "seconds": enumeration,
            "curve": sensitivity_n(table, exact, ns, samples, seed),
            "value_units": True,
        }
    ]
    for name, (make, value_units) in criteria().items():
        result = make().score(model, [layer], (x, y), seed=seed)
        scores = result.values[layer].double()
        rows.append(
            {
                "criterion": name,
                "scores": scores,
                "n_evals": result.n_evals,
                "seconds": result.seconds,
                "curve": sensitivity_n(table, scores, ns, samples, seed),
                "value_units": value_units,
            }
        )
    curves = []
    for random_seed in range(RANDOM_SEEDS):
        scores = criterion_by_name("random").score(model, [layer], (x, y), seed=random_seed)
        curves.append(sensitivity_n(table, scores.values[layer], ns, samples, seed))
    rows.append(
        {
            "criterion": f"random (mean r of {RANDOM_SEEDS} seeds)",
            "scores": None,
            "n_evals": 0,
            "seconds": 0.0,
            "curve": {k: statistics.fmean(c[k] for c in curves) for k in ns[:-1]} | {n: math.nan},
            "value_units": False,
        }
    )
    for row in rows:
        scores = row["scores"]
        row["spearman"] = spearman(scores, exact) if scores is not None else math.nan
        row["sum_ratio"] = float(scores.sum()) / delta if row["value_units"] else math.nan
        finite = [r for k, r in row["curve"].items() if k < n and not math.isnan(r)]
        row["mean_r"] = statistics.fmean(finite)
    cache_gap = None
    if layer == "3" and CACHE.exists():
        cache_gap = float((torch.load(CACHE)["values"].double() - values).abs().max())
    return {
        "layer": layer,
        "n": n,
        "group": list(game.groups[0].pruned_layers),
        "consumers": [c.name for c in game.groups[0].consumers],
        "full": float(values[-1]),
        "empty": float(values[0]),
        "delta": delta,
        "enumeration_seconds": enumeration,
        "cache_gap": cache_gap,
        "rows": rows,
    }


def _cell(r: float) -> str:
    return "–" if math.isnan(r) else f"{r:.2f}"


def write_markdown(path: Path, results: list[dict], info: dict) -> None:
    lines = [
        "# Sensitivity-n of channel criteria on LeNet-5",
        "",
        "Generated by `benchmarks/sensitivity_n.py"
        f"{info['flags']}` in {info['seconds']:.0f} s ({info['machine']}; torch "
        f"{info['torch']}, {info['threads']} thread(s)).",
        "",
        "**Sensitivity-n** (Ancona et al. 2018): Pearson r, over random subsets S of n channels, "
        "between the sum of a criterion's scores over S and the value lost by removing S "
        "together, v(N) − v(N∖S). 1 means the scores add up to removal costs at that n. At "
        "n = all channels there is one subset and r is undefined (–); there the column "
        "'Σ / Δ' shows the sum of the scores over v(N) − v(∅), which is 1 for efficient "
        "(exact Shapley) and complete (integrated gradients, DeepLIFT) attributions (– for "
        "scores not in value units). Leave-one-out scores 1 at n = 1 by construction.",
        "",
        f"Model: {info['model']}. Value: −cross-entropy on {info['calibration']}; zero ablation "
        f"at the group's consumers (the game's masking). Subsets: all of them where a size has "
        f"at most {info['samples']}, else {info['samples']} drawn uniformly (seed "
        f"{info['seed']}); every coalition of each game was enumerated once, so the subsets, "
        "exact Shapley values and v(∅) are exact.",
        "",
        "Columns: `mean r` averages r over n = 1 … all − 1; `Spearman` is the rank correlation "
        "with the exact Shapley values; `evals` counts game evaluations (criteria playing the "
        "game) or forward+backward passes over the calibration set (gradient criteria; 0 for "
        "the rest); `s` is the criterion's wall-clock time.",
    ]
    for result in results:
        n = result["n"]
        shown = list(range(1, n + 1)) if n <= 8 else [1, 2, 3, 4, 6, 8, 11, 13, 15, 16]
        lines += [
            "",
            f"## Layer `{result['layer']}`: {n} channels",
            "",
            f"Group {result['group']}, consumers {result['consumers']}. v(N) = "
            f"{result['full']:.4f}, v(∅) = {result['empty']:.4f}, Δ = {result['delta']:.4f}; "
            f"2^{n} coalitions enumerated in {result['enumeration_seconds']:.1f} s.",
        ]
        if result["cache_gap"] is not None:
            lines.append(
                f"Largest difference from the cached table `exact_games/mnist-lenet5.pt`: "
                f"{result['cache_gap']:.2g}."
            )
        lines += [
            "",
            "| criterion | "
            + " | ".join(f"n={k}" for k in shown)
            + " | mean r | Σ / Δ | Spearman | evals | s |",
            "|---|" + "---|" * (len(shown) + 5),
        ]
        for row in result["rows"]:
            cells = [_cell(row["curve"][k]) for k in shown]
            lines.append(
                f"| {row['criterion']} | "
                + " | ".join(cells)
                + f" | {row['mean_r']:.3f} | {_cell(row['sum_ratio'])} | "
                f"{_cell(row['spearman'])} | {row['n_evals']:,} | {row['seconds']:.2f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, results: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["layer", "n_players", "criterion", "n", "pearson_r", "spearman_vs_exact",
                         "sum_over_delta", "n_evals", "seconds"])  # fmt: skip
        for result in results:
            for row in result["rows"]:
                for k, r in row["curve"].items():
                    writer.writerow([
                        result["layer"], result["n"], row["criterion"], k,
                        "" if math.isnan(r) else round(r, 4),
                        "" if math.isnan(row["spearman"]) else round(row["spearman"], 4),
                        "" if math.isnan(row["sum_ratio"]) else round(row["sum_ratio"], 4),
                        row["n_evals"], round(row["seconds"], 3),
                    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST IDX folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--samples", type=int, default=1000, help="subsets per size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and criteria")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    model, x, y, accuracy, train_seconds = train_lenet(args.mnist)
    print(f"LeNet-5 trained in {train_seconds:.1f} s, test accuracy {accuracy:.4f}")
    results = []
    for layer in LAYERS:
        results.append(run_layer(model, layer, x, y, args.samples, args.seed))
        for row in results[-1]["rows"]:
            print(f"  layer {layer} {row['criterion']:36s} mean r {row['mean_r']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "sensitivity_n"
    info = {
        "flags": f" --threads {args.threads}" if args.threads else "",
        "seconds": time.perf_counter() - began,
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "model": f"LeNet-5 trained 2 epochs on 6,000 MNIST test digits in {train_seconds:.1f} s, "
        f"test accuracy {accuracy:.4f} on 2,000 others",
        "calibration": f"{len(y)} held-out digits ({SHOTS} per class)",
        "samples": args.samples,
        "seed": args.seed,
    }
    write_markdown(Path(f"{stem}.md"), results, info)
    write_csv(Path(f"{stem}.csv"), results)
    plot_sensitivity_panels(
        {
            f"LeNet-5 layer {r['layer']} ({r['n']} channels), Δ = {r['delta']:.2f}": {
                row["criterion"]: row["curve"] for row in r["rows"]
            }
            for r in results
        },
        Path(f"{stem}.png"),
    )
    print(f"wrote {stem}.md/.csv/.png in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
