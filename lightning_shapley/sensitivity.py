"""Sensitivity-n (Ancona et al. 2018): do a criterion's scores add up to what removing players
costs?

For a subset ``S`` of ``n`` players drawn at random, compare the sum of the scores ``Σ_{i∈S}
φ_i`` with the value change ``v(N) − v(N ∖ S)`` of removing them all; Sensitivity-n is the
Pearson correlation of the two over the subsets. An additive game's own weights score 1 at
every ``n``; the exact Shapley values satisfy it at ``n = |N|`` by efficiency (where every
subset is ``N`` itself, so the correlation is undefined: NaN here, see
:func:`sensitivity_n`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from lightning_shapley.games.base import Game

__all__ = ["default_ns", "plot_sensitivity_n", "plot_sensitivity_panels", "sensitivity_n"]


def default_ns(n_players: int, points: int = 8) -> list[int]:
    """About ``points`` subset sizes from 1 to ``n_players``, geometrically spaced.

    Example:
        >>> default_ns(16)
        [1, 2, 3, 5, 7, 11, 16]
    """
    if n_players < 1:
        raise ValueError(f"n_players must be positive, got {n_players}")
    grid = torch.logspace(0, math.log10(n_players), points, dtype=torch.float64)
    return sorted({min(n_players, max(1, round(float(n)))) for n in grid})


def _subsets(n_players: int, n: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """``[s, n_players]`` boolean indicators of subsets of size ``n``: all of them when there
    are at most ``samples``, else ``samples`` drawn uniformly (with replacement)."""
    if math.comb(n_players, n) <= samples:
        chosen = torch.tensor(list(itertools.combinations(range(n_players), n)), dtype=torch.long)
    else:
        chosen = torch.rand(samples, n_players, generator=generator).argsort(dim=1)[:, :n]
    indicator = torch.zeros(len(chosen), n_players, dtype=torch.bool)
    return indicator.scatter_(1, chosen, True)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two ``[s]`` vectors; NaN when either is constant (to rounding)."""
    a, b = a.double(), b.double()
    centred = a - a.mean(), b - b.mean()
    if len(a) < 2 or any(
        float(c.abs().max()) <= 1e-12 * float(raw.abs().max())
        for c, raw in zip(centred, (a, b), strict=True)
    ):
        return math.nan
    r = float((centred[0] @ centred[1]) / (centred[0].norm() * centred[1].norm()))
    return min(1.0, max(-1.0, r))


def sensitivity_n(
    game: Game,
    scores: torch.Tensor,
    ns: Sequence[int] | None = None,
    samples: int = 128,
    seed: int = 0,
) -> dict[int, float]:
    """Pearson correlation, at each subset size ``n``, of ``Σ_{i∈S} scores_i`` with
    ``v(N) − v(N ∖ S)`` over random subsets ``S`` of ``n`` players.

    All subsets of all sizes go to the game in one call (plus the full coalition). Where a size
    has at most ``samples`` subsets, all of them are used. The correlation is NaN where the score
    sums or the value changes do not vary: at ``n = n_players`` (one subset, the efficiency
    case: check ``Σ scores = v(N) − v(∅)`` instead) or for constant scores.

    Args:
        game: Any game (``n_players`` and ``__call__(masks [m, n]) -> values [m]``).
        scores: ``[n_players]`` a criterion's scores (higher = more valuable).
        ns: Subset sizes, each in ``1 … n_players``; ``None`` for :func:`default_ns`.
        samples: Subsets drawn per size.
        seed: Seed of the draw.

    Returns:
        ``{n: correlation}`` in the order of ``ns``.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
        >>> {n: round(r, 6) for n, r in sensitivity_n(PairwiseGame(weights), weights).items()}
        {1: 1.0, 2: 1.0, 3: 1.0, 4: nan}
    """
    n_players = game.n_players
    scores = torch.as_tensor(scores).detach().double().cpu().flatten()
    if len(scores) != n_players:
        raise ValueError(f"scores has {len(scores)} entries for a game of {n_players} players")
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    ns = default_ns(n_players) if ns is None else [int(n) for n in ns]
    if not ns or any(not 1 <= n <= n_players for n in ns):
        raise ValueError(f"ns must hold subset sizes between 1 and {n_players}, got {ns}")
    generator = torch.Generator().manual_seed(seed)
    removed = [_subsets(n_players, n, samples, generator) for n in ns]
    masks = torch.cat([torch.ones(1, n_players, dtype=torch.bool), ~torch.cat(removed)])
    values = torch.as_tensor(game(masks)).double().cpu()
    changes = (values[0] - values[1:]).split([len(r) for r in removed])
    return {
        n: _pearson(r.double() @ scores, change)
        for n, r, change in zip(ns, removed, changes, strict=True)
    }


def plot_sensitivity_n(
    curves: dict[str, dict[int, float]],
    path: str | Path,
    *,
    title: str | None = None,
) -> None:
    """Plot Sensitivity-n curves: one line per criterion, correlation against ``n``.

    The x axis is logarithmic when the sizes span a factor of 10 or more. Drawn with the Agg
    canvas directly (no pyplot, so the caller's matplotlib backend is left alone).

    Args:
        curves: ``{criterion: {n: correlation}}``; NaN points are left out.
        path: Image file to write (its suffix picks the format, e.g. ``.png``).
        title: Figure title.
    """
    plot_sensitivity_panels({title or "": curves}, path)


def plot_sensitivity_panels(
    panels: dict[str, dict[str, dict[int, float]]], path: str | Path
) -> None:
    """Several games side by side: ``{panel title: {criterion: {n: correlation}}}``, one
    legend shared by all (a criterion keeps its colour across panels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = list(dict.fromkeys(name for curves in panels.values() for name in curves))
    figure = Figure(figsize=(1.0 + 4.6 * len(panels), 4.4))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for axis, (title, curves) in zip(axes, panels.items(), strict=True):
        sizes = sorted({n for curve in curves.values() for n in curve})
        for name, curve in curves.items():
            index = names.index(name)
            points = sorted((n, r) for n, r in curve.items() if not math.isnan(r))
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, "--" if index >= 10 else "-", color=f"C{index % 10}",
                          marker="o", markersize=3, linewidth=1.4, label=name)  # fmt: skip
        if sizes and sizes[-1] >= 10 * sizes[0]:
            axis.set_xscale("log")
            axis.minorticks_off()
            ticks = sorted({sizes[0], sizes[-1]} | {k for k in sizes if k & (k - 1) == 0})
            axis.set_xticks(ticks, [str(t) for t in ticks])
        else:
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.axhline(0, color="grey", linewidth=0.6)
        axis.set_ylim(-1.05, 1.05)
        axis.set_xlabel("n (players removed together)")
        axis.set_ylabel("Sensitivity-n (Pearson r)")
        if title:
            axis.set_title(title, fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    for axis in axes[1:]:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if len(panels) == 1:
        if labels:
            axes[0].legend(fontsize=7, loc="lower left")
        figure.tight_layout()
    elif labels:
        rows = math.ceil(len(labels) / 4)
        figure.set_figheight(4.4 + 0.2 * rows)
        figure.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
        figure.tight_layout(rect=(0, (0.25 + 0.2 * rows) / figure.get_figheight(), 1, 1))
    else:
        figure.tight_layout()
    figure.savefig(path, dpi=110)
