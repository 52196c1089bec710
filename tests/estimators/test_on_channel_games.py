"""Estimators on a real channel game: a trained digits CNN."""

from __future__ import annotations

import itertools
import math

import torch

from lightning_shapley import ChannelGame, ExactShapley, LeaveOneOut, PermutationShapley
from lightning_shapley.lab.datasets import load_digits
from lightning_shapley.lab.models import DigitsCNN


def trained_digits_cnn() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x, y = load_digits()
    model = DigitsCNN(width=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:1000]), y[:1000]).backward()
        optimizer.step()
    return model.eval(), x[1000:1100], y[1000:1100]


def test_exact_and_sampled_values_on_a_real_layer():
    model, x, y = trained_digits_cnn()
    game = ChannelGame(model, "3", (x, y))
    exact = ExactShapley().estimate(game)
    assert exact.n_evals == 64

    # the definition, one order at a time (6! orders)
    phi = torch.zeros(6, dtype=torch.float64)
    for order in itertools.permutations(range(6)):
        masks = torch.zeros(7, 6, dtype=torch.bool)
        for step, player in enumerate(order):
            masks[step + 1 :, player] = True
        values = game(masks).double()
        phi[list(order)] += values[1:] - values[:-1]
    torch.testing.assert_close(exact.values, phi / math.factorial(6))

    sampled = PermutationShapley().estimate(game, budget=2000, seed=0)
    assert (sampled.values - exact.values).norm() < 0.1 * exact.values.norm()
    loo = LeaveOneOut().estimate(game)
    without_one = torch.ones(6, 6, dtype=torch.bool).fill_diagonal_(False)
    expected = game(torch.ones(1, 6, dtype=torch.bool)) - game(without_one)
    torch.testing.assert_close(loo.values, expected.double())
