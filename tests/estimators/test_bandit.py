"""BanditShapley: settles the cut with few evaluations, and says how sure it is."""

from __future__ import annotations

import pytest
import torch

from lightning_shapley.estimators import BanditShapley, ExactShapley
from lightning_shapley.estimators._running import student_t_quantile
from lightning_shapley.estimators.cut import CutEstimate, resolve_cut
from lightning_shapley.games import PairwiseGame, SymmetricGame
from tests.estimators.saturating import SaturatingGame


def gapped_game() -> SaturatingGame:
    """Twelve players: three clearly low, then a gap, then nine high ones."""
    generator = torch.Generator().manual_seed(0)
    low = 0.02 + 0.02 * torch.rand(3, generator=generator)
    high = 0.25 + 0.2 * torch.rand(9, generator=generator)
    return SaturatingGame(torch.cat([high[:4], low, high[4:]]))


def random_pairwise(n: int, seed: int) -> PairwiseGame:
    generator = torch.Generator().manual_seed(seed)
    return PairwiseGame(
        torch.randn(n, generator=generator, dtype=torch.float64),
        torch.randn(n, n, generator=generator, dtype=torch.float64),
    )


def test_settles_the_cut_of_a_gapped_game_and_stops_early():
    game = gapped_game()
    exact = ExactShapley().estimate(gapped_game()).values
    result = BanditShapley(cut=0.25).estimate(game, budget=5000, seed=0)
    assert isinstance(result, CutEstimate)
    assert result.k == 3
    expected = torch.zeros(12, dtype=torch.bool)
    expected[torch.argsort(exact)[:3]] = True
    assert torch.equal(result.below, expected)
    assert result.all_settled
    assert torch.equal(result.settled_below, expected)
    assert torch.equal(result.settled_above, ~expected)
    assert game.n_evals == result.n_evals < 1000  # stopped well before the budget
    assert (result.values - exact).abs().max() < 0.05  # only coarse away from the cut


def test_players_far_from_the_cut_stop_being_sampled():
    weights = torch.tensor([0.05, 0.06, 0.10, 0.13, 0.15, 0.4, 0.45, 0.5, 0.55, 0.6])
    result = BanditShapley(cut=3).estimate(SaturatingGame(weights), budget=3000, seed=1)
    near = result.n_samples[2:4]  # the players either side of the cut
    far = result.n_samples[5:]  # the high ones
    assert near.min() > 3 * far.max()
    assert far.max() <= 5  # settled within a round of being allowed to (min_samples=4)
    assert torch.equal(result.below, torch.arange(10) < 3)


@pytest.mark.parametrize("budget", [26, 27, 40, 95, 300, 1001])
@pytest.mark.parametrize(
    "options",
    [{}, {"antithetic": False}, {"exact_border": True}, {"min_samples": 10**6}],
)
def test_budget_is_never_exceeded_and_reported(budget, options):
    game = gapped_game()
    estimator = BanditShapley(cut=3, **options)
    if budget < estimator.min_budget(12):
        with pytest.raises(ValueError, match="needs at least"):
            estimator.estimate(game, budget=budget)
        return
    result = estimator.estimate(game, budget=budget, seed=2)
    assert game.n_evals == result.n_evals <= budget


def test_without_focus_the_whole_budget_is_spent():
    game = gapped_game()
    result = BanditShapley(cut=3, min_samples=10**6).estimate(game, budget=600, seed=0)
    assert 600 - 2 * 13 < result.n_evals <= 600  # at most one base pair left over
    assert result.all_settled  # the intervals say so, but no player was allowed to stop
    assert result.n_samples.min() >= 20


def test_seeded_runs_repeat_and_seeds_differ():
    def run(seed: int) -> CutEstimate:
        return BanditShapley(cut=3, min_samples=10**6).estimate(gapped_game(), 400, seed=seed)

    first = run(3)
    assert torch.equal(first.values, run(3).values) and first.n_evals == run(3).n_evals
    assert not torch.equal(first.values, run(4).values)


def test_complement_pairs_are_exact_on_pairwise_games():
    for seed in range(3):
        game = random_pairwise(9, seed)
        result = BanditShapley(cut=4).estimate(game, budget=400, seed=seed)
        torch.testing.assert_close(result.values, game.shapley_values())
        torch.testing.assert_close(result.radius, torch.zeros(9, dtype=torch.float64))


def test_estimates_are_unbiased_in_every_configuration():
    game = gapped_game()
    exact = ExactShapley().estimate(game).values
    for options in ({}, {"antithetic": False}, {"exact_border": True}):
        estimator = BanditShapley(cut=3, min_samples=10**6, **options)
        result = estimator.estimate(gapped_game(), budget=30000, seed=0)
        assert ((result.values - exact).abs() < 4 * result.stderr + 1e-4).all(), options


def test_border_strata_are_exact():
    # two players: the border strata are the whole game
    game = PairwiseGame(torch.tensor([1.0, 3.0]), torch.tensor([[0.0, 2.0], [2.0, 0.0]]))
    result = BanditShapley(cut=1, exact_border=True).estimate(game, budget=6, seed=0)
    torch.testing.assert_close(result.values, game.shapley_values())
    assert result.n_evals == 6 and result.all_settled
    # symmetric game: every player's interior samples are equal, so spread and radius are 0
    game = SymmetricGame(6, torch.tensor([0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0]))
    for exact_border in (True, False):
        estimator = BanditShapley(cut=2, exact_border=exact_border)
        result = estimator.estimate(game, budget=200, seed=0)
        torch.testing.assert_close(result.values, torch.full((6,), 6.0, dtype=torch.float64))


def test_radius_is_the_student_t_interval_of_the_samples():
    result = BanditShapley(cut=3, min_samples=10**6).estimate(gapped_game(), 500, seed=5)
    m = result.n_samples
    quantile = student_t_quantile(0.975, m - 1)
    torch.testing.assert_close(result.radius, quantile * result.stderr)
    boundary = torch.sort(result.values).values[2:4].mean()
    assert result.boundary == pytest.approx(boundary.item())
    assert torch.equal(result.settled, (result.values - boundary).abs() > result.radius)
    assert result.confidence == pytest.approx(0.95)


def test_student_t_quantiles_match_tables():
    table = {1: 12.706, 2: 4.303, 3: 3.182, 5: 2.571, 10: 2.228, 30: 2.042}
    quantiles = student_t_quantile(0.975, torch.tensor([float(d) for d in table]))
    torch.testing.assert_close(
        quantiles, torch.tensor(list(table.values())).double(), atol=5e-3, rtol=0
    )
    assert student_t_quantile(0.975, torch.tensor([0.0])).isinf().all()


def test_cut_as_a_share_or_a_count():
    assert resolve_cut(0.25, 16) == 4 and resolve_cut(0.5, 9) == 4 and resolve_cut(5, 16) == 5
    with pytest.raises(ValueError, match="puts 0 of 3"):
        resolve_cut(0.25, 3)


def test_constructor_and_budget_validation():
    for cut in (0.0, 1.0, -2, True, "half"):
        with pytest.raises(ValueError, match="cut"):
            BanditShapley(cut=cut)
    with pytest.raises(ValueError, match="delta"):
        BanditShapley(delta=1.0)
    with pytest.raises(ValueError, match="min_samples"):
        BanditShapley(min_samples=1)
    with pytest.raises(ValueError, match="max_batch"):
        BanditShapley(max_batch=2)
    with pytest.raises(ValueError, match="needs a budget"):
        BanditShapley().estimate(gapped_game())
    with pytest.raises(ValueError, match="needs at least 26"):
        BanditShapley().estimate(gapped_game(), budget=25)


def test_paired_moments_give_the_regression_adjusted_mean_and_variance():
    from lightning_shapley.estimators._running import PairedMoments

    generator = torch.Generator().manual_seed(0)
    players = torch.randint(0, 3, (60,), generator=generator)
    h = torch.randn(60, generator=generator, dtype=torch.float64)
    d = 2 * h + 0.1 * torch.randn(60, generator=generator, dtype=torch.float64)
    moments = PairedMoments(3)
    moments.update(players[:25], d[:25], h[:25])
    moments.update(players[25:], d[25:], h[25:])
    c = moments.coefficient()
    assert abs(c - 2) < 0.1
    for p in range(3):
        residual = (d - c * h)[players == p]
        torch.testing.assert_close(moments.residual_mean(c)[p], residual.mean())
        torch.testing.assert_close(moments.residual_variance(c)[p], residual.var())


def surrogate_pair(n: int = 24, noise: float = 0.005):
    """A pairwise game and a quadratic surrogate close to it (known exact values for both)."""
    from lightning_shapley.games.surrogate import QuadraticGame

    generator = torch.Generator().manual_seed(3)
    a = torch.randn(n, n, generator=generator, dtype=torch.float64) / n
    gram = a @ a.T + torch.diag(torch.rand(n, generator=generator, dtype=torch.float64))
    surrogate = QuadraticGame(gram)
    # the true game: the surrogate plus small pairwise noise, values known in closed form
    noise_w = noise * torch.randn(n, n, generator=generator, dtype=torch.float64)
    linear = noise * torch.randn(n, generator=generator, dtype=torch.float64)

    upper = torch.triu(noise_w, 1)

    class Game:
        n_players = n
        exact = surrogate.shapley_values + linear + 0.5 * (upper + upper.T).sum(1)

        def __call__(self, masks):
            s = masks.double()
            return surrogate(masks) + s @ linear + ((s @ upper) * s).sum(1)

    return Game(), surrogate


def test_control_variate_keeps_estimates_unbiased_and_narrows_the_intervals():
    game, surrogate = surrogate_pair()
    exact = game.exact
    # one flip per sample (complement pairs are exact on pairwise games), nobody settles
    sampler = BanditShapley(cut=0.5, antithetic=False, min_samples=1000)
    plain = sampler.estimate(game, budget=400, seed=0)
    game2, _ = surrogate_pair()
    controlled = sampler.estimate(game2, budget=400, seed=0, control=surrogate)
    # same samples, far less spread once the surrogate's part is known exactly
    assert controlled.stderr.nanmean() < 0.5 * plain.stderr.nanmean()
    assert (controlled.values - exact).abs().max() < (plain.values - exact).abs().max()


def test_screening_samples_only_the_players_near_the_cut():
    game, surrogate = surrogate_pair(n=40)
    exact = game.exact
    result = BanditShapley(cut=0.5, screen=0.25).estimate(
        game, budget=10_000, seed=0, control=surrogate
    )
    assert int((result.n_samples > 0).sum()) < 40
    assert result.n_evals < BanditShapley(cut=0.5).estimate(game, budget=10_000, seed=0).n_evals
    truth = torch.zeros(40, dtype=torch.bool)
    truth[torch.argsort(exact)[:20]] = True
    assert int((result.below != truth).sum()) <= 2


def test_screened_out_players_far_from_the_cut_settle_on_the_surrogates_measured_error():
    game, surrogate = surrogate_pair(n=40)
    truth = torch.zeros(40, dtype=torch.bool)
    truth[torch.argsort(game.exact)[:20]] = True
    sampler = BanditShapley(cut=0.5, screen=0.25)
    small = sampler.min_samples * 2 * (1 + 10)  # what the 10 screened-in players need
    result = sampler.estimate(game, budget=small, seed=0, control=surrogate)
    never = result.n_samples == 0
    assert int(never.sum()) >= 25
    # settled unsampled: further from the boundary than the measured error, on the right side
    assert result.settled[never].float().mean() > 0.5
    assert int(torch.isfinite(result.radius[never]).sum()) >= 20
    assert (result.below[result.settled] == truth[result.settled]).all()
    # before any error is measured, an unsampled player is not settled
    early = sampler.estimate(game, budget=sampler.min_budget(40, screened=True), seed=0,
                             control=surrogate)  # fmt: skip
    assert not early.settled[early.n_samples == 0].any()


def test_a_bad_surrogate_lets_every_player_in():
    """A surrogate unrelated to the game: the measured error spread brings the screened
    players back into the sampling."""
    game, _ = surrogate_pair(n=20)
    from lightning_shapley.games.surrogate import QuadraticGame

    unrelated = QuadraticGame(torch.diag(torch.arange(20, 0, -1, dtype=torch.float64)) / 50)
    result = BanditShapley(cut=0.5, screen=0.25).estimate(
        game, budget=20_000, seed=0, control=unrelated
    )
    assert int((result.n_samples > 0).sum()) > 10


def test_should_stop_ends_sampling_between_rounds():
    game = random_pairwise(16, 0)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    result = BanditShapley(cut=0.5).estimate(game, budget=100_000, seed=0, should_stop=stop)
    full = BanditShapley(cut=0.5).estimate(random_pairwise(16, 0), budget=100_000, seed=0)
    assert len(calls) == 3
    assert 0 < result.n_evals < full.n_evals
    assert torch.isfinite(result.values).all()


def test_control_validation():
    from lightning_shapley.games.surrogate import QuadraticGame

    game = random_pairwise(6, 0)
    with pytest.raises(ValueError, match="same 6 players"):
        BanditShapley(cut=2).estimate(game, 100, control=QuadraticGame(torch.eye(5)))
    with pytest.raises(ValueError, match="exact_border"):
        BanditShapley(cut=2, exact_border=True).estimate(
            game, 100, control=QuadraticGame(torch.eye(6))
        )
    with pytest.raises(ValueError, match="screen"):
        BanditShapley(screen=0.0)
