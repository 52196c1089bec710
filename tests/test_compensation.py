"""Compensation without training: mean folding, regression folding, least-squares refit."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lightning_shapley.compensation import resolve_compensation
from lightning_shapley.games import ChannelGame
from lightning_shapley.plan import PruningPlan
from lightning_shapley.prune import prune


def dependent_channels_net() -> nn.Sequential:
    """A conv whose channel 3 is ``2·ch0 − ch1`` (and 4 is ``ch2 + 0.5``), feeding a conv and a
    linear head with nothing in between and no padding: the consumer sees exact linear
    combinations."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 5, 3), nn.Conv2d(5, 4, 3), nn.Flatten(), nn.Linear(4 * 16, 3))
    with torch.no_grad():
        w, b = net[0].weight, net[0].bias
        w[3], b[3] = 2 * w[0] - w[1], 2 * b[0] - b[1]
        w[4], b[4] = w[2], b[2] + 0.5
    return net


@pytest.mark.parametrize("compensation", ["least_squares", "regression"])
def test_removed_linear_combinations_of_kept_channels_are_recovered_exactly(compensation):
    net = dependent_channels_net()
    x = torch.randn(32, 2, 8, 8)
    with torch.no_grad():
        before = net(x)
    pruned = copy.deepcopy(net)
    plan = PruningPlan({"0": [3, 4]}, {"0": 5}, 0.4)
    prune(pruned, plan, x, compensation=compensation)
    assert pruned[0].out_channels == 3 and pruned[1].in_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), before, rtol=1e-3, atol=1e-3)
        plain = copy.deepcopy(net)
        prune(plain, plan, x)
        assert (plain(x) - before).abs().max() > 0.1  # without compensation it is not


def test_least_squares_refit_lowers_the_consumer_error_more_than_mean_folding():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Flatten(),
                        nn.Linear(6 * 16, 3))  # fmt: skip
    x = torch.randn(64, 1, 8, 8)
    with torch.no_grad():
        target = net[:3](x)
    errors = {}
    for compensation in ("none", "mean", "regression", "least_squares"):
        pruned = copy.deepcopy(net)
        prune(pruned, PruningPlan({"0": [1, 4, 6]}, {"0": 8}, 0.375), x, compensation=compensation)
        with torch.no_grad():
            errors[compensation] = (pruned[:3](x) - target).pow(2).mean().item()
    assert errors["least_squares"] < errors["mean"] < errors["none"]
    assert errors["least_squares"] <= errors["regression"] * 1.0001


def test_regression_folding_matches_the_regression_ablated_game():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 5, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(5 * 16, 3))  # fmt: skip
    x, y = torch.randn(24, 1, 8, 8), torch.randint(0, 3, (24,))
    for layer, removed in (("0", [1, 3]), ("2", [0, 2, 4])):
        game = ChannelGame(net, layer, (x, y), ablation="regression")
        mask = torch.ones(1, game.n_players, dtype=torch.bool)
        mask[0, removed] = False
        pruned = copy.deepcopy(net)
        plan = PruningPlan({layer: removed}, {layer: game.n_players}, 0.0)
        prune(pruned, plan, x, compensation="regression")
        with torch.no_grad():
            value = -nn.functional.cross_entropy(pruned(x), y)
        assert value.item() == pytest.approx(game(mask).item(), abs=1e-4), layer


def test_too_few_samples_for_a_linear_consumer_warn_and_stay_near_the_original():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 4))
    x = torch.randn(5, 20)
    pruned = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="5 samples for 26 weights"):
        prune(pruned, PruningPlan({"0": [0, 1, 2, 3, 4]}, {"0": 30}, 0.0), x,
              compensation="least_squares")  # fmt: skip
    kept = [i for i in range(30) if i >= 5]
    assert (pruned[2].weight - net[2].weight[:, kept]).abs().max() < 1.0


def test_grouped_consumers_are_refit_group_by_group():
    """A grouped consumer: a player is the same channel of both blocks, and each block's
    outputs are refit on that block's kept channels (here they can stand in exactly)."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(2, 8, 3), nn.Conv2d(8, 6, 3, groups=2), nn.Flatten(),
                        nn.Linear(6 * 16, 3))  # fmt: skip
    with torch.no_grad():
        w, b = net[0].weight, net[0].bias
        w[3], b[3] = 2 * w[0] - w[1], 2 * b[0] - b[1]  # block 0
        w[7], b[7] = w[4] + w[5], b[4] + b[5]  # block 1
    x = torch.randn(32, 2, 8, 8)
    with torch.no_grad():
        before = net(x)
    plan = PruningPlan({"0": [3]}, {"0": 4}, 0.25)
    errors = {}
    for compensation in ("none", "mean", "least_squares"):
        pruned = copy.deepcopy(net)
        prune(pruned, plan, x, compensation=compensation)
        assert pruned[0].out_channels == 6 and pruned[1].weight.shape == (6, 3, 3, 3)
        with torch.no_grad():
            errors[compensation] = ((pruned(x) - before).abs().max() / before.abs().max()).item()
    assert errors["least_squares"] < 5e-3 and 10 * errors["least_squares"] < errors["mean"]
    assert errors["mean"] < errors["none"]
    with pytest.warns(UserWarning, match="regression folding: left 1 consumer.*groups=2"):
        prune(copy.deepcopy(net), plan, x, compensation="regression")


def test_consumers_that_cannot_be_refit_are_left_as_they_are_with_one_warning():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
                        nn.Flatten(), nn.Linear(4 * 36, 3))  # fmt: skip
    x = torch.randn(4, 2, 8, 8)
    pruned = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="least-squares refit: left 1 consumer.*'1' \\(Conv2d"):
        prune(pruned, PruningPlan({"0": [0, 1]}, {"0": 4}, 0.5), x, compensation="least_squares")
    assert torch.equal(pruned[1].weight, net[1].weight[:, 2:])


def test_unknown_compensations_raise_and_leave_the_model_unchanged():
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3))
    x = torch.randn(4, 2, 8, 8)
    state = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="compensation='refit'"):
        prune(net, PruningPlan({"0": [0]}, {"0": 4}, 0.25), x, compensation="refit")
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="compensation='x'"):
        resolve_compensation("x", "zero")
    assert resolve_compensation("auto", "zero") == "none"
    assert resolve_compensation("auto", "mean") == "mean"
    assert resolve_compensation("auto", "regression") == "least_squares"
    assert resolve_compensation("least_squares", "mean") == "least_squares"
