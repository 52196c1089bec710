"""TMABShapley: Neuron Shapley's bandit, faithful, on games where the answer is known."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_shapley.estimators import TMABShapley
from lightning_shapley.estimators.cut import CutEstimate
from lightning_shapley.estimators.tmab import bernstein_radius
from lightning_shapley.games import PairwiseGame
from tests.estimators.saturating import SaturatingGame


def gapped_weights() -> torch.Tensor:
    """Ten players: four clearly low ones, then a gap, then six high ones."""
    return torch.tensor([0.02, 0.01, 0.03, 0.02, 0.30, 0.35, 0.40, 0.30, 0.45, 0.50])


def test_bernstein_radius_matches_hand_computed_numbers():
    # sqrt(2 * 0.04 * ln 10 / 10) + 7/3 * 1 * ln 10 / 9 = 0.135723 + 0.596967
    radius = bernstein_radius(torch.tensor([0.04]), torch.tensor([10.0]), 1.0, 0.2)
    assert radius.item() == pytest.approx(0.732690, abs=1e-6)
    # sqrt(2 * 0.25 * ln 40 / 50) + 7/3 * 2 * ln 40 / 49 = 0.192064 + 0.351322
    radius = bernstein_radius(torch.tensor([0.25]), torch.tensor([50.0]), 2.0, 0.05)
    assert radius.item() == pytest.approx(0.543386, abs=1e-6)
    # fewer than two samples: the range itself, as in the authors' code
    radius = bernstein_radius(torch.tensor([math.inf, 0.1]), torch.tensor([1.0, 0.0]), 3.0, 0.2)
    assert radius.tolist() == [3.0, 3.0]


def test_result_radius_is_the_bernstein_radius_of_the_samples():
    game = SaturatingGame(gapped_weights())
    result = TMABShapley(cut=4, value_range=2.0).estimate(game, budget=400, seed=0)
    m, stderr = result.n_samples, result.stderr
    variance = stderr**2 * m
    torch.testing.assert_close(result.radius, bernstein_radius(variance, m, 2.0, 0.2))
    assert result.confidence == pytest.approx(0.8)


def test_identifies_the_cut_on_a_gapped_game_within_budget():
    game = SaturatingGame(gapped_weights())
    result = TMABShapley(cut=0.4).estimate(game, budget=3000, seed=0)
    assert isinstance(result, CutEstimate)
    assert result.k == 4
    assert result.below.tolist() == [True] * 4 + [False] * 6
    assert result.all_settled
    assert game.n_evals == result.n_evals < 3000  # stopped: no player active any more


@pytest.mark.parametrize("budget", [11, 12, 40, 97, 500])
@pytest.mark.parametrize("tolerance", [0.0, 0.2])
def test_budget_is_never_exceeded_and_reported(budget, tolerance):
    game = SaturatingGame(gapped_weights())
    result = TMABShapley(cut=3, tolerance=tolerance).estimate(game, budget=budget, seed=1)
    assert game.n_evals == result.n_evals <= budget


def test_seeded_runs_repeat_and_seeds_differ():
    def run(seed: int) -> CutEstimate:
        return TMABShapley(cut=3).estimate(SaturatingGame(gapped_weights()), 300, seed=seed)

    first = run(7)
    assert torch.equal(first.values, run(7).values) and first.n_evals == run(7).n_evals
    assert not torch.equal(first.values, run(8).values)


def test_inactive_players_are_skipped_without_biasing_the_active_ones():
    # additive game: every marginal contribution is the player's weight, whatever was removed
    # before; an active player after skipped ones must be measured against the coalition
    # without them, so its estimate stays exact
    weights = torch.tensor([0.1, 0.2, 5.0, 5.1, 9.0, 9.5, 10.0, 12.0])
    game = PairwiseGame(weights)
    estimator = TMABShapley(cut=3, tolerance=0.0, permutations_per_call=4)
    result = estimator.estimate(game, budget=800, seed=0)
    torch.testing.assert_close(result.values, weights.double())
    counts = result.n_samples
    assert counts.max() > counts.min()  # some players went inactive and were skipped
    assert result.n_evals < 2 + (counts.max().item()) * (len(weights) - 1)


def test_truncated_players_are_recorded_with_zero_not_dropped():
    # the floor is the whole range above chance, so every walk truncates after `patience`
    # evaluated steps; the other players of the permutation get a recorded 0. With R = 100 no
    # player ever leaves the active set, so each gets one sample from every permutation.
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    game = PairwiseGame(weights)
    estimator = TMABShapley(
        cut=2, value_range=100.0, tolerance=1.0, patience=2, permutations_per_call=8
    )
    result = estimator.estimate(game, budget=200, seed=0)
    permutations = (result.n_evals - 2) / 2  # two evaluated steps per permutation
    assert permutations > 8 and permutations == int(permutations)
    assert result.n_samples.tolist() == [permutations] * 6
    measured = result.values * permutations / weights.double()  # walks where it was measured
    torch.testing.assert_close(measured, measured.round())
    assert measured.sum().item() == pytest.approx(2 * permutations)  # the rest are zeros
    assert not result.settled.any()


def test_constructor_and_budget_validation():
    with pytest.raises(ValueError, match="cut"):
        TMABShapley(cut=1.5)
    with pytest.raises(ValueError, match="cut"):
        TMABShapley(cut=0)
    with pytest.raises(ValueError, match="delta"):
        TMABShapley(delta=0.0)
    with pytest.raises(ValueError, match="value_range"):
        TMABShapley(value_range=-1.0)
    with pytest.raises(ValueError, match="tolerance"):
        TMABShapley(tolerance=-0.1)
    with pytest.raises(ValueError, match="patience"):
        TMABShapley(patience=0)
    with pytest.raises(ValueError, match="permutations_per_call"):
        TMABShapley(permutations_per_call=0)
    game = SaturatingGame(gapped_weights())
    with pytest.raises(ValueError, match="needs a budget"):
        TMABShapley().estimate(game)
    with pytest.raises(ValueError, match="at least 11"):
        TMABShapley().estimate(game, budget=10)
    with pytest.raises(ValueError, match="puts 10 of 10"):
        TMABShapley(cut=10).estimate(game, budget=100)
