"""Monte Carlo Shapley values from random permutations, antithetic pairs by default."""

from __future__ import annotations

import torch

from lightning_shapley.estimators.base import Estimator, ShapleyEstimate
from lightning_shapley.games.base import Game

__all__ = ["PermutationShapley"]


class PermutationShapley(Estimator):
    """Average marginal contributions along random permutations, walked in removal direction.

    Each permutation removes players one by one from the full coalition; ``v(N)`` and ``v(∅)``
    are shared by all, so a permutation costs ``n − 1`` evaluations. With ``antithetic=True``
    every permutation comes with its reverse (each player then sees, over the pair, the
    coalitions before and after it), which is exact for games with only pairwise interactions
    and lowers the variance on most others. Whole permutations are evaluated together, up to
    ``batch_size`` coalitions per call to the game.

    A game may return a vector per coalition (``[m, E]``, e.g. one value per calibration
    example); values and errors are then ``[n, E]``.

    Args:
        antithetic: Pair each permutation with its reverse.
        batch_size: Coalitions per call to the game (rounded down to whole permutations).

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0, 3.0]))
        >>> PermutationShapley().estimate(game, budget=10, seed=0).values
        tensor([1., 2., 3.], dtype=torch.float64)
    """

    def __init__(self, antithetic: bool = True, batch_size: int = 4096) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.antithetic, self.batch_size = antithetic, batch_size

    def min_budget(self, n_players: int) -> int:
        """``v(N)``, ``v(∅)`` and one permutation (a pair when antithetic)."""
        return 2 + (2 if self.antithetic else 1) * max(0, n_players - 1)

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Estimate with as many (pairs of) permutations as ``budget`` evaluations allow."""
        n = self._check_game(game)
        if budget is None:
            raise ValueError("PermutationShapley needs a budget (game evaluations)")
        unit = 2 if self.antithetic else 1
        per_permutation = n - 1
        self._check_budget(budget, self.min_budget(n), type(self).__name__)
        n_perms = (budget - 2) // max(1, per_permutation) // unit * unit if n > 1 else unit
        generator = torch.Generator().manual_seed(seed)
        orders = torch.argsort(torch.rand(n_perms // unit, n, generator=generator), dim=1)
        if self.antithetic:
            orders = torch.stack([orders, orders.flip(1)], dim=1).reshape(n_perms, n)
        position = torch.argsort(orders, dim=1)  # [p, n]: step at which each player leaves

        ends = torch.as_tensor(game(torch.tensor([[True] * n, [False] * n]))).double()
        extra = ends.shape[1:]  # a game may return a vector per coalition (e.g. per example)
        walks = torch.empty(n_perms, n + 1, *extra, dtype=torch.float64)
        walks[:, 0], walks[:, n] = ends[0], ends[1]
        per_call = max(1, self.batch_size // max(1, per_permutation))
        steps = torch.arange(1, n)
        for start in range(0, n_perms if n > 1 else 0, per_call):
            pos = position[start : start + per_call]
            masks = pos.unsqueeze(1) >= steps.view(1, -1, 1)  # [p, n - 1, n]
            values = torch.as_tensor(game(masks.reshape(-1, n))).double()
            walks[start : start + per_call, 1:n] = values.view(len(pos), n - 1, *extra)

        index = position.view(n_perms, n, *[1] * len(extra)).expand(n_perms, n, *extra)
        marginals = walks.gather(1, index) - walks.gather(1, index + 1)  # [p, n, ...]
        samples = marginals.view(-1, unit, n, *extra).mean(dim=1)
        stderr = (
            samples.std(dim=0) / len(samples) ** 0.5
            if len(samples) > 1
            else torch.full((n, *extra), float("nan"), dtype=torch.float64)
        )
        return ShapleyEstimate(samples.mean(dim=0), stderr, 2 + n_perms * per_permutation)
