"""Sensitivity-n: 1 for additive games, ~0 for random scores, efficiency at n = all players."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_shapley.estimators import ExactShapley
from lightning_shapley.games import ChannelGame, PairwiseGame
from lightning_shapley.sensitivity import (
    default_ns,
    plot_sensitivity_n,
    plot_sensitivity_panels,
    sensitivity_n,
)


class CountingGame:
    """Counts the calls (not the coalitions) made to a game."""

    def __init__(self, game) -> None:
        self.game, self.n_players, self.calls = game, game.n_players, 0

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.game(masks)


def test_additive_game_scores_one_at_every_n_below_all():
    weights = torch.randn(12, generator=torch.Generator().manual_seed(0))
    game = CountingGame(PairwiseGame(weights))
    curve = sensitivity_n(game, weights, ns=range(1, 13), samples=64)
    assert game.calls == 1  # every subset of every size in one call
    for n in range(1, 12):
        assert curve[n] == pytest.approx(1.0, abs=1e-9), n
    assert math.isnan(curve[12])  # one subset, N itself: no correlation to speak of
    assert list(curve) == list(range(1, 13))


def test_random_scores_correlate_near_zero():
    # on an additive game random scores correlate as much as the two random vectors do (about
    # ±1/√players, here −0.03) plus sampling noise (±1/√samples)
    generator = torch.Generator().manual_seed(1)
    game = PairwiseGame(torch.randn(1000, generator=generator))
    noise = torch.randn(1000, generator=generator)
    curve = sensitivity_n(game, noise, ns=[1, 10, 100, 500], samples=400, seed=2)
    assert all(abs(r) < 0.15 for r in curve.values()), curve


def test_interactions_lower_the_correlation_and_constant_scores_give_nan():
    generator = torch.Generator().manual_seed(3)
    weights, interactions = (
        torch.randn(10, generator=generator),
        torch.randn(10, 10, generator=generator),
    )
    game = PairwiseGame(weights, 3 * interactions)
    curve = sensitivity_n(game, game.shapley_values(), ns=[1, 5], samples=200)
    assert curve[5] < 0.9 < curve[1]  # Shapley values are not additive when players interact
    assert all(math.isnan(r) for r in sensitivity_n(game, torch.ones(10), ns=[1, 5]).values())


def test_exact_shapley_on_a_channel_game():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 3))
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    game = ChannelGame(model, "0", (x, y))
    shapley = ExactShapley().estimate(game).values
    full, empty = game(torch.tensor([[True] * 8, [False] * 8]))
    # efficiency: the one subset at n = all players is exactly fitted by the Shapley values
    assert float(shapley.sum()) == pytest.approx(float(full - empty), abs=1e-5)
    curve = sensitivity_n(game, shapley, samples=64)
    assert list(curve) == default_ns(8) == [1, 2, 3, 4, 6, 8]
    assert math.isnan(curve[8])
    assert all(-1 <= curve[n] <= 1 for n in default_ns(8)[:-1])
    assert curve[1] > 0.5  # on so small a game the values track single removals


def test_bad_arguments():
    game = PairwiseGame(torch.ones(4))
    with pytest.raises(ValueError, match="scores has 3 entries"):
        sensitivity_n(game, torch.ones(3))
    with pytest.raises(ValueError, match="between 1 and 4"):
        sensitivity_n(game, torch.ones(4), ns=[0, 2])
    with pytest.raises(ValueError, match="between 1 and 4"):
        sensitivity_n(game, torch.ones(4), ns=[5])


def test_plot_writes_an_image(tmp_path):
    curves = {
        "exact": {1: 0.9, 10: 0.8, 100: float("nan")},
        "random": {1: 0.05, 10: -0.1, 100: 0.0},
    }
    path = tmp_path / "sensitivity.png"
    plot_sensitivity_n(curves, path, title="test")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    both = tmp_path / "panels.png"
    plot_sensitivity_panels({"wide": curves, "narrow": {"exact": {1: 0.5, 2: 0.7}}}, both)
    assert both.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
