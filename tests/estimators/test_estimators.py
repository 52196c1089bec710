"""Properties every estimator must have, on games with known Shapley values."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_shapley.estimators import ExactShapley, LeaveOneOut, PermutationShapley
from lightning_shapley.games import PairwiseGame, SymmetricGame


def random_pairwise(n: int, seed: int) -> PairwiseGame:
    generator = torch.Generator().manual_seed(seed)
    interactions = torch.randn(n, n, generator=generator)
    return PairwiseGame(torch.randn(n, generator=generator), interactions)


def general_game(n: int, seed: int):
    """A game with higher-order interactions (no estimator is exact on it by construction)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.rand(n, generator=generator)

    class Game:
        n_players = n
        n_evals = 0

        def __call__(self, masks):
            self.n_evals += len(masks)
            kept = masks.double() @ weights.double()
            return torch.tanh(2 * kept) + 0.3 * masks[:, 0] * masks[:, 1] * masks[:, 2]

    return Game()


SAMPLERS = [PermutationShapley(), PermutationShapley(antithetic=False)]


@pytest.mark.parametrize("estimator", [ExactShapley(), *SAMPLERS])
def test_additive_game_gives_the_weights(estimator):
    game = PairwiseGame(torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0]))
    result = estimator.estimate(game, budget=64, seed=1)
    torch.testing.assert_close(result.values, game.weights)


@pytest.mark.parametrize("estimator", [ExactShapley(), PermutationShapley()])
def test_symmetric_players_share_equally(estimator):
    game = SymmetricGame(5, torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0]))
    result = estimator.estimate(game, budget=64, seed=3)
    torch.testing.assert_close(result.values, torch.full((5,), 5.0, dtype=torch.float64))


def test_plain_permutations_share_equally_on_average():
    game = SymmetricGame(5, torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0]))
    result = PermutationShapley(antithetic=False).estimate(game, budget=4000, seed=3)
    torch.testing.assert_close(
        result.values, torch.full((5,), 5.0, dtype=torch.float64), atol=0.3, rtol=0
    )


@pytest.mark.parametrize("estimator", [ExactShapley(), *SAMPLERS])
def test_dummy_player_gets_zero_and_efficiency_holds(estimator):
    weights = torch.tensor([1.0, 0.0, 2.0, -0.5])
    interactions = torch.zeros(4, 4)
    interactions[0, 2] = interactions[2, 0] = 1.5
    game = PairwiseGame(weights, interactions)
    result = estimator.estimate(game, budget=40, seed=0)
    assert result.values[1] == pytest.approx(0.0, abs=1e-12)
    ends = game(torch.tensor([[True] * 4, [False] * 4]))
    assert result.values.sum().item() == pytest.approx((ends[0] - ends[1]).item(), abs=1e-9)


def test_one_antithetic_pair_is_exact_on_pairwise_games():
    for seed in range(5):
        game = random_pairwise(7, seed)
        result = PermutationShapley().estimate(game, budget=2 + 2 * 6, seed=seed)
        assert result.n_evals == 14
        torch.testing.assert_close(result.values, game.shapley_values())
    plain = PermutationShapley(antithetic=False).estimate(random_pairwise(7, 0), budget=8, seed=0)
    assert not torch.allclose(plain.values, random_pairwise(7, 0).shapley_values())


def brute_force_shapley(game, n: int) -> torch.Tensor:
    """The definition: the average marginal contribution over all n! orders."""
    phi = torch.zeros(n, dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        mask = torch.zeros(1, n, dtype=torch.bool)
        previous = game(mask).double()
        for player in order:
            mask[0, player] = True
            value = game(mask).double()
            phi[player] += (value - previous).item()
            previous = value
    return phi / math.factorial(n)


def test_exact_matches_the_definition_on_a_general_game():
    game = general_game(5, seed=0)
    torch.testing.assert_close(
        ExactShapley(batch_size=7).estimate(game).values, brute_force_shapley(game, 5)
    )


def test_permutation_estimates_converge_to_exact():
    game = general_game(8, seed=1)
    exact = ExactShapley().estimate(game).values
    errors = [
        (PermutationShapley().estimate(game, budget=b, seed=0).values - exact).norm().item()
        for b in (30, 3000)
    ]
    assert errors[1] < errors[0] / 3
    result = PermutationShapley().estimate(game, budget=3000, seed=0)
    assert ((result.values - exact).abs() < 4 * result.stderr + 1e-9).all()


@pytest.mark.parametrize("estimator", SAMPLERS)
@pytest.mark.parametrize("budget", [16, 17, 100, 101])
def test_budget_is_never_exceeded_and_reported(estimator, budget):
    game = general_game(6, seed=2)
    result = estimator.estimate(game, budget=budget, seed=0)
    assert game.n_evals == result.n_evals <= budget


def test_seeded_runs_repeat_and_seeds_differ():
    game = general_game(9, seed=4)
    first = PermutationShapley().estimate(game, budget=200, seed=7)
    assert torch.equal(first.values, PermutationShapley().estimate(game, budget=200, seed=7).values)
    assert not torch.equal(
        first.values, PermutationShapley().estimate(game, budget=200, seed=8).values
    )


def test_batching_does_not_change_the_estimate():
    game = general_game(6, seed=5)
    big = PermutationShapley(batch_size=4096).estimate(game, budget=300, seed=0)
    small = PermutationShapley(batch_size=5).estimate(game, budget=300, seed=0)
    torch.testing.assert_close(big.values, small.values)


def test_leave_one_out_is_the_loss_of_each_removal():
    game = general_game(5, seed=6)
    result = LeaveOneOut().estimate(game)
    masks = torch.ones(5, 5, dtype=torch.bool).fill_diagonal_(False)
    full = game(torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(result.values, (full - game(masks)).double())
    assert result.n_evals == 6
    assert torch.equal(result.ranking()[:1], torch.argmin(result.values).view(1))


def test_estimators_reject_bad_budgets_and_games():
    game = general_game(5, seed=0)
    with pytest.raises(ValueError, match="needs at least 10"):
        PermutationShapley().estimate(game, budget=9)
    with pytest.raises(ValueError, match="needs a budget"):
        PermutationShapley().estimate(game)
    with pytest.raises(ValueError, match="needs at least 32"):
        ExactShapley().estimate(game, budget=31)
    with pytest.raises(ValueError, match="needs at least 6"):
        LeaveOneOut().estimate(game, budget=5)
    with pytest.raises(ValueError, match="max_players"):
        ExactShapley(max_players=4).estimate(game)
    with pytest.raises(ValueError, match="positive number"):
        PermutationShapley().estimate(game, budget=-3)
    with pytest.raises(TypeError, match="n_players"):
        PermutationShapley().estimate(object(), budget=10)
