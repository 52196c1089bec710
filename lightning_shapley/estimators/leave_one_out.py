"""Leave-one-out: the value lost when each player alone is removed."""

from __future__ import annotations

import torch

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.games.base import Game

__all__ = ["LeaveOneOut"]


class LeaveOneOut(Estimator):
    """``v(N) − v(N ∖ {i})`` for every player: ``n + 1`` evaluations, one call.

    Not a Shapley value (it sees only the full coalition), but the cheapest game-based ranking.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> LeaveOneOut().estimate(PairwiseGame(torch.tensor([1.0, 2.0]))).values
        tensor([1., 2.], dtype=torch.float64)
    """

    def min_budget(self, n_players: int) -> int:
        """``v(N)`` and every ``v(N ∖ {i})``."""
        return n_players + 1

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Leave-one-out values; ``budget`` (if given) must cover ``n + 1``. ``seed`` is unused."""
        n = self._check_game(game)
        self._check_budget(budget, n + 1, "LeaveOneOut")
        masks = torch.ones(n + 1, n, dtype=torch.bool)
        masks[1:].fill_diagonal_(False)
        values = torch.as_tensor(game(masks)).double()
        return ShapleyEstimate(values[0] - values[1:], torch.zeros(n, dtype=torch.float64), n + 1)
