"""A network-wide game: the channels of every prunable group at once, and its global cut."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_shapley import ChannelGame, ExactShapley
from lightning_shapley.estimators import BanditShapley, TMABShapley
from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.pruning import prunable_layer_names


@pytest.fixture(scope="module")
def network_game() -> tuple[ChannelGame, torch.Tensor]:
    """A small CNN trained briefly on digits; one game over its three prunable groups."""
    torch.manual_seed(0)
    x, y = load_digits()
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 16, 5), nn.ReLU(), nn.Linear(5, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        F.cross_entropy(net(x[:500]), y[:500]).backward()
        optimizer.step()
    net.eval()
    layers = prunable_layer_names(net, x[:1])
    game = ChannelGame(net, layers, (x[1000:1100], y[1000:1100]))
    return game, ExactShapley().estimate(game).values


def test_players_are_the_channels_of_every_group(network_game):
    game, _ = network_game
    assert [g.layer for g in game.groups] == ["0", "2", "6"]
    assert [g.n_channels for g in game.groups] == [3, 4, 5]
    assert game.n_players == 12


@pytest.mark.parametrize("estimator", [BanditShapley, TMABShapley])
def test_the_global_cut_is_separated_across_layers(network_game, estimator):
    game, exact = network_game
    lowest = torch.sort(exact).values
    k = int(torch.argmax(lowest[2:-1] - lowest[1:-2])) + 2  # the clearest cut, 2 <= k <= n - 2
    assert lowest[k] - lowest[k - 1] > 0.04
    truly_below = torch.zeros(12, dtype=torch.bool)
    truly_below[torch.argsort(exact)[:k]] = True
    group = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 4, 5]))
    assert len(group[truly_below].unique()) > 1 and len(group[~truly_below].unique()) > 1

    result = estimator(cut=k).estimate(game, budget=4000, seed=0)
    assert torch.equal(result.below, truly_below)
    assert result.all_settled
    assert result.n_evals < 4000
