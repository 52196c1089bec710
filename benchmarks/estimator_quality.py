"""Estimator quality: which sampler settles the pruning cut with the fewest game evaluations.

Ground truth comes from games small enough to enumerate: three real channel games (a layer of
a DigitsCNN on scikit-learn digits, of a LeNet-5 on MNIST, and a residual group of a narrow CIFAR
ResNet-20 on MNIST padded to 32×32) and two synthetic ones. Each real game's 2^n coalition values
are computed once with ``ExactShapley``'s enumeration and cached in
``benchmarks/results/exact_games/``; every run then replays the cached table as a lookup game, so
dozens of seeds at every budget cost milliseconds.

For every game, cut (k = 25 % and 50 % of the players) and budget on a geometric grid, over
``--seeds`` seeds, each estimator's values are scored against the exact ones: precision of the
bottom-k set, Spearman correlation and relative ℓ2 error. The headline is the number of
evaluations needed to reach 95 % precision at the cut: the smallest grid budget from which the
median precision over seeds stays at or above 0.95 at every larger grid budget (the first grid
budget where it is reached is reported too; near-ties make the median flicker). Per-seed
quantiles use the same rule seed by seed.

A section "DASP (deterministic)" runs ``DASPShapley`` (moment propagation, no sampling) on
the real games whose layers it supports (a plain chain after the masked layer; the ResNet's
residual group is reported as not supported), with all or 4 / 8 coalition sizes and without or
with 16 logit draws, and sets its Spearman, precision at both cuts and relative error beside the
samplers' medians at a budget equal to its propagations (forward passes over the calibration
set). ``--only dasp`` runs just that and merges it into the stored results.

A last section runs ``BanditShapley`` on a network-wide game (every prunable group of a CIFAR
ResNet-56, 1,120 players) on the CPU and reports players, evaluations and seconds.

Run from the repository root::

    python benchmarks/estimator_quality.py            # full run, about 15 minutes on 2 cores
    python benchmarks/estimator_quality.py --quick    # smoke run, about a minute
    python benchmarks/estimator_quality.py --only dasp --threads 1   # DASP only, merged

Results go to ``benchmarks/results/estimator_quality.{md,csv,json,png}``. The outside reference
is shapiq (KernelSHAP with paired sampling, permutation sampling, SVARM) at equal budgets when it
is installed (``pip install shapiq``); without it those rows are left out.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import math
import multiprocessing
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley.calibration import few_shot_indices
from lightning_shapley.estimators import (
    BanditShapley,
    DASPShapley,
    LeaveOneOut,
    PermutationShapley,
    TMABShapley,
)
from lightning_shapley.estimators.exact import all_coalitions, shapley_from_table
from lightning_shapley.estimators.quality import bottom_k_precision, relative_error, spearman
from lightning_shapley.games import ChannelGame
from lightning_shapley.games.moments import MomentSuffix
from lightning_shapley.lab.datasets import load_digits, load_mnist_idx, split_indices
from lightning_shapley.lab.models import CifarResNet, DigitsCNN, LeNet5
from lightning_shapley.pruning import prunable_layer_names

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist-test10k"
DEFAULT_OUT = REPO / "benchmarks" / "results"

GRID = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)
QUICK_GRID = (48, 128, 512, 2048)
REPORT_BUDGETS = (256, 1024, 4096)  # where Spearman, relative error and claims are tabulated
QUICK_REPORT_BUDGETS = (128, 512, 2048)
CUTS = (0.25, 0.5)
TARGET = 0.95
SHOTS = 10
SVARM_MAX_BUDGET = 2048  # shapiq's SVARM bookkeeping makes larger budgets slow


# -- games ------------------------------------------------------------------------------------


class TableGame:
    """Replays a game from the values ``[2^n]`` of all its coalitions (bit j = player j).

    Args:
        values: ``[2^n]`` coalition values.
        n_players: ``n``.
    """

    def __init__(self, values: torch.Tensor, n_players: int) -> None:
        self.values = values.double()
        self.n_players = n_players
        self.n_evals = 0
        self._bits = 1 << torch.arange(n_players)

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """Values ``[m]`` of the coalitions ``masks`` ``[m, n]``."""
        masks = torch.as_tensor(masks).reshape(-1, self.n_players).bool()
        self.n_evals += len(masks)
        return self.values[(masks.long() * self._bits).sum(1)]


@dataclass(frozen=True)
class ExactGame:
    """A game with all its coalition values and exact Shapley values.

    Attributes:
        name: Short name.
        description: What the players and the value are.
        values: ``[2^n]`` coalition values.
        shapley: ``[n]`` exact Shapley values.
    """

    name: str
    description: str
    values: torch.Tensor
    shapley: torch.Tensor

    @property
    def n_players(self) -> int:
        return len(self.shapley)

    def replay(self) -> TableGame:
        """A fresh lookup game counting its own evaluations."""
        return TableGame(self.values, self.n_players)


def enumerate_game(game: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """Values ``[2^n]`` of every coalition, 4,096 at a time (``ExactShapley``'s order)."""
    chunks = []
    for start in range(0, 2**n, 4096):
        chunks.append(torch.as_tensor(game(all_coalitions(n, start, min(2**n, start + 4096)))))
    return torch.cat(chunks).double()


def _train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int = 0
) -> float:
    """Adam on cross-entropy, batches of 64; returns the seconds it took."""
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    return time.perf_counter() - began


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@dataclass(frozen=True)
class RealGameSpec:
    """How to build one real channel game."""

    name: str
    model: str
    layer: str
    data: str
    epochs: int
    lr: float


REAL_GAMES = (
    RealGameSpec("digits-cnn", "DigitsCNN(width=16)", "3", "digits", 15, 3e-3),
    RealGameSpec("mnist-lenet5", "LeNet5()", "3", "mnist", 2, 3e-3),
    RealGameSpec(
        "mnist32-resnet20", "CifarResNet(20, width=4)", "layer3.0.conv2", "mnist32", 8, 1e-2
    ),
)


def make_real_game(
    spec: RealGameSpec, mnist: Path, *, train: bool = True
) -> tuple[ChannelGame, dict]:
    """Train the model (seeded), draw 10 calibration examples per class, build the layer's game.

    Args:
        spec: The game.
        mnist: MNIST IDX folder.
        train: ``False`` keeps the seeded initial weights (the game's structure without the
            training time, e.g. to ask whether an estimator supports it).

    Returns:
        ``(game, metadata)``.
    """
    torch.manual_seed(0)
    if spec.data == "digits":
        x, y = load_digits()
        model: nn.Module = DigitsCNN(width=16)
    else:
        x, y = load_mnist_idx(mnist)
        model = LeNet5()
        if spec.data == "mnist32":
            x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
            model = CifarResNet(20, width=4)
    train_idx, pool, test = split_indices(len(y), (0.6, 0.2, 0.2), seed=0)
    seconds = _train(model, x[train_idx], y[train_idx], spec.epochs, spec.lr) if train else 0.0
    model.eval()
    calibration = pool[few_shot_indices(y[pool], SHOTS, seed=0)]
    game = ChannelGame(model, spec.layer, (x[calibration], y[calibration]))
    meta = {
        "model": spec.model,
        "layer": spec.layer,
        "group_layers": list(game.groups[0].pruned_layers),
        "data": spec.data,
        "train_examples": len(train_idx),
        "epochs": spec.epochs if train else 0,
        "train_seconds": round(seconds, 1),
        "test_accuracy": round(_accuracy(model, x[test], y[test]), 4),
        "calibration": f"{SHOTS} per class from a held-out pool ({len(calibration)} examples)",
        "value": "-cross-entropy (mean over the calibration set)",
    }
    return game, meta


def build_real_game(spec: RealGameSpec, mnist: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train the model, draw 10 calibration examples per class, enumerate the layer's game.

    Returns:
        ``(values [2^n], shapley [n], metadata)``.
    """
    game, meta = make_real_game(spec, mnist)
    began = time.perf_counter()
    values = enumerate_game(game, game.n_players)
    meta["enumeration_seconds"] = round(time.perf_counter() - began, 1)
    return values, shapley_from_table(values, game.n_players), meta


def load_real_game(spec: RealGameSpec, cache: Path, mnist: Path) -> tuple[ExactGame, dict]:
    """The cached game, built and cached first if it is not there."""
    path = cache / f"{spec.name}.pt"
    if not path.exists():
        print(f"  building {spec.name} (training, then 2^n coalitions; cached afterwards)")
        values, shapley, meta = build_real_game(spec, mnist)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save({"values": values, "shapley": shapley, "meta": meta}, path)
    stored = torch.load(path)
    meta = stored["meta"]
    description = (
        f"{meta['model']} layer {meta['layer']!r} on {meta['data']} "
        f"(test accuracy {meta['test_accuracy']:.3f}), {SHOTS} shots per class, value = -CE"
    )
    return ExactGame(spec.name, description, stored["values"], stored["shapley"]), meta


def synthetic_games() -> list[ExactGame]:
    """Two synthetic games without the pairwise structure antithetic sampling is exact on.

    * ``third-order`` (n = 20): ``v(S) = Σ_{i∈S} w_i + Σ_T c_T [T ⊆ S]`` over 40 random
      triples ``T``; ``w ~ U(0, 1)``, ``c ~ N(0, 0.5²)``.
    * ``threshold`` (n = 18): ``v(S) = σ(10 · (Σ_{i∈S} w_i / Σ w − 0.4))``, ``w ~ U(0.2, 1)``:
      the value collapses once too little capacity is kept, as a network's accuracy does.
    """
    generator = torch.Generator().manual_seed(0)
    n = 20
    weights = torch.rand(n, generator=generator, dtype=torch.float64)
    triples = torch.stack([torch.randperm(n, generator=generator)[:3] for _ in range(40)])
    coefficients = 0.5 * torch.randn(40, generator=generator, dtype=torch.float64)

    def third_order(masks: torch.Tensor) -> torch.Tensor:
        s = masks.double()
        return s @ weights + s[:, triples].prod(dim=2) @ coefficients

    n2 = 18
    capacity = 0.2 + 0.8 * torch.rand(n2, generator=generator, dtype=torch.float64)

    def threshold(masks: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(10 * (masks.double() @ capacity / capacity.sum() - 0.4))

    games = []
    for name, function, size, text in (
        ("third-order", third_order, n, "synthetic: additive + 40 random third-order terms"),
        ("threshold", threshold, n2, "synthetic: sigmoid of the kept share of capacity"),
    ):
        values = enumerate_game(function, size)
        games.append(ExactGame(name, text, values, shapley_from_table(values, size)))
    return games


def cut_difficulty(game: ExactGame, k: int) -> dict:
    """How hard the cut is: the gap between the ``k``-th and ``(k + 1)``-th exact values, and
    the spread of the two players' paired marginal difference ``v(S ∪ {a}) − v(S ∪ {b})`` over
    ``S ⊆ N ∖ {a, b}`` with sizes weighted uniformly (the Shapley weighting of ``φ_a − φ_b``).

    ``samples_2sigma = (2 · sd / gap)^2`` paired samples resolve the two at two standard errors.
    """
    n = game.n_players
    order = torch.argsort(game.shapley, stable=True)
    a, b = int(order[k - 1]), int(order[k])
    codes = torch.arange(2**n)
    rest = codes[((codes >> a) & 1 == 0) & ((codes >> b) & 1 == 0)]
    sizes = torch.zeros(len(rest), dtype=torch.long)
    for j in range(n):
        sizes += (rest >> j) & 1
    difference = game.values[rest | (1 << a)] - game.values[rest | (1 << b)]
    weight = 1.0 / torch.bincount(sizes, minlength=n - 1).double()[sizes] / (n - 1)
    mean = (weight * difference).sum()
    sd = float(((weight * (difference - mean) ** 2).sum()).sqrt())
    gap = float(game.shapley[b] - game.shapley[a])
    return {
        "gap": gap,
        "relative_gap": gap / float(game.shapley.abs().max()),
        "paired_sd": sd,
        "samples_2sigma": (2 * sd / gap) ** 2 if gap > 0 else math.inf,
    }


# -- estimators -------------------------------------------------------------------------------


class ShapiqEstimator:
    """A shapiq approximator behind this package's ``estimate(game, budget, *, seed)``.

    Args:
        approximator: The shapiq class (``KernelSHAP``, ``PermutationSamplingSV``, ``SVARM``).
        options: Keyword arguments of its constructor.
    """

    def __init__(self, approximator: type, options: dict) -> None:
        self.approximator, self.options = approximator, options

    def estimate(self, game: TableGame, budget: int, *, seed: int = 0) -> _Values:
        n = game.n_players
        approximator = self.approximator(n, random_state=seed, **self.options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = approximator.approximate(budget, lambda masks: game(masks).numpy())
        values = torch.tensor([float(result[(i,)]) for i in range(n)], dtype=torch.float64)
        return _Values(values, game.n_evals)


@dataclass(frozen=True)
class _Values:
    values: torch.Tensor
    n_evals: int


@dataclass(frozen=True)
class Contender:
    """One estimator in the comparison.

    Attributes:
        name: Row label.
        family: ``ours``, ``baseline``, ``reference`` (outside library) or ``ablation``.
        make: Builds the estimator for a cut of ``k`` players.
        per_cut: Whether the estimator depends on the cut (else one run serves both cuts).
        max_budget: Largest grid budget it is run at.
        fixed_budget: Its only budget as a function of ``n`` (leave-one-out).
    """

    name: str
    family: str
    make: Callable[[int], object]
    per_cut: bool = False
    max_budget: int | None = None
    fixed_budget: Callable[[int], int] | None = None


def contenders(with_shapiq: bool) -> list[Contender]:
    """Every estimator the benchmark compares, the product's first."""
    never = 10**9
    rows = [
        Contender("BanditShapley", "ours", lambda k: BanditShapley(cut=k), per_cut=True),
        Contender(
            "TMABShapley (Neuron Shapley settings)", "ours", lambda k: TMABShapley(cut=k), True
        ),
        Contender("permutation", "baseline", lambda k: PermutationShapley(antithetic=False)),
        Contender("permutation (antithetic)", "baseline", lambda k: PermutationShapley()),
        Contender(
            "leave-one-out", "baseline", lambda k: LeaveOneOut(), fixed_budget=lambda n: n + 1
        ),
        Contender(
            "bandit without focus (min_samples=∞)",
            "ablation",
            lambda k: BanditShapley(cut=k, min_samples=never),
            per_cut=True,
        ),
        Contender(
            "bandit with exact border strata",
            "ablation",
            lambda k: BanditShapley(cut=k, exact_border=True),
            per_cut=True,
        ),
        Contender(
            "bandit without complement pairs",
            "ablation",
            lambda k: BanditShapley(cut=k, antithetic=False),
            per_cut=True,
        ),
        Contender(
            "TMAB without truncation",
            "ablation",
            lambda k: TMABShapley(cut=k, tolerance=0.0),
            per_cut=True,
        ),
    ]
    if with_shapiq:
        import shapiq

        rows += [
            Contender(
                "shapiq KernelSHAP (paired)",
                "reference",
                lambda k: ShapiqEstimator(shapiq.KernelSHAP, {"pairing_trick": True}),
            ),
            Contender(
                "shapiq permutation sampling",
                "reference",
                lambda k: ShapiqEstimator(shapiq.PermutationSamplingSV, {}),
            ),
            Contender(
                "shapiq SVARM",
                "reference",
                lambda k: ShapiqEstimator(shapiq.SVARM, {}),
                max_budget=SVARM_MAX_BUDGET,
            ),
        ]
    return rows


# -- runs -------------------------------------------------------------------------------------

_GAMES: dict[str, ExactGame] = {}  # filled before the worker processes fork


def run_contender(task: tuple[str, int, bool, Sequence[int], int]) -> list[dict]:
    """Every budget and seed of one estimator on one game; one row per run and cut.

    Args:
        task: ``(game name, index into contenders(with_shapiq), with_shapiq, grid, seeds)``.
    """
    game_name, index, with_shapiq, grid, seeds = task
    contender = contenders(with_shapiq)[index]
    torch.set_num_threads(1)
    game = _GAMES[game_name]
    n = game.n_players
    ks = [int(cut * n) for cut in CUTS]
    if contender.fixed_budget is not None:
        budgets = [contender.fixed_budget(n)]
    else:
        budgets = [b for b in grid if contender.max_budget is None or b <= contender.max_budget]
    truth_below = {k: torch.argsort(game.shapley, stable=True)[:k] for k in ks}
    rows = []
    for k_run in ks if contender.per_cut else [None]:
        estimator = contender.make(k_run if k_run is not None else ks[0])
        minimum = estimator.min_budget(n) if hasattr(estimator, "min_budget") else 1
        for budget in budgets:
            if budget < minimum:
                continue
            for seed in range(1 if contender.fixed_budget else seeds):
                replay = game.replay()
                began = time.perf_counter()
                result = estimator.estimate(replay, budget, seed=seed)
                seconds = time.perf_counter() - began
                if replay.n_evals > budget or result.n_evals != replay.n_evals:
                    raise RuntimeError(
                        f"{contender.name} spent {replay.n_evals} evaluations (reported "
                        f"{result.n_evals}) with a budget of {budget}"
                    )
                common = {
                    "game": game_name,
                    "n": n,
                    "estimator": contender.name,
                    "family": contender.family,
                    "budget": budget,
                    "seed": seed,
                    "n_evals": replay.n_evals,
                    "spearman": spearman(result.values, game.shapley),
                    "relative_error": relative_error(result.values, game.shapley),
                    "seconds": seconds,
                }
                for k in [k_run] if k_run is not None else ks:
                    row = dict(common, k=k, cut=k / n)
                    row["precision"] = bottom_k_precision(result.values, game.shapley, k)
                    if hasattr(result, "settled"):
                        truly_below = torch.zeros(n, dtype=torch.bool)
                        truly_below[truth_below[k]] = True
                        wrong = result.below != truly_below
                        row["all_settled"] = int(result.all_settled)
                        row["settled"] = int(result.settled.sum())
                        row["wrong_settled"] = int((wrong & result.settled).sum())
                    rows.append(row)
    return rows


# -- summary ----------------------------------------------------------------------------------


def reach_budget(budgets: Sequence[int], precisions: Sequence[float]) -> int | None:
    """The smallest budget from which ``precisions`` stay at or above ``TARGET``."""
    for index, budget in enumerate(budgets):
        if all(p >= TARGET for p in precisions[index:]):
            return budget
    return None


def first_reach(budgets: Sequence[int], precisions: Sequence[float]) -> int | None:
    """The smallest budget where ``precisions`` reach ``TARGET``."""
    return next((b for b, p in zip(budgets, precisions, strict=True) if p >= TARGET), None)


def _quantile(values: list[float], q: float) -> float:
    return float(np.quantile(np.array(values, dtype=float), q, method="nearest"))


def summarize(rows: list[dict], games: list[ExactGame]) -> list[dict]:
    """One record per (game, cut, estimator): reach, per-seed reach, precision curve, errors."""
    records = []
    keys = sorted({(r["game"], r["k"], r["estimator"]) for r in rows}, key=str)
    order = {g.name: i for i, g in enumerate(games)}
    for game, k, name in sorted(keys, key=lambda key: (order[key[0]], key[1])):
        mine = [r for r in rows if (r["game"], r["k"], r["estimator"]) == (game, k, name)]
        budgets = sorted({r["budget"] for r in mine})
        seeds = sorted({r["seed"] for r in mine})
        by = {(r["budget"], r["seed"]): r for r in mine}
        median = [statistics.median(by[b, s]["precision"] for s in seeds) for b in budgets]
        per_seed = [reach_budget(budgets, [by[b, s]["precision"] for b in budgets]) for s in seeds]
        finite = [math.inf if r is None else r for r in per_seed]
        record = {
            "game": game,
            "k": k,
            "n": mine[0]["n"],
            "estimator": name,
            "family": mine[0]["family"],
            "budgets": budgets,
            "median_precision": median,
            "mean_precision": [
                statistics.fmean(by[b, s]["precision"] for s in seeds) for b in budgets
            ],
            "reach": reach_budget(budgets, median),
            "first_reach": first_reach(budgets, median),
            "seed_reach_quantiles": [_quantile(finite, q) for q in (0.25, 0.5, 0.75)],
            "median_spearman": [
                statistics.median(by[b, s]["spearman"] for s in seeds) for b in budgets
            ],
            "median_relative_error": [
                statistics.median(by[b, s]["relative_error"] for s in seeds) for b in budgets
            ],
            "mean_evals": [statistics.fmean(by[b, s]["n_evals"] for s in seeds) for b in budgets],
            "seeds": len(seeds),
            "seconds": sum(r["seconds"] for r in mine),
        }
        if "all_settled" in mine[0]:
            record["all_settled_share"] = [
                statistics.fmean(by[b, s]["all_settled"] for s in seeds) for b in budgets
            ]
            record["runs_with_wrong_settled"] = [
                statistics.fmean(by[b, s]["wrong_settled"] > 0 for s in seeds) for b in budgets
            ]
            record["wrong_settled_per_settled_player"] = [
                sum(by[b, s]["wrong_settled"] for s in seeds)
                / max(1, sum(by[b, s]["settled"] for s in seeds))
                for b in budgets
            ]
        records.append(record)
    return records


def targets(records: list[dict], games: list[ExactGame]) -> list[dict]:
    """BanditShapley's evaluations to 95 % against the best of antithetic permutations and
    paired KernelSHAP, per game and cut (target: at most half)."""
    find = {(r["game"], r["k"], r["estimator"]): r for r in records}
    out = []
    for game in games:
        for cut in CUTS:
            k = int(cut * game.n_players)
            bandit = find.get((game.name, k, "BanditShapley"))
            rivals = [
                find[key]
                for key in (
                    (game.name, k, "permutation (antithetic)"),
                    (game.name, k, "shapiq KernelSHAP (paired)"),
                )
                if key in find
            ]
            if bandit is None or not rivals:
                continue
            best = min(rivals, key=lambda r: math.inf if r["reach"] is None else r["reach"])
            ours = math.inf if bandit["reach"] is None else bandit["reach"]
            theirs = math.inf if best["reach"] is None else best["reach"]
            ratio = ours / theirs if math.isfinite(theirs) else None
            floor = min(best["budgets"])
            met = ratio <= 0.5 if ratio is not None else ours <= max(best["budgets"]) / 2
            out.append(
                {
                    "game": game.name,
                    "k": k,
                    "bandit": bandit["reach"],
                    "best_baseline": best["estimator"],
                    "baseline": best["reach"],
                    "ratio": ratio,
                    "met": met,
                    "baseline_at_floor": best["reach"] == floor,
                    "beyond_grid": not math.isfinite(theirs),
                }
            )
    return out


# -- the network-wide game --------------------------------------------------------------------


def network_wide(mnist: Path, budget: int, shots: int, train_examples: int) -> dict:
    """``BanditShapley`` on every prunable group of a CIFAR ResNet-56 at once, on the CPU.

    The network is trained for two epochs on ``train_examples`` MNIST digits padded to 32×32×3;
    the calibration set holds ``shots`` digits per class; the cut is half of all channels.
    With 1,120 players a round costs ``2 · 1,121`` evaluations while every player is in doubt,
    so ``min_samples=3`` lets the first players settle after three rounds.
    """
    torch.manual_seed(0)
    x, y = load_mnist_idx(mnist)
    x = F.pad(x, (2, 2, 2, 2)).repeat(1, 3, 1, 1)
    train, pool, test = split_indices(len(y), (0.6, 0.2, 0.2), seed=0)
    model = CifarResNet(56)
    train_seconds = _train(model, x[train[:train_examples]], y[train[:train_examples]], 2, 3e-3)
    accuracy = _accuracy(model, x[test[:1000]], y[test[:1000]])
    calibration = pool[few_shot_indices(y[pool], shots, seed=0)]

    began = time.perf_counter()
    layers = prunable_layer_names(model, x[:1])
    game = ChannelGame(model, layers, (x[calibration], y[calibration]))
    build_seconds = time.perf_counter() - began
    estimator = BanditShapley(cut=0.5, min_samples=3)
    began = time.perf_counter()
    result = estimator.estimate(game, budget, seed=0)
    seconds = time.perf_counter() - began
    sizes = torch.tensor([g.n_channels for g in game.groups])
    group = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    below = torch.bincount(group[result.settled_below], minlength=len(sizes))
    above = torch.bincount(group[result.settled_above], minlength=len(sizes))
    return {
        "model": "CifarResNet(56), width 16",
        "train": f"2 epochs on {train_examples} MNIST digits padded to 32x32x3",
        "train_seconds": round(train_seconds, 1),
        "test_accuracy": round(accuracy, 4),
        "calibration_examples": len(calibration),
        "groups": len(game.groups),
        "players": game.n_players,
        "cut": result.k,
        "budget": budget,
        "evaluations": result.n_evals,
        "game_build_seconds": round(build_seconds, 1),
        "estimate_seconds": round(seconds, 1),
        "ms_per_evaluation": round(1000 * seconds / max(1, result.n_evals), 1),
        "samples_per_player_median": float(result.n_samples.median()),
        "settled_below": int(result.settled_below.sum()),
        "settled_above": int(result.settled_above.sum()),
        "all_settled": result.all_settled,
        "torch_threads": torch.get_num_threads(),
        "per_group": [
            {"layer": g.layer, "channels": g.n_channels, "below": int(b), "above": int(a)}
            for g, b, a in zip(game.groups, below, above, strict=True)
        ],
    }


# -- reports ----------------------------------------------------------------------------------

MAIN_ORDER = (
    "BanditShapley",
    "TMABShapley (Neuron Shapley settings)",
    "permutation (antithetic)",
    "permutation",
    "leave-one-out",
    "shapiq KernelSHAP (paired)",
    "shapiq permutation sampling",
    "shapiq SVARM",
)


def _budget(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "never"
    return f"{value:,.0f}"


def _budget_of(record: dict, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return f"> {max(record['budgets']):,}"
    return f"{value:,.0f}"


def _reach_cell(record: dict, grid_max: int) -> str:
    q25, _, q75 = record["seed_reach_quantiles"]
    if record["estimator"] != "leave-one-out" and max(record["budgets"]) < grid_max:
        return f"{_budget_of(record, record['reach'])} [{_budget_of(record, q25)}–" + (
            f"{_budget_of(record, q75)}] (run up to {max(record['budgets']):,})"
        )
    cell = _budget(record["reach"])
    if record["first_reach"] != record["reach"]:
        cell += f" (first {_budget(record['first_reach'])})"
    if record["estimator"] == "leave-one-out":
        return f"{cell} [p = {record['median_precision'][0]:.2f}]"
    return f"{cell} [{_budget(q25)}–{_budget(q75)}]"


def _at(record: dict, key: str, budget: int) -> str:
    if budget not in record["budgets"]:
        return "–"
    return f"{record[key][record['budgets'].index(budget)]:.3f}"


# -- DASP: deterministic moment propagation on the real games ---------------------------------

DASP_SETTINGS: tuple[tuple[int | None, int], ...] = (
    (None, 0),
    (None, 16),
    (8, 0),
    (8, 16),
    (4, 0),
    (4, 16),
)  # (n_sizes, logit_samples); None: every coalition size
DASP_SEEDS = 10  # seeds where sizes are subsampled (with all sizes one run is the estimate)
DASP_CHECK_COALITIONS = 256  # rebuilt game against the cached table, and its timing
DASP_COMPARE = tuple(name for name in MAIN_ORDER if name != "leave-one-out")


def dasp_name(n_sizes: int | None, logit_samples: int) -> str:
    """Row label of one DASP setting."""
    sizes = "all sizes" if n_sizes is None else f"{n_sizes} sizes"
    return f"DASP ({sizes}{f', {logit_samples} logit draws' if logit_samples else ''})"


def dasp_unsupported(message: str) -> str:
    """Short reason from ``DASPShapley``'s ``ValueError``."""
    if "branches that meet again" in message or "residual" in message:
        return "residual add"
    return message


def run_dasp(
    specs: Sequence[RealGameSpec], exact: dict[str, ExactGame], mnist: Path, seeds: int
) -> dict:
    """``DASPShapley`` on every real game it supports, each setting of ``DASP_SETTINGS``.

    Support is decided on the untrained network (it depends on the architecture only), so an
    unsupported game costs no training. A supported game's network is retrained with the
    cache's seeds and its game checked against the cached coalition values before DASP runs on
    it; the same check times the game's own evaluations for the cost comparison.

    Returns:
        ``{"runs": one row per run and cut, "games": per game support, check and timing}``.
    """
    rows: list[dict] = []
    info: dict[str, dict] = {}
    for spec in specs:
        truth = exact[spec.name]
        n = truth.n_players
        probe, _ = make_real_game(spec, mnist, train=False)
        try:
            MomentSuffix(probe)
        except ValueError as error:
            info[spec.name] = {"supported": False, "reason": dasp_unsupported(str(error))}
            info[spec.name]["error"] = str(error)
            print(f"  {spec.name}: not supported ({info[spec.name]['reason']})")
            continue
        game, meta = make_real_game(spec, mnist)
        generator = torch.Generator().manual_seed(0)
        codes = torch.randint(0, 2**n, (DASP_CHECK_COALITIONS,), generator=generator)
        masks = ((codes[:, None] >> torch.arange(n)) & 1).bool()
        game(masks[:16])  # warm-up (chunk tuning)
        began = time.perf_counter()
        values = torch.as_tensor(game(masks)).double()
        game_ms = 1000 * (time.perf_counter() - began) / len(masks)
        deviation = float((values - truth.values[codes]).abs().max())
        if deviation > 1e-4:
            raise RuntimeError(
                f"{spec.name}: the retrained game differs from the cached table by "
                f"{deviation:.2g}; delete {spec.name}.pt from the cache to re-enumerate it"
            )
        info[spec.name] = {
            "supported": True,
            "max_abs_deviation_from_cache": deviation,
            "game_ms_per_evaluation": game_ms,
            "test_accuracy": meta["test_accuracy"],
        }
        ks = [int(cut * n) for cut in CUTS]
        for n_sizes, logit_samples in DASP_SETTINGS:
            subsampled = n_sizes is not None and n_sizes < n
            estimator = DASPShapley(n_sizes=n_sizes, logit_samples=logit_samples)
            for seed in range(seeds if subsampled else 1):
                began = time.perf_counter()
                result = estimator.estimate(game, seed=seed)
                seconds = time.perf_counter() - began
                common = {
                    "game": spec.name,
                    "n": n,
                    "estimator": dasp_name(n_sizes, logit_samples),
                    "family": "dasp",
                    "n_sizes": n if n_sizes is None else min(n, n_sizes),
                    "logit_samples": logit_samples,
                    "budget": result.n_evals,
                    "seed": seed,
                    "n_evals": result.n_evals,
                    "spearman": spearman(result.values, truth.shapley),
                    "relative_error": relative_error(result.values, truth.shapley),
                    "seconds": seconds,
                }
                for k in ks:
                    precision = bottom_k_precision(result.values, truth.shapley, k)
                    rows.append(dict(common, k=k, cut=k / n, precision=precision))
            print(f"  {spec.name}: {dasp_name(n_sizes, logit_samples)}")
    return {"runs": rows, "games": info}


def summarize_dasp(rows: list[dict]) -> list[dict]:
    """One record per (game, DASP setting): medians and ranges over seeds, per cut."""
    records = []
    for game, name in dict.fromkeys((r["game"], r["estimator"]) for r in rows):
        mine = [r for r in rows if (r["game"], r["estimator"]) == (game, name)]
        runs = {r["seed"]: r for r in mine}.values()  # one per seed (cut-independent fields)
        record = {
            "game": game,
            "n": mine[0]["n"],
            "estimator": name,
            "n_sizes": mine[0]["n_sizes"],
            "logit_samples": mine[0]["logit_samples"],
            "seeds": len(runs),
            "n_evals": mine[0]["n_evals"],
            "median_seconds": statistics.median(r["seconds"] for r in runs),
        }
        for key in ("spearman", "relative_error"):
            values = [r[key] for r in runs]
            record[key] = [statistics.median(values), min(values), max(values)]
        record["precision"] = {}
        for k in sorted({r["k"] for r in mine}):
            values = [r["precision"] for r in mine if r["k"] == k]
            record["precision"][str(k)] = [statistics.median(values), min(values), max(values)]
        records.append(record)
    return records


def _nearest(record: dict, budget: float) -> int:
    """Index of the recorded budget nearest to ``budget`` on a log scale (the smaller on ties)."""
    return min(
        range(len(record["budgets"])),
        key=lambda i: (abs(math.log(record["budgets"][i] / budget)), record["budgets"][i]),
    )


def _spread(triple: Sequence[float], digits: int, seeds: int) -> str:
    median, low, high = triple
    if seeds == 1 or low == high:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"


def dasp_lines(dasp: dict, records: list[dict], games: list[ExactGame]) -> list[str]:
    """The Markdown section "DASP (deterministic)": DASP next to the samplers at equal passes."""
    find = {(r["game"], r["k"], r["estimator"]): r for r in records}
    summary = dasp["summary"]
    meta = dasp["info"]
    lines = [
        "",
        "## DASP (deterministic)",
        "",
        f"Generated by `python benchmarks/estimator_quality.py{meta['flags']}` in "
        f"{meta['minutes']:.1f} min ({meta['machine']}; torch {meta['torch']}; "
        f"{meta['threads']} torch thread(s)).",
        "",
        "`DASPShapley(n_sizes, logit_samples)` (Deep Approximate Shapley Propagation) on the "
        "real games' own networks, retrained with the cache's seeds (each game checked "
        f"against the cached table on {DASP_CHECK_COALITIONS} random coalitions). It never "
        "calls the game: for every player, coalition size and the player out/in it pushes the "
        "mean and variance of the activations through the layers after the masked one and "
        "takes the metric at the mean logits (or, with `logit_samples = s`, its mean over `s` "
        "Gaussian draws of the logits). Its cost, `n_evals = 2 · n · sizes`, counts "
        "*propagations*, each over the whole calibration set like one coalition evaluation: "
        "these are the *forward passes* below, and the samplers' rows are their medians over "
        f"{records[0]['seeds']} seeds at the grid budget equal to (or nearest) DASP's passes. "
        "With all sizes DASP is deterministic (one run; the logit draws are seeded); with "
        f"fewer sizes one size per stratum is drawn, over {meta['seeds']} seeds: median "
        "[min–max]. Spearman and relative ℓ2 error of the cut samplers (BanditShapley, TMAB) "
        "come from their k = 25 % runs, as in the tables above; precision at each cut from "
        "that cut's runs; a sampler's budget is an upper bound on what it spends.",
    ]
    for game in games:
        status = dasp["games"].get(game.name)
        if status is None:
            continue
        n = game.n_players
        ks = [int(cut * n) for cut in CUTS]
        lines += ["", f"### {game.name} (n = {n})", ""]
        if not status["supported"]:
            lines.append(f"DASP: **not supported: {status['reason']}** (`{status['error']}`).")
            continue
        lines += [
            "| forward passes | estimator | Spearman | "
            + " | ".join(f"precision k = {k} ({k / n:.0%})" for k in ks)
            + " | relative ℓ2 error |",
            "|---|---|---|" + "---|" * len(ks) + "---|",
        ]
        mine = [r for r in summary if r["game"] == game.name]
        for passes in sorted({r["n_evals"] for r in mine}, reverse=True):
            for r in (r for r in mine if r["n_evals"] == passes):
                cells = [_spread(r["spearman"], 3, r["seeds"])]
                cells += [_spread(r["precision"][str(k)], 2, r["seeds"]) for k in ks]
                cells.append(_spread(r["relative_error"], 3, r["seeds"]))
                lines.append(f"| {passes:,} | **{r['estimator']}** | " + " | ".join(cells) + " |")
            for name in DASP_COMPARE:
                first = find.get((game.name, ks[0], name))
                if first is None:
                    continue
                i = _nearest(first, passes)
                label = (
                    f"{passes:,}"
                    if first["budgets"][i] == passes
                    else (f"{first['budgets'][i]:,} (nearest)")
                )
                cells = [f"{first['median_spearman'][i]:.3f}"]
                for k in ks:
                    record = find.get((game.name, k, name))
                    cells.append(
                        "–"
                        if record is None
                        else f"{record['median_precision'][_nearest(record, passes)]:.2f}"
                    )
                cells.append(f"{first['median_relative_error'][i]:.3f}")
                lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
        loo = [find.get((game.name, k, "leave-one-out")) for k in ks]
        if all(loo):
            cells = [f"{loo[0]['median_spearman'][0]:.3f}"]
            cells += [f"{r['median_precision'][0]:.2f}" for r in loo]
            cells.append(f"{loo[0]['median_relative_error'][0]:.3f}")
            lines.append(
                f"| {loo[0]['budgets'][0]:,} | leave-one-out | " + " | ".join(cells) + " |"
            )
        reach = []
        for k in ks:
            cells = []
            for name in ("BanditShapley", "permutation (antithetic)", "shapiq KernelSHAP (paired)"):
                record = find.get((game.name, k, name))
                if record:
                    cells.append(f"{name} {_budget(record['reach'])}")
            if cells:
                reach.append(f"k = {k}: " + ", ".join(cells))
        if reach:
            lines += [
                "",
                "Samplers' evaluations to 95 % precision (reach, above): " + "; ".join(reach) + ".",
            ]
    supported = [g for g in games if dasp["games"].get(g.name, {}).get("supported")]
    if supported:
        lines += [
            "",
            "Wall-clock cost (DASP's seconds include building its moment propagation; a "
            "ChannelGame evaluation is timed on "
            f"{DASP_CHECK_COALITIONS} random coalitions of the rebuilt game, its cached suffix "
            "and chunking as the samplers would use it on the real network):",
            "",
            "| game | estimator | propagations | seconds (median) | ms / propagation | "
            "ms / ChannelGame evaluation | propagation / evaluation | evaluations in DASP's "
            "time | BanditShapley's precision there (k = 25 % / 50 %) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for game in supported:
            game_ms = dasp["games"][game.name]["game_ms_per_evaluation"]
            ks = [int(cut * game.n_players) for cut in CUTS]
            for r in (r for r in summary if r["game"] == game.name):
                per = 1000 * r["median_seconds"] / r["n_evals"]
                same_time = 1000 * r["median_seconds"] / game_ms
                bandit = []
                for k in ks:
                    record = find.get((game.name, k, "BanditShapley"))
                    if record:
                        i = _nearest(record, same_time)
                        bandit.append(
                            f"{record['median_precision'][i]:.2f} (@{record['budgets'][i]:,})"
                        )
                lines.append(
                    f"| {game.name} | {r['estimator']} | {r['n_evals']:,} | "
                    f"{r['median_seconds']:.2f} | {per:.2f} | {game_ms:.2f} | "
                    f"{per / game_ms:.1f}× | {same_time:,.0f} | {' / '.join(bandit) or '–'} |"
                )
    return lines


def write_markdown(
    path: Path,
    games: list[ExactGame],
    metas: dict[str, dict],
    records: list[dict],
    goals: list[dict],
    network: dict | None,
    info: dict,
    dasp: dict | None = None,
) -> None:
    """The human-readable report; ``dasp`` (with its ``summary``) adds the DASP section."""
    find = {(r["game"], r["k"], r["estimator"]): r for r in records}
    grid_max = max(max(r["budgets"]) for r in records)
    shown = info["report_budgets"]
    lines = [
        "# Estimator quality: evaluations to settle the pruning cut",
        "",
        f"Generated by `python benchmarks/estimator_quality.py{info['flags']}` in "
        f"{info['minutes']:.1f} min ({info['machine']}; torch {info['torch']}; "
        f"{info['seeds']} seeds; shapiq {info['shapiq']}).",
        "",
        "**Reach** = evaluations needed to reach 95 % precision of the bottom-k set: the smallest "
        "budget of the grid "
        f"({', '.join(f'{b:,}' for b in info['grid'])}) from which the median precision over "
        "seeds stays ≥ 0.95 at every larger grid budget; `first` is the first grid budget "
        "where the median reached it when that differs (near-ties make it flicker). "
        "`[q25–q75]`: the same rule applied seed by seed, quartiles over seeds. `never`: not "
        f"within {grid_max:,} evaluations. Leave-one-out has one budget (n + 1); `p` is its "
        "precision.",
        "",
        "## Games",
        "",
        "| game | n | what | k = 25 %: gap, paired sd, samples to 2σ | k = 50 %: gap, paired sd, "
        "samples to 2σ |",
        "|---|---|---|---|---|",
    ]
    for game in games:
        cells = []
        for cut in CUTS:
            k = int(cut * game.n_players)
            d = cut_difficulty(game, k)
            cells.append(f"k={k}: {d['gap']:.4f}, {d['paired_sd']:.3f}, {d['samples_2sigma']:,.0f}")
        lines.append(
            f"| {game.name} | {game.n_players} | {game.description} | {' | '.join(cells)} |"
        )
    lines += [
        "",
        "*gap*: exact φ of the (k+1)-th minus the k-th lowest player; *paired sd*: spread of "
        "`v(S ∪ {a}) − v(S ∪ {b})` for those two players under the Shapley weighting; *samples "
        "to 2σ*: `(2·sd/gap)²` paired samples to tell the two apart at two standard errors. "
        "Where that runs into the tens of thousands, no sampler here resolves the cut and the "
        "median precision sits near a coin flip for the two players.",
        "",
    ]
    for game in games:
        meta = metas.get(game.name)
        if meta:
            lines.append(
                f"- `{game.name}`: {meta['model']}, layer `{meta['layer']}` (group: "
                f"{', '.join(meta['group_layers'])}), trained {meta['epochs']} epochs on "
                f"{meta['train_examples']:,} {meta['data']} examples in {meta['train_seconds']} s, "
                f"test accuracy {meta['test_accuracy']:.3f}; {meta['calibration']}; 2^n values "
                f"enumerated in {meta['enumeration_seconds']} s and cached."
            )
    for cut in CUTS:
        lines += [
            "",
            f"## Reach at k = {cut:.0%} of n",
            "",
            "| estimator | " + " | ".join(g.name for g in games) + " |",
            "|---|" + "---|" * len(games),
        ]
        for name in MAIN_ORDER:
            cells = []
            for game in games:
                record = find.get((game.name, int(cut * game.n_players), name))
                cells.append(_reach_cell(record, grid_max) if record else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Target: BanditShapley ≤ ½ of the best of antithetic permutations and paired KernelSHAP",
        "",
        "| game | k | BanditShapley | best baseline | its reach | ratio | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for goal in goals:
        ratio = "–" if goal["ratio"] is None else f"{goal['ratio']:.2f}"
        note = ""
        if goal["baseline_at_floor"]:
            note = " (baseline at the grid floor)"
        if goal["beyond_grid"]:
            note = " (baseline beyond the grid)"
        lines.append(
            f"| {goal['game']} | {goal['k']} | {_budget(goal['bandit'])} | "
            f"{goal['best_baseline']} | {_budget(goal['baseline'])} | {ratio} | "
            f"{'yes' if goal['met'] else 'no'}{note} |"
        )
    for key, title in (
        ("median_spearman", "Median Spearman correlation with the exact values"),
        ("median_relative_error", "Median relative ℓ2 error"),
    ):
        lines += [
            "",
            f"## {title} (cut estimators: their k = 25 % runs)",
            "",
            "| estimator | " + " | ".join(f"{g.name} @256 / @1,024 / @4,096" for g in games) + " |",
            "|---|" + "---|" * len(games),
        ]
        for name in MAIN_ORDER:
            cells = []
            for game in games:
                record = find.get((game.name, int(CUTS[0] * game.n_players), name))
                if record is None:
                    cells.append("–")
                elif name == "leave-one-out":
                    cells.append(f"{record[key][0]:.3f} (n + 1 evals)")
                else:
                    cells.append(" / ".join(_at(record, key, b) for b in shown))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The cut estimators' own claims",
        "",
        "Both stop early once every player is settled, so they may spend less than the budget. "
        f"*evals used*: mean evaluations spent at budget {shown[-1]:,}; *stopped*: share of "
        "runs that "
        "settled every player by then; *wrong*: share of runs with at least one player settled "
        "on the wrong side of the exact cut, and wrongly settled players per settled player "
        "(BanditShapley's nominal per-player δ is 0.05; TMAB's 0.2).",
        "",
        "| game | k | estimator | evals used | stopped | runs with a wrong settlement | "
        "wrong per settled player |",
        "|---|---|---|---|---|---|---|",
    ]
    for record in records:
        if "all_settled_share" not in record or record["family"] != "ours":
            continue
        if shown[-1] not in record["budgets"]:
            continue
        i = record["budgets"].index(shown[-1])
        lines.append(
            f"| {record['game']} | {record['k']} | {record['estimator']} | "
            f"{record['mean_evals'][i]:,.0f} | {record['all_settled_share'][i]:.2f} | "
            f"{record['runs_with_wrong_settled'][i]:.2f} | "
            f"{record['wrong_settled_per_settled_player'][i]:.3f} |"
        )
    lines += [
        "",
        "## Ablations: each ingredient of BanditShapley taken out (reach)",
        "",
        "| estimator | k | " + " | ".join(g.name for g in games) + " |",
        "|---|---|" + "---|" * len(games),
    ]
    ablated = sorted({r["estimator"] for r in records if r["family"] == "ablation"})
    ablations = ["BanditShapley", *ablated]
    for cut in CUTS:
        for name in ablations:
            cells = []
            for game in games:
                record = find.get((game.name, int(cut * game.n_players), name))
                cells.append(_reach_cell(record, grid_max) if record else "–")
            lines.append(f"| {name} | {cut:.0%} | " + " | ".join(cells) + " |")
    if network:
        lines += [
            "",
            "## Network-wide game on the CPU",
            "",
            f"{network['model']} ({network['train']}, {network['train_seconds']} s; test "
            f"accuracy {network['test_accuracy']:.3f}); one game over all {network['groups']} "
            f"prunable groups: **{network['players']:,} players**; "
            f"{network['calibration_examples']} calibration digits; "
            f"cut = {network['cut']:,} players (50 %); "
            f"`BanditShapley(cut=0.5, min_samples=3)`, budget {network['budget']:,}.",
            "",
            "| players | evaluations | seconds | ms / evaluation | samples per player (median) "
            "| settled below | settled above | game build s | threads |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {network['players']:,} | {network['evaluations']:,} | "
            f"{network['estimate_seconds']} | {network['ms_per_evaluation']} | "
            f"{network['samples_per_player_median']:.0f} | {network['settled_below']:,} | "
            f"{network['settled_above']:,} | {network['game_build_seconds']} | "
            f"{network['torch_threads']} |",
            "",
            "Settled channels per group (below / above the global cut, of all):",
            "",
            "| group | channels | settled below | settled above |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{g['layer']}` | {g['channels']} | {g['below']} | {g['above']} |"
            for g in network["per_group"]
        ]
    if dasp:
        lines += dasp_lines(dasp, records, games)
    path.write_text("\n".join(lines) + "\n")


CSV_FIELDS = (
    "game", "estimator", "k", "budget", "seed", "n_evals", "precision", "spearman",
    "relative_error", "settled", "wrong_settled", "all_settled", "seconds",
)  # fmt: skip


def write_csv(path: Path, rows: list[dict]) -> None:
    """One line per run and cut; floats rounded to what the measures resolve."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            rounded = {
                key: round(value, 5 if key == "seconds" else 4)
                if isinstance(value, float)
                else value
                for key, value in row.items()
            }
            writer.writerow(rounded)


def write_plot(
    path: Path, games: list[ExactGame], records: list[dict], dasp: list[dict] | None = None
) -> None:
    """Median precision against budget (log scale), one panel per game and cut; DASP's
    settings without logit draws (records of ``summarize_dasp``) as stars at their passes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    find = {(r["game"], r["k"], r["estimator"]): r for r in records}
    figure, axes = plt.subplots(
        len(games), len(CUTS), figsize=(11, 2.6 * len(games)), squeeze=False, sharex=True
    )
    styles = {
        "BanditShapley": ("C3", "-", 2.2),
        "TMABShapley (Neuron Shapley settings)": ("C1", "-", 1.4),
        "permutation (antithetic)": ("C0", "-", 1.4),
        "permutation": ("C0", ":", 1.2),
        "shapiq KernelSHAP (paired)": ("C2", "-", 1.4),
        "shapiq permutation sampling": ("C2", ":", 1.2),
        "shapiq SVARM": ("C4", ":", 1.2),
    }
    for row, game in enumerate(games):
        for col, cut in enumerate(CUTS):
            axis = axes[row][col]
            k = int(cut * game.n_players)
            for name, (color, line, width) in styles.items():
                record = find.get((game.name, k, name))
                if record:
                    axis.plot(
                        record["budgets"],
                        record["median_precision"],
                        color=color,
                        linestyle=line,
                        linewidth=width,
                        label=name,
                    )
            loo = find.get((game.name, k, "leave-one-out"))
            if loo:
                axis.scatter(
                    loo["budgets"], loo["median_precision"], color="k", marker="x", label="LOO"
                )
            points = [r for r in dasp or () if r["game"] == game.name and r["logit_samples"] == 0]
            if points:
                points.sort(key=lambda r: r["n_evals"])
                sizes = [
                    "all" if r["n_sizes"] == game.n_players else str(r["n_sizes"]) for r in points
                ]
                axis.scatter(
                    [r["n_evals"] for r in points],
                    [r["precision"][str(k)][0] for r in points],
                    color="k",
                    marker="*",
                    s=60,
                    zorder=3,
                    label=f"DASP ({' / '.join(sizes)} sizes)",
                )
            axis.axhline(TARGET, color="grey", linewidth=0.6)
            axis.set_xscale("log")
            axis.set_ylim(-0.02, 1.05)
            axis.set_title(f"{game.name} (n = {game.n_players}), k = {k}", fontsize=9)
            if col == 0:
                axis.set_ylabel("median precision")
            if row == len(games) - 1:
                axis.set_xlabel("budget (game evaluations)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- main -------------------------------------------------------------------------------------


def _dasp_info(flags: str, minutes: float, threads: int, seeds: int) -> dict:
    return {
        "flags": flags,
        "minutes": minutes,
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": threads,
        "seeds": seeds,
        "settings": [list(setting) for setting in DASP_SETTINGS],
    }


def only_dasp(args: argparse.Namespace) -> None:
    """``--only dasp``: run DASP, merge it into the stored results and rewrite the report.

    The samplers' records, targets, network-wide run and run info are read back from
    ``estimator_quality.json``; the CSV keeps its sampler lines and gets the DASP lines in place
    of any earlier ones; the Markdown and the plot are regenerated from the merged summary.
    """
    began = time.perf_counter()
    stem = args.out / "estimator_quality"
    summary = json.loads(Path(f"{stem}.json").read_text())
    seeds = 3 if args.quick else args.dasp_seeds
    torch.set_num_threads(args.threads)
    print("games")
    specs = {spec.name: spec for spec in REAL_GAMES}
    synthetic = {g.name: g for g in synthetic_games()}
    games, metas = [], {}
    for name, stored in summary["games"].items():
        if name in specs:
            game, metas[name] = load_real_game(specs[name], args.cache, args.mnist)
        else:
            game = synthetic[name]
        if len(game.shapley) != stored["n"] or not torch.allclose(
            game.shapley, torch.tensor(stored["exact_shapley"], dtype=torch.float64)
        ):
            raise RuntimeError(f"{name}: the cached game is not the one the stored results used")
        games.append(game)
    exact = {g.name: g for g in games}
    chosen = [spec for spec in REAL_GAMES if spec.name in exact]
    print("DASP")
    dasp = run_dasp(chosen[:1] if args.quick else chosen, exact, args.mnist, seeds)
    flags = " --only dasp" + (" --quick" if args.quick else "")
    minutes = (time.perf_counter() - began) / 60
    dasp["info"] = _dasp_info(flags, minutes, args.threads, seeds)
    dasp["summary"] = summarize_dasp(dasp["runs"])
    runs = dasp.pop("runs")

    with open(f"{stem}.csv", newline="") as handle:
        kept = [r for r in csv.DictReader(handle) if not r["estimator"].startswith("DASP")]
    write_csv(Path(f"{stem}.csv"), kept + runs)
    summary["dasp"] = dasp
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str))
    records, info = summary["results"], summary["info"]
    write_markdown(
        Path(f"{stem}.md"),
        games,
        metas,
        records,
        summary["targets"],
        summary["network_wide"],
        info,
        dasp,
    )
    write_plot(Path(f"{stem}.png"), games, records, dasp["summary"])
    print(f"merged DASP into {stem}.md/.csv/.json/.png in {minutes:.1f} min")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few seeds and budgets, two games")
    parser.add_argument("--seeds", type=int, default=30, help="seeds per budget (default 30)")
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST IDX folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_OUT / "exact_games", help="exact games' cache"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads of the DASP and network-wide runs"
    )
    parser.add_argument(
        "--network-budget", type=int, default=12000, help="evaluations of the network-wide run"
    )
    parser.add_argument("--no-network", action="store_true", help="skip the network-wide run")
    parser.add_argument("--no-dasp", action="store_true", help="skip the DASP section")
    parser.add_argument(
        "--dasp-seeds",
        type=int,
        default=DASP_SEEDS,
        help=f"DASP seeds where sizes are subsampled (default {DASP_SEEDS})",
    )
    parser.add_argument(
        "--only",
        choices=("dasp",),
        help="dasp: run DASP only and merge it into the stored results (samplers not rerun)",
    )
    args = parser.parse_args(argv)
    if args.only == "dasp":
        only_dasp(args)
        return
    began = time.perf_counter()
    seeds = 5 if args.quick else args.seeds
    grid = QUICK_GRID if args.quick else GRID
    try:
        import shapiq
    except ImportError:
        shapiq = None

    print("games")
    metas, games = {}, []
    for spec in REAL_GAMES[:1] if args.quick else REAL_GAMES:
        game, meta = load_real_game(spec, args.cache, args.mnist)
        games.append(game)
        metas[game.name] = meta
    games += synthetic_games()[:1] if args.quick else synthetic_games()
    _GAMES.update({g.name: g for g in games})

    with_shapiq = shapiq is not None
    tasks = [
        (game.name, index, with_shapiq, grid, seeds)
        for index in range(len(contenders(with_shapiq)))
        for game in games
    ]
    print(f"{len(tasks)} estimator x game tasks, {seeds} seeds, {len(grid)} budgets")
    rows: list[dict] = []
    context = multiprocessing.get_context("fork")
    with context.Pool(args.workers) as pool:
        for done, result in enumerate(pool.imap_unordered(run_contender, tasks), 1):
            rows += result
            if result:
                print(f"  [{done}/{len(tasks)}] {result[0]['estimator']} on {result[0]['game']}")
    records = summarize(rows, games)
    goals = targets(records, games)

    dasp = None
    if not args.no_dasp:
        torch.set_num_threads(args.threads)
        dasp_seeds = 3 if args.quick else args.dasp_seeds
        print("DASP")
        specs = [spec for spec in REAL_GAMES if spec.name in _GAMES]
        dasp_began = time.perf_counter()
        dasp = run_dasp(specs, _GAMES, args.mnist, dasp_seeds)
        dasp["info"] = _dasp_info(
            " --quick" if args.quick else "",
            (time.perf_counter() - dasp_began) / 60,
            args.threads,
            dasp_seeds,
        )
        dasp["summary"] = summarize_dasp(dasp["runs"])

    network = None
    if not args.no_network:
        torch.set_num_threads(args.threads)
        budget = 2500 if args.quick else args.network_budget
        print(f"network-wide game, budget {budget}")
        network = network_wide(args.mnist, budget, shots=1, train_examples=4000)
        print(f"  {network}")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / "estimator_quality"
    write_csv(Path(f"{stem}.csv"), rows + (dasp.pop("runs") if dasp else []))
    info = {
        "flags": " --quick" if args.quick else "",
        "minutes": (time.perf_counter() - began) / 60,
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs, "
        f"{args.workers} worker processes with one thread each",
        "torch": torch.__version__,
        "seeds": seeds,
        "grid": list(grid),
        "report_budgets": QUICK_REPORT_BUDGETS if args.quick else REPORT_BUDGETS,
        "shapiq": importlib.metadata.version("shapiq") if shapiq else "absent",
    }
    summary = {
        "info": info,
        "games": {
            g.name: {
                "n": g.n_players,
                "description": g.description,
                "meta": metas.get(g.name),
                "exact_shapley": g.shapley.tolist(),
                "cuts": {
                    int(c * g.n_players): cut_difficulty(g, int(c * g.n_players)) for c in CUTS
                },
            }
            for g in games
        },
        "results": records,
        "targets": goals,
        "network_wide": network,
    }
    if dasp:
        summary["dasp"] = dasp
    Path(f"{stem}.json").write_text(json.dumps(summary, indent=1, default=str))
    write_markdown(Path(f"{stem}.md"), games, metas, records, goals, network, info, dasp)
    write_plot(Path(f"{stem}.png"), games, records, dasp["summary"] if dasp else None)
    print(f"wrote {stem}.md/.csv/.json/.png in {info['minutes']:.1f} min")


if __name__ == "__main__":
    main()
