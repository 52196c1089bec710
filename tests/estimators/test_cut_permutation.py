"""CutPermutationShapley: permutations walked only down to the cut."""

from __future__ import annotations

import pytest
import torch

from lightning_shapley.estimators import CutPermutationShapley, ExactShapley
from lightning_shapley.games import PairwiseGame


class SmallCoalitionBonus:
    """Additive, plus a bonus for player 0 in coalitions of at most 2 players: it matters only
    far below any pruning cut."""

    def __init__(self, weights: torch.Tensor, bonus: float) -> None:
        self.weights, self.bonus, self.n_players = weights.double(), bonus, len(weights)
        self.n_evals = 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self.n_evals += len(masks)
        masks = masks.double()
        small = (masks.sum(dim=1) <= 2).double()
        return masks @ self.weights + self.bonus * masks[:, 0] * small


def test_additive_games_are_exact_and_the_budget_is_kept():
    game = PairwiseGame(torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 4.0]))
    result = CutPermutationShapley(cut=2).estimate(game, budget=101, seed=0)
    assert result.values.tolist() == pytest.approx(game.weights.tolist())
    assert result.n_evals == game.n_evals == 1 + 50 * 2 <= 101


def test_sizes_below_the_cut_do_not_count():
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    game = SmallCoalitionBonus(weights, bonus=30.0)
    exact = ExactShapley().estimate(game).values
    cut = CutPermutationShapley(cut=0.5).estimate(game, budget=301, seed=1).values
    assert exact[0] > weights[0] + 1  # Shapley credits player 0 with the small-coalition bonus
    assert cut.tolist() == pytest.approx(weights.tolist())  # sizes 4–6 never see it


def test_seeded_unreached_players_and_bad_arguments():
    game = PairwiseGame(torch.arange(1.0, 11.0))
    estimator = CutPermutationShapley(cut=1)
    a, b = (estimator.estimate(game, budget=4, seed=3) for _ in range(2))
    assert torch.equal(a.values, b.values)
    unreached = a.values != torch.arange(1.0, 11.0, dtype=torch.float64)
    assert unreached.any() and (a.values[unreached] == a.values.max()).all()
    with pytest.raises(ValueError, match="budget"):
        CutPermutationShapley(cut=3).estimate(game, budget=3)
    with pytest.raises(ValueError, match="cut"):
        CutPermutationShapley(cut=1.5)
