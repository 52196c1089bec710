"""The estimator interface: ``estimate(game, budget, *, seed) -> ShapleyEstimate``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lightning_shapley.games.base import Game

__all__ = ["Estimator", "ShapleyEstimate"]


@dataclass(frozen=True)
class ShapleyEstimate:
    """Estimated Shapley values of a game.

    Attributes:
        values: ``[n]`` estimated value of each player.
        stderr: ``[n]`` standard error of each estimate (0 where it is exact).
        n_evals: Game evaluations (coalitions) spent.
    """

    values: torch.Tensor
    stderr: torch.Tensor
    n_evals: int

    def ranking(self) -> torch.Tensor:
        """``[n]`` player indices from least to most valuable."""
        return torch.argsort(self.values, stable=True)


class Estimator:
    """Base of every estimator. ``budget`` always counts game evaluations (coalitions)."""

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Estimate the Shapley values of ``game`` within ``budget`` evaluations."""
        raise NotImplementedError

    def min_budget(self, n_players: int) -> int:
        """The fewest evaluations this estimator can work with on ``n_players`` players."""
        return 1

    @staticmethod
    def _check_game(game: Game) -> int:
        n = getattr(game, "n_players", None)
        if not isinstance(n, int) or n < 1 or not callable(game):
            raise TypeError("game must have a positive integer n_players and be callable on masks")
        return n

    @staticmethod
    def _check_budget(budget: int | None, needed: int, what: str) -> int:
        """The budget to use: ``needed`` when ``budget`` is None; an error when it is too small."""
        if budget is None:
            return needed
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(
                f"budget must be a positive number of game evaluations, got {budget!r}"
            )
        if budget < needed:
            raise ValueError(
                f"budget={budget} is too small: {what} needs at least {needed} evaluations"
            )
        return budget
