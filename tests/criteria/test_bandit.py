"""The default criterion: bandit Shapley values at the cut, its surrogate, refinement and stop."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn

from lightning_shapley.calibration import spread_subset
from lightning_shapley.criteria import (
    CRITERIA,
    DEFAULT_CRITERION,
    BanditShapleyCriterion,
    criterion_by_name,
    stop_after,
)
from lightning_shapley.games import ChannelGame, PairwiseGame, RestrictedGame
from lightning_shapley.metrics import reference_logits


def net_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 16, 4),
    )  # fmt: skip
    return model, torch.randn(48, 1, 8, 8)


def test_the_default_is_the_bandit_everywhere():
    from lightning_shapley.callback import ShapleyPruningCallback
    from lightning_shapley.recipes.schema import PruningSpec

    assert DEFAULT_CRITERION == "bandit_shapley"
    assert isinstance(criterion_by_name(DEFAULT_CRITERION), BanditShapleyCriterion)
    default = inspect.signature(ShapleyPruningCallback).parameters["criterion"].default
    assert default == DEFAULT_CRITERION
    assert PruningSpec().criteria[0] == DEFAULT_CRITERION
    assert "greedy" in CRITERIA


def test_scores_every_channel_label_free_within_its_budget():
    model, x = net_and_data()
    criterion = BanditShapleyCriterion(evaluations_per_channel=4, refine=False)
    scores = criterion.score(model, ["0"], x, cut=0.5)
    assert scores.values["0"].shape == (16,)
    assert 0 < scores.n_evals <= max(4 * 16, 2 * 17)
    assert criterion.label_free


def test_refinement_searches_the_players_in_doubt():
    model, x = net_and_data()
    plain = BanditShapleyCriterion(refine=False).score(model, ["0"], x, cut=0.5)
    refined = BanditShapleyCriterion(refine=True).score(model, ["0"], x, cut=0.5)
    assert refined.n_evals >= plain.n_evals
    assert refined.values["0"].shape == (16,)


def test_refined_scores_put_the_search_removals_at_the_bottom():
    from lightning_shapley.criteria.bandit import _refined
    from lightning_shapley.estimators.cut import cut_estimate

    values = torch.tensor([0.0, 5.0, 1.0, 1.1, 1.2, 9.0], dtype=torch.float64)
    radius = torch.tensor([0.1, 0.1, 5.0, 5.0, 5.0, 0.1], dtype=torch.float64)
    result = cut_estimate(values, radius, radius, 3, 10, 0.95, torch.ones(6))
    # the game: player 4 is the one worth least among those in doubt, whatever the estimates say
    game = PairwiseGame(torch.tensor([0.0, 5.0, 1.0, 1.1, 0.1, 9.0]))
    scores, n_evals = _refined(game, result)
    bottom = set(torch.argsort(scores)[:3].tolist())
    assert bottom == {0, 4, 2}
    assert n_evals > 10


def test_a_stop_before_sampling_keeps_the_surrogate_decision():
    model, x = net_and_data()
    everything = {"max_examples": None}
    stopped = BanditShapleyCriterion(should_stop=lambda: True, **everything)
    stopped = stopped.score(model, ["0"], x, cut=0.5)
    timed = BanditShapleyCriterion(max_seconds=0, **everything).score(model, ["0"], x, cut=0.5)
    assert stopped.n_evals == 0 and timed.n_evals == 0
    game = ChannelGame(model, "0", x, metric="kl")
    surrogate = game.surrogate().shapley_values.float()
    torch.testing.assert_close(stopped.values["0"], surrogate)


def test_the_game_plays_on_at_most_max_examples_spread_over_the_classes():
    model, x = net_and_data()
    stopped = BanditShapleyCriterion(max_examples=12, should_stop=lambda: True)
    scores = stopped.score(model, ["0"], x, cut=0.5, seed=3)
    picked = spread_subset(reference_logits(model, x).argmax(-1), 12, seed=3)
    game = ChannelGame(model, "0", x[picked], metric="kl")
    torch.testing.assert_close(scores.values["0"], game.surrogate().shapley_values.float())
    everything = BanditShapleyCriterion(max_examples=None, should_stop=lambda: True)
    assert not torch.allclose(everything.score(model, ["0"], x, cut=0.5).values["0"],
                              scores.values["0"])  # fmt: skip
    with pytest.raises(ValueError, match="max_examples"):
        BanditShapleyCriterion(max_examples=0)


def test_the_bandit_samples_only_where_a_channel_could_settle():
    model, x = net_and_data()
    # one evaluation per channel cannot give the 2 screened-in channels of 16 their 3 samples:
    # the search at the cut alone spends evaluations, 4 per channel removed (8 steps of one)
    searched = BanditShapleyCriterion().score(model, ["0"], x, cut=0.5)
    assert searched.n_evals == 8 * 4
    sampled = BanditShapleyCriterion(evaluations_per_channel=64).score(model, ["0"], x, cut=0.5)
    assert sampled.n_evals > searched.n_evals


@pytest.fixture
def one_thread():
    """What settles depends on the last bits of the games' values, and so on the threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_where_it_can_pay_for_samples_the_bandit_settles_channels_and_saves_search(one_thread):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 96, 3), nn.ReLU(), nn.Flatten(), nn.Linear(96 * 36, 4))
    x = torch.randn(32, 1, 8, 8)
    default, search_only = BanditShapleyCriterion(), BanditShapleyCriterion(0.1)
    sampled = default.score(model, ["0"], x, cut=0.5)
    searched = search_only.score(model, ["0"], x, cut=0.5)
    assert default.scored_channels == search_only.scored_channels == 96
    assert default.settled_channels >= 48  # 78 when written
    assert search_only.settled_channels == 0  # too small a budget to sample: the search decides
    assert sampled.n_evals < searched.n_evals  # 118 against 144 when written


def test_the_search_at_the_cut_is_guided_by_the_surrogate():
    from lightning_shapley.criteria.bandit import _refined
    from lightning_shapley.estimators.cut import cut_estimate
    from lightning_shapley.games.surrogate import QuadraticGame

    values = torch.zeros(6, dtype=torch.float64)
    radius = torch.full((6,), 5.0, dtype=torch.float64)
    result = cut_estimate(values, radius, radius, 3, 10, 0.95, torch.ones(6))
    game = PairwiseGame(torch.tensor([0.0, 5.0, 1.0, 1.1, 0.1, 9.0]))
    right = QuadraticGame(torch.diag(game.weights))
    scores, n_evals = _refined(game, result, guide=right, options={"width": 2})
    assert set(torch.argsort(scores)[:3].tolist()) == {0, 4, 2}
    assert n_evals - 10 == 3 * 2  # two measured removals per step, no pass over everyone
    wrong = QuadraticGame(torch.diag(-game.weights))  # proposes the most valuable first
    scores, _ = _refined(game, result, guide=wrong, options={"width": 2})
    assert set(torch.argsort(scores)[:3].tolist()) != {0, 4, 2}
    with pytest.raises(ValueError, match="refine_width"):
        BanditShapleyCriterion(refine_width=0)


def test_stop_after_is_a_deadline():
    assert stop_after(0)()
    assert not stop_after(60)()
    with pytest.raises(ValueError, match="seconds"):
        stop_after(-1)


def test_validation():
    with pytest.raises(ValueError, match="evaluations_per_channel"):
        BanditShapleyCriterion(evaluations_per_channel=0)
    with pytest.raises(ValueError, match="max_seconds"):
        BanditShapleyCriterion(max_seconds=-1)


def test_restricted_game_can_fix_players_in():
    game = PairwiseGame(torch.tensor([1.0, 2.0, 4.0, 8.0]))
    present = torch.tensor([False, True, False, False])
    sub = RestrictedGame(game, torch.tensor([0, 2]), present=present)
    assert sub(torch.tensor([[True, False], [False, False]])).tolist() == [3.0, 2.0]
    with pytest.raises(ValueError, match="present"):
        RestrictedGame(game, torch.tensor([0]), present=torch.ones(3, dtype=torch.bool))


def test_refine_limit_searches_only_the_players_nearest_the_cut():
    from lightning_shapley.criteria.bandit import _refined
    from lightning_shapley.estimators.cut import cut_estimate

    values = torch.tensor([0.0, 5.0, 1.0, 1.1, 1.2, 9.0], dtype=torch.float64)
    radius = torch.tensor([0.1, 9.0, 5.0, 5.0, 5.0, 0.1], dtype=torch.float64)
    result = cut_estimate(values, radius, radius, 3, 10, 0.95, torch.ones(6))
    game = PairwiseGame(torch.tensor([0.0, 0.05, 1.0, 1.1, 0.1, 9.0]))
    everyone, _ = _refined(game, result)
    nearest, _ = _refined(game, result, limit=3)  # player 1 lies far from the cut: kept
    assert set(torch.argsort(everyone)[:3].tolist()) == {0, 1, 4}
    assert set(torch.argsort(nearest)[:3].tolist()) == {0, 4, 2}
    with pytest.raises(ValueError, match="refine_limit"):
        BanditShapleyCriterion(refine_limit=0)


def test_a_stop_during_the_search_keeps_the_removals_so_far():
    from lightning_shapley.criteria.bandit import _refined
    from lightning_shapley.estimators.cut import cut_estimate

    values = torch.tensor([0.0, 5.0, 1.0, 1.1, 1.2, 9.0], dtype=torch.float64)
    radius = torch.tensor([0.1, 0.1, 5.0, 5.0, 5.0, 0.1], dtype=torch.float64)
    result = cut_estimate(values, radius, radius, 3, 10, 0.95, torch.ones(6))
    game = PairwiseGame(torch.tensor([0.0, 5.0, 1.0, 1.1, 0.1, 9.0]))
    calls = []

    def stop():  # one removal, then stop
        calls.append(1)
        return len(calls) > 1

    scores, _ = _refined(game, result, should_stop=stop)
    # the search removed player 4; the third place goes to the lowest estimate left, player 2
    assert torch.argsort(scores)[:3].tolist() == [0, 4, 2]
    assert len(calls) == 2


def test_a_game_blind_to_the_channels_falls_back_to_weight_norms_with_a_warning():
    model, x = net_and_data()
    with torch.no_grad():
        model[2].weight.zero_()  # the only consumer of layer "0" reads none of its channels
    with pytest.warns(UserWarning, match="'0' gives every kept set the same value.*L1 norm"):
        blind = BanditShapleyCriterion().score(model, ["0"], x, cut=0.5)
    norms = model[0].weight.abs().sum(dim=(1, 2, 3))
    assert torch.equal(torch.argsort(blind.values["0"]), torch.argsort(norms))
    live, _ = net_and_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a layer whose channels count: no fallback there
        BanditShapleyCriterion().score(live, ["0"], x, cut=0.5)
