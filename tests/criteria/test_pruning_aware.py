"""Pruning-aware criteria: elimination and iterated Shapley behind the criterion interface."""

from __future__ import annotations

import pytest
import torch

from lightning_shapley.criteria import (
    EliminationCriterion,
    ImportanceCriterion,
    IteratedShapleyCriterion,
    ShapleyCriterion,
)
from lightning_shapley.games import ChannelGame
from lightning_shapley.lab.models import DigitsCNN
from lightning_shapley.plan import make_plan
from lightning_shapley.selection import backward_elimination
from tests.conftest import randomize_batchnorm


def model_and_data():
    torch.manual_seed(0)
    model = randomize_batchnorm(DigitsCNN(width=6)).eval()
    x = torch.randn(24, 1, 8, 8)
    return model, x, torch.randint(0, 10, (24,))


def test_elimination_scores_cut_at_the_searched_kept_set():
    model, x, y = model_and_data()
    criterion = EliminationCriterion(metric="cross_entropy", ablation="zero")
    scores = criterion.score(model, ["3"], (x, y), cut=0.5)
    plan = make_plan(scores.values, 0.5)
    game = ChannelGame(model, "3", (x, y))
    searched = backward_elimination(game, game.n_players // 2)
    assert plan.removed["3"] == sorted(searched.order.tolist())
    assert scores.n_evals == searched.n_evals
    full = criterion.score(model, ["3"], (x, y))  # no cut: every channel but one goes in order
    assert full.n_evals > scores.n_evals
    assert make_plan(full.values, 0.5).removed == plan.removed  # greedy is greedy, cut or not


def test_default_elimination_is_label_free_and_global_scope_keeps_every_layer():
    model, x, _ = model_and_data()
    criterion = EliminationCriterion(scope="global")
    assert criterion.label_free
    scores = criterion.score(model, ["0", "3", "7"], x, cut=0.7)  # inputs alone
    plan = make_plan(scores.values, 0.7, scope="global", normalize="none")
    assert all(len(plan.kept(layer)) >= 1 for layer in plan.removed)
    assert sum(len(r) for r in plan.removed.values()) == int(0.7 * sum(plan.n_channels.values()))
    assert len({len(r) / plan.n_channels[k] for k, r in plan.removed.items()}) > 1  # uneven


def test_iterated_shapley_criterion_spends_its_budget_per_round():
    model, x, y = model_and_data()
    criterion = IteratedShapleyCriterion("permutation", budget=40, rounds=3, ablation="mean")
    scores = criterion.score(model, ["0"], (x, y), cut=0.5, seed=1)
    assert scores.n_evals <= 3 * 40
    assert torch.equal(scores.values["0"], criterion.score(model, ["0"], (x, y), cut=0.5,
                                                           seed=1).values["0"])  # fmt: skip
    with pytest.raises(ValueError, match="rounds"):
        IteratedShapleyCriterion(rounds=0)
    with pytest.raises(ValueError, match="cut"):
        criterion.score(model, ["0"], (x, y), cut=1.5)


@pytest.mark.parametrize("name", ["bandit", "tmab", "cut_permutation"])
def test_cut_samplers_take_the_cut_from_the_plan(name, monkeypatch):
    from lightning_shapley.criteria import ShapleyCriterion

    model, x, y = model_and_data()
    criterion = ShapleyCriterion(name, budget=400)
    seen = []
    estimate = type(criterion.estimator).estimate

    def spy(self, game, budget=None, *, seed=0):
        seen.append(self.cut)
        return estimate(self, game, budget, seed=seed)

    monkeypatch.setattr(type(criterion.estimator), "estimate", spy)
    scores = criterion.score(model, ["3"], (x, y), cut=0.5)
    n = scores.values["3"].numel()
    assert seen == [n // 2] and scores.n_evals <= 400
    assert criterion.estimator.cut != n // 2  # the configured estimator is left as it was


def test_a_game_blind_to_the_channels_falls_back_to_weight_norms_not_index_order():
    model, x, y = model_and_data()
    constant = lambda logits, targets: logits.new_zeros(())  # noqa: E731
    norms = ImportanceCriterion("l1").score(model, ["3"], x).values["3"]
    for blind in (EliminationCriterion(metric=constant), ShapleyCriterion(metric=constant)):
        with pytest.warns(UserWarning, match=r"game of '3' gives every kept set the same value"):
            scores = blind.score(model, ["3"], (x, y), cut=0.5)
        assert torch.equal(torch.argsort(scores.values["3"]), torch.argsort(norms.double()))
    with torch.no_grad():  # dead channels cost nothing, but the live ones still differ
        model[3].weight[:3] = 0
        model[3].bias[:3] = 0
    scores = EliminationCriterion(metric="cross_entropy", ablation="zero").score(
        model, ["3"], (x, y), cut=0.5
    )
    assert len(set(scores.values["3"].tolist())) == 6
