"""Cut-weighted Shapley values: permutations walked only down to the pruning cut."""

from __future__ import annotations

import torch

from lightning_shapley.estimators.base import ShapleyEstimate
from lightning_shapley.estimators.cut import CutEstimator, resolve_cut
from lightning_shapley.games.base import Game

__all__ = ["CutPermutationShapley"]


class CutPermutationShapley(CutEstimator):
    """Marginal contributions only at the coalition sizes a pruning cut visits.

    Each random permutation removes players one at a time from the full coalition, but only
    ``k`` of them (the number below the cut): a player removed at step ``t`` contributes
    ``v(S_t) − v(S_t ∖ {i})`` with ``|S_t| = n − t``. A player's value is the mean of its
    contributions, so it is the semivalue that weights coalition sizes ``n − k … n − 1``
    uniformly and the rest not at all: what a channel is worth while the cut is being made,
    not on coalitions far smaller than any kept set. A permutation costs ``k`` evaluations; a
    player is reached in a fraction ``k / n`` of them, and a player never reached is given the
    highest value seen (nothing says it should go).

    Args:
        cut: Share of the players below the cut, in ``(0, 1)``, or their number.
        batch_size: Coalitions per call to the game.

    Example:
        >>> from lightning_shapley.games import PairwiseGame
        >>> game = PairwiseGame(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        >>> CutPermutationShapley(cut=0.5).estimate(game, budget=65, seed=0).values
        tensor([1., 2., 3., 4.], dtype=torch.float64)
    """

    def __init__(self, cut: float | int = 0.25, batch_size: int = 4096) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        super().__init__(cut)
        self.batch_size = batch_size

    def min_budget(self, n_players: int) -> int:
        """``v(N)`` and one permutation walked to the cut."""
        return 1 + resolve_cut(self.cut, n_players) if n_players > 1 else 1

    def estimate(self, game: Game, budget: int | None = None, *, seed: int = 0) -> ShapleyEstimate:
        """Estimate with as many permutations as ``budget`` evaluations allow."""
        n = self._check_game(game)
        if budget is None:
            raise ValueError("CutPermutationShapley needs a budget (game evaluations)")
        k = resolve_cut(self.cut, n)
        self._check_budget(budget, self.min_budget(n), type(self).__name__)
        n_perms = (budget - 1) // k
        generator = torch.Generator().manual_seed(seed)
        orders = torch.argsort(torch.rand(n_perms, n, generator=generator), dim=1)[:, :k]
        top = torch.as_tensor(game(torch.ones(1, n, dtype=torch.bool))).double()[0]
        walks = torch.empty(n_perms, k + 1, dtype=torch.float64)
        walks[:, 0] = top
        per_call = max(1, self.batch_size // k)
        for start in range(0, n_perms, per_call):
            chunk = orders[start : start + per_call]
            masks = torch.ones(len(chunk), k, n, dtype=torch.bool)
            removed = torch.zeros(len(chunk), n, dtype=torch.bool)
            for t in range(k):
                removed[torch.arange(len(chunk)), chunk[:, t]] = True
                masks[:, t] = ~removed
            walks[start : start + per_call, 1:] = (
                torch.as_tensor(game(masks.reshape(-1, n))).double().view(len(chunk), k)
            )
        marginals = walks[:, :-1] - walks[:, 1:]  # [p, k]: the player removed at each step
        total = torch.zeros(n, dtype=torch.float64).index_add_(
            0, orders.flatten(), marginals.flatten()
        )
        squares = torch.zeros(n, dtype=torch.float64).index_add_(
            0, orders.flatten(), marginals.flatten() ** 2
        )
        count = torch.bincount(orders.flatten(), minlength=n).double()
        seen = count > 0
        values = torch.full((n,), float("nan"), dtype=torch.float64)
        values[seen] = total[seen] / count[seen]
        values[~seen] = values[seen].max() if seen.any() else 0.0
        variance = (squares / count.clamp_min(1) - (total / count.clamp_min(1)) ** 2).clamp_min(0)
        stderr = torch.where(count > 1, (variance / (count - 1).clamp_min(1)).sqrt(),
                             torch.full_like(variance, float("nan")))  # fmt: skip
        return ShapleyEstimate(values, stderr, 1 + n_perms * k)
