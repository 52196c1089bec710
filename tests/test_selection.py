"""Kept-set searches: greedy and beam elimination, iterated Shapley, scores from an order."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_shapley.estimators import ExactShapley, PermutationShapley
from lightning_shapley.games import PairwiseGame
from lightning_shapley.games.surrogate import QuadraticGame
from lightning_shapley.selection import (
    backward_elimination,
    guided_elimination,
    iterated_removal,
    order_scores,
)


class TableGame:
    """A game given by a table of values of kept sets (missing sets are worth 0)."""

    def __init__(self, n: int, table: dict[frozenset, float]) -> None:
        self.n_players, self.table, self.n_evals = n, table, 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self.n_evals += len(masks)
        keys = [frozenset(row.nonzero().flatten().tolist()) for row in masks]
        return torch.tensor([self.table.get(key, 0.0) for key in keys], dtype=torch.float64)


class TwinsGame:
    """Players 0 and 1 are twins: either alone does the job of both (``v`` counts their max).
    Players 2 … n-1 are each worth ``w``; the twins are worth ``twin`` together or alone."""

    def __init__(self, n: int = 6, twin: float = 3.0, w: float = 1.0) -> None:
        self.n_players, self.twin, self.w = n, twin, w

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.double()
        return self.twin * masks[:, :2].max(dim=1).values + self.w * masks[:, 2:].sum(dim=1)


def best_kept_value(game, k: int) -> float:
    n = game.n_players
    masks = torch.ones(0, n, dtype=torch.bool)
    rows = []
    for removed in itertools.combinations(range(n), k):
        mask = torch.ones(n, dtype=torch.bool)
        mask[list(removed)] = False
        rows.append(mask)
    masks = torch.stack(rows)
    return float(game(masks).max())


def kept_value(game, order: torch.Tensor) -> float:
    mask = torch.ones(1, game.n_players, dtype=torch.bool)
    mask[0, order] = False
    return float(game(mask)[0])


def test_greedy_keeps_one_twin_where_a_shapley_ranking_drops_both():
    game = TwinsGame(n=6, twin=3.0, w=1.0)  # Shapley: twins 1.5 each, the others 1.0
    k = 3
    greedy = backward_elimination(game, k)
    assert kept_value(game, greedy.order) == best_kept_value(game, k) == 5.0
    assert greedy.order[0].item() in (0, 1)  # a twin goes first: its loss costs nothing
    shapley = ExactShapley().estimate(game).values
    assert shapley[:2].tolist() == pytest.approx([1.5, 1.5])
    ranked = torch.argsort(shapley, stable=True)[:k]
    assert kept_value(game, ranked) < 5.0  # the ranking keeps both twins, losing a single


def test_beam_escapes_the_trap_greedy_falls_into():
    sets = {(0, 1, 2, 3): 12.0, (1, 2, 3): 9.0, (0, 1, 2): 8.5, (0, 1, 3): 8.0,
            (0, 2, 3): 7.0, (0, 1): 10.0, (1, 2): 5.0, (1, 3): 4.0, (2, 3): 3.0, (0, 2): 2.0,
            (0, 3): 1.0}  # fmt: skip
    game = TableGame(4, {frozenset(key): value for key, value in sets.items()})
    greedy = backward_elimination(game, 2)
    beam = backward_elimination(game, 2, beam=2)
    assert greedy.order.tolist()[0] == 0 and kept_value(game, greedy.order) == 5.0
    assert sorted(beam.order.tolist()) == [2, 3] and kept_value(game, beam.order) == 10.0
    assert beam.values.tolist() == [8.5, 10.0]


def test_greedy_on_an_additive_game_removes_the_lowest_and_stays_lazy():
    weights = torch.linspace(0.1, 6.4, 64)[
        torch.randperm(64, generator=torch.Generator().manual_seed(0))
    ]
    game = PairwiseGame(weights)
    result = backward_elimination(game, 48)
    assert sorted(result.order.tolist()) == torch.argsort(weights)[:48].sort().values.tolist()
    assert result.values.tolist() == pytest.approx(
        (weights.sum() - weights.sort().values[:48].cumsum(0)).tolist()
    )
    # lazy: every drop stays valid on an additive game, so one round per step suffices
    assert result.n_evals <= 1 + 64 + 48 * 6
    assert result.n_evals == game.n_evals


def test_groups_keep_a_channel_each():
    game = PairwiseGame(torch.tensor([0.1, 0.2, 5.0, 6.0, 7.0]))
    groups = torch.tensor([0, 0, 1, 1, 1])
    result = backward_elimination(game, 3, groups=groups)
    kept = set(range(5)) - set(result.order.tolist())
    assert kept & {0, 1} and kept & {2, 3, 4}
    with pytest.raises(ValueError, match="every group keeps one"):
        backward_elimination(game, 4, groups=groups)


def test_iterated_shapley_on_an_additive_game_equals_plain_shapley():
    weights = torch.tensor([3.0, 0.5, 2.0, 0.1, 4.0, 1.0, 0.7, 2.5])
    game = PairwiseGame(weights)
    plain = torch.argsort(ExactShapley().estimate(game).values)[:6]
    iterated = iterated_removal(game, 6, ExactShapley(), None, rounds=3)
    assert iterated.order.tolist() == plain.tolist()
    assert iterated.worth[iterated.order].tolist() == pytest.approx(weights[plain].tolist())


def test_iterated_rounds_reestimate_on_the_restricted_game():
    game = TwinsGame(n=6, twin=1.6)  # Shapley: twins 0.8 each, below the others' 1.0
    one_round = iterated_removal(game, 3, ExactShapley(), None, rounds=1)
    three_rounds = iterated_removal(game, 3, ExactShapley(), None, rounds=3)
    assert kept_value(game, one_round.order) == pytest.approx(3.0)  # both twins gone
    # once one twin is gone the other is worth 1.6 on the restricted game, and stays
    assert kept_value(game, three_rounds.order) == pytest.approx(best_kept_value(game, 3)) == 3.6
    seeded = [iterated_removal(game, 3, PermutationShapley(), 40, seed=1).order for _ in range(2)]
    assert torch.equal(*seeded)


def test_order_scores_cut_where_the_search_stopped():
    order = torch.tensor([4, 0, 2])
    scores = order_scores(order, torch.tensor([9.0, 1.0, 9.0, 2.0, 9.0]))
    assert torch.argsort(scores)[:3].tolist() == [4, 0, 2]
    assert scores[1] < scores[3]  # kept players ranked by worth


def test_bad_arguments_and_nan_values_raise():
    game = PairwiseGame(torch.tensor([1.0, 2.0, 3.0]))
    for kwargs in ({"beam": 0}, {"width": 0}):
        with pytest.raises(ValueError, match="positive"):
            backward_elimination(game, 1, **kwargs)
    with pytest.raises(ValueError, match="k=3"):
        backward_elimination(game, 3)
    with pytest.raises(ValueError, match="rounds"):
        iterated_removal(game, 1, ExactShapley(), None, rounds=0)

    def nan_game(masks):
        return torch.full((len(masks),), float("nan"))

    nan_game.n_players = 3
    with pytest.raises(ValueError, match="non-finite"):
        backward_elimination(nan_game, 1)


def test_a_cost_budget_removes_the_cheapest_loss_per_unit_saved_until_it_is_spent():
    game = PairwiseGame(torch.tensor([1.0, 1.0, 2.0, 8.0]))
    costs = torch.tensor([1.0, 4.0, 4.0, 16.0])  # per unit saved: 1, 0.25, 0.5, 0.5
    result = backward_elimination(game, 3, costs=costs, budget=8.0)
    assert result.order.tolist() == [1, 2]  # 4 + 4 = 8: spent
    with pytest.raises(ValueError, match="beam=1"):
        backward_elimination(game, 2, beam=2, costs=costs, budget=4.0)
    with pytest.raises(ValueError, match="positive"):
        backward_elimination(game, 2, costs=torch.tensor([1.0, 0.0, 1.0, 1.0]))


def test_guided_elimination_measures_only_the_proposed_removals():
    game = PairwiseGame(torch.tensor([3.0, 1.0, 2.0, 0.5, 4.0]))
    exact = QuadraticGame(torch.diag(game.weights))
    result = guided_elimination(game, exact.removal_drops, 3, width=2)
    assert result.order.tolist() == [3, 1, 2]
    assert result.n_evals == 3 * 2
    torch.testing.assert_close(result.values, torch.tensor([10.0, 9.0, 7.0], dtype=torch.float64))
    followed = guided_elimination(game, exact.removal_drops, 3, width=1)
    assert followed.order.tolist() == [3, 1, 2] and followed.n_evals == 0


def test_guided_elimination_corrects_a_wrong_guide_within_its_width():
    game = PairwiseGame(torch.tensor([3.0, 1.0, 2.0, 0.5]))
    swapped = QuadraticGame(torch.diag(torch.tensor([3.0, 0.5, 2.0, 1.0])))  # 1 and 3 swapped
    assert guided_elimination(game, swapped.removal_drops, 2, width=1).order.tolist() == [1, 3]
    assert guided_elimination(game, swapped.removal_drops, 2, width=2).order.tolist() == [3, 1]


def test_guided_elimination_validates_and_stops():
    game = PairwiseGame(torch.ones(4))
    guide = QuadraticGame(torch.eye(4)).removal_drops
    with pytest.raises(ValueError, match="width"):
        guided_elimination(game, guide, 2, width=0)
    with pytest.raises(ValueError, match="cannot remove"):
        guided_elimination(game, guide, 4)
    assert len(guided_elimination(game, guide, 3, should_stop=lambda: True).order) == 0


def test_guided_elimination_in_fewer_steps_removes_several_per_step():
    game = PairwiseGame(torch.arange(1.0, 11.0))
    exact = QuadraticGame(torch.diag(game.weights))
    result = guided_elimination(game, exact.removal_drops, 6, width=2, steps=2)
    assert sorted(result.order.tolist()) == [0, 1, 2, 3, 4, 5]
    assert result.n_evals == 6 + 2 * (2 - 1)  # k + steps · (width − 1)
    assert torch.isnan(result.values).all()  # several removals per step: no kept-set value
    with pytest.raises(ValueError, match="steps"):
        guided_elimination(game, exact.removal_drops, 6, steps=0)
