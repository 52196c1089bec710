"""Exact Shapley values by enumerating every coalition."""

from __future__ import annotations

import math

import torch

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.games.base import Game

__all__ = ["ExactShapley", "all_coalitions"]

MAX_PLAYERS = 20
"""2^20 ≈ 10^6 coalitions: minutes for a small layer; beyond it, sample."""


def all_coalitions(n_players: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Boolean masks ``[stop - start, n]`` of coalitions ``start … stop - 1``; bit j = player j."""
    stop = 2**n_players if stop is None else stop
    codes = torch.arange(start, stop, dtype=torch.long)
    return (codes.unsqueeze(1) >> torch.arange(n_players)) & 1 == 1


class ExactShapley(Estimator):
    """Shapley values from all ``2^n`` coalitions, evaluated ``batch_size`` at a time.

    ``φ_i = Σ_{S ∌ i} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S))``.

    Args:
        batch_size: Coalitions per call to the game.
        max_players: Largest game accepted (at most 20 by default: 10^6 evaluations).

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> ExactShapley().estimate(PairwiseGame(torch.tensor([1.0, 2.0]))).values
        tensor([1., 2.], dtype=torch.float64)
    """

    def __init__(self, batch_size: int = 4096, max_players: int = MAX_PLAYERS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.max_players = batch_size, max_players

    def min_budget(self, n_players: int) -> int:
        """All ``2^n`` coalitions."""
        return 2**n_players

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Exact values; a given ``budget`` must cover ``2^n`` evaluations (``seed`` is unused)."""
        n = self._check_game(game)
        if n > self.max_players:
            raise ValueError(
                f"ExactShapley enumerates 2^n coalitions; n={n} exceeds max_players="
                f"{self.max_players}. Use a sampling estimator such as PermutationShapley."
            )
        total = 2**n
        self._check_budget(budget, total, "ExactShapley")
        values = torch.cat(
            [
                torch.as_tensor(
                    game(all_coalitions(n, start, min(total, start + self.batch_size)))
                ).double()
                for start in range(0, total, self.batch_size)
            ]
        )
        return ShapleyEstimate(
            shapley_from_table(values, n), torch.zeros(n, dtype=torch.float64), total
        )


def shapley_from_table(values: torch.Tensor, n_players: int) -> torch.Tensor:
    """Shapley values ``[n]`` from the values ``[2^n]`` of all coalitions (bit j = player j)."""
    codes = torch.arange(2**n_players)
    sizes = torch.zeros(2**n_players, dtype=torch.long)
    for j in range(n_players):
        sizes += (codes >> j) & 1
    weight = torch.tensor(
        [
            math.factorial(s) * math.factorial(n_players - s - 1) / math.factorial(n_players)
            for s in range(n_players)
        ],
        dtype=torch.float64,
    )
    phi = torch.empty(n_players, dtype=torch.float64)
    for j in range(n_players):
        without = codes[(codes >> j) & 1 == 0]
        phi[j] = (weight[sizes[without]] * (values[without | (1 << j)] - values[without])).sum()
    return phi
